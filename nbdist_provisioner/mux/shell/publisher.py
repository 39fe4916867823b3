"""Publisher: sends what the core decided to the frontend, in order, coalesced and bounded.

iopub messages queued in the same event-loop turn go out together: adjacent
stream text of one cell joins one message (at most ~1 MiB, see
``core.output.bounded``). A reply or prompt first sends whatever is queued,
so the frontend sees a request's outputs before its reply and its idle last.
"""

from __future__ import annotations

import asyncio

from jupyter_client.session import Session

from ..core.effects import AskInput, Publish, Reply
from ..core.output.bounded import PublishQueue
from .frontend import FrontendChannels


class Publisher:
    def __init__(self, session: Session, front: FrontendChannels,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.session = session
        self.front = front
        self.loop = loop
        self._queue = PublishQueue()
        self._scheduled = False

    def publish(self, effect: Publish) -> None:
        self._queue.add(effect.parent, str(effect.parent.get("msg_id", "")), effect.msg_type,
                        effect.content, effect.metadata, effect.buffers)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def reply(self, effect: Reply) -> None:
        self.flush()
        self.session.send(self.front.out[effect.channel], effect.msg_type, effect.content,
                          parent=effect.parent, ident=list(effect.idents),
                          metadata=effect.metadata or None)

    def ask_input(self, effect: AskInput) -> None:
        self.flush()
        header = self.session.msg_header("input_request")
        header["msg_id"] = effect.msg_id
        self.session.send(self.front.out["stdin"], "input_request", effect.content,
                          parent=effect.parent, ident=list(effect.idents), header=header)

    def flush(self) -> None:
        self._scheduled = False
        sock = self.front.out["iopub"]
        for item in self._queue.take():
            self.session.send(sock, item.msg_type, item.content, parent=item.parent,
                              metadata=item.metadata or None,
                              buffers=list(item.buffers) or None)
