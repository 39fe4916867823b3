"""One rank's life: a real ``IPKernelApp``, torch.distributed, then the handshake.

Starts the kernel on ports of its own choosing, sets up torch.distributed, then
tells the multiplexer where it listens (the handshake, signed with the rank's
key), so the multiplexer never guesses readiness. ``run`` is called in a rank
forked by the agent (imports already done) or exec'ed (``python -m
nbdist_provisioner.rank``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

from .. import proctree
from .config import RankConfig


def end_with_parent() -> None:
    """When the process that started this rank (the agent) is gone, end this rank, its
    process group and everything it started (also what left the group), at once."""
    parent = os.getppid()

    def parent_died() -> None:
        proctree.kill_descendants(os.getpid())
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(0), signal.SIGKILL)
        os._exit(1)

    if not proctree.watch_process(parent, parent_died, "nbdist-parent-watch") or (
            os.getppid() != parent):
        parent_died()  # (gone before the watch was in place)


class _AllowList:
    """ZAP credentials provider: only the listed CURVE client keys (Z85) get in."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = frozenset(k.encode() for k in keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def admit_only(context: object, clients: tuple[str, ...]) -> object:
    """Start a ZAP handler on the kernel's context that admits only ``clients``: a CURVE
    server otherwise lets in anyone who knows its public key. (The heartbeat's socket
    has a context of its own: it only echoes.)"""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context)  # type: ignore[arg-type]
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=_AllowList(clients))
    return auth


def run(config: RankConfig) -> None:
    os.environ.pop("JPY_PARENT_PID", None)  # our watch replaces ipykernel's
    end_with_parent()
    key = config.key.encode()

    import faulthandler

    import zmq
    from ipykernel.iostream import OutStream
    from ipykernel.kernelapp import IPKernelApp
    from jupyter_client.session import Session
    from traitlets.config import Config

    from .distributed import init_distributed
    from .execution_count import follow_kernel_execution_count
    from .lean import publish_only_what_is_read
    from .stream_stamps import guard_streams, limit_iopub_queue

    OutStream.flush_interval = config.flush_interval
    cfg = Config()
    cfg.Session.key = key
    cfg.IPKernelApp.ip = config.bind_ip
    cfg.IPKernelApp.parent_handle = 0
    if config.connection_file:
        cfg.IPKernelApp.connection_file = config.connection_file
    cfg.HistoryManager.enabled = config.keep_history
    cfg.IPKernelApp.quiet = False  # keep stderr echoed to the launcher's pipe (see below)
    cfg.InteractiveShellApp.extensions = ["nbdist_provisioner.rank.extension"]
    cfg.IPKernelApp.outstream_class = "nbdist_provisioner.rank.iostream.RankOutStream"
    app = IPKernelApp.instance(config=cfg)
    if config.curve_secretkey:  # (traits, not config options: the connection file's place)
        app.curve_publickey = config.curve_publickey.encode()
        app.curve_secretkey = config.curve_secretkey.encode()
    app.initialize([])
    if config.curve_secretkey:  # before anyone is told where the kernel listens
        app.nbdist_zap = admit_only(app.context, config.curve_clients)
    # the connection file holds the key: nothing needs it once the kernel has started
    with contextlib.suppress(OSError):
        os.unlink(app.abs_connection_file)
    # stdout would only be noise in the launcher's pipe; stderr stays echoed there
    # so the multiplexer can quote a dying rank's last words.
    if isinstance(sys.stdout, OutStream):
        sys.stdout.echo = None
    guard_streams(app.session, *(s for s in (sys.stdout, sys.stderr) if isinstance(s, OutStream)))
    limit_iopub_queue(app.iopub_socket)
    follow_kernel_execution_count(app.kernel)
    publish_only_what_is_read(app.kernel)
    original_stderr = getattr(sys.stderr, "_original_stdstream_copy", None)
    if original_stderr is not None:
        faulthandler.enable(file=os.fdopen(os.dup(original_stderr), "w"), all_threads=False)

    # A rank is a worker launched from outside, as under torchrun, not a REPL: IPython
    # defines sys.ps1 "so that scripts can decide if they are running interactively",
    # and Lightning decides from it that ddp cannot work (it would re-run sys.argv,
    # which it never does when TORCHELASTIC_RUN_ID says the processes exist already).
    for prompt in ("ps1", "ps2", "ps3"):
        if hasattr(sys, prompt):
            delattr(sys, prompt)
    ns, report = init_distributed(
        config.backend, config.init_process_group, config.collective_timeout,
        config.init_method, os.path.dirname(config.connection_file),
        frozenset((app.shell_port, app.iopub_port, app.stdin_port, app.control_port,
                   app.hb_port)))
    app.shell.push(ns)

    session = Session(key=key)
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.linger = 5000
    push.connect(config.handshake_addr)
    rank = int(os.environ.get("RANK", "0"))
    session.send(push, "nbdist_rank_ready", {
        "rank": rank, "pid": os.getpid(), "host": config.host or socket.gethostname(),
        "local_rank": int(os.environ.get("LOCAL_RANK", rank)),
        "ip": app.ip, "transport": app.transport, "shell_port": app.shell_port,
        "iopub_port": app.iopub_port, "stdin_port": app.stdin_port,
        "control_port": app.control_port, "hb_port": app.hb_port, "dist": report,
    }, ident=[f"rank-{rank}".encode()])
    push.close()
    app.start()
