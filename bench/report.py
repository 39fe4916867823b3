"""Result model and the markdown report (absolute values + ratios).

Every figure is either a number or a ``Failed`` (failed / skipped / n/a) with
its reason, so one broken subject shows up as text in its cells and never
stops the run. Ratios are always to the plain-ipykernel baseline measured in
the same run; the goals table maps the figures onto the project's goals (README "Benchmark").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

from bench.workloads import RssResult


@dataclass(frozen=True)
class Failed:
    """A figure that could not be measured; ``kind`` is failed/skipped/n/a."""

    reason: str
    kind: str = "failed"

    def text(self) -> str:
        return self.kind if not self.reason else f"{self.kind}: {self.reason}"


#: A measured value: seconds, lines/s, (received, expected), or why not.
Figure = Union[float, tuple[int, int], Failed]  # noqa: UP007 - runtime alias, py3.10

# Figure keys of the main table.
START = "start"
PASS_P50 = "pass_p50"
PASS_P99 = "pass_p99"
LAT_P50 = "lat_p50"
LAT_P99 = "lat_p99"
STREAM_S = "stream_s"
STREAM_LPS = "stream_lps"
STREAM_RECV = "stream_recv"


@dataclass
class Row:
    """One subject: the baseline, one multi-rank configuration, or a peer."""

    label: str
    role: str  # "baseline" | "ours" | "peer"
    ranks: int = 1
    init: bool = False
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def number(self, key: str) -> float | None:
        value = self.figures.get(key)
        return value if isinstance(value, float) and math.isfinite(value) else None


@dataclass
class Report:
    """Everything one run measured, plus what is needed to render it."""

    rows: list[Row] = field(default_factory=list)
    merge_core: Figure = Failed("", "n/a")
    rss: RssResult | Failed = Failed("not run", "skipped")
    rss_ranks: int = 4
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def baseline(self) -> Row | None:
        return next((r for r in self.rows if r.role == "baseline"), None)

    def ours(self, ranks: int, init: bool = False) -> Row | None:
        return next((r for r in self.rows
                     if r.role == "ours" and r.ranks == ranks and r.init == init), None)


# ---------------------------------------------------------------- formatting

def fmt_seconds(value: float) -> str:
    if value < 1.0:
        return f"{value * 1000:.3g} ms" if value < 0.01 else f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def fmt_rate(value: float) -> str:
    return f"{value / 1000:.0f}k/s" if value >= 10_000 else f"{value:.0f}/s"


def fmt_mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    fmt: Callable[[float], str]
    ratio: bool = True


MAIN_COLUMNS = [
    Column(START, "start → 1st reply", fmt_seconds),
    Column(PASS_P50, "`pass` p50", fmt_seconds),
    Column(PASS_P99, "`pass` p99", fmt_seconds),
    Column(LAT_P50, "print→frontend p50", fmt_seconds),
    Column(LAT_P99, "print→frontend p99", fmt_seconds),
    Column(STREAM_S, "100k lines/rank: time", fmt_seconds),
    Column(STREAM_LPS, "lines/s", fmt_rate),
    Column(STREAM_RECV, "received/expected", str, ratio=False),
]


class _Footnotes:
    """Long failure texts go below the table, cells get a short form + [n]."""

    def __init__(self, width: int = 48) -> None:
        self.width = width
        self.items: list[str] = []

    def cell(self, failed: Failed) -> str:
        text = _escape(failed.text())
        if len(text) <= self.width:
            return text
        if text not in self.items:
            self.items.append(text)
        return f"{text[: self.width - 1]}… [{self.items.index(text) + 1}]"


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _cell(row: Row, col: Column, base: Row | None, notes: _Footnotes) -> str:
    value = row.figures.get(col.key)
    if value is None:
        return "—"
    if isinstance(value, Failed):
        return notes.cell(value)
    if isinstance(value, tuple):
        received, expected = value
        mark = "" if received == expected else " ⚠"
        return f"{received}/{expected}{mark}"
    text = col.fmt(value)
    ref = base.number(col.key) if base is not None and col.ratio else None
    if ref and row is not base:
        text += f" ({value / ref:.2f}×)"
    return text


def render(report: Report) -> str:
    """The whole report as markdown."""
    notes = _Footnotes()
    out: list[str] = []
    meta = report.meta
    out.append("# nbdist-provisioner benchmark\n")
    for key, value in meta.items():
        out.append(f"- {key}: {value}")
    out.append("")
    out.append("Ratios in parentheses are to the plain ipykernel baseline of this run "
               "(for lines/s higher is better, for times lower is better). "
               "\"init\" = torch import + `init_process_group(gloo)` on every rank; "
               "\"no init\" = env vars only. Latency and throughput run on the no-init kernels "
               "(process-group init does not touch the output path).\n")

    base = report.baseline
    header = ["subject", *[c.title for c in MAIN_COLUMNS], "notes"]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for row in report.rows:
        values = [row.figures.get(c.key) for c in MAIN_COLUMNS]
        if isinstance(values[0], Failed) and all(v == values[0] for v in values):
            # One reason for the whole row: say it once.
            figures = [notes.cell(values[0]), *["″"] * (len(values) - 1)]
        else:
            figures = [_cell(row, c, base, notes) for c in MAIN_COLUMNS]
        cells = [row.label, *figures, _escape("; ".join(row.notes))]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")

    out.append("| multiplexer internals | value |")
    out.append("|---|---|")
    merge = report.merge_core
    if isinstance(merge, Failed):
        merge_text = notes.cell(merge)
    else:
        merge_text = f"{fmt_rate(float(merge))} lines"
    out.append(f"| merge state machine alone (`bench_merge_core`) | {merge_text} |")
    rss = report.rss
    if isinstance(rss, Failed):
        out.append(f"| multiplexer RSS around 1M lines | {notes.cell(rss)} |")
    else:
        growth = rss.after - rss.before
        path = " → ".join(fmt_mib(v) for v in (rss.before, *rss.quartiles, rss.after))
        out.append(f"| multiplexer RSS before → 25/50/75% → after {rss.expected} lines "
                   f"({report.rss_ranks} ranks, after a 10% warm-up) | {path} "
                   f"(growth {growth / 2**20:+.1f} MiB, peak {fmt_mib(rss.peak)}, "
                   f"received {rss.received}/{rss.expected}) |")
    out.append("")

    out.append("## Goals (README \"Benchmark\")\n")
    out.append("| figure | measured | goal | verdict |")
    out.append("|---|---|---|---|")
    for goal in GOALS:
        measured, verdict = goal.evaluate(report)
        if isinstance(measured, Failed):
            measured = notes.cell(measured)
        out.append(f"| {goal.figure} | {measured} | {goal.goal} | {verdict} |")
    out.append("")

    if notes.items:
        out.append("## Failure details\n")
        out.extend(f"{i}. {text}" for i, text in enumerate(notes.items, 1))
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------- goals

@dataclass(frozen=True)
class Goal:
    figure: str
    goal: str
    #: Returns (measured text or why it is missing, verdict).
    evaluate: Callable[[Report], tuple[str | Failed, str]]


def _ratio_goal(ranks: int, key: str, limit: float,
                abs_limit: float | None = None) -> Callable[[Report], tuple[str | Failed, str]]:
    """Ratio of ours (no init, ``ranks``) to the baseline for figure ``key``.

    A throughput figure only counts when no line was lost.
    """

    def evaluate(report: Report) -> tuple[str | Failed, str]:
        base, row = report.baseline, report.ours(ranks)
        ours = row.number(key) if row else None
        ref = base.number(key) if base else None
        if ours is None or ref is None:
            missing = row.figures.get(key) if row else None
            if ours is not None and base is not None:  # the baseline is what failed
                missing = base.figures.get(key)
            return (missing if isinstance(missing, Failed) else "—"), "not measured"
        ratio = ours / ref
        ok = ratio <= limit and (abs_limit is None or ours <= abs_limit)
        measured = f"{fmt_seconds(ours)} = {ratio:.2f}× ({fmt_seconds(ref)})"
        recv = row.figures.get(STREAM_RECV) if key == STREAM_S and row else None
        if isinstance(recv, tuple) and recv[0] != recv[1]:
            return f"{measured}, lost {recv[1] - recv[0]} lines", "MISSED"
        return measured, "met" if ok else "MISSED"

    return evaluate


def _rss_goal(report: Report) -> tuple[str | Failed, str]:
    """Flat = no growth *with volume*: judged on the second half of the lines.

    The first lines may fill bounded buffers and allocator arenas (shown as
    total growth and peak); an RSS that still rises while the second half
    streams grows with output volume.
    """
    rss = report.rss
    if isinstance(rss, Failed):
        return rss, "not measured"
    if len(rss.quartiles) < 2:
        return Failed("RSS at 50% not sampled"), "not measured"
    second_half = rss.after - rss.quartiles[1]
    total = rss.after - rss.before
    flat = second_half <= RSS_FLAT_TOLERANCE
    return (f"{second_half / 2**20:+.1f} MiB over the 2nd half "
            f"({total / 2**20:+.1f} MiB in all)", "met" if flat else "MISSED")


#: RSS growth over the second half of the 1M lines still counted as "flat"
#: (8 MiB / 500k lines ≈ 17 bytes per line).
RSS_FLAT_TOLERANCE = 8 * 2**20

GOALS = [
    Goal("start → 1st reply, 4 ranks, no init", "≤ 2× baseline", _ratio_goal(4, START, 2.0)),
    Goal("`pass` round trip p50, 4 ranks", "≤ 1.5× baseline", _ratio_goal(4, PASS_P50, 1.5)),
    Goal("`pass` round trip p50, 32 ranks", "≤ 5× baseline", _ratio_goal(32, PASS_P50, 5.0)),
    Goal("print → frontend p50, 4 ranks", "≤ 0.25× baseline and ≤ 50 ms",
         _ratio_goal(4, LAT_P50, 0.25, abs_limit=0.050)),
    Goal("4 ranks × 100k lines, end to end", "≤ 3× baseline (100k lines)",
         _ratio_goal(4, STREAM_S, 3.0)),
    Goal("multiplexer RSS after 1M lines", "flat (≤ +8 MiB over the 2nd 500k lines)",
         _rss_goal),
]
