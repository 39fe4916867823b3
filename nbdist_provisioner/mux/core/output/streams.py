"""Stream merging: rank-prefixed lines, prompt partial lines, in-place progress.

Pure logic, no sockets, no clock: callers pass ``now``. Emits ``Emit`` records
(what to publish to the frontend) and keeps per-rank progress lines that the
output merger renders as one live display per cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def __init__(self, prefixes: dict[int, str], partial_delay: float = PARTIAL_LINE_DELAY):
        self._prefixes = prefixes
        self._partial_delay = partial_delay
        self._streams: dict[tuple[int, str], _RankStream] = {}
        # (parent, name) -> rank whose partial line is the last thing on that stream
        self._open_line: dict[tuple[str, str], int] = {}
        #: (parent, rank, name) -> current progress text; read by the output merger.
        self.progress: dict[tuple[str, int, str], str] = {}
        self.progress_changed: set[str] = set()
        self._out: list[StreamText] = []

    # -- events -------------------------------------------------------------
    def feed(self, rank: int, name: str, text: str, parent: str, now: float) -> list[StreamText]:
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
        if len(lines) > 2 and not st.progress and "\r" not in data:
            self._complete_block(rank, name, st, lines[:-1])
        else:
            for line in lines[:-1]:
                self._complete_line(rank, name, st, line)
        self._hold_partial(rank, name, st, lines[-1], now)
        return self._take()

    def tick(self, now: float) -> list[StreamText]:
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

    def finish(self, parent: str) -> list[StreamText]:
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

    # -- internals ----------------------------------------------------------
    def _take(self) -> list[StreamText]:
        out, self._out = self._out, []
        return out

    def _write(self, rank: int, name: str, st: _RankStream, text: str, *, opens: bool) -> None:
        """Append to the frontend stream, closing another rank's open line first."""
        key = (st.parent, name)
        owner = self._open_line.get(key)
        if owner is not None and owner != rank:
            self._out.append(StreamText(st.parent, name, "\n", owner))
            other = self._streams.get((owner, name))
            if other is not None:
                other.line_open = False
            del self._open_line[key]
        if not st.line_open:
            text = self._prefixes[rank] + text
        self._out.append(StreamText(st.parent, name, text, rank))
        st.line_open = opens
        if opens:
            self._open_line[key] = rank
        elif self._open_line.get(key) == rank:
            del self._open_line[key]

    def _complete_line(self, rank: int, name: str, st: _RankStream, line: str) -> None:
        if "\r" in line or st.progress:
            shown = apply_carriage_returns(line)
            if self.progress.pop((st.parent, rank, name), None) is not None:
                self.progress_changed.add(st.parent)
            st.progress = False
            if shown.strip():
                self._write(rank, name, st, shown + "\n", opens=False)
            elif st.line_open:
                self._write(rank, name, st, "\n", opens=False)
        elif line or st.line_open or not st.partial_sent:
            # (an empty rest of a line another rank already broke adds nothing)
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
            elif self.progress.get(key) != shown:
                self.progress[key] = shown
                self.progress_changed.add(st.parent)
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
