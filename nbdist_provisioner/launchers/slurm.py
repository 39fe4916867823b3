"""``slurm``: one node agent per node, as one ``srun`` step (see ``launchers.nodes``).

Inside an allocation (``SLURM_JOB_ID`` set: a batchspawner job, an ``salloc`` shell) the
step runs there, with ``--overlap`` (the job's own server step may hold its CPUs).
Outside one, the launcher first asks for an allocation with ``salloc --no-shell`` and
the kernel's settings (nodes, ranks per node, partition, time, GPUs per node, account,
more arguments), runs its steps in it with ``srun --jobid``, and ``scancel``s it when the
kernel ends (the nodes cancel it themselves if the kernel is killed). An allocation
that is refused fails the start with SLURM's words; one pending past ``start_timeout``
is cancelled and the start fails with the reason ``squeue`` gives.

The step: ``--ntasks-per-node=1``, each task given all CPUs the allocation has on its
node (``--cpus-per-task``; GPUs are a step's by default), every task the same stdin
(``--input=all``: the token), ``--kill-on-bad-exit`` (a node that fails ends the step, and
a new one replaces it), ``--export=ALL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
from collections.abc import Mapping, Sequence

from ..agent.link import Token
from .base import LauncherError
from .job import JobSpec, LaunchedJob, RankExit, StepProcess, run_command
from .nodes import NodeLauncher
from .placement import PlacementError, parse_slurm_tasks_per_node

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
#: Variables of an enclosing step's task: srun must not take them for its own.
_TASK_VARS = ("SLURM_STEP_", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID")


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
    async def request(cls, argv: Sequence[str], timeout: float,
                      env: Mapping[str, str]) -> Allocation:
        """Run ``salloc --no-shell ...`` and wait for the grant; fail fast when refused, and
        after ``timeout`` seconds when it stays pending (then it is cancelled)."""
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
                f"another partition, or raise start_timeout. Request: {shlex.join(argv)}"
            ) from None
        code = await proc.wait()
        if job_id:  # pending, then salloc ended without a grant (job cancelled or failed)
            await run_command(["scancel", job_id], env)
        detail = "\n".join(ln for ln in lines if ln) or f"salloc exited with {code}"
        raise LauncherError(f"SLURM refused the allocation ({shlex.join(argv)}):\n{detail}")

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
    """An ``srun`` step; ends by signal, then ``scancel`` of what is left of the step (a
    SIGKILLed srun leaves its step running)."""

    job_id: str | None = None

    def __init__(self, proc: asyncio.subprocess.Process, parse_exit: object, *,
                 job_id: str, name: str, client_env: Mapping[str, str]) -> None:
        super().__init__(proc, parse_exit)  # type: ignore[arg-type]
        self.job_id = job_id
        self.name = name
        self.env = client_env

    async def step_ids(self) -> list[str]:
        """``JOB.STEP`` of our step(s) still known to SLURM (found by the step name)."""
        code, out, _ = await run_command(
            ["squeue", "-h", "-s", "-j", str(self.job_id), "-o", "%i %j"], self.env, 10)
        if code != 0:
            return []
        return [sid for sid, _, nm in (ln.partition(" ") for ln in out.splitlines())
                if nm.strip() == self.name]

    async def cleanup(self) -> None:
        for step in await self.step_ids():
            await run_command(["scancel", step], self.env)


class SlurmLauncher(NodeLauncher):
    """Node agents as an ``srun`` step, in the current allocation or one of its own."""

    name = "slurm"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.env = dict(os.environ if env is None else env)
        self.allocation: Allocation | None = None
        self.job_name = f"nbdist-{os.getpid()}"

    def check(self) -> None:
        for tool in ("srun", "salloc", "scancel", "squeue"):
            if shutil.which(tool, path=self.env.get("PATH")) is None:
                raise LauncherError(
                    f"launcher 'slurm' needs {tool}, which is not on PATH: run the kernel "
                    "where SLURM's client commands are installed (Debian: slurm-client; "
                    "on a cluster: `module load slurm`)")

    @property
    def inside_allocation(self) -> bool:
        return bool(self.env.get("SLURM_JOB_ID")) and not self.settings.slurm_allocate

    def node_count(self) -> int:
        if self.settings.nodes:
            return self.settings.nodes
        if self.inside_allocation:
            found = self.env.get("SLURM_JOB_NUM_NODES") or self.env.get("SLURM_NNODES") or "1"
            return max(1, min(int(found), self.settings.nproc))
        return 1

    def salloc_argv(self) -> list[str]:
        """The allocation: the nodes, each with CPUs for its ranks, and the user's options."""
        s = self.settings
        argv = ["salloc", "--no-shell", "--job-name", self.job_name,
                "--nodes", str(len(self.counts)), "--ntasks-per-node", str(max(self.counts))]
        for flag, value in (("--partition", s.slurm_partition), ("--time", s.slurm_time),
                            ("--account", s.slurm_account),
                            ("--gpus-per-node", s.gpus_per_node or "")):
            if value:
                argv += [flag, str(value)]
        return argv + shlex.split(s.salloc_args)

    @property
    def job_id(self) -> str:
        if self.allocation is not None:
            return self.allocation.job_id
        return self.env.get("SLURM_JOB_ID", "")

    async def allocate(self) -> None:
        if self.inside_allocation or (self.allocation and not self.allocation.released):
            return
        self.allocation = await Allocation.request(
            self.salloc_argv(), self.settings.start_timeout, self.client_env())

    def own_allocation(self) -> str:
        return self.allocation.job_id if self.allocation is not None else ""

    async def release(self) -> None:
        if self.allocation is not None:
            await self.allocation.release()

    async def cpus_per_node(self) -> int | None:
        """The CPUs the allocation has on each node (the first node's, for a mixed one)."""
        code, out, _ = await run_command(["squeue", "-h", "-j", self.job_id, "-o", "%C %D"],
                                         self.client_env(), 10)
        if code == 0:
            with contextlib.suppress(ValueError, ZeroDivisionError):
                cpus, nodes = (int(x) for x in out.split())
                return cpus // nodes
        text = self.env.get("SLURM_JOB_CPUS_PER_NODE", "")
        with contextlib.suppress(PlacementError, IndexError):
            return parse_slurm_tasks_per_node(text)[0]
        return None

    def srun_argv(self, spec: JobSpec, nodes: int, cpus_per_task: int | None = None) -> list[str]:
        argv = ["srun", "--jobid", self.job_id, "--job-name", spec.name, "--nodes", str(nodes),
                "--ntasks", str(spec.nproc), "--distribution=block", "--input=all",
                "--kill-on-bad-exit=1", "--export=ALL"]
        if spec.nproc % nodes == 0:
            argv += ["--ntasks-per-node", str(spec.nproc // nodes)]
        if cpus_per_task:
            argv += ["--cpus-per-task", str(cpus_per_task)]
        if self.inside_allocation:
            argv.append("--overlap")
        return argv + shlex.split(self.settings.srun_args) + list(spec.argv)

    async def launch_job(self, spec: JobSpec, nodes: int,
                         cpus_per_task: int | None = None) -> SrunStep:
        """Run ``spec.nproc`` tasks in blocks over ``nodes`` nodes of the allocation."""
        self.check()
        env = {**self.client_env(), **spec.env}  # srun --export=ALL: the tasks get it
        step = await SrunStep.start(self.srun_argv(spec, nodes, cpus_per_task), env, spec.stdin,
                                    parse_task_exits, keep_stdin_open=spec.keep_stdin_open,
                                    job_id=self.job_id, name=spec.name,
                                    client_env=self.client_env())
        return step

    async def start_step(self, token: Token, argv: Sequence[str]) -> LaunchedJob:
        nodes = len(self.counts)
        return await self.launch_job(
            JobSpec(nodes, tuple(argv), stdin=token.line(), keep_stdin_open=True,
                    name=self.job_name), nodes, await self.cpus_per_node())

    def client_env(self) -> dict[str, str]:
        """Our environment without the variables of an enclosing step's task."""
        return {k: v for k, v in self.env.items() if not k.startswith(_TASK_VARS)}


def describe_exits(exits: Sequence[RankExit]) -> str:
    return "; ".join(ex.describe() for ex in sorted(exits, key=lambda e: e.rank))
