"""The output merger: every rank iopub output in, frontend outputs out.

Composes the stream merger (prefixed lines, partial lines), the hold queue
(lines and displays several ranks send identically shown once, in the order
printed, held at most ``window`` seconds), the rich merger (composites, one
result per cell), the progress blocks (live bars that end where they ran) and
the ledger (per-rank clear_output). Returns outputs in order. Pure: no sockets,
``now`` is passed in.

``clear_output`` from a rank clears that rank's output only: after forwarding
it, the other ranks' outputs are shown again (``ledger``). With ``wait=True``
the frontend swaps them in without a flicker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .holding import Held, HoldQueue
from .ledger import Entry, Ledger
from .progress import BlockOut, ProgressBlocks
from .rich import RichMerger, RichOut
from .streams import StreamMerger, StreamText

#: Minimum seconds between two updates of a cell's progress display.
PROGRESS_INTERVAL = 0.1
#: Seconds output is held to show what several ranks send identically once.
MERGE_WINDOW = 0.1
_RICH = ("execute_result", "display_data", "update_display_data", "error")
#: The hold queue's lane of displays (lines are in the lane of their stream)
DISPLAYS = ("display",)


@dataclass(frozen=True, slots=True)
class Out:
    """One message to publish on the frontend iopub, parented to request ``parent``."""

    parent: str
    msg_type: str
    content: dict[str, Any]
    #: the rank message's own metadata (a widget's protocol version), passed through
    metadata: dict[str, Any] = field(default_factory=dict)
    #: binary buffers (comm messages of widgets), passed through untouched
    buffers: tuple[Any, ...] = ()


class OutputMerger:
    """Merge rank outputs per frontend request; see module docstring."""

    def __init__(
        self,
        prefixes: dict[int, str],
        shown_ranks: set[int] | None = None,
        progress_interval: float = PROGRESS_INTERVAL,
        streams: StreamMerger | None = None,
        rich: RichMerger | None = None,
        window: float = MERGE_WINDOW,
        group_prefix: Any = None,
    ) -> None:
        self.streams = streams or StreamMerger(prefixes, group_prefix=group_prefix)
        self.streams.holder = self
        self.rich = rich or RichMerger()
        self.shown_ranks = shown_ranks if shown_ranks is not None else set(prefixes)
        #: seconds lines are held to show identical lines once (0: lines are not held)
        self.window = window
        self.progress = ProgressBlocks(prefixes, progress_interval)
        self._queues: dict[str, HoldQueue] = {}
        self._ledgers: dict[str, Ledger] = {}
        self._out: list[Out] = []

    # -- request lifecycle ----------------------------------------------------
    def start(self, parent: str, ranks: tuple[int, ...]) -> None:
        """A request began on ``ranks``: its output is merged (and held while several
        shown ranks may send the same), its outputs kept for per-rank clears."""
        shown = tuple(r for r in ranks if r in self.shown_ranks)
        self.rich.start(parent, shown, tuple(ranks))
        if len(shown) > 1:
            self._queues[parent] = HoldQueue(shown, self.window)
        self._ledgers[parent] = Ledger()

    def rank_finished(self, parent: str, rank: int, now: float) -> list[Out]:
        queue = self._queues.get(parent)
        if queue is not None:
            queue.rank_finished(rank)
            self._release(parent, queue.pop_ready, now)
        self._put_rich(self.rich.rank_finished(parent, rank, now))
        return self._take()

    def finish(self, parent: str, now: float) -> list[Out]:
        """Flush all held output of ``parent`` (call before publishing its idle)."""
        self._drain(self.streams.finish(parent))
        queue = self._queues.get(parent)
        if queue is not None:
            self._release(parent, lambda _now: queue.pop_any(), now)
            del self._queues[parent]
        self._put_rich(self.rich.finish(parent))
        self._bars()
        self._blocks(self.progress.take_closed())
        self._blocks(self.progress.finish(parent, now))
        self._drain()
        self._ledgers.pop(parent, None)
        return self._take()

    # -- events ---------------------------------------------------------------
    def feed(self, rank: int, msg_type: str, content: dict[str, Any], parent: str,
             now: float, metadata: dict[str, Any] | None = None,
             buffers: tuple[Any, ...] = ()) -> list[Out]:
        """One iopub output message of ``rank``, already known to belong to ``parent``."""
        metadata = metadata or {}
        if msg_type == "stream":
            if rank in self.shown_ranks:
                name = str(content.get("name", "stdout"))
                self._drain(self.streams.feed(rank, name, str(content.get("text", "")),
                                              parent, now))
                self._bars(now)
        elif msg_type in _RICH:
            if rank in self.shown_ranks or msg_type == "error":
                self._rich(rank, msg_type, content, parent, now, metadata)
        elif msg_type == "clear_output":
            if rank in self.shown_ranks:
                self._clear(rank, content, parent, now, metadata)
        else:
            self._drain()
            self._out.append(Out(parent, msg_type, content, metadata, buffers))
        self._drain()
        return self._take()

    def tick(self, now: float) -> list[Out]:
        """Timer work: partial lines, held output, progress redraws, results' deadlines."""
        self._drain(self.streams.tick(now))
        for parent, queue in list(self._queues.items()):
            self._release(parent, queue.pop_ready, now)
        self._put_rich(self.rich.tick(now))
        self._bars(now)
        for parent in self.progress.parents():
            self._blocks(self.progress.render(parent, now))
        self._drain()
        return self._take()

    def next_deadline(self) -> float | None:
        times = [t for t in (self.streams.next_deadline(), self.rich.next_deadline()) if t]
        times += [t for q in self._queues.values() if (t := q.next_deadline()) is not None]
        times += [t for p in self.progress.parents() if (t := self.progress.due(p)) is not None]
        return min(times) if times else None

    # -- the line holder (called by the stream merger) -----------------------------------
    def hold(self, parent: str, rank: int, name: str, text: str, now: float) -> bool:
        queue = self._queues.get(parent)
        if queue is None or self.window <= 0:
            return False
        queue.add(rank, ("line", name), (name, text), (name, text), now)
        self._release(parent, queue.pop_ready, now)
        return True

    def let_out(self, parent: str, rank: int) -> None:
        queue = self._queues.get(parent)
        if queue is None:
            return
        if queue.holds(rank):
            self._release(parent, lambda _now: queue.pop_through(rank), 0.0)
        queue.passed(rank)

    # -- internals ------------------------------------------------------------
    def _take(self) -> list[Out]:
        self._drain()
        out, self._out = self._out, []
        return out

    def _rich(self, rank: int, msg_type: str, content: dict[str, Any], parent: str,
              now: float, metadata: dict[str, Any]) -> None:
        queue = self._queues.get(parent)
        if queue is not None and self.rich.holds(parent, rank, msg_type, content):
            key, held = self.rich.display_key(content, metadata)
            if queue.join(rank, DISPLAYS, key, held) is None:
                joined = self.rich.join_shown(parent, rank, key)
                if joined:
                    self.let_out(parent, rank)
                    self._put_rich(joined)
                else:
                    queue.hold(rank, DISPLAYS, key, held, now)
            self._release(parent, queue.pop_ready, now)
        elif msg_type in ("execute_result", "error"):
            self._put_rich(self.rich.end_output(parent, rank, msg_type, content, metadata, now))
        elif (msg_type == "display_data" and self.rich.known(parent)
              and "display_id" not in (content.get("transient") or {})):
            from .composite import with_ranks

            self._put_rich([RichOut(parent, msg_type, with_ranks(content, [rank]), metadata,
                                    (rank,))])
        else:
            self._put_rich([self.rich.single(parent, msg_type, content, metadata, rank)])

    def _put_rich(self, outs: list[RichOut]) -> None:
        for out in outs:
            for rank in out.ranks:
                self.let_out(out.parent, rank)
            self.streams.put(out)

    def _release(self, parent: str, pop: Callable[[float], Held | None], now: float) -> None:
        """Let out held items one by one, while ``pop`` gives one (a display takes the
        displays that go out with it from the queue before the next is looked at)."""
        queue = self._queues.get(parent)
        while queue is not None and (item := pop(now)) is not None:
            if item.lane != DISPLAYS:
                name, text = item.payloads[item.ranks[0]]
                self.streams.write_held(parent, name, item.ranks, text)
            else:
                for out in self.rich.release(parent, item, queue):
                    self.streams.put(out)

    def _drain(self, items: list[Any] | None = None) -> None:
        """Move what the stream merger wrote (text and rich outputs, in order) out."""
        for item in (items or []) + self.streams.take():
            if not (isinstance(item, Out) and item.content.get("metadata", {}).get(
                    "nbdist", {}).get("progress")):
                self.progress.covered(item.parent)
            if isinstance(item, StreamText):
                ledger = self._ledgers.get(item.parent)
                if ledger is not None:
                    ledger.stream(item.group, item.rank, item.name, item.text)
                self._out.append(Out(item.parent, "stream",
                                     {"name": item.name, "text": item.text}))
            elif isinstance(item, RichOut):
                ledger = self._ledgers.get(item.parent)
                if ledger is not None:
                    ledger.rich(item.msg_type, item.content)
                self._out.append(Out(item.parent, item.msg_type, item.content, item.metadata))
            else:
                self._out.append(item)

    def _bars(self, now: float | None = None) -> None:
        """Bar changes the stream merger saw: into the progress blocks, in order."""
        events, self.streams.bar_events = self.streams.bar_events, []
        for parent, rank, name, text, ended in events:
            opened = (self.progress.bar_done(parent, rank, name, text)
                      if ended and text is not None
                      else self.progress.bar(parent, rank, name, text))
            if opened:
                self.let_out(parent, rank)  # the rank's lines before its bar, before it
                self._blocks(self.progress.take_closed())
                self._blocks(self.progress.render(parent, now or 0.0, final=True))
        if now is not None:
            for parent in {e[0] for e in events}:
                self._blocks(self.progress.render(parent, now))

    def _blocks(self, outs: list[BlockOut]) -> None:
        for out in outs:
            ledger = self._ledgers.get(out.parent)
            if out.empty and ledger is not None and not ledger.overflow:
                # every bar of the block erased itself: redraw the cell without the block,
                # so no empty output stays in the notebook
                # (wait=True swaps without a flicker, but clears only at the next output)
                entries = ledger.dropping(out.content["transient"]["display_id"])
                self._redraw(out.parent, {"wait": bool(entries)}, {}, entries)
                continue
            if ledger is not None:
                ledger.rich(out.msg_type, out.content)
            self.streams.put(Out(out.parent, out.msg_type, out.content))

    def _redraw(self, parent: str, clear: dict[str, Any], metadata: dict[str, Any],
                entries: list[Entry]) -> None:
        """Clear the cell, then show ``entries`` again."""
        self._drain()
        self._out.append(Out(parent, "clear_output", clear, metadata))
        fresh = Ledger()
        self._ledgers[parent] = fresh
        for entry in entries:
            if entry.msg_type == "stream":
                self._out.append(Out(parent, "stream", {"name": entry.content["name"],
                                                        "text": "".join(entry.parts)}))
                fresh.add(entry)
            else:
                self._out.append(Out(parent, entry.msg_type, entry.content))
                fresh.add(entry)

    def _clear(self, rank: int, content: dict[str, Any], parent: str, now: float,
               metadata: dict[str, Any]) -> None:
        """Forward ``rank``'s clear_output, then show the other ranks' outputs again."""
        self.let_out(parent, rank)
        self._drain()
        ledger = self._ledgers.get(parent) or Ledger()
        if ledger.overflow:
            # Too much to redraw: the whole cell is cleared, as in a single kernel.
            self.streams.cleared(parent, None)
            self._out.append(Out(parent, "clear_output", content, metadata))
            self._ledgers[parent] = Ledger()
            kept: list[Entry] = []
        else:
            self.streams.cleared(parent, rank)
            _fresh, kept = ledger.without(rank)
            self._redraw(parent, content, metadata, kept)
        shown_ids = {(e.content.get("transient") or {}).get("display_id") for e in kept}
        if self.progress.shown(parent) and self.progress.display_id(parent) not in shown_ids:
            self.progress.forget_shown(parent)
            self._blocks(self.progress.render(parent, now, final=True))
