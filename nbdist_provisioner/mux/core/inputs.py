"""stdin: rank prompts go to the frontend one at a time; each answer goes back to its rank.

Frontends show one prompt at a time, so prompts of several ranks wait in a
FIFO. An ``input_reply`` is matched to the prompt it answers by its parent
msg_id; a stale reply (to a prompt no longer on view) is dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PendingInput:
    rank: int
    #: the rank's input_request header: the parent of the input_reply it gets
    rank_header: dict[str, Any]
    content: dict[str, Any]
    #: the frontend request the prompt belongs to
    request_id: str


@dataclass(frozen=True, slots=True)
class ShownInput:
    item: PendingInput
    #: the msg_id of the input_request the frontend got
    msg_id: str


class InputRouter:
    """FIFO of prompts; only the head is shown."""

    def __init__(self) -> None:
        self._queue: deque[PendingInput] = deque()
        self.shown: ShownInput | None = None

    def add(self, item: PendingInput) -> PendingInput | None:
        """Queue a prompt; return it if it should be shown now."""
        self._queue.append(item)
        return self._next()

    def showing(self, item: PendingInput, msg_id: str) -> None:
        self.shown = ShownInput(item, msg_id)

    def answer(self, parent_msg_id: str) -> tuple[PendingInput | None, PendingInput | None]:
        """A reply to ``parent_msg_id``: (the prompt it answers or None if stale, the next
        prompt to show). A reply without a parent (``KernelClient.input`` sends none)
        answers the prompt on view."""
        if self.shown is None or (parent_msg_id and self.shown.msg_id != parent_msg_id):
            return None, None
        answered, self.shown = self.shown.item, None
        return answered, self._next()

    def drop_request(self, request_id: str) -> PendingInput | None:
        """A request finished: forget its prompts; return the next prompt to show."""
        self._queue = deque(p for p in self._queue if p.request_id != request_id)
        if self.shown is not None and self.shown.item.request_id == request_id:
            self.shown = None
        return self._next()

    def clear(self) -> None:
        self._queue.clear()
        self.shown = None

    def _next(self) -> PendingInput | None:
        if self.shown is None and self._queue:
            return self._queue.popleft()
        return None
