"""Comm routing: which ranks a comm belongs to.

A comm a rank opens (a widget model) belongs to that rank alone: frontend
messages on it go back to that rank only. A comm the frontend opens goes to
every rank, but only one rank (the lowest it went to) answers on it, so the
frontend gets exactly one answer (``jupyter.widget.control`` would otherwise
get N, and N-1 "Comm not found" errors). Once such a comm is closed (a rank
without the comm's target closes it at once), what the other ranks still send
on it is dropped: the frontend no longer knows it.
"""

from __future__ import annotations

from collections import OrderedDict

#: Comms remembered at once; the oldest are forgotten past this (a leak guard).
MAX_COMMS = 100_000


class CommRouter:
    def __init__(self) -> None:
        self._owners: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._from_frontend: set[str] = set()
        #: frontend comms that are closed (bounded): the other ranks' answers are dropped
        self._gone: OrderedDict[str, None] = OrderedDict()

    def frontend_opened(self, comm_id: str, ranks: tuple[int, ...]) -> None:
        self._remember(comm_id, ranks)
        self._from_frontend.add(comm_id)

    def rank_opened(self, comm_id: str, rank: int) -> None:
        self._remember(comm_id, (rank,))

    def targets(self, comm_id: str, every_rank: tuple[int, ...]) -> tuple[int, ...]:
        """The ranks a frontend message on ``comm_id`` goes to."""
        return self._owners.get(comm_id, every_rank)

    def answers_frontend(self, comm_id: str, rank: int) -> bool:
        """Does a message of ``rank`` on ``comm_id`` reach the frontend?"""
        if comm_id in self._gone:
            return False
        if comm_id not in self._from_frontend:
            return True
        owners = self._owners.get(comm_id, ())
        return not owners or rank == owners[0]

    def closed(self, comm_id: str) -> None:
        self._owners.pop(comm_id, None)
        if comm_id in self._from_frontend:
            self._from_frontend.discard(comm_id)
            self._gone[comm_id] = None
            while len(self._gone) > MAX_COMMS:
                self._gone.popitem(last=False)

    def clear(self) -> None:
        """The ranks were replaced: their comms are gone."""
        self._owners.clear()
        self._from_frontend.clear()
        self._gone.clear()

    def _remember(self, comm_id: str, ranks: tuple[int, ...]) -> None:
        self._owners[comm_id] = ranks
        self._owners.move_to_end(comm_id)
        while len(self._owners) > MAX_COMMS:
            old, _ = self._owners.popitem(last=False)
            self._from_frontend.discard(old)
