"""Stream merging: rank-prefixed lines, prompt partial lines, in-place progress.

Pure logic, no sockets, no clock: callers pass ``now``. Emits ``StreamText``
records (what to publish to the frontend) and keeps per-rank progress lines
(``progress``; finished bars in ``bars_done``) that the output merger renders as
live displays. A ``LineHolder`` (the output merger) may hold complete lines to
show lines that several ranks print identically once; everything else a rank
writes first lets out what is held of that rank, so its output keeps its order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

#: A partial line (no newline yet) is forwarded after this many seconds.
PARTIAL_LINE_DELAY = 0.03
#: A partial line longer than this is forwarded at once (bounds memory).
MAX_PENDING = 64 * 1024
#: Progress lines longer than this are cut (a runaway ``\r`` writer).
MAX_PROGRESS = 4096


@dataclass(frozen=True)
class StreamText:
    """Text to append to the frontend's ``name`` stream under ``parent``."""

    parent: str
    name: str
    text: str
    #: The rank whose line this text belongs to (for per-rank clear_output).
    rank: int = field(default=-1, compare=False)
    #: The ranks of a line several ranks printed identically (``rank`` is -1 then).
    group: tuple[int, ...] = field(default=(), compare=False)


class LineHolder(Protocol):
    """Holds complete lines for a short while (see ``output.holding``)."""

    def hold(self, parent: str, rank: int, name: str, text: str, now: float) -> bool:
        """Take ``text`` (a complete line, newline included) to hold; False: write it now."""

    def let_out(self, parent: str, rank: int) -> None:
        """``rank`` writes now: let out (through ``StreamMerger.write_held``) what is held
        of it, and what is held before that."""


#: A block of more lines than this from one rank goes out at once, not line by line
#: through the holder: a flood is not for reading, and must stay fast.
HOLD_BLOCK_MAX = 32


def apply_carriage_returns(line: str) -> str:
    r"""What a terminal shows for ``line``: the last non-empty ``\r`` segment wins."""
    segments = line.split("\r")
    for seg in reversed(segments):
        if seg:
            return seg
    return ""


@dataclass
class _RankStream:
    """One rank's one stream (stdout or stderr)."""

    parent: str = ""
    pending: str = ""
    #: True when the start of the current line already went to the frontend.
    line_open: bool = False
    #: True when part of the current line went out (even if another rank closed it since).
    partial_sent: bool = False
    #: True when the current line is a ``\r`` progress line.
    progress: bool = False
    pending_since: float | None = None


