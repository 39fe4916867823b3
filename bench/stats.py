"""Small statistics and output-parsing helpers shared by all subjects.

The multi-rank kernel prefixes every line with a rank label (``[rank R] ``
by default, configurable), merges several lines into one stream message, and
may forward a partial line first and its rest later; nbdistributed indents
lines, ipyparallel does neither. So output is reassembled into whole lines
per stream (``LineAssembler``) and matched with patterns that ignore any
prefix before the payload.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

#: Marker printed by the latency workload: ``BENCHTS <time.time()>``.
TS_MARKER = "BENCHTS"
_TS_RE = re.compile(TS_MARKER + r" (\d+\.\d+)")
#: A line whose payload (after any prefix) is a bare integer, as printed by
#: ``for i in range(n): print(i)``.
_INT_LINE_RE = re.compile(r"(?:^|\s)\d+$")


@dataclass(frozen=True)
class Summary:
    """Median and 99th percentile of a sample, plus its size."""

    p50: float
    p99: float
    n: int


def summarize(samples: Sequence[float]) -> Summary:
    """Median and p99 (``statistics.quantiles``, inclusive method).

    With fewer than two samples p99 degenerates to the single value.
    """
    if not samples:
        raise ValueError("no samples")
    if len(samples) < 2:
        return Summary(samples[0], samples[0], 1)
    p99 = statistics.quantiles(samples, n=100, method="inclusive")[98]
    return Summary(statistics.median(samples), p99, len(samples))


class LineAssembler:
    """Reassemble complete lines from stream chunks of one stream name.

    ``feed`` returns the lines completed by the chunk; a trailing partial line
    is kept until its newline arrives.
    """

    def __init__(self) -> None:
        self._tail = ""

    def feed(self, text: str) -> list[str]:
        """Add a chunk and return the lines it completed (without newlines)."""
        data = self._tail + text
        lines = data.split("\n")
        self._tail = lines.pop()
        return lines

    def flush(self) -> list[str]:
        """Return the pending partial line, if any, as a final line."""
        tail, self._tail = self._tail, ""
        return [tail] if tail else []


def timestamps_in(lines: Sequence[str]) -> Iterator[float]:
    """Yield every embedded ``BENCHTS`` timestamp found in ``lines``."""
    for line in lines:
        for match in _TS_RE.finditer(line):
            yield float(match.group(1))


def count_int_lines(lines: Sequence[str]) -> int:
    """Count lines whose payload is a bare integer (throughput workload)."""
    return sum(1 for line in lines if _INT_LINE_RE.search(line.rstrip()))
