"""RankLink: the multiplexer's client connection to one rank kernel.

This is the multiplexer's hottest path: every rank message is read here and every
request to a rank is sent from here. So messages are verified with the rank's
key but unpacked lean (signature first, header first, no dates parsed), and
requests are signed and framed directly (one header per rank; content packed
once per request), never through per-message Futures (see ``socket_io``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from hmac import compare_digest
from typing import Any

import zmq
from jupyter_client.jsonutil import json_default
from jupyter_client.session import DELIM, Session

from ..core.events import RankMessage
from .socket_io import SocketIO

log = logging.getLogger("nbdist.mux")

#: Called for every verified rank message.
MessageHandler = Callable[[RankMessage], None]
#: (the rank kernel's CURVE server key, our public key, our secret key), Z85
CurveKeys = tuple[bytes, bytes, bytes]
#: Rank iopub messages (each at most ~1 MiB, see rank.stream_stamps) queued in the
#: multiplexer when it falls behind.
RANK_IOPUB_RCVHWM = 64
_EMPTY = b"{}"


def _pack(obj: dict[str, Any]) -> bytes:
    """What ``Session.pack`` does, without its per-call indirection."""
    return json.dumps(obj, default=json_default, ensure_ascii=False,
                      allow_nan=False).encode("utf8", errors="surrogateescape")


class RankLink:
    """Shell/control/stdin DEALERs and an iopub SUB to one rank, signed with its own key.

    ``wait_ready`` returns once the rank has answered a kernel_info_request and its
    iopub is known to be connected, so no output of the first cell is lost to the
    PUB/SUB join race.
    """

    def __init__(self, ctx: zmq.Context[Any], generation: int, rank: int,
                 info: dict[str, Any], key: bytes, on_message: MessageHandler,
                 curve: CurveKeys | None = None) -> None:
        self.generation = generation
        self.rank = rank
        self.info = info
        self.session = Session(key=key, signature_scheme="hmac-sha256", username="nbdist")
        self._on_message = on_message
        ip, transport = info["ip"], info.get("transport", "tcp")
        self._iopub_seen = asyncio.Event()
        self._kernel_info: asyncio.Future[dict[str, Any]] | None = None
        self.kernel_info: dict[str, Any] = {}
        self._packed: list[tuple[object, bytes]] = [(None, b""), (None, b"")]
        self.io: dict[str, SocketIO] = {}
        for channel, kind in (("shell", zmq.DEALER), ("control", zmq.DEALER),
                              ("stdin", zmq.DEALER), ("iopub", zmq.SUB)):
            sock = ctx.socket(kind)
            sock.linger = 0
            if curve is not None:  # a rank on another host: its kernel is a CURVE server
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
            if channel in ("shell", "stdin"):
                # Same routing id on both: the kernel routes input_request by the shell id.
                sock.identity = self.session.bsession
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
                # Bound what waits in this process when a rank outruns us; the rest
                # waits in the rank, whose drops the multiplexer detects (drops.py).
                sock.setsockopt(zmq.RCVHWM, RANK_IOPUB_RCVHWM)
            sock.connect(f"{transport}://{ip}:{int(info[f'{channel}_port'])}")
            self.io[channel] = SocketIO(sock, self._reader(channel), f"rank {rank} {channel}")

    async def wait_ready(self) -> None:
        """Ask kernel_info until the rank answers and its iopub is seen (no sleeps)."""
        while True:
            self._kernel_info = asyncio.get_running_loop().create_future()
            self.send("shell", "kernel_info_request", {})
            self.kernel_info = await self._kernel_info
            if self._iopub_seen.is_set():
                return
            try:
                await asyncio.wait_for(self._iopub_seen.wait(), timeout=0.5)
                return
            except asyncio.TimeoutError:
                continue  # ask again; each request makes the rank publish on iopub

    # -- sending -----------------------------------------------------------------------
    def send(self, channel: str, msg_type: str, content: dict[str, Any],
             metadata: dict[str, Any] | None = None, buffers: list[Any] | None = None,
             msg_id: str | None = None, header_extra: dict[str, Any] | None = None,
             parent: dict[str, Any] | None = None) -> str:
        """Sign and send a message to the rank (under ``msg_id`` when given)."""
        session = self.session
        msg_id = msg_id or session.msg_id
        header = {"msg_id": msg_id, "msg_type": msg_type, "username": session.username,
                  "session": session.session,
                  "date": datetime.now(timezone.utc).isoformat(), "version": "5.5"}
        if header_extra:
            header.update(header_extra)
        parts = [_pack(header), _pack(parent) if parent else _EMPTY,
                 self._pack_shared(1, metadata) if metadata else _EMPTY,
                 self._pack_shared(0, content)]
        frames = [DELIM, session.sign(parts), *parts]
        if buffers:
            frames.extend(buffers)
        self.io[channel].send_multipart(frames)
        return msg_id

    def _pack_shared(self, slot: int, obj: dict[str, Any]) -> bytes:
        """Content and metadata are packed once per request: every rank gets the same
        objects (the core makes one per request). The cache holds the object itself, so
        its id cannot be reused by another object while it is cached."""
        cached, packed = self._packed[slot]
        if cached is not obj:
            packed = _pack(obj)
            self._packed[slot] = (obj, packed)
        return packed

    # -- reading -----------------------------------------------------------------------
    def read(self, frames: list[bytes], channel: str = "") -> RankMessage | None:
        """Verify and unpack one rank message; None for what the multiplexer never uses.

        Unlike ``Session.deserialize`` it checks the signature first, unpacks the header
        alone to drop rank ``execute_input`` early, and parses no dates.
        """
        _, msg_list = self.session.feed_identities(frames, copy=True)
        if len(msg_list) < 5:
            raise ValueError(f"malformed message of {len(msg_list)} frames")
        if not compare_digest(msg_list[0], self.session.sign(msg_list[1:5])):
            raise ValueError("invalid signature")
        unpack = json.loads
        header = unpack(msg_list[1])
        if header.get("msg_type") == "execute_input":
            return None
        return RankMessage(self.generation, self.rank, channel, header, unpack(msg_list[2]),
                           unpack(msg_list[4]), unpack(msg_list[3]), tuple(msg_list[5:]))

    def _reader(self, channel: str) -> Callable[[list[bytes]], None]:
        def on_frames(frames: list[bytes]) -> None:
            if channel == "iopub":
                self._iopub_seen.set()
            try:
                msg = self.read(frames, channel)
            except Exception as err:  # a bad frame from a rank: log it, keep serving
                log.warning("rank %d sent an unreadable %s message: %s (%d frames: %.300r)",
                            self.rank, channel, err, len(frames), frames[:4])
                return
            if msg is None:
                return
            msg_type = msg.header.get("msg_type")
            if msg_type == "iopub_welcome":
                return
            if (msg_type == "kernel_info_reply" and self._kernel_info is not None
                    and not self._kernel_info.done()):
                self._kernel_info.set_result(msg.content)
                return
            self._on_message(msg)
        return on_frames

    def close(self) -> None:
        for io in self.io.values():
            io.close()
