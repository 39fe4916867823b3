"""Output of one request held for a short window, so identical output is shown once.

Lines and displays of the shown ranks enter one queue in arrival order, each in
a *lane* (the lines of a stream, the displays). An item that another rank sends
identically joins the earliest held item it matches, provided that keeps the
rank's own order (it may only join an item that comes after everything else of
that rank still held). The head of the queue goes out when no rank can join it
any more: every shown rank is in it, has finished, has sent something that came
after it (it cannot come back to this point without reordering its output), or
has sent in that lane as many items as the item's sender had when it sent it
(identical lines of several ranks are the k-th line of each: a rank whose k-th
line differs has no copy of it); at the latest ``window`` seconds after it
arrived. Items behind the
head wait for it, so output keeps the order it was printed in across ranks, and
nothing is held longer than the window. Pure: ``now`` is passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

#: Items held per request at most; past it the oldest go out at once (a flood).
MAX_HELD = 2048


@dataclass(eq=False)
class Held:
    """One held output and the ranks that sent it identically."""

    seq: float
    at: float
    lane: Hashable  # ("line", stream name) or ("display",)
    #: how many items of this lane its first rank had sent, this one included
    index: int
    key: Hashable
    ranks: list[int]
    #: what each rank sent (for displays, each rank's own message metadata differs)
    payloads: dict[int, Any] = field(default_factory=dict)


class HoldQueue:
    """One request's held output; see the module docstring."""

    def __init__(self, ranks: tuple[int, ...], window: float) -> None:
        self.ranks = ranks
        self.window = window
        self.items: deque[Held] = deque()
        self.finished: set[int] = set()
        self._by_key: dict[tuple[Hashable, Hashable], list[Held]] = {}
        #: (rank, lane) -> items of that lane the rank sent
        self._counts: dict[tuple[int, Hashable], int] = {}
        #: per rank, the seq of the latest item it is in (held or gone out)
        self._latest: dict[int, float] = {}
        #: per rank, how many of its items are still held
        self._held_of: dict[int, int] = {}
        self._seq = 0.0

    # -- in -------------------------------------------------------------------------
    def add(self, rank: int, lane: Hashable, key: Hashable, payload: Any, now: float) -> Held:
        """Join the earliest held identical item this rank may join, or hold a new one."""
        return self.join(rank, lane, key, payload) or self.hold(rank, lane, key, payload, now)

    def join(self, rank: int, lane: Hashable, key: Hashable, payload: Any) -> Held | None:
        """Join the earliest held identical item this rank may join, if there is one."""
        latest = self._latest.get(rank, -1)
        for item in self._by_key.get((lane, key), ()):
            if rank not in item.payloads and (item.seq > latest or self._pull_before(rank,
                                                                                      item)):
                item.ranks.append(rank)
                item.payloads[rank] = payload
                self._latest[rank] = item.seq
                self._held_of[rank] = self._held_of.get(rank, 0) + 1
                self._counts[(rank, lane)] = self._counts.get((rank, lane), 0) + 1
                return item
        return None

    def _pull_before(self, rank: int, item: Held) -> bool:
        """Move what ``rank`` holds after ``item`` to just before it, if that reorders no
        rank's own output (only the order across ranks, of items held within one window):
        then ``rank`` can join ``item`` (rank 0's ``display('header')`` before everyone's
        ``display('same')``)."""
        mine = [m for m in self.items if m.seq > item.seq and rank in m.payloads]
        if not mine or self._latest.get(rank, -1) != mine[-1].seq:
            return False
        for m in mine:
            for j in self.items:
                if item.seq <= j.seq < m.seq and j not in mine and set(j.ranks) & set(m.ranks):
                    return False
        for m in mine:
            self.items.remove(m)
        at = self.items.index(item)
        low = self.items[at - 1].seq if at else item.seq - 1
        step = (item.seq - low) / (len(mine) + 1)
        for k, m in enumerate(mine):
            m.seq = low + step * (k + 1)
            self.items.insert(at + k, m)
        return True

    def hold(self, rank: int, lane: Hashable, key: Hashable, payload: Any, now: float) -> Held:
        """Hold a new item of ``rank``."""
        self._seq += 1
        index = self._counts[(rank, lane)] = self._counts.get((rank, lane), 0) + 1
        item = Held(self._seq, now, lane, index, key, [rank], {rank: payload})
        self.items.append(item)
        self._by_key.setdefault((lane, key), []).append(item)
        self._latest[rank] = item.seq
        self._held_of[rank] = self._held_of.get(rank, 0) + 1
        return item

    def passed(self, rank: int) -> None:
        """``rank`` sent something that was not held (it went out at once): it is past
        every held item now."""
        self._seq += 1
        self._latest[rank] = self._seq

    def rank_finished(self, rank: int) -> None:
        self.finished.add(rank)

    # -- out ------------------------------------------------------------------------
    def pop_ready(self, now: float) -> Held | None:
        """The head, if no rank can join it any more (one at a time: what goes out with it
        is taken from the queue before the next is looked at)."""
        if self.items and (self._settled(self.items[0], now) or len(self.items) > MAX_HELD):
            return self._pop()
        return None

    def pop_through(self, rank: int) -> Held | None:
        """The head while ``rank`` has held items (something of it must go out now, after
        what it sent before)."""
        if self.items and self._held_of.get(rank, 0):
            return self._pop()
        return None

    def pop_any(self) -> Held | None:
        return self._pop() if self.items else None

    def take_later(self, head: Held, want: Any) -> list[Held]:
        """Held items after ``head`` that ``want(item, ranks so far)`` accepts and that can move
        up to it without reordering their ranks' output; they are taken out of the queue."""
        taken: list[Held] = []
        blocked: set[int] = set()
        have = set(head.ranks)
        for item in list(self.items):
            if item is head:
                continue
            if not blocked & set(item.ranks) and not have & set(item.ranks) and want(item, have):
                taken.append(item)
                have.update(item.ranks)
                self._remove(item)
            else:
                blocked.update(item.ranks)
        return taken

    def next_deadline(self) -> float | None:
        return self.items[0].at + self.window if self.items else None

    def holds(self, rank: int) -> bool:
        return bool(self._held_of.get(rank, 0))

    # -- internals ------------------------------------------------------------------
    def _settled(self, item: Held, now: float) -> bool:
        if now >= item.at + self.window:
            return True
        for rank in self.ranks:
            if (rank not in item.payloads and rank not in self.finished
                    and self._latest.get(rank, -1) <= item.seq
                    and self._counts.get((rank, item.lane), 0) < item.index):
                return False
        return True

    def _pop(self) -> Held:
        item = self.items.popleft()
        self._forget(item)
        return item

    def _remove(self, item: Held) -> None:
        self.items.remove(item)
        self._forget(item)

    def _forget(self, item: Held) -> None:
        same = self._by_key.get((item.lane, item.key))
        if same is not None:
            same.remove(item)
            if not same:
                del self._by_key[(item.lane, item.key)]
        for rank in item.ranks:
            self._held_of[rank] -= 1
