"""Bounded, accounted stream output of one rank.

Two things ipykernel's ``OutStream`` does not do, added around it:

- **Bounded messages.** ipykernel sends everything written between two flushes
  as one message; a tight ``write`` loop makes that hundreds of MB, which every
  hop (multiplexer, server, browser) must hold at once. Here a writer that has
  written ``CHUNK_BYTES`` since its last flush flushes (and so waits for the
  IOPub thread), so no stream message is much larger than that.
- **Accounting.** Each stream message carries ``metadata["nbdist_seq"]`` (a
  per-rank counter) and ``metadata["nbdist_offset"]`` (characters sent before
  it); status messages carry the counter's current value. ZMQ drops messages
  silently when the multiplexer falls too far behind; a gap in the counter lets
  it tell the user exactly how much was lost, at the latest at the cell's idle.
- **A bounded queue.** At most ``IOPUB_SNDHWM`` messages wait in the rank.
- **One order across stdout and stderr.** Each OutStream flushes on its own timer,
  so text left unflushed on one (tqdm's closing ``"\n"`` on stderr) went out after
  text written later on the other (the next ``print``): a bar seemed to end after
  the line printed below it. A write first flushes what the other stream holds.
"""

from __future__ import annotations

import threading
from typing import Any

from ..protocol import OFFSET_KEY, SEQ_KEY

#: A writer flushes after this many characters, bounding one stream message.
CHUNK_BYTES = 1 << 20
#: iopub messages queued in the rank for a multiplexer that has fallen behind; beyond
#: that ZMQ drops them and the multiplexer reports the gap. Bounds the rank's memory and
#: how long an interrupt of a flooding cell waits for the backlog to drain.
IOPUB_SNDHWM = 64


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seq = 0
        self.offset = 0


def _stamp_sends(session: Any, counter: _Counter) -> None:
    """Stamp the stream and status messages this Session sends (an instance override of
    ``send``, so the object stays a Session for everything else)."""
    send = session.send

    def stamped_send(stream: Any, msg_or_type: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(msg_or_type, dict) and msg_or_type.get("msg_type") == "stream":
            text = str(msg_or_type.get("content", {}).get("text", ""))
            with counter.lock:
                msg_or_type["metadata"][SEQ_KEY] = counter.seq
                msg_or_type["metadata"][OFFSET_KEY] = counter.offset
                counter.seq += 1
                counter.offset += len(text)
        elif msg_or_type == "status":
            # how many stream messages went before: a gap at a cell's idle is output
            # dropped at the very end of the cell
            with counter.lock:
                stamp = {SEQ_KEY: counter.seq, OFFSET_KEY: counter.offset}
            kwargs["metadata"] = {**(kwargs.get("metadata") or {}), **stamp}
        return send(stream, msg_or_type, *args, **kwargs)

    session.send = stamped_send


def limit_iopub_queue(socket: Any) -> None:
    """Set the rank's iopub high-water mark (before the multiplexer connects)."""
    import zmq

    socket.setsockopt(zmq.SNDHWM, IOPUB_SNDHWM)


def guard_streams(session: Any, *streams: Any, chunk: int = CHUNK_BYTES) -> None:
    """Stamp ``session``'s iopub stream and status messages and bound the messages of
    ipykernel ``OutStream`` objects (stdout, stderr) that send through it."""
    counter = _Counter()
    stamped = {id(session)}
    _stamp_sends(session, counter)
    for stream in streams:
        if id(stream.session) not in stamped:
            stamped.add(id(stream.session))
            _stamp_sends(stream.session, counter)
        _bound_writes(stream, chunk, [s for s in streams if s is not stream])


def _bound_writes(stream: Any, chunk: int, others: list[Any]) -> None:
    write = stream.write
    unflushed = [0]

    def bounded_write(text: str) -> Any:
        for other in others:
            # the other stream's pending text goes first (one wait for the IOPub thread,
            # only when the writer switches streams with text left unflushed)
            if getattr(other, "_flush_pending", False):
                other.flush()
        result = write(text)
        unflushed[0] += len(text)
        if unflushed[0] >= chunk:
            unflushed[0] = 0
            stream.flush()
        return result

    stream.write = bounded_write
