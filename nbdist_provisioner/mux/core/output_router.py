"""Rank iopub output to frontend iopub messages, each under the request that caused it.

Outputs go through the ``OutputMerger`` (rank labels, partial lines, live
progress, identical results once), or into the ipywidgets Output widget that
captures them (``OutputCapture``); comm messages and debug events pass as
they are, with the rank message's metadata and buffers (ipywidgets checks a
comm's protocol version there). Output of a request that is already idle is
never shown (never in another cell, never after the idle), except what carries
no new cell output: comm traffic and display updates. Output routed through a
comm message (a widget callback, ``interact``) is always forwarded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .drops import DropDetector
from .effects import Effect, Log, Publish
from .events import RankMessage
from .output.merger import Out, OutputMerger
from .output_capture import OutputCapture, StateUpdate, SyncToRank
from .policy import LATE_TYPES, OUTPUT_TYPES, PASSED_TYPES
from .request import FinishedEntry, Request

Json = dict[str, Any]
#: Frontend request headers kept for parenting output (oldest forgotten first).
HEADERS_KEPT = 1024
_COMM_REQUESTS = frozenset({"comm_open", "comm_msg", "comm_close"})


class OutputRouter:
    def __init__(self, prefixes: dict[int, str], shown_ranks: set[int], window: float = 0.1,
                 group_prefix: Callable[[list[int]], str] | None = None) -> None:
        from .comms import CommRouter

        self.merger = OutputMerger(prefixes, shown_ranks, window=window,
                                   group_prefix=group_prefix)
        self.comms = CommRouter()
        self.capture = OutputCapture()
        self.drops = DropDetector()
        #: widget states to send to ranks (rank, content, metadata); the core sends them
        self.to_ranks: list[SyncToRank] = []
        self._headers: OrderedDict[str, Json] = OrderedDict()
        self._late_logged: OrderedDict[str, None] = OrderedDict()

    # -- request lifecycle -----------------------------------------------------------
    def remember(self, req: Request) -> None:
        """Keep ``req``'s header to parent its output (also after it is done)."""
        self._headers[req.msg_id] = req.header
        while len(self._headers) > HEADERS_KEPT:
            self._headers.popitem(last=False)

    def start(self, req: Request) -> None:
        self.remember(req)
        self.merger.start(req.msg_id, req.targets)

    def rank_finished(self, req: Request, rank: int, now: float) -> list[Effect]:
        return self._publish(self.merger.rank_finished(req.msg_id, rank, now))

    def finish(self, req: Request, now: float) -> list[Effect]:
        """Everything held for ``req`` goes out (before its reply and idle)."""
        return self._publish(self.merger.finish(req.msg_id, now))

    def tick(self, now: float) -> list[Effect]:
        self.capture.tick(now)
        return self._publish(self.merger.tick(now)) + self._captured()

    def next_deadline(self) -> float | None:
        times = [t for t in (self.merger.next_deadline(), self.capture.next_deadline())
                 if t is not None]
        return min(times) if times else None

    def ranks_replaced(self) -> None:
        self.comms.clear()
        self.capture.clear()
        self.drops.clear()
        self.to_ranks.clear()

    # -- rank output -------------------------------------------------------------------
    def route(self, m: RankMessage, target: Request | FinishedEntry | None,
              now: float) -> list[Effect]:
        """One rank iopub message (not a status) under ``target``: its request, live or
        finished, or None when no request of ours caused it."""
        t = str(m.header.get("msg_type", ""))
        key = (target.msg_id if isinstance(target, Request)
               else target.frontend_msg_id if target is not None else "")
        if target is not None and not isinstance(target, Request):
            self._headers.setdefault(key, target.header)
        if t in OUTPUT_TYPES and self.capture.capture(
                m.rank, str(m.parent_header.get("msg_id", "")), t, m.content, key, now):
            return self._captured()  # an Output widget of the rank shows it
        if isinstance(target, Request):
            count = target.execution_count
        elif target is not None:
            if t not in LATE_TYPES and target.msg_type not in _COMM_REQUESTS:
                return self._drop_late(m.rank, t, target.frontend_msg_id)
            count = 0
        else:
            if t not in PASSED_TYPES:
                return [Log("debug", f"rank {m.rank}: {t} of no request dropped")]
            count = 0
        if t in PASSED_TYPES:
            content = self._comm(m, t, key, now)
            if content is None:
                return self._captured()
            return self._captured() + self._publish([Out(key, t, content, m.metadata,
                                                         m.buffers)])
        if t not in OUTPUT_TYPES:
            return [Log("debug", f"rank {m.rank}: {t} on iopub ignored")]
        content = m.content
        if t == "execute_result" and count:
            content = {**content, "execution_count": count}
        return self._publish(self.merger.feed(m.rank, t, content, key, now, m.metadata,
                                              m.buffers))

    def dropped_output(self, m: RankMessage, header: Json | None) -> list[Effect]:
        """A stamped stream or status message: tell the cell what ZMQ dropped before it."""
        msg_type = m.header.get("msg_type")
        dropped = self.drops.observe(m.rank, m.metadata, m.content.get("text"),
                                     stream=msg_type == "stream")
        if dropped is None:
            return []
        effects: list[Effect] = [Log("warning", f"rank {m.rank}: {dropped.messages} stream "
                                                f"messages ({dropped.chars} characters) "
                                                f"dropped")]
        if header is not None:
            effects.append(Publish("stream", {"name": "stderr", "text": dropped.notice()},
                                   header))
        return effects

    # -- internals ---------------------------------------------------------------------
    def _comm(self, m: RankMessage, t: str, key: str, now: float) -> Json | None:
        """Comm bookkeeping; None: this rank's message must not reach the frontend."""
        content = m.content
        comm_id = str(content.get("comm_id", ""))
        if t == "comm_open":
            self.comms.rank_opened(comm_id, m.rank)
        elif t in ("comm_msg", "comm_close"):
            if not self.comms.answers_frontend(comm_id, m.rank):
                return None
            if t == "comm_close":
                self.comms.closed(comm_id)
        if t.startswith("comm_"):
            return self.capture.comm_from_rank(m.rank, t, content, m.metadata, key, now)
        return content

    def _captured(self) -> list[Effect]:
        """What the Output widgets' capturing produced: state updates for the frontend; the
        syncs to the ranks wait in ``to_ranks`` for the core."""
        effects: list[Effect] = []
        for item in self.capture.take():
            if isinstance(item, StateUpdate):
                effects.append(Publish("comm_msg", item.content,
                                       self._headers.get(item.parent, {}), item.metadata))
            else:
                self.to_ranks.append(item)
        return effects

    def _drop_late(self, rank: int, msg_type: str, request_id: str) -> list[Effect]:
        """Output of a finished cell (a background thread of it): logged once per cell."""
        if request_id in self._late_logged:
            return []
        self._late_logged[request_id] = None
        while len(self._late_logged) > HEADERS_KEPT:
            self._late_logged.popitem(last=False)
        return [Log("warning", f"rank {rank}: {msg_type} for request {request_id} after its "
                               "idle (a background thread of a finished cell?) is not shown; "
                               "further late output of that cell is dropped silently")]

    def _publish(self, outs: list[Out]) -> list[Effect]:
        effects: list[Effect] = []
        for out in outs:
            header = self._headers.get(out.parent, {}) if out.parent else {}
            effects.append(Publish(out.msg_type, out.content, header, out.metadata,
                                   out.buffers))
        return effects