class StreamMerger:
    """Turns raw rank stream chunks into rank-labelled frontend text."""

    def __init__(self, prefixes: dict[int, str], partial_delay: float = PARTIAL_LINE_DELAY,
                 group_prefix: Callable[[list[int]], str] | None = None,
                 holder: LineHolder | None = None):
        self._prefixes = prefixes
        self._group_prefix = group_prefix or _default_group_prefix(prefixes)
        self._partial_delay = partial_delay
        self.holder = holder
        self._streams: dict[tuple[int, str], _RankStream] = {}
        # (parent, name) -> rank whose partial line is the last thing on that stream
        self._open_line: dict[tuple[str, str], int] = {}
        #: (parent, rank, name) -> current progress text; read by the output merger.
        self.progress: dict[tuple[str, int, str], str] = {}
        self.progress_changed: set[str] = set()
        #: (parent, rank, name, text or None when erased, ended) of every change of a bar,
        #: in order; the output merger takes them (a bar that ends stays where it ran)
        self.bar_events: list[tuple[str, int, str, str | None, bool]] = []
        #: StreamText, and whatever the holder lets out in between (kept in order)
        self._out: list[Any] = []

    # -- events -------------------------------------------------------------
    def feed(self, rank: int, name: str, text: str, parent: str, now: float) -> list[Any]:
        """Take one stream chunk from ``rank``; return text ready for the frontend."""
        st = self._streams.get((rank, name))
        if st is None:
            st = self._streams[(rank, name)] = _RankStream(parent=parent)
        if st.parent != parent:
            self._finish_stream(rank, name, st)
            st.parent = parent
        data = st.pending + text
        st.pending = ""
        lines = data.split("\n")
        if (len(lines) > 2 and not st.progress and "\r" not in data
                and (self.holder is None or len(lines) > HOLD_BLOCK_MAX + 1)):
            self._complete_block(rank, name, st, lines[:-1])
        else:
            for line in lines[:-1]:
                self._complete_line(rank, name, st, line, now)
        self._hold_partial(rank, name, st, lines[-1], now)
        return self._take()

    def tick(self, now: float) -> list[Any]:
        """Forward partial lines that have waited long enough."""
        for (rank, name), st in self._streams.items():
            if (
                st.pending
                and not st.progress
                and st.pending_since is not None
                and now - st.pending_since >= self._partial_delay
            ):
                self._emit_partial(rank, name, st)
        return self._take()

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work, for the I/O shell's timer."""
        times = [
            st.pending_since + self._partial_delay
            for st in self._streams.values()
            if st.pending and not st.progress and st.pending_since is not None
        ]
        return min(times) if times else None

    def finish(self, parent: str) -> list[Any]:
        """The request ``parent`` is done: forward everything still held for it."""
        for (rank, name), st in self._streams.items():
            if st.parent == parent:
                self._finish_stream(rank, name, st)
        for key in [k for k in self._open_line if k[0] == parent]:
            del self._open_line[key]
        return self._take()

    def cleared(self, parent: str, rank: int | None) -> None:
        """The frontend cleared ``rank``'s output of ``parent`` (None: everyone's).

        A line of that rank that goes on starts afresh, with its prefix.
        """
        for (r, _name), st in self._streams.items():
            if st.parent == parent and (rank is None or r == rank):
                st.line_open = False
        for key, owner in list(self._open_line.items()):
            if key[0] == parent and (rank is None or owner == rank):
                del self._open_line[key]

    def write_held(self, parent: str, name: str, ranks: list[int], text: str) -> None:
        """A line the holder lets out: ``ranks`` printed it identically."""
        if len(ranks) == 1:
            st = self._streams.get((ranks[0], name))
            if st is not None and st.parent == parent:
                self._write(ranks[0], name, st, text, opens=False, held=True)
                return
        self._close_open_line(parent, name, None)
        prefix = (self._prefixes[ranks[0]] if len(ranks) == 1
                  else self._group_prefix(sorted(ranks)))
        self._out.append(StreamText(parent, name, prefix + text, -1 if len(ranks) > 1
                                    else ranks[0], tuple(sorted(ranks))))

    def take(self) -> list[Any]:
        """What was written since the last call (the holder's releases included)."""
        return self._take()

    def put(self, item: Any) -> None:
        """Something else the holder lets out, kept in order with the text."""
        self._out.append(item)

    # -- internals ----------------------------------------------------------
    def _take(self) -> list[Any]:
        out, self._out = self._out, []
        return out

    def _close_open_line(self, parent: str, name: str, rank: int | None) -> None:
        """End another rank's partial line on this stream (it goes on with a new prefix)."""
        key = (parent, name)
        owner = self._open_line.get(key)
        if owner is not None and owner != rank:
            self._out.append(StreamText(parent, name, "\n", owner))
            other = self._streams.get((owner, name))
            if other is not None:
                other.line_open = False
            del self._open_line[key]

    def _write(self, rank: int, name: str, st: _RankStream, text: str, *, opens: bool,
               held: bool = False) -> None:
        """Append to the frontend stream, closing another rank's open line first."""
        key = (st.parent, name)
        if self.holder is not None and not held:
            self.holder.let_out(st.parent, rank)
        self._close_open_line(st.parent, name, rank)
        if not st.line_open:
            text = self._prefixes[rank] + text
        self._out.append(StreamText(st.parent, name, text, rank))
        st.line_open = opens
        if opens:
            self._open_line[key] = rank
        elif self._open_line.get(key) == rank:
            del self._open_line[key]

    def _complete_line(self, rank: int, name: str, st: _RankStream, line: str,
                       now: float = 0.0) -> None:
        if "\r" in line or st.progress:
            # a bar (or a line redrawn with \r) ended: its final state stays in the live
            # display, where it ran, not below as a new stream line
            shown = apply_carriage_returns(line)
            if self.progress.pop((st.parent, rank, name), None) is not None or shown.strip():
                self.progress_changed.add(st.parent)
            st.progress = False
            if st.line_open:
                self._write(rank, name, st, "\n", opens=False)
            self.bar_events.append((st.parent, rank, name, shown if shown.strip() else None,
                                    True))
        elif st.line_open or st.partial_sent:
            # the rest of a line whose start went out already
            if line or st.line_open:
                self._write(rank, name, st, line + "\n", opens=False)
        elif self.holder is None or not self.holder.hold(st.parent, rank, name, line + "\n",
                                                         now):
            self._write(rank, name, st, line + "\n", opens=False)
        st.partial_sent = False
        st.pending_since = None

    def _complete_block(self, rank: int, name: str, st: _RankStream, lines: list[str]) -> None:
        """Fast path for plain lines (a print flood): one prefixed block, one write."""
        if not lines[0] and st.partial_sent and not st.line_open:
            lines = lines[1:]  # the empty rest of a line another rank already broke
        self._write(rank, name, st, ("\n" + self._prefixes[rank]).join(lines) + "\n",
                    opens=False)
        st.partial_sent = False
        st.pending_since = None

    def _hold_partial(self, rank: int, name: str, st: _RankStream, rest: str, now: float) -> None:
        if not rest:
            st.pending_since = None
            return
        if "\r" in rest or st.progress:
            shown = apply_carriage_returns(rest)[:MAX_PROGRESS]
            st.progress = True
            # Keep only what a terminal would show, so a bar never grows memory.
            st.pending = "\r" + shown
            key = (st.parent, rank, name)
            if not shown.strip():
                # A bar that erased itself (tqdm leave=False): no line to show.
                if self.progress.pop(key, None) is not None:
                    self.progress_changed.add(st.parent)
                    self.bar_events.append((st.parent, rank, name, None, False))
            elif self.progress.get(key) != shown:
                self.progress[key] = shown
                self.progress_changed.add(st.parent)
                self.bar_events.append((st.parent, rank, name, shown, False))
            return
        st.pending = rest
        if st.pending_since is None:
            st.pending_since = now
        if len(rest) >= MAX_PENDING:
            self._emit_partial(rank, name, st)

    def _emit_partial(self, rank: int, name: str, st: _RankStream) -> None:
        text, st.pending, st.pending_since = st.pending, "", None
        self._write(rank, name, st, text, opens=True)
        st.partial_sent = True

    def _finish_stream(self, rank: int, name: str, st: _RankStream) -> None:
        if st.pending and not st.progress:
            self._emit_partial(rank, name, st)
        elif st.progress:
            # An unfinished bar: its last state stays in the live display.
            st.pending, st.progress = "", False
        st.pending_since = None
        st.line_open = False
        st.partial_sent = False


def _default_group_prefix(prefixes: dict[int, str]) -> Callable[[list[int]], str]:
    """``[ranks 0-3] `` when lines are labelled, nothing when labels are off."""
    from ....rankset import format_ranks

    labelled = any(prefixes.values())

    def prefix(ranks: list[int]) -> str:
        return f"[ranks {format_ranks(ranks)}] " if labelled else ""
    return prefix
