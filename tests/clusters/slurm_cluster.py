"""A real SLURM cluster on this host for tests: munged, slurmctld and two slurmd.

Everything lives in one temp dir (key, sockets, state, spool, logs) and listens on
127.0.0.1 only, so several test runs on one machine never share a daemon. The
daemons run in the foreground as our children (``-D`` / ``-F``): we own their
pids, so stopping needs no pid files and never a process name.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "srun", "salloc", "sinfo", "scontrol", "scancel")
#: Variables that would point client commands at another job or cluster.
_FOREIGN = ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_STEP_ID", "SLURM_NODELIST",
            "SLURM_JOB_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_CONF")


class ClusterError(RuntimeError):
    """A daemon did not come up; the message carries its log tail."""


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def free_ports(count: int) -> list[int]:
    """Ports free on loopback right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def poll(check: Callable[[], bool], timeout: float, what: str,
         alive: Callable[[], None] = lambda: None) -> None:
    """Wait for ``check()`` by polling (no fixed sleep), failing early if ``alive`` raises."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        alive()
        if check():
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class SlurmCluster:
    """munged + slurmctld + one slurmd per node name, all on 127.0.0.1."""

    def __init__(self, nodes: Sequence[str] = ("n1", "n2"), cpus_per_node: int = 2,
                 partition: str = "debug") -> None:
        self.nodes = tuple(nodes)
        self.cpus_per_node = cpus_per_node
        self.partition = partition
        # Not pytest's tmp dir: munged wants every directory above its socket
        # searchable by all, and pytest's base dir is 0700.
        self.root = Path(tempfile.mkdtemp(prefix="nbdist-slurm-"))
        os.chmod(self.root, 0o711)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.sock"
        self.logs = self.root / "log"
        self._procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.env = {k: v for k, v in os.environ.items()
                    if k not in _FOREIGN and not k.startswith("SLURM_")}
        self.env["SLURM_CONF"] = str(self.conf)

    # -- configuration --------------------------------------------------------------------

    def _write_conf(self, ctld_port: int, node_ports: Sequence[int]) -> None:
        host = socket.gethostname().split(".")[0]
        r = self.root
        lines = [
            "ClusterName=nbdisttest",
            # slurmctld only runs where SlurmctldHost names this host; the address is ours.
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}/%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd'}.%n.pid",
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
            f"SlurmdLogFile={self.logs}/slurmd.%n.log",
            # No cgroups, no systemd here: plain /proc tracking, no task binding or accounting.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            # Two slurmd on one host report the host's hardware; trust the config instead.
            "SlurmdParameters=config_overrides",
            # Bind to what the hostname resolves to (loopback here) instead of 0.0.0.0.
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            # Refuse requests larger than the partition at submit time instead of queueing.
            "EnforcePartLimits=ALL",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "MinJobAge=2",
            "KillWait=2",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
        ]
        for name, port in zip(self.nodes, node_ports, strict=True):
            lines.append(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port}"
                         f" CPUs={self.cpus_per_node} State=UNKNOWN")
        lines.append(f"PartitionName={self.partition} Nodes={','.join(self.nodes)}"
                     " Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, key: str, argv: list[str]) -> None:
        log = self.logs / f"{key}.out"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        self._procs[key] = (proc, log)

    def _check_alive(self) -> None:
        for key, (proc, log) in self._procs.items():
            if proc.poll() is not None:
                extra = self.logs / f"{key}.log"
                raise ClusterError(f"{key} exited with {proc.returncode}:\n{_tail(log)}\n"
                                   f"{_tail(extra) if extra.exists() else ''}")

    def run(self, *argv: str, timeout: float = 60, check: bool = False,
            **kw: object) -> subprocess.CompletedProcess[str]:
        """Run a client command against this cluster."""
        return subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check, **kw)  # type: ignore[call-overload]

    def _nodes_idle(self) -> bool:
        out = self.run("sinfo", "-N", "-h", "-o", "%N %T", timeout=10).stdout.split()
        states = dict(zip(out[::2], out[1::2], strict=False))
        return all(states.get(n) == "idle" for n in self.nodes)

    def start(self, timeout: float = 60) -> None:
        """Start every daemon and return once both nodes are idle; retried on a port clash."""
        for attempt in range(3):
            try:
                self._start_once(timeout)
                return
            except ClusterError:
                self._stop_daemons()
                if attempt == 2:
                    raise

    def _start_once(self, timeout: float) -> None:
        for sub in ("munge", "state", "log", *(f"spool/{n}" for n in self.nodes)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        munge_dir = self.root / "munge"
        os.chmod(munge_dir, 0o711)  # munged: the socket's directory must be searchable
        key = munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
        self._spawn("munged", [
            "munged", "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={self.logs / 'munged.log'}",
            f"--seed-file={munge_dir / 'munged.seed'}"])
        poll(lambda: subprocess.run(
            ["munge", "-n", "-S", str(self.munge_socket)], capture_output=True).returncode == 0,
            timeout, "munged", self._check_alive)

        ctld_port, *node_ports = free_ports(1 + len(self.nodes))
        self._write_conf(ctld_port, node_ports)
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        poll(lambda: "is UP" in self.run("scontrol", "ping", timeout=10).stdout,
             timeout, "slurmctld", self._check_alive)
        for node in self.nodes:
            self._spawn(f"slurmd.{node}", ["slurmd", "-D", "-N", node, "-f", str(self.conf)])
        poll(self._nodes_idle, timeout, "slurmd nodes idle", self._check_alive)

    def jobs(self) -> list[str]:
        """``id state`` of every job the controller still knows about."""
        out = self.run("squeue", "-h", "-o", "%i %T", timeout=10).stdout
        return [line for line in out.splitlines() if line.strip()]

    def cancel_all(self, timeout: float = 30) -> None:
        self.run("scancel", "--user", str(os.getuid()), timeout=10)
        poll(lambda: not self.jobs(), timeout, "squeue to empty")

    def _stop_daemons(self, timeout: float = 20) -> None:
        if any(k.startswith("slurm") and p.poll() is None for k, (p, _) in self._procs.items()):
            self.run("scontrol", "shutdown", timeout=10)
        deadline = time.monotonic() + timeout
        for key in sorted(self._procs, key=lambda k: k == "munged"):  # munged last
            proc, _ = self._procs[key]
            if key == "munged" and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()  # by pid: our own child
                proc.wait()
        self._procs.clear()

    def stop(self) -> None:
        """Cancel jobs, ``scontrol shutdown``, then end what is left by pid; remove the dir."""
        try:
            ctld = self._procs.get("slurmctld")
            if ctld is not None and ctld[0].poll() is None:
                self.cancel_all()
        finally:
            self._stop_daemons()
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self, name: str) -> str:
        return _tail(self.logs / name, 40)
