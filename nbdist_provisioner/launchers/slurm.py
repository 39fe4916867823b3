"""``slurm``: every rank a task of one ``srun`` step.

Inside an allocation (``SLURM_JOB_ID`` set: a batchspawner job, an ``salloc`` shell) the
step runs there. Outside one, the launcher first asks for an allocation with
``salloc --no-shell`` and the user's options (partition, time, nodes, tasks and GPUs
per node), runs the step in it with ``srun --jobid``, and ``scancel``s it when the job
is terminated. Tasks are placed in blocks (``--distribution=block``) so SLURM's task
ids match torch elastic's ranks, and every task gets the same stdin (``--input=all``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from .base import LauncherError
from .job import JobLauncher, JobSpec, LaunchedJob, RankExit, StepProcess, run_command

#: JSON object of ``SlurmOptions`` fields, e.g. ``{"partition": "gpu", "nodes": 2}``.
OPTIONS_ENV = "NBDIST_SLURM"
_GRANTED = re.compile(r"Granted job allocation (\d+)")
_PENDING = re.compile(r"Pending job allocation (\d+)")
# "srun: error: n2: task 3: Exited with exit code 7", "srun: error: n1: tasks 0-1: Killed"
_TASK_EXIT = re.compile(r"srun: error: (?P<host>[^:\s]+): tasks? (?P<ranks>[\d,\-]+): "
                        r"(?P<what>.+?)\s*$")
_EXIT_CODE = re.compile(r"Exited with exit code (\d+)")
_SIGNAL_BY_TEXT = {}
for _sig in signal.Signals:
    with contextlib.suppress(ValueError, TypeError):
        _SIGNAL_BY_TEXT.setdefault(signal.strsignal(_sig) or "", _sig.value)


@dataclass(frozen=True)
class SlurmOptions:
    """What to ask SLURM for when the launcher makes its own allocation."""

    partition: str | None = None
    time: str | None = None
    nodes: int | None = None
    tasks_per_node: int | None = None
    gpus_per_node: int | None = None
    account: str | None = None
    #: Allocate even inside an allocation (default: use the one we are in).
    always_allocate: bool = False
    salloc_args: tuple[str, ...] = ()
    srun_args: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> SlurmOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LauncherError(f"unknown slurm option(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(known))}")
        values = {k: tuple(v) if k.endswith("_args") else v  # type: ignore[call-overload]
                  for k, v in data.items()}
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SlurmOptions:
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

    def layout(self, nproc: int) -> list[str]:
        """``-n``/``-N``/``--ntasks-per-node`` for ``nproc`` ranks, checked for consistency."""
        args = ["--ntasks", str(nproc)]
        per_node = self.tasks_per_node
        if self.nodes is not None:
            if self.nodes < 1 or self.nodes > nproc:
                raise LauncherError(f"slurm nodes={self.nodes} does not fit {nproc} ranks")
            args += ["--nodes", str(self.nodes)]
            if per_node is None and nproc % self.nodes == 0:
                per_node = nproc // self.nodes  # even spread, not SLURM's fill-first
        if per_node is not None:
            if self.nodes is not None and self.nodes * per_node != nproc:
                raise LauncherError(f"slurm nodes={self.nodes} × tasks_per_node={per_node} "
                                    f"is not the {nproc} ranks of this kernel")
            args += ["--ntasks-per-node", str(per_node)]
        return args

    def salloc_argv(self, nproc: int, name: str) -> list[str]:
        argv = ["salloc", "--no-shell", "--job-name", name, *self.layout(nproc)]
        for flag, value in (("--partition", self.partition), ("--time", self.time),
                            ("--gpus-per-node", self.gpus_per_node),
                            ("--account", self.account)):
            if value is not None:
                argv += [flag, str(value)]
        return argv + list(self.salloc_args)


def parse_task_exits(line: str) -> list[RankExit]:
    """Rank exits from one line of srun's stderr (empty if it is not such a line)."""
    match = _TASK_EXIT.search(line)
    if not match:
        return []
    what = match["what"].replace(" (core dumped)", "")
    code_match = _EXIT_CODE.search(what)
    if code_match:
        code: int | None = int(code_match.group(1))
    elif what in _SIGNAL_BY_TEXT:
        code = -_SIGNAL_BY_TEXT[what]
    else:
        return []
    ranks: list[int] = []
    for part in match["ranks"].split(","):
        lo, _, hi = part.partition("-")
        ranks += range(int(lo), int(hi or lo) + 1)
    return [RankExit(r, code, match["host"]) for r in ranks]


