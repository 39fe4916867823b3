"""Which rank JupyterLab's debugger debugs.

The debugger protocol (DAP over ``debug_request``/``debug_event``) talks to one
kernel: one debugpy, one set of breakpoints, cell files named after that
kernel's process. So all of a debug session goes to one rank, the primary one
unless the ``debug_rank`` setting or ``%debug_rank N`` says otherwise; that
rank stops at breakpoints, the others run the cell as usual (or wait for the
debugged rank in a collective). A session is tied to its rank (breakpoints are
set on paths the rank named), so a new choice made while one is on applies from
the frontend's next ``initialize`` (the debugger switched off and on). Pure.
"""

from __future__ import annotations

from typing import Any


class Debugging:
    def __init__(self, rank: int) -> None:
        #: the rank the current (or next) session debugs
        self.rank = rank
        #: a choice made while a session was on, for the next one
        self._next: int | None = None
        self.active = False

    def rank_for(self, content: dict[str, Any]) -> int:
        """The rank a debug_request goes to; an ``initialize`` starts a session (and takes
        a pending choice), a ``disconnect`` ends it."""
        command = content.get("command")
        if command == "initialize":
            if self._next is not None:
                self.rank, self._next = self._next, None
            self.active = True
        rank = self.rank
        if command == "disconnect":
            self.active = False
        return rank

    def choose(self, rank: int) -> None:
        if self.active and rank != self.rank:
            self._next = rank
        else:
            self.rank, self._next = rank, None

    def describe(self) -> str:
        if self._next is not None:
            return (f"[nbdist] the debugger debugs rank {self.rank} until it is switched off; "
                    f"switched on again, it debugs rank {self._next}\n")
        return f"[nbdist] the debugger debugs rank {self.rank}\n"

    def stopped_notice(self, body: dict[str, Any], nproc: int) -> str:
        """What the cell says when the debugged rank stops (the panel shows one kernel)."""
        reason = str(body.get("reason") or "a breakpoint")
        others = ("; the other ranks go on with the cell (or wait for it in a collective)"
                  if nproc > 1 else "")
        return f"[nbdist] debugger: rank {self.rank} stopped ({reason}){others}\n"
