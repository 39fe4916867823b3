"""The output merger: every rank iopub output in, frontend outputs out.

Composes the stream merger (prefixed lines, partial lines), the live progress
display (one per cell, throttled) and the rich merger (dedupe / labels), and
returns outputs in order, adjacent stream text coalesced into one message.
Pure: no sockets, ``now`` is passed in.

``clear_output`` from a rank clears that rank's output only: the frontend can only
clear a whole cell, so the merger keeps what each rank has on view in the cell (the
ledger, bounded by ``LEDGER_MAX``) and after forwarding the clear shows the other
ranks' outputs again. With ``wait=True`` the frontend swaps them in without a
flicker. Past the bound a clear clears every rank's output, as in one kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .rich import RichMerger, namespaced_display_id
from .streams import StreamMerger, StreamText

#: Minimum seconds between two updates of a cell's progress display.
PROGRESS_INTERVAL = 0.1
_RICH = ("execute_result", "display_data", "update_display_data", "error")
#: Bytes of a cell's visible output kept to redraw it after a rank's clear_output.
LEDGER_MAX = 4 * 1024 * 1024
_ENTRY_COST = 64


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


@dataclass
class _Entry:
    """One output on view in the frontend, and the ranks it belongs to."""

    ranks: set[int]
    msg_type: str
    content: dict[str, Any]
    size: int
    #: stream text, appended in place while the same rank keeps writing
    parts: list[str] = field(default_factory=list)
    #: for stream text: its rank and stream name (the hot path compares these)
    owner: int = -1
    name: str = ""


@dataclass
class _Ledger:
    """What a cell shows, by rank, while it fits in LEDGER_MAX."""

    entries: list[_Entry] = field(default_factory=list)
    size: int = 0
    #: True once the cell showed more than LEDGER_MAX: clears are whole-cell again.
    overflow: bool = False

    def add(self, entry: _Entry) -> None:
        if self.grow(entry.size + _ENTRY_COST):
            self.entries.append(entry)

    def grow(self, size: int) -> bool:
        self.size += size
        if self.size > LEDGER_MAX and not self.overflow:
            self.entries.clear()
            self.overflow = True
        return not self.overflow


@dataclass
class _Progress:
    display_id: str
    shown: bool = False
    last_emit: float = float("-inf")


class OutputMerger:
    """Merge rank outputs per frontend request; see module docstring."""

    def __init__(
        self,
        prefixes: dict[int, str],
        shown_ranks: set[int] | None = None,
        progress_interval: float = PROGRESS_INTERVAL,
        streams: StreamMerger | None = None,
        rich: RichMerger | None = None,
    ) -> None:
        self.streams = streams or StreamMerger(prefixes)
        self.rich = rich or RichMerger()
        self._prefixes = prefixes
        self.shown_ranks = shown_ranks if shown_ranks is not None else set(prefixes)
        self._progress_interval = progress_interval
        self._progress: dict[str, _Progress] = {}
        self._ledgers: dict[str, _Ledger] = {}
        self._out: list[Out] = []

    # -- request lifecycle ----------------------------------------------------
    def start(self, parent: str, ranks: tuple[int, ...]) -> None:
        """A request began: its rich outputs are merged, its outputs kept for per-rank
        clears (until ``finish``)."""
        self.rich.start(parent, tuple(r for r in ranks if r in self.shown_ranks))
        self._ledgers[parent] = _Ledger()

    def rank_finished(self, parent: str, rank: int, now: float) -> list[Out]:
        self._add_rich(self.rich.rank_finished(parent, rank, now))
        return self._take()

    def finish(self, parent: str, now: float) -> list[Out]:
        """Flush all held output of ``parent`` (call before publishing its idle)."""
        self._add_streams(self.streams.finish(parent))
        self._add_rich(self.rich.finish(parent))
        self._render_progress(parent, now, final=True)
        self._ledgers.pop(parent, None)
        return self._take()

    # -- events ---------------------------------------------------------------
    def feed(self, rank: int, msg_type: str, content: dict[str, Any], parent: str,
             now: float, metadata: dict[str, Any] | None = None,
             buffers: tuple[Any, ...] = ()) -> list[Out]:
        """One iopub output message of ``rank``, already known to belong to ``parent``."""
        if msg_type == "stream":
            if rank in self.shown_ranks:
                name = str(content.get("name", "stdout"))
                self._add_streams(
                    self.streams.feed(rank, name, str(content.get("text", "")), parent, now))
                self._progress_tick(parent, now)
        elif msg_type in _RICH:
            if rank in self.shown_ranks or msg_type == "error":
                self._add_rich(self.rich.feed(rank, msg_type, content, parent, now,
                                              metadata or {}))
        elif msg_type == "clear_output":
            if rank in self.shown_ranks:
                self._clear(rank, content, parent, now, metadata or {})
        else:
            self._out.append(Out(parent, msg_type, content, metadata or {}, buffers))
        return self._take()

    def tick(self, now: float) -> list[Out]:
        """Timer work: partial lines, progress redraws, rich-slot deadlines."""
        self._add_streams(self.streams.tick(now))
        for parent in list(self.streams.progress_changed):
            self._progress_tick(parent, now)
        self._add_rich(self.rich.tick(now))
        return self._take()

    def next_deadline(self) -> float | None:
        times = [t for t in (self.streams.next_deadline(), self.rich.next_deadline()) if t]
        for parent in self.streams.progress_changed:
            p = self._progress.get(parent)
            times.append(p.last_emit + self._progress_interval if p else 0.0)
        return min(times) if times else None

    # -- internals ------------------------------------------------------------
    def _take(self) -> list[Out]:
        out, self._out = self._out, []
        return out

    def _add_streams(self, chunks: list[Any]) -> None:
        for chunk in chunks:
            self._record_stream(chunk.parent, chunk.rank, chunk.name, chunk.text)
            self._out.append(Out(chunk.parent, "stream",
                                 {"name": chunk.name, "text": chunk.text}))

    def _add_rich(self, outs: list[Any]) -> None:
        for o in outs:
            self._record_rich(o.parent, o.msg_type, o.content)
            self._out.append(Out(o.parent, o.msg_type, o.content, o.metadata))

    # -- per-rank clear_output --------------------------------------------------
    def _ledger(self, parent: str) -> _Ledger:
        # (a clear in a request the merger was not told about keeps no ledger)
        return self._ledgers.get(parent) or _Ledger()

    def _record_stream(self, parent: str, rank: int, name: str, text: str) -> None:
        ledger = self._ledgers.get(parent)
        if ledger is None or ledger.overflow:
            return  # output of a request that is not running: never cleared again
        entries = ledger.entries
        last = entries[-1] if entries else None
        if last is not None and last.owner == rank and last.name == name:
            if ledger.grow(len(text)):
                last.parts.append(text)
        else:
            ledger.add(_Entry({rank}, "stream", {"name": name}, len(text), [text], rank, name))

    def _record_rich(self, parent: str, msg_type: str, content: dict[str, Any]) -> None:
        if msg_type == "update_display_data":
            # (may come long after its cell: never opens a ledger)
            display_id = (content.get("transient") or {}).get("display_id")
            done = self._ledgers.get(parent)
            for entry in done.entries if done is not None else ():
                if (entry.msg_type == "display_data"
                        and (entry.content.get("transient") or {}).get("display_id")
                        == display_id):
                    entry.content = {**entry.content, "data": content.get("data", {}),
                                     "metadata": content.get("metadata", {})}
            return
        ledger = self._ledgers.get(parent)
        if ledger is None:
            return
        ranks = set(((content.get("metadata") or {}).get("nbdist") or {}).get("ranks") or [])
        size = sum(len(str(v)) for v in (content.get("data") or {}).values())
        size += sum(len(str(line)) for line in content.get("traceback") or [])
        ledger.add(_Entry(ranks, msg_type, content, size))

    def _clear(self, rank: int, content: dict[str, Any], parent: str, now: float,
               metadata: dict[str, Any]) -> None:
        """Forward ``rank``'s clear_output, then show the other ranks' outputs again."""
        self._out.append(Out(parent, "clear_output", content, metadata))
        ledger = self._ledger(parent)
        fresh = _Ledger()
        if parent in self._ledgers:
            self._ledgers[parent] = fresh
        kept: list[_Entry] = []
        if ledger.overflow:
            # Too much to redraw: the whole cell is cleared, as in a single kernel.
            self.streams.cleared(parent, None)
        else:
            self.streams.cleared(parent, rank)
            for entry in ledger.entries:
                entry.ranks.discard(rank)
                if entry.ranks:
                    kept.append(entry)
        for entry in kept:
            if entry.msg_type == "stream":
                (owner,) = entry.ranks
                self._add_streams([StreamText(parent, entry.content["name"],
                                              "".join(entry.parts), owner)])
            else:
                self._out.append(Out(parent, entry.msg_type, entry.content))
                fresh.add(entry)
        p = self._progress.get(parent)
        if p is not None:
            p.shown = False  # its display went with the clear
            if any(key[0] == parent for key in self.streams.progress):
                self.streams.progress_changed.add(parent)
                self._render_progress(parent, now, final=False)

    def _progress_tick(self, parent: str, now: float) -> None:
        if parent not in self.streams.progress_changed:
            return
        p = self._progress.get(parent)
        if p is not None and now - p.last_emit < self._progress_interval:
            return
        self._render_progress(parent, now, final=False)

    def _render_progress(self, parent: str, now: float, final: bool) -> None:
        changed = parent in self.streams.progress_changed
        self.streams.progress_changed.discard(parent)
        lines = sorted(
            ((rank, name), text) for (par, rank, name), text in self.streams.progress.items()
            if par == parent
        )
        p = self._progress.get(parent)
        if p is None:
            if not lines:
                return
            p = self._progress[parent] = _Progress(
                display_id=namespaced_display_id(f"nbdist-progress-{parent}", -1))
        if (changed or not p.shown) and (lines or p.shown):
            text = "\n".join(self._prefixes[rank] + line for (rank, _), line in lines)
            content = {
                "data": {"text/plain": text},
                "metadata": {"nbdist": {"progress": True}},
                "transient": {"display_id": p.display_id},
            }
            self._out.append(Out(parent, "update_display_data" if p.shown else "display_data",
                                 content))
            p.shown = True
            p.last_emit = now
        if final:
            for key in [k for k in self.streams.progress if k[0] == parent]:
                del self.streams.progress[key]
            del self._progress[parent]
