"""``mpi``: every rank a process of one Open MPI ``mpiexec``.

Ranks are mapped in blocks (``--map-by slot`` over ``host:slots``) so Open MPI's ranks
match torch elastic's; the per-host counts go to the ranks in ``NBDIST_TASKS_PER_NODE``
since Open MPI does not tell a process its node index. Environment is forwarded only
with ``-x NAME`` (remote hosts do not inherit mpiexec's), and every rank gets the same
stdin (``--stdin all``). MPICH's hydra differs (``-hosts``/``-ppn``/``-genvlist``, stdin
to rank 0 only) and is refused with a message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from .base import LauncherError
from .job import JobLauncher, JobSpec, LaunchedJob, RankExit, StepProcess
from .placement import TASKS_PER_NODE_VAR

#: JSON object of ``MpiOptions`` fields, e.g. ``{"hosts": ["a", "b"], "tasks_per_node": 4}``.
OPTIONS_ENV = "NBDIST_MPI"
# "mpiexec noticed that process rank 2 with PID 0 on node nodeB exited on signal 9 (Killed)."
_SIGNALED = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)")
_PROC_NAME = re.compile(r"Process name:\s+\[\[\d+,\d+\],(\d+)\]")
_EXIT_CODE = re.compile(r"Exit code:\s+(\d+)")


@dataclass(frozen=True)
class MpiOptions:
    """Where mpiexec runs the ranks; empty ``hosts`` means this host only."""

    hosts: tuple[str, ...] = ()
    tasks_per_node: int | None = None
    mca: Mapping[str, str] = field(default_factory=dict)
    oversubscribe: bool = False
    mpiexec_args: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> MpiOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LauncherError(f"unknown mpi option(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(known))}")
        values = dict(data)
        for key in ("hosts", "mpiexec_args"):
            if key in values:
                values[key] = tuple(values[key])  # type: ignore[call-overload]
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> MpiOptions:
        raw = env.get(OPTIONS_ENV)
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise LauncherError(f"{OPTIONS_ENV} is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise LauncherError(f"{OPTIONS_ENV} must be a JSON object")
        return cls.from_mapping(data)

    def counts(self, nproc: int) -> list[int]:
        """Ranks per host, filled in host order (the last host may get fewer)."""
        hosts = len(self.hosts) or 1
        per = self.tasks_per_node or -(-nproc // hosts)
        if per * hosts < nproc:
            raise LauncherError(f"{hosts} host(s) × tasks_per_node={per} cannot hold "
                                f"{nproc} ranks")
        counts = [min(per, nproc - i * per) for i in range(hosts)]
        if counts[-1] < 1:
            raise LauncherError(f"{nproc} ranks leave host {self.hosts[-1]!r} empty with "
                                f"tasks_per_node={per}: list fewer hosts")
        return counts


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


class MpiLauncher(JobLauncher):
    """Open MPI's ``mpiexec`` over ``options.hosts`` (or this host)."""

    name = "mpi"

    def __init__(self, options: MpiOptions | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.options = options if options is not None else MpiOptions.from_env(self.env)
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

    def mpiexec_argv(self, spec: JobSpec) -> list[str]:
        opts = self.options
        counts = opts.counts(spec.nproc)
        argv = [self._mpiexec or "mpiexec", "-np", str(spec.nproc), "--map-by", "slot",
                "--stdin", "all"]
        if opts.hosts:
            argv += ["--host", ",".join(f"{h}:{n}" for h, n in zip(opts.hosts, counts,
                                                                 strict=False))]
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")  # containers; Open MPI refuses root otherwise
        if opts.oversubscribe:
            argv.append("--oversubscribe")
        for key, value in opts.mca.items():
            argv += ["--mca", key, str(value)]
        for name in sorted({*spec.env, TASKS_PER_NODE_VAR}):
            argv += ["-x", name]
        return [*argv, *opts.mpiexec_args, *spec.argv]

    async def launch_job(self, spec: JobSpec) -> LaunchedJob:
        self.check()
        counts = self.options.counts(spec.nproc)
        env = {**self.env, **spec.env, TASKS_PER_NODE_VAR: ",".join(map(str, counts))}
        state: dict[str, int] = {}
        return await StepProcess.start(self.mpiexec_argv(spec), env, spec.stdin,
                                       lambda line: parse_rank_exits(line, state))
