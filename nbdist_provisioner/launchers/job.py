"""A job step: one scheduler command (``srun``, ``mpiexec``) that starts N tasks.

The ``slurm`` and ``mpi`` launchers run one task per node: the node link of
``agent.node`` (see ``launchers.nodes``). With ``srun`` or ``mpiexec`` there is one local
process for the whole step, the tasks run on other hosts, their pids mean nothing here,
and a task's exit is known only from what the scheduler reports. So:

- ``JobSpec``: one command and one environment for every task, and the bytes every task
  reads on stdin (the one-time token: never in argv or the environment).
- ``LaunchedJob``: the running step. ``wait()`` for it to end, ``terminate()`` it,
  ``rank_exits`` (by task) as the scheduler reports them, with a listener so the
  multiplexer hears of a lost node while the others still run.
- ``StepProcess``: the local ``srun``/``mpiexec`` process, in a session of its own. Its
  stdin can stay open after the token: its end (the kernel died, however) reaches
  every task, which is how nodes learn at once that their kernel is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .base import LauncherError, StderrTail

#: How long a step gets to stop after SIGTERM before SIGKILL.
TERMINATE_GRACE = 5.0


@dataclass(frozen=True)
class JobSpec:
    """What to run as every rank of one kernel start."""

    nproc: int
    argv: tuple[str, ...]
    #: Extra environment for every rank; forwarded explicitly, nothing else is promised.
    env: Mapping[str, str] = field(default_factory=dict)
    #: Written to every task's stdin (the token, a newline); then EOF, unless
    #: ``keep_stdin_open`` (the end comes when the step is terminated or we die).
    stdin: bytes = b""
    keep_stdin_open: bool = False
    #: Seconds an allocation may stay pending before the start fails.
    start_timeout: float = 120.0
    #: Shown in the scheduler's queue (``squeue``) and used to find our step again.
    name: str = "nbdist"


@dataclass(frozen=True)
class RankExit:
    """One rank's end, as the scheduler reported it."""

    rank: int
    #: Exit status; negative: killed by that signal; None: ended, status unknown.
    returncode: int | None
    host: str | None = None

    def describe(self) -> str:
        where = f" on {self.host}" if self.host else ""
        code = self.returncode
        if code is None:
            return f"rank {self.rank}{where} ended"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"rank {self.rank}{where} killed by {name}"
        return f"rank {self.rank}{where} exited with code {code}"


ExitListener = Callable[[RankExit], None]


class LaunchedJob(ABC):
    """A running job step: every rank of one kernel start behind one local process."""

    #: Scheduler's id of what we run in (SLURM job id; None for mpiexec).
    job_id: str | None = None

    def __init__(self) -> None:
        self.rank_exits: dict[int, RankExit] = {}
        self._listeners: list[ExitListener] = []

    def add_exit_listener(self, listener: ExitListener) -> None:
        """Called (in the event loop) for each rank exit the scheduler reports."""
        self._listeners.append(listener)

    def _rank_exited(self, ex: RankExit) -> None:
        if ex.rank in self.rank_exits:
            return
        self.rank_exits[ex.rank] = ex
        for listener in self._listeners:
            listener(ex)

    @property
    @abstractmethod
    def returncode(self) -> int | None:
        """The step command's status once it ended (negative: signal), else None."""

    @abstractmethod
    async def wait(self) -> int:
        """Wait for the step to end; every rank is gone then."""

    @abstractmethod
    async def terminate(self, grace: float = TERMINATE_GRACE) -> int:
        """End every rank and the step (SIGTERM, then SIGKILL after ``grace``), release
        what the launcher allocated, and return the step's status. Idempotent."""

    @abstractmethod
    def output_tail(self) -> str:
        """The last lines the step command and the ranks wrote, for error messages."""


class StepProcess(LaunchedJob):
    """The local ``srun``/``mpiexec`` process: own session, stdin fed, output drained.

    Its stderr lines go through ``parse_exit`` so rank exits are known as the scheduler
    prints them. Subclasses add what ending the step needs beyond the process group.
    """

    def __init__(self, proc: asyncio.subprocess.Process,
                 parse_exit: Callable[[str], Sequence[RankExit]]) -> None:
        super().__init__()
        self.proc = proc
        self._parse_exit = parse_exit
        self._tail = StderrTail(60)
        self._drains = [asyncio.ensure_future(self._drain(s)) for s in (proc.stdout, proc.stderr)
                        if s is not None]
        self._terminated: asyncio.Future[int] | None = None

    @classmethod
    async def start(cls, argv: Sequence[str], env: Mapping[str, str], stdin: bytes,
                    parse_exit: Callable[[str], Sequence[RankExit]],
                    keep_stdin_open: bool = False, **kw: object) -> StepProcess:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True)
        except OSError as err:
            raise LauncherError(f"cannot run {argv[0]}: {err}") from err
        step = cls(proc, parse_exit, **kw)  # type: ignore[arg-type]
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died at once; wait() and the output tell why
        finally:
            if not keep_stdin_open:
                proc.stdin.close()
        return step

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than the stream limit: keep its start
                line = await stream.read(4096)
            if not line:
                return
            self._tail.add(line)
            for ex in self._parse_exit(line.decode("utf-8", "replace")):
                self._rank_exited(ex)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def wait(self) -> int:
        code = await self.proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._drains), timeout=2.0)
        return code

    def signal_group(self, signum: int) -> None:
        """Signal the step command's process group (ours: it leads its own session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    async def terminate(self, grace: float = TERMINATE_GRACE) -> int:
        if self._terminated is None:
            self._terminated = asyncio.ensure_future(self._terminate(grace))
        return await asyncio.shield(self._terminated)

    async def _terminate(self, grace: float) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()  # the tasks' lifeline: they end by themselves too
        if self.proc.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=grace)
            except asyncio.TimeoutError:
                self.signal_group(signal.SIGKILL)
        code = await self.wait()
        await self.cleanup()
        return code

    async def cleanup(self) -> None:
        """After the step command ended: cancel what may outlive it, release allocations."""

    def output_tail(self) -> str:
        return self._tail.text()


async def run_command(argv: Sequence[str], env: Mapping[str, str] | None = None,
                      timeout: float = 30.0) -> tuple[int, str, str]:
    """Run a short scheduler command (``scancel``, ``squeue``); (status, stdout, stderr)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as err:
        return 127, "", str(err)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return -9, "", f"{argv[0]} did not answer within {timeout:.0f}s"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
