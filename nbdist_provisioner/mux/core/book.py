"""Which frontend request every rank message belongs to.

Requests in flight, the rank msg_ids they went out under, the multiplexer's
own requests to ranks (idle probes, interrupts), and a bounded memory of
finished requests for output that comes after its request is done.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .request import FinishedEntry, FinishedRequests, Request

#: The multiplexer's own rank requests remembered at once (their replies are dropped).
MAX_INTERNAL = 4096


@dataclass(frozen=True, slots=True)
class Internal:
    """A request of the multiplexer's own to a rank (an interrupt, a stack or abort or
    re-rendezvous request of fail-fast), and the frontend request it serves, if any."""

    purpose: str
    request: Request | None = None
    rank: int = -1


@dataclass(frozen=True, slots=True)
class Probe:
    """A kernel_info_request on a rank's control channel whose idle stands in for the
    lost idle of ``request`` on that rank."""

    request: Request
    rank: int


class RequestBook:
    def __init__(self, nproc: int = 1) -> None:
        #: requests being served, in arrival order
        self.open: dict[Request, None] = {}
        self._live: dict[str, tuple[Request, int]] = {}
        self.finished = FinishedRequests(nproc)
        self._probes: dict[str, Probe] = {}
        self._internal: OrderedDict[str, Internal] = OrderedDict()

    def opened(self, req: Request) -> None:
        self.open[req] = None

    def sent(self, req: Request, rank: int, rank_msg_id: str) -> None:
        req.rank_msg_ids[rank] = rank_msg_id
        self._live[rank_msg_id] = (req, rank)

    def sent_untracked(self, req: Request, rank: int, rank_msg_id: str) -> None:
        """A request nobody waits on (a comm message): its output is routed as finished."""
        req.rank_msg_ids[rank] = rank_msg_id

    def live(self, rank_msg_id: str) -> tuple[Request, int] | None:
        return self._live.get(rank_msg_id)

    def finished_entry(self, rank_msg_id: str) -> FinishedEntry | None:
        return self.finished.get(rank_msg_id)

    def close(self, req: Request) -> None:
        self.open.pop(req, None)
        for rank_msg_id in req.rank_msg_ids.values():
            self._live.pop(rank_msg_id, None)
        self.finished.add(req)
        for probe_id in [k for k, p in self._probes.items() if p.request is req]:
            del self._probes[probe_id]

    # -- the multiplexer's own requests ---------------------------------------------
    def probe(self, probe_id: str, req: Request, rank: int) -> None:
        self._probes[probe_id] = Probe(req, rank)

    def probe_for(self, rank_msg_id: str) -> Probe | None:
        return self._probes.get(rank_msg_id)

    def probe_done(self, rank_msg_id: str) -> None:
        self._probes.pop(rank_msg_id, None)

    def internal(self, rank_msg_id: str, purpose: str, request: Request | None = None,
                 rank: int = -1) -> None:
        self._internal[rank_msg_id] = Internal(purpose, request, rank)
        while len(self._internal) > MAX_INTERNAL:
            self._internal.popitem(last=False)

    def internal_entry(self, rank_msg_id: str) -> Internal | None:
        return self._internal.get(rank_msg_id)

    def is_internal(self, rank_msg_id: str) -> bool:
        return rank_msg_id in self._internal or rank_msg_id in self._probes

    def forget_ranks(self) -> None:
        """The ranks were replaced: nothing they were sent can be answered any more."""
        self._live.clear()
        self._probes.clear()
        self._internal.clear()
