"""Rank processes of the agent: started by fork (imports shared) or exec, and supervised.

Each rank runs in a session of its own (its signals reach what it started and
nothing else). Its stderr goes to a pipe of the agent, kept as a bounded tail
for the report of its death. Its exit is noticed through a pidfd *before* it is
reaped: while it is a zombie its process group id cannot be reused, so its group
is killed then, and only then is it reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import proctree

#: The "rank" number under which the rendezvous store's child is supervised and reported.
STORE = -1
#: Trailing stderr lines kept per rank, and their longest length.
TAIL_LINES = 200
MAX_LINE = 1000
_READ = 1 << 16


@dataclass
class RankChild:
    rank: int
    pid: int
    #: readable when the rank has ended (-1: no pidfd on this platform)
    pidfd: int
    #: the read end of the rank's stderr pipe (-1 once closed)
    stderr: int
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    partial: bytes = b""
    returncode: int | None = None

    def read_stderr(self) -> bool:
        """Read what the pipe holds now; False at end of file."""
        while self.stderr >= 0:
            try:
                data = os.read(self.stderr, _READ)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                self._flush_partial()
                os.close(self.stderr)
                self.stderr = -1
                return False
            lines = (self.partial + data).split(b"\n")
            self.partial = lines.pop()[-4 * MAX_LINE:]
            for line in lines:
                self._add(line)
        return False

    def tail_text(self) -> str:
        lines = list(self.tail)
        if self.partial:
            lines.append(self.partial.decode("utf-8", "replace")[:MAX_LINE])
        return "\n".join(lines)

    def signal(self, signum: int) -> None:
        """Signal the rank's group; a no-op once reaped (its group id is not ours then)."""
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def ended(self) -> int:
        """The rank has ended: kill its group while the id is still its own, reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.read_stderr()
        return self.returncode

    def _add(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        self.tail.append(line[:MAX_LINE] + ("…" if len(line) > MAX_LINE else ""))

    def _flush_partial(self) -> None:
        if self.partial:
            self._add(self.partial)
            self.partial = b""


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def _become_child(stdout: int, stderr: int, keep: dict[int, int] | None = None) -> None:
    """In a forked child: a session of its own, stdin from /dev/null, the given stdout and
    stderr, fds ``keep`` (target: source) in place, every other fd of the agent closed
    (its pipes are not the child's), default signal handling."""
    os.setsid()
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    for target, source in (keep or {}).items():
        os.dup2(source, target)
    os.closerange(max([2, *(keep or {})]) + 1, _max_fd())
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_DFL)


def fork_rank(rank: int, env: dict[str, str], config_json: str) -> RankChild:
    """Fork a rank from this (preloaded, single-threaded) process."""
    from nbdist_provisioner.rank.config import RankConfig

    config = RankConfig.from_json(config_json)

    def child(stderr: int) -> None:
        devnull = os.open(os.devnull, os.O_RDWR)
        _become_child(stdout=devnull, stderr=stderr)
        os.environ.clear()
        os.environ.update(env)
        _fresh_randomness()
        proctree.set_name(f"nbdist-rank-{rank}")
        from nbdist_provisioner.rank.kernel_main import run

        run(config)

    return _fork(rank, child)


def fork_store(listener: int, host: str, port: int, world_size: int,
               timeout_s: float) -> RankChild:
    """Fork the rendezvous store's server (see ``store``): it serves on ``listener``, a
    socket this agent bound and listens on. Supervised like a rank, as rank ``STORE``."""

    def child(output: int) -> None:
        from .store import STORE_FD, serve

        _become_child(stdout=output, stderr=output, keep={STORE_FD: listener})
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT,
                                                  signal.SIGHUP})
        proctree.set_name("nbdist-store")
        serve(host, port, world_size, timeout_s)

    return _fork(STORE, child)


def _fork(rank: int, child: Callable[[int], None]) -> RankChild:
    """Fork ``child(stderr_fd)`` as rank ``rank``; its stderr comes back through a pipe,
    and its exit status is what it raised (SystemExit) or 1 after a traceback."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child(write_end)
            code = 0
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    os.set_blocking(read_end, False)
    return RankChild(rank, pid, _pidfd(pid), read_end)


def exec_rank(rank: int, env: dict[str, str], config_json: str) -> RankChild:
    """Start a rank as a new interpreter; its record goes through a pipe on its stdin.

    (The pipes are close-on-exec: the rank inherits only its stdin and stderr.)
    """
    read_end, write_end = os.pipe()
    config_read, config_write = os.pipe()
    argv = [sys.executable, "-Xfrozen_modules=off", "-m", "nbdist_provisioner.rank"]
    try:
        pid = os.posix_spawn(sys.executable, argv, env, setsid=True, file_actions=[
            (os.POSIX_SPAWN_DUP2, config_read, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 2)])
    finally:
        os.close(config_read)
        os.close(write_end)
    try:
        with os.fdopen(config_write, "w") as fh:
            fh.write(config_json + "\n")
    except BrokenPipeError:
        pass  # it died at once: its exit tells why
    os.set_blocking(read_end, False)
    return RankChild(rank, pid, _pidfd(pid), read_end)


def _fresh_randomness() -> None:
    """A forked rank would share the agent's random state; exec'ed ranks never did."""
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        with contextlib.suppress(Exception):
            numpy.random.seed()


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 4096
