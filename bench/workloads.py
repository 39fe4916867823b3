"""The workloads, as code sent to a kernel, and how each is measured.

The code strings are shared with the peers (``bench.peers``) so that every
subject runs the very same cells. All functions take an explicit timeout and
raise ``TimeoutError``/``CellFailed`` rather than hang.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from jupyter_client.asynchronous.client import AsyncKernelClient

from bench import procs
from bench.kernels import run_cell
from bench.stats import TS_MARKER, LineAssembler, Summary, count_int_lines, summarize, timestamps_in

PASS_CODE = "pass"


def latency_code(lines: int, interval_s: float) -> str:
    """Print ``lines`` timestamped lines, one every ``interval_s`` seconds."""
    return (
        "import time as _bench_t\n"
        f"for _bench_i in range({lines}):\n"
        f"    print('{TS_MARKER} %.6f' % _bench_t.time())\n"
        f"    _bench_t.sleep({interval_s})\n"
    )


def stream_code(lines: int) -> str:
    """The throughput workload: ``lines`` integers, one print each."""
    return f"for i in range({lines}): print(i)"


@dataclass(frozen=True)
class StreamResult:
    """End-to-end time of a flood of prints and how many lines arrived."""

    seconds: float
    received: int
    expected: int

    @property
    def lines_per_s(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class RssResult:
    """Multiplexer memory around a large amount of output (bytes)."""

    before: int
    after: int
    peak: int
    received: int
    expected: int
    #: RSS when a quarter, half, three quarters of the lines had arrived:
    #: growth that keeps rising with volume is a leak or an unbounded
    #: backlog; a plateau is a bounded buffer.
    quartiles: tuple[int, ...] = ()


class LatencyCollector:
    """Stream callback that turns ``BENCHTS`` lines into latencies (seconds)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self._streams: dict[str, LineAssembler] = {}

    def __call__(self, name: str, text: str, arrived: float) -> None:
        lines = self._streams.setdefault(name, LineAssembler()).feed(text)
        self.latencies.extend(arrived - ts for ts in timestamps_in(lines))


class LineCounter:
    """Stream callback that counts integer lines on stdout."""

    def __init__(self) -> None:
        self.count = 0
        self._stdout = LineAssembler()

    def __call__(self, name: str, text: str, arrived: float) -> None:
        if name == "stdout":
            self.count += count_int_lines(self._stdout.feed(text))

    def finish(self) -> int:
        self.count += count_int_lines(self._stdout.flush())
        return self.count


async def pass_round_trips(
    kc: AsyncKernelClient, *, count: int, warmup: int, max_s: float, timeout: float
) -> Summary:
    """``pass`` request → ``execute_reply`` times, after ``warmup`` untimed ones.

    Stops early after ``max_s`` seconds of timed round trips (slow subjects
    still get a bounded run; the sample size is reported).
    """
    for _ in range(warmup):
        await run_cell(kc, PASS_CODE, timeout=timeout)
    samples: list[float] = []
    t_end = time.perf_counter() + max_s
    while len(samples) < count and (len(samples) < 5 or time.perf_counter() < t_end):
        samples.append((await run_cell(kc, PASS_CODE, timeout=timeout)).reply_s)
    return summarize(samples)


async def print_latency(
    kc: AsyncKernelClient, *, lines: int, interval_s: float, timeout: float
) -> Summary:
    """Arrival time minus embedded ``time.time()`` for every printed line."""
    collector = LatencyCollector()
    await run_cell(kc, latency_code(lines, interval_s), timeout=timeout, on_stream=collector)
    if not collector.latencies:
        raise RuntimeError("no timestamped lines arrived")
    return summarize(collector.latencies)


async def stream_throughput(
    kc: AsyncKernelClient, *, lines_per_rank: int, ranks: int, timeout: float
) -> StreamResult:
    """Every rank prints ``lines_per_rank`` lines: request → idle, lines counted."""
    counter = LineCounter()
    run = await run_cell(kc, stream_code(lines_per_rank), timeout=timeout, on_stream=counter)
    return StreamResult(run.idle_s, counter.finish(), lines_per_rank * ranks)


async def mux_rss(
    kc: AsyncKernelClient, pid: int, *, total_lines: int, ranks: int, timeout: float
) -> RssResult:
    """RSS of ``pid`` before and after ``total_lines`` lines (split over ranks).

    A warm-up cell (a tenth of the volume) runs first so that "before"
    already includes the one-time allocations of the output path (buffers,
    allocator arenas): what is left is growth *with output volume*, which is
    what the goal forbids. The peak is sampled every 50 ms during the flood.
    """
    per_rank = total_lines // ranks
    await run_cell(kc, stream_code(per_rank // 10), timeout=timeout)
    before = procs.rss_bytes(pid)
    peak = before
    expected = per_rank * ranks
    counter = LineCounter()
    quartiles: list[int] = []
    cell = asyncio.create_task(
        run_cell(kc, stream_code(per_rank), timeout=timeout, on_stream=counter))
    while not cell.done():
        rss = procs.rss_bytes(pid)
        peak = max(peak, rss)
        while len(quartiles) < 3 and counter.count >= expected * (len(quartiles) + 1) / 4:
            quartiles.append(rss)
        await asyncio.wait({cell}, timeout=0.05)
    await cell
    after = procs.rss_bytes(pid)
    quartiles += [after] * (3 - len(quartiles))  # crossed after the last sample
    return RssResult(before, after, max(peak, after), counter.finish(), expected,
                     tuple(quartiles))
