"""FrontendPublisher: everything that reaches the frontend goes through here.

Replies on shell/control, iopub messages, and merged outputs. Outputs queued in
the same event-loop turn go out coalesced (adjacent stream text of one cell
becomes one message), and the merger's timer work (partial lines, progress
redraws, rich-slot deadlines) is scheduled for exactly when it is due.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from jupyter_client.session import Session

from .frontend import FrontendChannels
from .output import Out, OutputMerger, append_coalesced
from .requests import FrontendRequest

#: How many frontend request headers are kept for parenting late output.
HEADERS_KEPT = 1024


class FrontendPublisher:
    def __init__(self, session: Session, front: FrontendChannels, merger: OutputMerger,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.session = session
        self.front = front
        self.merger = merger
        self.loop = loop
        self._headers: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._queue: list[Out] = []
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def remember(self, req: FrontendRequest) -> list[str]:
        """Keep ``req``'s header for parenting its output; return the msg_ids forgotten."""
        self._headers[req.msg_id] = req.header
        forgotten = []
        while len(self._headers) > HEADERS_KEPT:
            forgotten.append(self._headers.popitem(last=False)[0])
        return forgotten

    def header(self, msg_id: str) -> dict[str, Any] | None:
        return self._headers.get(msg_id)

    def reply(self, req: FrontendRequest, content: dict[str, Any]) -> None:
        msg_type = req.msg_type.replace("_request", "_reply")
        self.session.send(self.front.out[req.channel], msg_type, content,
                          parent=req.header, ident=req.idents)

    def send_input_request(self, req: FrontendRequest, content: dict[str, Any]) -> None:
        self.session.send(self.front.out["stdin"], "input_request", content,
                          parent=req.header, ident=req.idents)

    def publish(self, msg_type: str, content: dict[str, Any], parent: dict[str, Any]) -> None:
        """Publish at once, after whatever output is queued (order is kept)."""
        self.flush()
        self.session.send(self.front.out["iopub"], msg_type, content, parent=parent)

    def status(self, state: str, parent: dict[str, Any]) -> None:
        self.publish("status", {"execution_state": state}, parent)

    def emit(self, outs: list[Out]) -> None:
        """Queue merged outputs; ones queued in the same loop turn go out coalesced."""
        for out in outs:
            append_coalesced(self._queue, out)
        if outs and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)
        self._schedule_tick()

    def flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        sock = self.front.out["iopub"]
        for out in queue:
            self.session.send(sock, out.msg_type, out.content,
                              parent=self._headers.get(out.parent, {}), buffers=out.buffers)

    def _schedule_tick(self) -> None:
        deadline = self.merger.next_deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_tick)

    def _on_tick(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self.emit(self.merger.tick(self.loop.time()))
