"""What happens to the kernel: the inputs of the request core.

The I/O shell turns socket reads, process exits, signals and timers into these
records and hands each to ``KernelCore.handle(event, now)``. Messages arrive
already verified (signature, framing) and unpacked; everything else about them
is the core's to judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FrontendMessage:
    """A verified message from the frontend on ``channel`` (shell, control or stdin)."""

    channel: str
    idents: tuple[bytes, ...]
    header: Json
    content: Json
    metadata: Json = field(default_factory=dict)
    buffers: tuple[Any, ...] = ()
    parent_header: Json = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RankMessage:
    """A verified message from rank ``rank`` of ranks ``generation``."""

    generation: int
    rank: int
    channel: str  # shell, control, stdin or iopub
    header: Json
    parent_header: Json
    content: Json
    metadata: Json = field(default_factory=dict)
    buffers: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class RankInfo:
    """What a rank reported when it became ready."""

    host: str = ""
    local_rank: int = 0
    pid: int = 0
    #: torch.distributed set-up report: {"initialized", "backend", "device", "error", ...}
    dist: Json = field(default_factory=dict)
    #: the rank kernel's own kernel_info_reply content
    kernel_info: Json = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RanksReady:
    """Every rank of ``generation`` is connected and answering."""

    generation: int
    ranks: dict[int, RankInfo]


@dataclass(frozen=True, slots=True)
class RanksFailed:
    """The ranks of ``generation`` could not be started; ``error`` says why."""

    generation: int
    error: str


@dataclass(frozen=True, slots=True)
class RankExited:
    """A rank process of ``generation`` ended (exit, signal, lost node)."""

    generation: int
    rank: int
    #: "rank 2 (pid 41) was killed by signal SIGKILL" — one line
    how: str
    #: its last stderr lines, unfiltered
    stderr_tail: str = ""


@dataclass(frozen=True, slots=True)
class RanksStopped:
    """Every rank of ``generation`` is gone after a ``StopRanks``."""

    generation: int


@dataclass(frozen=True, slots=True)
class InterruptSignal:
    """SIGINT reached the kernel process (``interrupt_mode: signal``)."""


@dataclass(frozen=True, slots=True)
class ShutdownSignal:
    """The kernel must end without a request: SIGTERM, or its owner died."""

    reason: str


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """The answer to ``ReadHistory``: ``(session, line, source)`` entries, oldest first, or
    None when the database could not be read (the primary rank answers then)."""

    request_id: str
    history: tuple[tuple[int, int, str], ...] | None


@dataclass(frozen=True, slots=True)
class Tick:
    """A deadline the core reported has come."""


Event = (FrontendMessage | RankMessage | RanksReady | RanksFailed | RankExited | RanksStopped
         | InterruptSignal | ShutdownSignal | HistoryRead | Tick)
