"""A ZMQ socket on the asyncio loop, read in bursts, with no Future per message.

``zmq.asyncio`` makes a Future (and several callbacks) for every message, which
was most of the multiplexer's CPU per cell. Here a plain socket's file
descriptor is watched with ``loop.add_reader`` and everything it holds is read
in one go. Two rules of ZMQ make this correct:

- the descriptor is *edge*-triggered: after it fires, ``EVENTS`` is read and the
  socket drained until it says nothing is left;
- a *send* on the socket can consume the edge that said "a message arrived": so
  after every send ``EVENTS`` is looked at again and a drain scheduled if needed
  (otherwise a reply could sit unread for ever; the frontend fuzz test once
  caught exactly that).

Reads are fair: after ``budget`` bytes a socket lets the loop run (publish what
was merged, read the other ranks, serve the frontend) and continues next turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

log = logging.getLogger("nbdist.mux")

#: Bytes (small messages count as MESSAGE_OVERHEAD) read from one socket per loop turn.
READ_BUDGET = 128 << 10
MESSAGE_OVERHEAD = 4 << 10
#: Seconds between tries to send what a full socket refused (a rare path).
SEND_RETRY = 0.005

FramesHandler = Callable[[list[bytes]], None]


class SocketIO:
    """Reads every message of ``sock`` into ``on_frames``; sends without blocking."""

    def __init__(self, sock: zmq.Socket[Any], on_frames: FramesHandler | None,
                 name: str = "", budget: int = READ_BUDGET) -> None:
        self.sock = sock
        self.name = name
        self._on_frames = on_frames
        self._budget = budget
        self._loop = asyncio.get_running_loop()
        self._scheduled = False
        self._closed = False
        self._unsent: deque[tuple[list[Any], bool]] = deque()
        self._fd = sock.FD
        self._loop.add_reader(self._fd, self._drain)
        self._schedule()  # (messages may be waiting already)

    # -- reading ---------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._scheduled_drain)

    def _scheduled_drain(self) -> None:
        self._scheduled = False
        self._drain()

    def _drain(self) -> None:
        if self._closed:
            return
        sock = self.sock
        budget = self._budget
        try:
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frames = sock.recv_multipart(zmq.NOBLOCK)
                budget -= sum(len(f) for f in frames) + MESSAGE_OVERHEAD
                if self._on_frames is not None:
                    try:
                        self._on_frames(frames)
                    except Exception:  # a bug of ours must not stop this socket for good
                        log.exception("internal error handling a message on %s", self.name)
                if self._closed:
                    return
                if budget <= 0:
                    self._schedule()  # fair: the others get the loop, then more of this
                    break
        except zmq.Again:
            pass
        except zmq.ZMQError as err:
            if not self._closed:
                log.error("reading %s failed: %s", self.name, err)
            return
        if self._unsent:
            self._send_unsent()

    # -- writing -----------------------------------------------------------------------
    def send_multipart(self, frames: list[Any], copy: bool = True, **_: Any) -> None:
        """(The signature ``Session.send`` uses.) Send now, or once the socket takes it."""
        if self._closed:
            return
        if self._unsent:
            self._unsent.append((frames, copy))
            return
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            self._unsent.append((frames, copy))
            self._loop.call_later(SEND_RETRY, self._send_unsent)
        # a send can take the edge that said a message arrived: look again
        if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._schedule()

    def _send_unsent(self) -> None:
        while self._unsent and not self._closed:
            frames, copy = self._unsent[0]
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                self._loop.call_later(SEND_RETRY, self._send_unsent)
                return
            self._unsent.popleft()
        if not self._closed and self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._schedule()

    def close(self, linger: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self.sock.close(linger=linger)
