"""The launcher contract: how rank processes come to exist.

A launcher starts every rank of one generation and hands back one
``RankProcess`` per rank. Everything else (handshake, supervision, shutdown
order) is the multiplexer's, so a new launcher (``mpiexec``, ``srun``) is only
this small surface. One launcher instance serves a kernel for its whole life
(``prepare`` once, ``launch`` per generation of ranks, ``close`` at the end), so
it may keep what it prepared (the local launcher's fork server) across them.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..settings import KernelSettings

#: How many trailing stderr lines of a rank are kept for error reports.
STDERR_TAIL_LINES = 30
_MAX_LINE = 1000


class LauncherError(RuntimeError):
    """The launcher cannot start ranks (missing binary, bad configuration, spawn failure)."""


@dataclass(frozen=True)
class RankSpec:
    """One rank to start: its environment (not secret) and its record (secret: it holds
    the rank's key; it must never travel in argv or the environment)."""

    rank: int
    local_rank: int
    world_size: int
    env: dict[str, str]
    #: the rank's ``RankConfig`` as JSON
    config: str = ""


class StderrTail:
    """The last lines a rank wrote to its stderr, bounded in lines and line length."""

    def __init__(self, max_lines: int = STDERR_TAIL_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=max_lines)

    def add(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if len(line) > _MAX_LINE:
            line = line[:_MAX_LINE] + "…"
        self._lines.append(line)

    def text(self) -> str:
        return "\n".join(self._lines)


class RankProcess(ABC):
    """One started rank: enough to wait for it, signal it and explain its death."""

    rank: int
    host: str

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The local pid we can signal, if the rank runs under a local process."""

    @property
    @abstractmethod
    def returncode(self) -> int | None:
        """Exit status once exited (negative: killed by that signal), else None."""

    @abstractmethod
    async def wait(self) -> int:
        """Wait for the rank to exit and return its status."""

    @abstractmethod
    def send_signal(self, signum: int) -> None:
        """Signal the rank and everything it started; a no-op once it has exited."""

    @abstractmethod
    def stderr_tail(self) -> str:
        """The last stderr lines known now, for error messages."""

    async def fetch_stderr_tail(self) -> str:
        """The last stderr lines of a rank that may still run (asked where they are)."""
        return self.stderr_tail()

    def describe_exit(self) -> str:
        """``exit code 3`` / ``signal SIGKILL``: how users read a death."""
        code = self.returncode
        if code is None:
            return "still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                return f"killed by signal {-code}"
            if -code == signal.SIGKILL:  # what the out-of-memory killer sends
                return f"killed by signal {name} (out of memory? the OOM killer sends SIGKILL)"
            return f"killed by signal {name}"
        return f"exit code {code}"


class Launcher(ABC):
    """Starts the rank processes of one kernel start, all in parallel."""

    #: The name users put in ``launcher = "..."``.
    name: ClassVar[str]
    #: The address rank kernels bind their ports on and the multiplexer connects to.
    bind_ip: str = "127.0.0.1"

    def check(self) -> None:  # noqa: B027 - optional hook
        """Raise LauncherError if this launcher cannot work here (e.g. binary missing)."""

    def check_settings(self, settings: KernelSettings) -> None:  # noqa: B027 - optional hook
        """Raise LauncherError if these settings cannot work with this launcher (checked
        by the provisioner, so a bad combination fails the kernel start with a message)."""

    def link_curve(self, rank: int) -> tuple[bytes, bytes, bytes] | None:
        """CurveZMQ keys for the multiplexer's links to ``rank``'s kernel: (its server public
        key, our public key, our secret key); None: plain (ranks on this host, loopback)."""
        return None

    def prepare(self, settings: KernelSettings, env: dict[str, str]) -> None:  # noqa: B027
        """Called once, as early as possible, with the kernel's settings and the
        environment every rank shares: start what can be started before the ranks (the
        local fork server)."""

    @abstractmethod
    async def launch(self, specs: list[RankSpec]) -> list[RankProcess]:
        """Start every rank; raise LauncherError if any cannot be spawned."""

    async def end_ranks(self) -> None:
        """A generation is over: end every rank this launcher started that is still there
        (ranks still starting included) and everything they started."""
        raise NotImplementedError

    async def close(self) -> None:  # noqa: B027 - optional hook
        """The kernel is ending: release what ``prepare`` started."""
