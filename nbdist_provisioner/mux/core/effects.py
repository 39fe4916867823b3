"""What the kernel does: the outputs of the request core.

``KernelCore.handle`` returns a list of these; the I/O shell carries them out
in order. Message ids of messages the core will need to recognise again (rank
requests, frontend prompts) are chosen by the core, so that routing is decided
here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SendToRank:
    """Send a request (or an ``input_reply``) to one rank of ``generation``."""

    generation: int
    rank: int
    channel: str
    msg_type: str
    msg_id: str
    content: Json
    metadata: Json = field(default_factory=dict)
    buffers: tuple[Any, ...] = ()
    #: extra header fields (``subshell_id``)
    header_extra: Json = field(default_factory=dict)
    #: the rank's own message this answers (``input_reply``), else no parent
    parent: Json | None = None


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish on the frontend's iopub, parented to a frontend request's header."""

    msg_type: str
    content: Json
    parent: Json
    metadata: Json = field(default_factory=dict)
    buffers: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer a frontend request on its own channel."""

    channel: str
    idents: tuple[bytes, ...]
    msg_type: str
    content: Json
    parent: Json
    metadata: Json = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AskInput:
    """Send an ``input_request`` to the frontend's stdin, with the id the reply will name."""

    idents: tuple[bytes, ...]
    msg_id: str
    content: Json
    parent: Json


@dataclass(frozen=True, slots=True)
class StartRanks:
    """Start the ranks of ``generation``, once every earlier generation is stopped."""

    generation: int


@dataclass(frozen=True, slots=True)
class StopRanks:
    """Stop the ranks of ``generation``; ``graceful`` asks them first. The shell
    answers with ``RanksStopped``."""

    generation: int
    graceful: bool = True


@dataclass(frozen=True, slots=True)
class ReadHistory:
    """Read the last ``n`` entries of the primary rank's IPython history database (the
    ranks are not up yet); the shell answers with ``HistoryRead(request_id, ...)``."""

    request_id: str
    n: int
    raw: bool = True


@dataclass(frozen=True, slots=True)
class Exit:
    """End the kernel process with ``status``."""

    status: int = 0


@dataclass(frozen=True, slots=True)
class Log:
    """Something the operator should find in the kernel's log."""

    level: str  # "debug", "info", "warning", "error"
    text: str


Effect = (SendToRank | Publish | Reply | AskInput | StartRanks | StopRanks | ReadHistory | Exit
          | Log)
