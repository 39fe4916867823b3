"""stdin: rank input prompts go to the frontend one at a time, answers go back."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PendingInput:
    rank: int
    #: The rank's input_request (its header is the parent of our input_reply).
    rank_msg: dict[str, Any]
    #: The frontend request the prompt belongs to.
    request_id: str


class InputRouter:
    """FIFO of prompts; only the head is shown to the frontend, as frontends allow one."""

    def __init__(self) -> None:
        self._queue: deque[PendingInput] = deque()
        self.shown: PendingInput | None = None

    def add(self, item: PendingInput) -> PendingInput | None:
        """Queue a prompt; return it if it should be shown now."""
        self._queue.append(item)
        return self._advance()

    def answer(self) -> tuple[PendingInput | None, PendingInput | None]:
        """The frontend answered: (the prompt answered, the next prompt to show)."""
        answered, self.shown = self.shown, None
        return answered, self._advance()

    def drop_request(self, request_id: str) -> PendingInput | None:
        """A request finished (or was interrupted): forget its prompts."""
        self._queue = deque(p for p in self._queue if p.request_id != request_id)
        if self.shown is not None and self.shown.request_id == request_id:
            self.shown = None
        return self._advance()

    def _advance(self) -> PendingInput | None:
        if self.shown is None and self._queue:
            self.shown = self._queue.popleft()
            return self.shown
        return None
