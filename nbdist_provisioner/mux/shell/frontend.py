"""The frontend side: the five ports of the connection file, bound by the multiplexer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq
from jupyter_client.session import Session

from .socket_io import SocketIO

log = logging.getLogger("nbdist.mux")

#: Frontend messages larger than this (all frames) are dropped unread.
MAX_MESSAGE_BYTES = 64 * 2**20

#: (channel, idents, message dict) -> None
RequestHandler = Callable[[str, list[bytes], dict[str, Any]], None]


def curve_server(sock: zmq.Socket[Any], conn: dict[str, Any]) -> None:
    """jupyter_client's ``transport_encryption``: with CURVE keys in the connection file,
    every port is a CurveZMQ server with that key pair, as ipykernel's are (clients pin its
    public key; HMAC signing stays). Must come before bind."""
    public, secret = conn.get("curve_publickey"), conn.get("curve_secretkey")
    if public and secret:
        sock.curve_server = True
        sock.curve_publickey = public.encode() if isinstance(public, str) else public
        sock.curve_secretkey = secret.encode() if isinstance(secret, str) else secret


class FrontendChannels:
    """Bound sockets, read on the loop: every message verified before it is handed on."""

    def __init__(self, ctx: zmq.Context[Any], conn: dict[str, Any], session: Session,
                 handler: RequestHandler) -> None:
        self.session = session
        self._handler = handler
        transport, ip = conn.get("transport", "tcp"), conn["ip"]
        #: what replies and publishes are sent through (``Session.send`` takes them)
        self.out: dict[str, SocketIO] = {}
        for channel, kind in (("shell", zmq.ROUTER), ("control", zmq.ROUTER),
                              ("stdin", zmq.ROUTER), ("iopub", zmq.XPUB)):
            sock = ctx.socket(kind)
            curve_server(sock, conn)
            sock.linger = 1000
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            sock.bind(f"{transport}://{ip}:{int(conn[f'{channel}_port'])}")
            on_frames = (self._subscription if channel == "iopub"
                         else self._request_reader(channel))
            self.out[channel] = SocketIO(sock, on_frames, f"frontend {channel}")
        self._hb_ctx: zmq.Context[Any] = zmq.Context()
        hb = self._hb_ctx.socket(zmq.ROUTER)
        curve_server(hb, conn)
        hb.linger = 0
        hb.bind(f"{transport}://{ip}:{int(conn['hb_port'])}")
        self._hb = hb
        self._hb_thread = threading.Thread(target=self._heartbeat, name="nbdist-hb", daemon=True)
        self._hb_thread.start()

    def _heartbeat(self) -> None:
        try:
            zmq.proxy(self._hb, self._hb)  # echo every ping back to its sender
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as err:
            if err.errno != zmq.ETERM:
                log.error("heartbeat stopped: %s", err)

    def _request_reader(self, channel: str) -> Callable[[list[bytes]], None]:
        def on_frames(frames: list[bytes]) -> None:
            """Verify and hand on a request; drop anything malformed or unsigned."""
            try:
                idents, msg_list = self.session.feed_identities(frames, copy=True)
                msg = self.session.deserialize(msg_list, content=True, copy=True)
                msg_type = msg["header"]["msg_type"]
                if not isinstance(msg_type, str) or not isinstance(msg["content"], dict):
                    raise ValueError("message type or content has the wrong type")
            except Exception as err:  # malformed / unsigned / replayed: drop, keep serving
                log.warning("dropped a bad message on %s: %s", channel, str(err)[:200])
                return
            self._handler(channel, idents, msg)
        return on_frames

    def _subscription(self, frames: list[bytes]) -> None:
        """Greet every iopub subscriber (JEP 65) so clients know iopub is connected."""
        frame = frames[0] if frames else b""
        if frame[:1] == b"\x01":
            topic = frame[1:].decode("utf-8", "replace")
            self.session.send(self.out["iopub"], "iopub_welcome", {"subscription": topic})

    def close(self) -> None:
        for io in self.out.values():
            io.close(linger=200)
        # The heartbeat socket belongs to its daemon thread; it goes with the process.
