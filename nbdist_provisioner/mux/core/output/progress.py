"""Live progress displays: the ``\\r`` bars of every rank of a cell, in place.

A *block* is one ``display_data`` (with a transient ``display_id``) that shows
each rank's bars, redrawn with ``update_display_data`` at most every
``interval`` seconds. A bar that ends stays in its block with its final state,
where it ran (not below as a new stream line), and a rank's next bar goes under
it in the same block while other bars of the block still run; once every bar
of a block has ended and other output went out below it, the next bar opens a
new block further down the cell.
Lines are ordered by bar, then rank: the first bars of all ranks, then the
second bars, as N terminals stacked. Pure: ``now`` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .rich import namespaced_display_id

Json = dict[str, Any]


@dataclass
class _Bar:
    text: str
    live: bool = True


@dataclass
class _Block:
    display_id: str
    #: (rank, stream name) -> that rank's bars in this block, oldest first
    bars: dict[tuple[int, str], list[_Bar]] = field(default_factory=dict)
    shown: bool = False
    dirty: bool = False
    last_emit: float = float("-inf")
    #: other output of the cell went out after the block
    covered: bool = False

    def live(self) -> bool:
        return any(bar.live for bars in self.bars.values() for bar in bars)

    def lines(self, prefixes: dict[int, str]) -> list[str]:
        rows = sorted((i, rank, name, bar.text) for (rank, name), bars in self.bars.items()
                      for i, bar in enumerate(bars))
        return [prefixes.get(rank, "") + text for _i, rank, _name, text in rows]


@dataclass(frozen=True, slots=True)
class BlockOut:
    """A display to publish: ``msg_type`` is display_data or update_display_data."""

    parent: str
    msg_type: str
    content: Json
    #: True when the block has nothing to show (all its bars erased themselves)
    empty: bool = False


class ProgressBlocks:
    def __init__(self, prefixes: dict[int, str], interval: float) -> None:
        self._prefixes = prefixes
        self._interval = interval
        self._current: dict[str, _Block] = {}
        self._count = 0
        #: final redraws of blocks that a new block replaced
        self._closed: list[BlockOut] = []

    def bar(self, parent: str, rank: int, name: str, text: str | None) -> bool:
        """``rank``'s current bar shows ``text`` (None: it erased itself). True when this
        opens a new block (the caller lets out what must come before it)."""
        block = self._current.get(parent)
        opened = False
        key = (rank, name)
        if block is None or (not block.live() and block.covered and text is not None):
            if block is None and text is None:
                return False
            if block is not None:
                self._closed.extend(self._draw(parent, block, 0.0))
            self._count += 1
            block = _Block(namespaced_display_id(f"nbdist-progress-{parent}-{self._count}", -1))
            self._current[parent] = block
            opened = True
        bars = block.bars.setdefault(key, [])
        if bars and bars[-1].live:
            if text is None:
                bars.pop()
            else:
                bars[-1].text = text
        elif text is not None:
            bars.append(_Bar(text))
        block.dirty = True
        return opened

    def bar_done(self, parent: str, rank: int, name: str, text: str) -> bool:
        """``rank``'s bar ended showing ``text``; it stays where it ran. True when this
        opens a new block (a bar that ran between two flushes)."""
        opened = self.bar(parent, rank, name, text)
        block = self._current[parent]
        block.bars[(rank, name)][-1].live = False
        return opened

    def take_closed(self) -> list[BlockOut]:
        """Final redraws of blocks that newer blocks replaced."""
        out, self._closed = self._closed, []
        return out

    def render(self, parent: str, now: float, final: bool = False) -> list[BlockOut]:
        """The block's display, if it changed and the interval allows (always when final,
        and when its last bar just ended: its final state goes out before the output that
        follows the bars, as a terminal, which can only append, needs it)."""
        block = self._current.get(parent)
        if block is None:
            return []
        if (not final and block.shown and now - block.last_emit < self._interval
                and block.live()):
            return []
        return self._draw(parent, block, now)

    def _draw(self, parent: str, block: _Block, now: float) -> list[BlockOut]:
        if not block.dirty:
            return []
        lines = block.lines(self._prefixes)
        block.dirty = False
        if not block.shown and not lines:
            return []
        ranks = sorted({rank for rank, _name in block.bars})
        # live: some bar still runs (a terminal keeps the block at its bottom until it ends)
        content = {"data": {"text/plain": "\n".join(lines)},
                   "metadata": {"nbdist": {"progress": True, "ranks": ranks,
                                           "live": block.live()}},
                   "transient": {"display_id": block.display_id}}
        msg_type = "update_display_data" if block.shown else "display_data"
        block.shown = True
        block.last_emit = now
        return [BlockOut(parent, msg_type, content, empty=not lines)]

    def pending(self, parent: str) -> bool:
        block = self._current.get(parent)
        return block is not None and block.dirty

    def due(self, parent: str) -> float | None:
        """When the block's next redraw may go out, if it has one waiting."""
        block = self._current.get(parent)
        if block is None or not block.dirty:
            return None
        return block.last_emit + self._interval

    def parents(self) -> list[str]:
        return list(self._current)

    def shown(self, parent: str) -> bool:
        block = self._current.get(parent)
        return block is not None and block.shown

    def covered(self, parent: str) -> None:
        """Other output of the cell went out: a bar after every bar ended goes below it."""
        block = self._current.get(parent)
        if block is not None and block.shown:
            block.covered = True

    def display_id(self, parent: str) -> str | None:
        block = self._current.get(parent)
        return block.display_id if block is not None else None

    def forget_shown(self, parent: str) -> None:
        """The frontend cleared the cell: the block must be shown again, as new."""
        block = self._current.get(parent)
        if block is not None:
            block.shown = False
            block.dirty = True

    def finish(self, parent: str, now: float) -> list[BlockOut]:
        """The cell ended: the block's final state; the block is done."""
        out = self.render(parent, now, final=True)
        self._current.pop(parent, None)
        return out
