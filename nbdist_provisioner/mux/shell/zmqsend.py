"""Sending on a zmq.asyncio socket that a receive loop is waiting on, without losing it.

ZMQ signals readiness on an edge-triggered file descriptor. A send through a
plain (sync) socket on the same underlying socket can consume the edge that says
"a message arrived"; the asyncio receive then never wakes, although the message
sits in the socket: a rank's replies, or a frontend's requests, stop being read
for good. ``jupyter_client.Session.send`` sends through such a sync shadow. The
asyncio socket's own ``send_multipart`` re-checks the events for waiting
receivers, so every send must go through it: ``AsyncSend`` is what
``Session.send`` is given instead of the socket.

(Found by the frontend fuzz test: a request on one channel while a cell ran left
the cell waiting forever for a reply that had arrived.)
"""

from __future__ import annotations

from typing import Any

import zmq.asyncio


class AsyncSend:
    """A send-only view of a zmq.asyncio socket for ``Session.send``.

    Sends that cannot complete at once (a DEALER at its high-water mark) finish in
    the background instead of blocking the event loop.
    """

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.socket = sock

    def send_multipart(self, frames: Any, *args: Any, **kwargs: Any) -> Any:
        return self.socket.send_multipart(frames, *args, **kwargs)

    def send(self, frame: Any, *args: Any, **kwargs: Any) -> Any:
        return self.socket.send(frame, *args, **kwargs)
