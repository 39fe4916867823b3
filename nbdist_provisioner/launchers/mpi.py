"""``mpi``: one node agent per host, as one Open MPI ``mpiexec`` (see ``launchers.nodes``).

``mpiexec --map-by ppr:1:node`` over ``mpi_hosts`` (``host:1`` each; this host alone
without hosts) runs one node link per host. Remote hosts do not inherit mpiexec's
environment, so what the nodes need is forwarded explicitly, by name (``-x``): the
kernel's ``env`` setting and ``PYTHONPATH``; ranks get their environment from the
multiplexer over the node link. Every task gets the same stdin (``--stdin all``: the
token). MPICH's hydra differs (``-hosts``/``-ppn``/``-genvlist``, stdin to rank 0 only)
and is refused with a message.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from ..agent.link import Token
from .base import LauncherError
from .job import JobSpec, LaunchedJob, RankExit, StepProcess
from .nodes import NodeLauncher

# "mpiexec noticed that process rank 2 with PID 0 on node nodeB exited on signal 9 (Killed)."
_SIGNALED = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)")
_PROC_NAME = re.compile(r"Process name:\s+\[\[\d+,\d+\],(\d+)\]")
_EXIT_CODE = re.compile(r"Exit code:\s+(\d+)")
#: Forwarded to the nodes besides the names of the ``env`` setting.
FORWARDED = ("PYTHONPATH",)


def parse_rank_exits(line: str, state: dict[str, int]) -> list[RankExit]:
    """Rank exits from one line of mpiexec's output; ``state`` carries the "Process name"
    line to the "Exit code" line after it."""
    match = _SIGNALED.search(line)
    if match:
        return [RankExit(int(match[1]), -int(match[3]), match[2])]
    match = _PROC_NAME.search(line)
    if match:
        state["rank"] = int(match[1])
        return []
    match = _EXIT_CODE.search(line)
    if match and "rank" in state:
        return [RankExit(state.pop("rank"), int(match[1]))]
    return []


def mpiexec_flavour(mpiexec: str) -> str:
    """``openmpi``, ``mpich`` or ``unknown``, from ``mpiexec --version``."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = out.stdout + out.stderr
    if "Open MPI" in text or "OpenRTE" in text:
        return "openmpi"
    if "HYDRA" in text or "MPICH" in text:
        return "mpich"
    return "unknown"


class MpiLauncher(NodeLauncher):
    """Open MPI's ``mpiexec`` over ``mpi_hosts`` (or this host)."""

    name = "mpi"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.env = dict(os.environ if env is None else env)
        self._mpiexec: str | None = None

    def check(self) -> None:
        found = shutil.which("mpiexec", path=self.env.get("PATH"))
        if found is None:
            raise LauncherError("launcher 'mpi' needs mpiexec, which is not on PATH: install "
                                "Open MPI (Debian: openmpi-bin) or `module load openmpi`")
        flavour = mpiexec_flavour(found)
        if flavour != "openmpi":
            raise LauncherError(f"launcher 'mpi' supports Open MPI's mpiexec; {found} is "
                                f"{flavour} (MPICH's hydra sends stdin to rank 0 only and "
                                "takes other options)")
        self._mpiexec = found

    @property
    def hosts(self) -> list[str]:
        return [h.strip() for h in self.settings.mpi_hosts.split(",") if h.strip()]

    def node_count(self) -> int:
        hosts = len(self.hosts) or 1
        nodes = self.settings.nodes or hosts
        if nodes > hosts:
            raise LauncherError(f"nodes={nodes} but mpi_hosts names {hosts} host(s)")
        return nodes

    def mpiexec_argv(self, spec: JobSpec, slots: Sequence[int]) -> list[str]:
        """``spec.nproc`` processes, ``slots[i]`` on host i, placed in blocks."""
        s = self.settings
        argv = [self._mpiexec or "mpiexec", "-np", str(spec.nproc), "--stdin", "all"]
        if self.hosts:
            hosts = self.hosts[:len(slots)]
            argv += ["--host", ",".join(f"{h}:{n}" for h, n in zip(hosts, slots, strict=True))]
        argv += ["--map-by", "ppr:1:node" if set(slots) == {1} else "slot"]
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")  # containers; Open MPI refuses root otherwise
        for key, value in s.mpi_mca.items():
            argv += ["--mca", key, str(value)]
        for name in sorted({*spec.env, *s.env, *(v for v in FORWARDED if v in self.env)}):
            argv += ["-x", name]
        return [*argv, *shlex.split(s.mpiexec_args), *spec.argv]

    async def launch_job(self, spec: JobSpec, slots: Sequence[int]) -> StepProcess:
        """Run ``spec`` with ``slots[i]`` processes on host i."""
        self.check()
        env = {**self.env, **self.settings.env, **spec.env}
        state: dict[str, int] = {}
        return await StepProcess.start(self.mpiexec_argv(spec, slots), env, spec.stdin,
                                       lambda line: parse_rank_exits(line, state),
                                       keep_stdin_open=spec.keep_stdin_open)

    async def start_step(self, token: Token, argv: Sequence[str]) -> LaunchedJob:
        nodes = len(self.counts)
        return await self.launch_job(
            JobSpec(nodes, tuple(argv), stdin=token.line(), keep_stdin_open=True), [1] * nodes)
