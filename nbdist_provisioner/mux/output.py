"""The output merger: every rank iopub output in, frontend outputs out.

Composes the stream merger (prefixed lines, partial lines), the live progress
display (one per cell, throttled) and the rich merger (dedupe / labels), and
returns outputs in order, adjacent stream text coalesced into one message.
Pure: no sockets, ``now`` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .rich import RichMerger, namespaced_display_id
from .streams import StreamMerger

#: Minimum seconds between two updates of a cell's progress display.
PROGRESS_INTERVAL = 0.1
_RICH = ("execute_result", "display_data", "update_display_data", "error")


@dataclass(frozen=True)
class Out:
    """One message to publish on the frontend iopub, parented to request ``parent``."""

    parent: str
    msg_type: str
    content: dict[str, Any]
    #: binary buffers (comm messages of widgets), passed through untouched
    buffers: list[Any] | None = None


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
        self._out: list[Out] = []

    # -- request lifecycle ----------------------------------------------------
    def start(self, parent: str, ranks: tuple[int, ...]) -> None:
        self.rich.start(parent, tuple(r for r in ranks if r in self.shown_ranks))

    def rank_finished(self, parent: str, rank: int, now: float) -> list[Out]:
        self._add_rich(self.rich.rank_finished(parent, rank, now))
        return self._take()

    def finish(self, parent: str, now: float) -> list[Out]:
        """Flush all held output of ``parent`` (call before publishing its idle)."""
        self._add_streams(self.streams.finish(parent))
        self._add_rich(self.rich.finish(parent))
        self._render_progress(parent, now, final=True)
        return self._take()

    # -- events ---------------------------------------------------------------
    def feed(self, rank: int, msg_type: str, content: dict[str, Any], parent: str,
             now: float, buffers: list[Any] | None = None) -> list[Out]:
        """One iopub output message of ``rank``, already known to belong to ``parent``."""
        if msg_type == "stream":
            if rank in self.shown_ranks:
                name = str(content.get("name", "stdout"))
                self._add_streams(
                    self.streams.feed(rank, name, str(content.get("text", "")), parent, now))
                self._progress_tick(parent, now)
        elif msg_type in _RICH:
            if rank in self.shown_ranks or msg_type == "error":
                self._add_rich(self.rich.feed(rank, msg_type, content, parent, now))
        elif msg_type == "clear_output":
            if rank in self.shown_ranks:
                self._out.append(Out(parent, msg_type, content))
        else:
            self._out.append(Out(parent, msg_type, content, buffers or None))
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
            last = self._out[-1] if self._out else None
            if (last is not None and last.msg_type == "stream" and last.parent == chunk.parent
                    and last.content["name"] == chunk.name):
                self._out[-1] = Out(last.parent, "stream",
                                    {"name": chunk.name, "text": last.content["text"] + chunk.text})
            else:
                self._out.append(
                    Out(chunk.parent, "stream", {"name": chunk.name, "text": chunk.text}))

    def _add_rich(self, outs: list[Any]) -> None:
        self._out.extend(Out(o.parent, o.msg_type, o.content) for o in outs)

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
        if changed or not p.shown:
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
