"""What a running cell shows, by rank: to redraw the others after one rank's clear_output.

The frontend can only clear a whole cell. So the merger keeps, per running
request, the outputs on view and the ranks each belongs to (bounded by
``LEDGER_MAX``); after forwarding a rank's ``clear_output`` it shows the other
ranks' outputs again. Past the bound a clear clears every rank's output, as in
one kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Bytes of a cell's visible output kept to redraw it after a rank's clear_output.
LEDGER_MAX = 4 * 1024 * 1024
_ENTRY_COST = 64


@dataclass
class Entry:
    """One output on view in the frontend, and the ranks it belongs to."""

    ranks: set[int]
    msg_type: str
    content: dict[str, Any]
    size: int
    #: stream text, appended in place while the same rank keeps writing
    parts: list[str] = field(default_factory=list)
    #: for stream text: its rank (-1: several ranks' identical line) and stream name
    owner: int = -1
    name: str = ""


@dataclass
class Ledger:
    """What a cell shows, by rank, while it fits in LEDGER_MAX."""

    entries: list[Entry] = field(default_factory=list)
    size: int = 0
    #: True once the cell showed more than LEDGER_MAX: clears are whole-cell again.
    overflow: bool = False

    def add(self, entry: Entry) -> None:
        if self.grow(entry.size + _ENTRY_COST):
            self.entries.append(entry)

    def grow(self, size: int) -> bool:
        self.size += size
        if self.size > LEDGER_MAX and not self.overflow:
            self.entries.clear()
            self.overflow = True
        return not self.overflow

    def stream(self, ranks: tuple[int, ...], rank: int, name: str, text: str) -> None:
        if self.overflow:
            return
        last = self.entries[-1] if self.entries else None
        if last is not None and not ranks and last.owner == rank and last.name == name \
                and rank >= 0:
            if self.grow(len(text)):
                last.parts.append(text)
        else:
            self.add(Entry(set(ranks) if ranks else {rank}, "stream", {"name": name},
                           len(text), [text], rank if not ranks or len(ranks) == 1 else -1,
                           name))

    def rich(self, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "update_display_data":
            display_id = (content.get("transient") or {}).get("display_id")
            for entry in self.entries:
                if (entry.msg_type == "display_data"
                        and (entry.content.get("transient") or {}).get("display_id")
                        == display_id):
                    entry.content = {**entry.content, "data": content.get("data", {}),
                                     "metadata": content.get("metadata", {})}
            return
        nbdist = (content.get("metadata") or {}).get("nbdist") or {}
        ranks = set(nbdist.get("ranks") or [])
        size = sum(len(str(v)) for v in (content.get("data") or {}).values())
        size += sum(len(str(line)) for line in content.get("traceback") or [])
        self.add(Entry(ranks, msg_type, content, size))

    def without(self, rank: int) -> tuple[Ledger, list[Entry]]:
        """After ``rank``'s clear: a fresh ledger and the entries of other ranks to redraw."""
        kept: list[Entry] = []
        for entry in self.entries:
            entry.ranks.discard(rank)
            if entry.ranks:
                kept.append(entry)
        return Ledger(), kept

    def dropping(self, display_id: str) -> list[Entry]:
        """Every entry but the display ``display_id`` (to redraw the cell without it)."""
        return [e for e in self.entries
                if (e.content.get("transient") or {}).get("display_id") != display_id]
