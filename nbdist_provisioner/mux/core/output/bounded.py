"""Bounded, coalesced publishing: a burst of stream text becomes few messages, none too big.

Stream text for the same cell and stream that is queued back to back joins one
message (joined once, when taken: appending stays linear), up to
``MAX_STREAM_CHARS``; text longer than that is split, at a newline where there
is one. So no stream message to the frontend is larger than about 1 MiB
whatever the number of ranks, and a flood still goes out in large messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Characters of one stream message to the frontend. JSON escapes newlines, and
#: UTF-8 takes up to 4 bytes a character: 256 Ki characters stay near 1 MiB.
MAX_STREAM_CHARS = 256 * 1024


def split_text(text: str, limit: int = MAX_STREAM_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut after a newline where the
    piece has one."""
    if len(text) <= limit:
        return [text]
    pieces = []
    start = 0
    while len(text) - start > limit:
        cut = text.rfind("\n", start, start + limit)
        end = cut + 1 if cut >= start else start + limit
        pieces.append(text[start:end])
        start = end
    if start < len(text):
        pieces.append(text[start:])
    return pieces


@dataclass
class Pending:
    """One message waiting to be published."""

    parent: Any
    msg_type: str
    content: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    buffers: tuple[Any, ...] = ()
    #: stream text parts, joined once when taken
    parts: list[str] = field(default_factory=list)
    size: int = 0


class PublishQueue:
    """Messages in order, adjacent stream text of one cell and stream joined, bounded."""

    def __init__(self, limit: int = MAX_STREAM_CHARS) -> None:
        self._limit = limit
        self._items: list[Pending] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, parent: Any, parent_key: str, msg_type: str, content: dict[str, Any],
            metadata: dict[str, Any] | None = None, buffers: tuple[Any, ...] = ()) -> None:
        """Queue a message; ``parent_key`` tells which streams may join."""
        if msg_type != "stream":
            self._items.append(Pending(parent, msg_type, content, metadata or {}, buffers))
            return
        name = content.get("name", "stdout")
        for piece in split_text(str(content.get("text", "")), self._limit):
            last = self._items[-1] if self._items else None
            if (last is not None and last.msg_type == "stream" and last.content["name"] == name
                    and last.content["key"] == parent_key
                    and last.size + len(piece) <= self._limit):
                last.parts.append(piece)
                last.size += len(piece)
            else:
                self._items.append(Pending(parent, "stream", {"name": name, "key": parent_key},
                                           {}, (), [piece], len(piece)))

    def take(self) -> list[Pending]:
        """Everything queued, in order, stream text joined."""
        items, self._items = self._items, []
        for item in items:
            if item.msg_type == "stream":
                item.content = {"name": item.content["name"], "text": "".join(item.parts)}
                item.parts = []
        return items