class Allocation:
    """A job we created with ``salloc --no-shell``; cancelled by ``release``."""

    def __init__(self, job_id: str, env: Mapping[str, str]) -> None:
        self.job_id = job_id
        self._env = env
        self.released = False

    @classmethod
    async def request(cls, options: SlurmOptions, nproc: int, name: str, timeout: float,
                      env: Mapping[str, str]) -> Allocation:
        """Ask for an allocation and wait for the grant; fail fast when refused, and after
        ``timeout`` seconds when it stays pending (then it is cancelled)."""
        argv = options.salloc_argv(nproc, name)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)
        except OSError as err:
            raise LauncherError(f"cannot run salloc: {err}") from err
        assert proc.stderr is not None
        lines: list[str] = []
        job_id: str | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise asyncio.TimeoutError
                raw = await asyncio.wait_for(proc.stderr.readline(), left)
                if not raw:
                    break
                line = raw.decode(errors="replace").strip()
                lines.append(line)
                match = _GRANTED.search(line) or _PENDING.search(line)
                if match:
                    job_id = match.group(1)
                    if _GRANTED.search(line):
                        await proc.wait()
                        return cls(job_id, env)
        except asyncio.TimeoutError:
            reason = await _pending_reason(job_id, env) if job_id else ""
            await _stop(proc)
            if job_id:
                await run_command(["scancel", job_id], env)
            raise LauncherError(
                f"SLURM allocation {job_id or '(no id yet)'} still pending after "
                f"{timeout:.0f}s{reason}; it was cancelled. Ask for less (nodes, time, GPUs), "
                f"another partition, or raise start_timeout. Request: {' '.join(argv)}"
            ) from None
        code = await proc.wait()
        if job_id:  # pending, then salloc ended without a grant (job cancelled or failed)
            await run_command(["scancel", job_id], env)
        detail = "\n".join(ln for ln in lines if ln) or f"salloc exited with {code}"
        raise LauncherError(f"SLURM refused the allocation ({' '.join(argv)}):\n{detail}")

    async def release(self) -> None:
        if not self.released:
            self.released = True
            code, _, err = await run_command(["scancel", self.job_id], self._env)
            if code != 0 and "Invalid job id" not in err:
                raise LauncherError(f"scancel {self.job_id} failed: {err.strip()}")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)


async def _pending_reason(job_id: str, env: Mapping[str, str]) -> str:
    code, out, _ = await run_command(["squeue", "-h", "-j", job_id, "-o", "%r"], env, 10)
    reason = out.strip()
    return f" (reason: {reason})" if code == 0 and reason else ""


class SrunStep(StepProcess):
    """An ``srun`` step; ends by signal, then by ``scancel`` of the step, then releases
    the allocation if the launcher made it."""

    job_id: str | None = None

    def __init__(self, proc: asyncio.subprocess.Process, parse_exit: object, *,
                 job_id: str, name: str, client_env: Mapping[str, str],
                 allocation: Allocation | None) -> None:
        super().__init__(proc, parse_exit)  # type: ignore[arg-type]
        self.job_id = job_id
        self.name = name
        self.env = client_env
        self.allocation = allocation

    async def step_ids(self) -> list[str]:
        """``JOB.STEP`` of our step(s) still known to SLURM (found by the step name)."""
        code, out, _ = await run_command(
            ["squeue", "-h", "-s", "-j", str(self.job_id), "-o", "%i %j"], self.env, 10)
        if code != 0:
            return []
        return [sid for sid, _, nm in (ln.partition(" ") for ln in out.splitlines())
                if nm.strip() == self.name]

    async def cleanup(self) -> None:
        for step in await self.step_ids():  # srun gone but the step not (SIGKILLed srun)
            await run_command(["scancel", step], self.env)
        if self.allocation is not None:
            await self.allocation.release()


class SlurmLauncher(JobLauncher):
    """``srun`` inside the current allocation, or in one made with ``salloc --no-shell``."""

    name = "slurm"

    def __init__(self, options: SlurmOptions | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.options = options if options is not None else SlurmOptions.from_env(self.env)

    def check(self) -> None:
        for tool in ("srun", "salloc", "scancel", "squeue"):
            if shutil.which(tool, path=self.env.get("PATH")) is None:
                raise LauncherError(
                    f"launcher 'slurm' needs {tool}, which is not on PATH: run the kernel "
                    "where SLURM's client commands are installed (Debian: slurm-client; "
                    "on a cluster: `module load slurm`)")

    @property
    def inside_allocation(self) -> bool:
        return bool(self.env.get("SLURM_JOB_ID")) and not self.options.always_allocate

    def srun_argv(self, spec: JobSpec, job_id: str) -> list[str]:
        return ["srun", "--jobid", job_id, "--job-name", spec.name,
                *self.options.layout(spec.nproc),
                "--distribution=block", "--input=all", "--kill-on-bad-exit=1",
                "--export=ALL", *self.options.srun_args, *spec.argv]

    async def launch_job(self, spec: JobSpec) -> LaunchedJob:
        self.check()
        allocation = None
        if self.inside_allocation:
            job_id = self.env["SLURM_JOB_ID"]
        else:
            allocation = await Allocation.request(self.options, spec.nproc, spec.name,
                                                  spec.start_timeout, self._client_env())
            job_id = allocation.job_id
        # srun forwards its own environment (--export=ALL): ours plus the job's variables.
        env = {**self._client_env(), **spec.env}
        try:
            return await SrunStep.start(self.srun_argv(spec, job_id), env, spec.stdin,
                                        parse_task_exits, job_id=job_id, name=spec.name,
                                        client_env=self._client_env(),
                                        allocation=allocation)
        except BaseException:
            if allocation is not None:
                await allocation.release()
            raise

    def _client_env(self) -> dict[str, str]:
        """Our environment without the variables of an enclosing step (not its task's)."""
        drop = ("SLURM_STEP_", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID")
        return {k: v for k, v in self.env.items() if not k.startswith(drop)}


def describe_exits(exits: Sequence[RankExit]) -> str:
    return "; ".join(ex.describe() for ex in sorted(exits, key=lambda e: e.rank))
