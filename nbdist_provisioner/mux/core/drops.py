"""Detect rank output that ZMQ dropped on the way to the multiplexer.

Ranks stamp every stream message with a counter and the number of characters
sent before it (``rank.stream_stamps``). When a rank writes faster than the
multiplexer forwards, the rank's bounded iopub queue overflows and ZMQ drops
messages without telling anyone; the gap in the counter is how the user still
learns what was lost. Pure: no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...protocol import OFFSET_KEY, SEQ_KEY


@dataclass(frozen=True)
class Dropped:
    rank: int
    messages: int
    chars: int

    def notice(self) -> str:
        size = (f"{self.chars / 1e6:.1f} MB" if self.chars >= 100_000
                else f"{self.chars} characters")
        return (f"[nbdist] rank {self.rank}: {size} of output ({self.messages} messages) "
                f"dropped: the rank wrote faster than the kernel could forward it.\n")


class DropDetector:
    """Per rank, the next expected stamp; a jump means messages were dropped."""

    def __init__(self) -> None:
        self._next: dict[int, tuple[int, int]] = {}

    def observe(self, rank: int, metadata: Any, text: Any, stream: bool = True) -> Dropped | None:
        """One stamped iopub message of ``rank``: a stream message (``text``) or a status
        message (which carries the count of stream messages sent before it); returns
        the drop it reveals, if any.

        The first message seen from a rank only sets the baseline: output written
        before the multiplexer subscribed never had a reader.
        """
        if not isinstance(metadata, dict):
            return None
        seq, offset = metadata.get(SEQ_KEY), metadata.get(OFFSET_KEY)
        if not isinstance(seq, int) or not isinstance(offset, int):
            return None
        expected = self._next.get(rank)
        if expected is not None and seq < expected[0]:
            return None  # (not expected to happen: stamps are made in send order)
        if stream:
            self._next[rank] = (seq + 1, offset + len(text if isinstance(text, str) else ""))
        else:
            self._next[rank] = (seq, offset)
        if expected is None or seq == expected[0]:
            return None
        return Dropped(rank, seq - expected[0], max(0, offset - expected[1]))

    def clear(self) -> None:
        """New ranks: their counters start afresh."""
        self._next.clear()
