"""RankLink: the multiplexer's client connection to one rank kernel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from hmac import compare_digest
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from ..core.events import RankMessage
from .zmqsend import AsyncSend

log = logging.getLogger("nbdist.mux")

#: Called for every verified rank message.
MessageHandler = Callable[[RankMessage], None]
#: (the rank kernel's CURVE server key, our public key, our secret key), Z85
CurveKeys = tuple[bytes, bytes, bytes]
#: Bytes (or their equivalent in small messages) read from one rank socket before the
#: receive loop lets the event loop run (publish what was merged, read the other ranks,
#: serve the frontend): every rank is read fairly, and output goes out while it floods.
YIELD_AFTER_BYTES = 128 << 10
MESSAGE_OVERHEAD = 4 << 10
#: Rank iopub messages (each at most ~1 MiB, see rank.outflow) queued in the multiplexer.
RANK_IOPUB_RCVHWM = 64


class RankLink:
    """Shell/control/stdin DEALERs and an iopub SUB to one rank, signed with its own key.

    ``ready`` resolves once the rank has answered a kernel_info_request and its
    iopub is known to be connected, so no output of the first cell is lost to
    the PUB/SUB join race.
    """

    def __init__(self, ctx: zmq.asyncio.Context, generation: int, rank: int,
                 info: dict[str, Any], key: bytes, on_message: MessageHandler,
                 curve: CurveKeys | None = None) -> None:
        self.generation = generation
        self.rank = rank
        self.info = info
        self.session = Session(key=key, signature_scheme="hmac-sha256", username="nbdist")
        self._on_message = on_message
        ip, transport = info["ip"], info.get("transport", "tcp")

        def url(port_name: str) -> str:
            return f"{transport}://{ip}:{int(info[port_name])}"

        self.sockets: dict[str, zmq.asyncio.Socket] = {}
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
                # waits in the rank, whose drops the multiplexer detects (outflow).
                sock.setsockopt(zmq.RCVHWM, RANK_IOPUB_RCVHWM)
            sock.connect(url(f"{channel}_port"))
            self.sockets[channel] = sock
        # what Session.send is given: never a sync shadow, whose sends can leave the
        # receive loop asleep on a message that arrived (see zmqsend)
        self._out = {ch: AsyncSend(sock) for ch, sock in self.sockets.items()}
        self._iopub_seen = asyncio.Event()
        self._kernel_info: asyncio.Future[dict[str, Any]] | None = None
        self._tasks = [asyncio.ensure_future(self._recv_loop(ch)) for ch in self.sockets]
        self.kernel_info: dict[str, Any] = {}

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

    def send(self, channel: str, msg_type: str, content: dict[str, Any],
             metadata: dict[str, Any] | None = None, buffers: list[Any] | None = None,
             msg_id: str | None = None, header_extra: dict[str, Any] | None = None,
             parent: dict[str, Any] | None = None) -> str:
        """Send a message to the rank (under ``msg_id`` when given); return its msg_id."""
        header = None
        if msg_id is not None or header_extra:
            header = self.session.msg_header(msg_type)
            if msg_id is not None:
                header["msg_id"] = msg_id
            if header_extra:
                header.update(header_extra)
        msg = self.session.send(self._out[channel], msg_type, content, parent=parent,
                                metadata=metadata, buffers=buffers, header=header)
        return str(msg["header"]["msg_id"])

    def read(self, frames: list[bytes], channel: str = "") -> RankMessage | None:
        """Verify and unpack one rank message; None for what the multiplexer never uses.

        This is the multiplexer's hottest path (every rank message), so unlike
        ``Session.deserialize`` it checks the signature first, unpacks the header
        alone to drop rank ``execute_input`` early, and parses no dates.
        """
        _, msg_list = self.session.feed_identities(frames, copy=True)
        if len(msg_list) < 5:
            raise ValueError(f"malformed message of {len(msg_list)} frames")
        if not compare_digest(msg_list[0], self.session.sign(msg_list[1:5])):
            raise ValueError("invalid signature")
        header = self.session.unpack(msg_list[1])
        if header.get("msg_type") == "execute_input":
            return None
        return RankMessage(self.generation, self.rank, channel, header,
                           self.session.unpack(msg_list[2]), self.session.unpack(msg_list[4]),
                           self.session.unpack(msg_list[3]), tuple(msg_list[5:]))

    async def _recv_loop(self, channel: str) -> None:
        sock = self.sockets[channel]
        budget = YIELD_AFTER_BYTES
        while True:
            # A ready zmq future does not yield: under a flood this loop would hold the
            # event loop (no interrupt, no publishing, memory piling up) until the rank
            # stops. Give the loop a turn after every YIELD_AFTER_BYTES received.
            if budget <= 0:
                budget = YIELD_AFTER_BYTES
                await asyncio.sleep(0)
            frames = await sock.recv_multipart(copy=True)
            budget -= sum(len(f) for f in frames) + MESSAGE_OVERHEAD
            if channel == "iopub":
                self._iopub_seen.set()
            try:
                msg = self.read(frames, channel)
            except Exception as err:  # a bad frame from a rank: log it, keep serving
                log.warning("rank %d sent an unreadable %s message: %s (%d frames: %.300r)",
                            self.rank, channel, err, len(frames), frames[:4])
                continue
            if msg is None:
                continue
            msg_type = msg.header.get("msg_type")
            if msg_type == "iopub_welcome":
                continue
            if (msg_type == "kernel_info_reply" and self._kernel_info is not None
                    and not self._kernel_info.done()):
                self._kernel_info.set_result(msg.content)
                continue
            try:
                self._on_message(msg)
            except Exception:  # a bug of ours must not stop this rank's loop for good
                log.exception("internal error handling rank %d %s on %s", self.rank,
                              msg_type, channel)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for sock in self.sockets.values():
            sock.close(linger=0)
