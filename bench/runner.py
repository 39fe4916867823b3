"""Orchestration: which subject runs which workload, in what order, in what time.

The order puts the figures the goals need first (baseline, then the
multi-rank kernel without process-group init, which carries the workloads),
then the init variant, the memory test and the peers. One wall-clock budget
bounds the whole run (``--quick`` must finish in under 10 minutes on a
2-core machine); every step also has its own timeout, capped by what is left
of the budget minus a reserve for later phases, so a slow or hung subject
turns into "failed: timeout" / "skipped" cells instead of an endless run.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import kernels, peers, workloads
from bench.kernels import BASELINE_SPEC, KernelSession, SpecDir, kernel_session
from bench.report import (
    LAT_P50,
    LAT_P99,
    PASS_P50,
    PASS_P99,
    START,
    STREAM_LPS,
    STREAM_RECV,
    STREAM_S,
    Failed,
    Report,
    Row,
)

WORKLOAD_KEYS = (LAT_P50, LAT_P99, STREAM_S, STREAM_LPS, STREAM_RECV)
ALL_KEYS = (START, PASS_P50, PASS_P99, *WORKLOAD_KEYS)


@dataclass
class BenchConfig:
    """What to run and how big; ``for_mode`` gives the quick/full defaults."""

    ranks: list[int]
    budget_s: float
    peers: list[str]
    peer_ranks: int = 4
    rss_ranks: int = 4
    rss_lines: int = 1_000_000
    rtt_count: int = 200
    rtt_warmup: int = 10
    rtt_max_s: float = 20.0
    lat_lines: int = 100
    lat_interval_s: float = 0.02
    stream_lines: int = 100_000
    start_repeats: int = 3
    #: Run latency + throughput on the init variant too (off: they measure the
    #: output path, which process-group init does not touch).
    workloads_with_init: bool = False

    @classmethod
    def for_mode(
        cls, quick: bool, ranks: Sequence[int] | None, peers_: Sequence[str]
    ) -> BenchConfig:
        if quick:
            return cls(ranks=list(ranks or [1, 2, 4]), budget_s=570.0, peers=list(peers_),
                       rtt_max_s=8.0, start_repeats=1)
        return cls(ranks=list(ranks or [1, 2, 4, 8, 16, 32]), budget_s=3 * 3600.0,
                   peers=list(peers_))


class BudgetExhausted(Exception):
    """Not enough of the run's time budget left to start a step."""


class Budget:
    """The run's wall-clock budget; hands out per-step timeouts."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self.deadline = time.monotonic() + total_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, wanted: float, reserve: float = 0.0) -> float:
        """``wanted`` capped by the budget left after ``reserve`` seconds."""
        available = self.left() - reserve
        if available < 5.0:
            raise BudgetExhausted
        return min(wanted, available)


# Generous per-step timeouts, scaled with the number of ranks (2 cores!).
def start_timeout(ranks: int, init: bool) -> float:
    return (90.0 + 8.0 * ranks) if init else (60.0 + 3.0 * ranks)


def stream_timeout(ranks: int) -> float:
    return 60.0 + 15.0 * ranks


STEP_TIMEOUT = 30.0
PEER_SLOT_S = {"ipyparallel": 90.0, "nbdistributed": 180.0}
#: Expected time of later phases, kept free while earlier ones run.
PEER_RESERVE_S = {"ipyparallel": 30.0, "nbdistributed": 90.0}
RSS_RESERVE_S = 45.0
MERGE_CORE_TIMEOUT = 120.0


class Runner:
    """Runs the whole benchmark into a ``Report``."""

    def __init__(self, cfg: BenchConfig, workdir: Path, env: dict[str, str]) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.env = env
        self.specs = SpecDir(workdir)
        self.budget = Budget(cfg.budget_s)
        self.report = Report(rss_ranks=cfg.rss_ranks)
        self._logs = 0

    # ------------------------------------------------------------ phases

    async def run(self) -> Report:
        cfg = self.cfg
        await self._merge_core()
        self.report.rows.append(await self._kernel_row(
            "ipykernel (baseline)", "baseline", BASELINE_SPEC, 1, False, workloads=True))

        why_not = kernels.ours_unavailable_reason()
        variants = [(n, False) for n in cfg.ranks] + [(n, True) for n in cfg.ranks]
        for n, init in variants:
            label = f"nbdist {n} rank{'s' if n > 1 else ''}, {'init' if init else 'no init'}"
            if why_not:
                self.report.rows.append(_failed_row(label, n, init, why_not))
                continue
            spec = self.specs.add_ours(n, init)
            self.report.rows.append(await self._kernel_row(
                label, "ours", spec, n, init, workloads=not init or cfg.workloads_with_init,
                reserve=self._reserve(rss=True)))

        if why_not:
            self.report.rss = Failed(why_not)
        else:
            await self._rss()

        for name in cfg.peers:
            self.report.rows.append(await self._peer(name))
        return self.report

    def _reserve(self, rss: bool = False, after_peer: str | None = None) -> float:
        """Seconds to keep free for the phases after the current one."""
        names = self.cfg.peers
        if after_peer is not None:
            names = names[names.index(after_peer) + 1:]
        return (RSS_RESERVE_S if rss else 0.0) + sum(PEER_RESERVE_S.get(p, 60.0) for p in names)

    async def _merge_core(self) -> None:
        """``bench_merge_core()`` in a child process (killable, unloaded)."""
        progress("merge core hook")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.merge_core", cwd=str(kernels.REPO_ROOT), env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), MERGE_CORE_TIMEOUT)
            if proc.returncode != 0:
                tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no stderr"]
                raise RuntimeError(f"exit {proc.returncode}: {tail[0]}")
            value = json.loads(out.decode().strip().splitlines()[-1])["lines_per_s"]
            self.report.merge_core = Failed("", "n/a") if value is None else float(value)
        except Exception as exc:  # any failure is a result
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                exc = TimeoutError(f"no result within {MERGE_CORE_TIMEOUT:.0f} s")
            self.report.merge_core = _failure(exc)

    async def _kernel_row(
        self, label: str, role: str, spec: str, ranks: int, init: bool, *,
        workloads: bool, reserve: float = 0.0,
    ) -> Row:
        """Start one kernel, run its workloads, shut it down; never raises."""
        row = Row(label, role, ranks=ranks, init=init)
        keys = ALL_KEYS if workloads else (START, PASS_P50, PASS_P99)
        progress(f"{label}: start")
        starts: list[float] = []
        try:
            async with self._session(spec, ranks, init, reserve) as ks:
                starts.append(ks.start_s)
                await self._step(row, "pass round trips", self._rtt(ks, row), reserve)
                if workloads:
                    await self._step(row, "print latency", self._latency(ks, row, ranks), reserve)
                    await self._step(row, "stream", self._stream(ks, row, ranks), reserve)
            if ks.leaked:
                row.notes.append(f"{ks.leaked} processes left after shutdown (killed by pid)")
            for _ in range(self.cfg.start_repeats - 1):
                async with self._session(spec, ranks, init, reserve) as again:
                    starts.append(again.start_s)
        except Exception as exc:
            failure = _failure(exc)
            for key in keys:
                row.figures.setdefault(key, failure)
            progress(f"{label}: {failure.text()}")
        if starts:
            row.figures[START] = statistics.median(starts)
            if len(starts) > 1:
                row.notes.append(f"start = median of {len(starts)}")
        return row

    def _session(self, spec: str, ranks: int, init: bool, reserve: float):
        self._logs += 1
        log_path = self.workdir / "logs" / f"{self._logs:02d}-{spec}.log"
        log_path.parent.mkdir(exist_ok=True)
        timeout = self.budget.timeout(start_timeout(ranks, init), reserve)
        return kernel_session(self.specs, spec, self.env, timeout, log_path)

    async def _step(self, row: Row, what: str, step: Awaitable[dict[str, object]],
                    reserve: float) -> None:
        """Run one workload; its figures, or its failure, go into ``row``."""
        progress(f"{row.label}: {what}")
        try:
            self.budget.timeout(STEP_TIMEOUT, reserve)  # enough time left at all?
            row.figures.update(await step)  # type: ignore[arg-type]
        except Exception as exc:
            if asyncio.iscoroutine(step):
                step.close()
            failure = _failure(exc)
            progress(f"{row.label}: {what}: {failure.text()}")
            for key in _STEP_KEYS[what]:
                row.figures.setdefault(key, failure)

    # -------------------------------------------------------- workloads

    async def _rtt(self, ks: KernelSession, row: Row) -> dict[str, object]:
        cfg = self.cfg
        cpu_before = kernel_cpu_seconds(ks.pid)
        s = await workloads.pass_round_trips(
            ks.client, count=cfg.rtt_count, warmup=cfg.rtt_warmup,
            max_s=cfg.rtt_max_s, timeout=STEP_TIMEOUT)
        if s.n < cfg.rtt_count:
            row.notes.append(f"`pass`: {s.n} samples (time cap)")
        if cpu_before is not None:
            used = kernel_cpu_seconds(ks.pid)
            if used is not None:
                per_pass = (used - cpu_before) / (s.n + cfg.rtt_warmup)
                cores = os.cpu_count() or 1
                # With every core busy, a round trip cannot take less than this.
                row.notes.append(f"kernel CPU per `pass` {per_pass * 1e3:.1f} ms "
                                 f"(all processes; {cores}-core floor "
                                 f"{per_pass / cores * 1e3:.1f} ms)")
        return {PASS_P50: s.p50, PASS_P99: s.p99}

    async def _latency(self, ks: KernelSession, row: Row, ranks: int) -> dict[str, object]:
        cfg = self.cfg
        timeout = self.budget.timeout(cfg.lat_lines * cfg.lat_interval_s + 30 + ranks)
        s = await workloads.print_latency(
            ks.client, lines=cfg.lat_lines, interval_s=cfg.lat_interval_s, timeout=timeout)
        if s.n != cfg.lat_lines * ranks:
            row.notes.append(f"latency: {s.n}/{cfg.lat_lines * ranks} timestamped lines")
        return {LAT_P50: s.p50, LAT_P99: s.p99}

    async def _stream(self, ks: KernelSession, row: Row, ranks: int) -> dict[str, object]:
        timeout = self.budget.timeout(stream_timeout(ranks), self._reserve(rss=True))
        r = await workloads.stream_throughput(
            ks.client, lines_per_rank=self.cfg.stream_lines, ranks=ranks, timeout=timeout)
        return {STREAM_S: r.seconds, STREAM_LPS: r.lines_per_s,
                STREAM_RECV: (r.received, r.expected)}

    async def _rss(self) -> None:
        cfg = self.cfg
        label = f"multiplexer RSS, {cfg.rss_ranks} ranks × {cfg.rss_lines // cfg.rss_ranks} lines"
        progress(label)
        spec = self.specs.add_ours(cfg.rss_ranks, False)
        try:
            async with self._session(spec, cfg.rss_ranks, False, self._reserve()) as ks:
                pid = ks.pid
                if pid is None:
                    raise RuntimeError("km.provisioner has no pid")
                timeout = self.budget.timeout(stream_timeout(cfg.rss_ranks) * 3, self._reserve())
                self.report.rss = await workloads.mux_rss(
                    ks.client, pid, total_lines=cfg.rss_lines, ranks=cfg.rss_ranks,
                    timeout=timeout)
        except Exception as exc:
            self.report.rss = _failure(exc)
            progress(f"{label}: {self.report.rss.text()}")

    async def _peer(self, name: str) -> Row:
        cfg = self.cfg
        progress(f"peer {name} (n={cfg.peer_ranks})")
        pcfg = peers.PeerConfig(
            n=cfg.peer_ranks, rtt_count=cfg.rtt_count, rtt_max_s=cfg.rtt_max_s,
            lat_lines=cfg.lat_lines, lat_interval_s=cfg.lat_interval_s,
            stream_lines=cfg.stream_lines)
        try:
            slot = self.budget.timeout(PEER_SLOT_S.get(name, 120.0), self._reserve(after_peer=name))
        except BudgetExhausted as exc:
            return _failed_row(peers.peer_label(name, cfg.peer_ranks), cfg.peer_ranks, False,
                               _failure(exc).reason, role="peer", kind="skipped")
        row = await peers.run_peer(name, pcfg, slot, self.env)
        return row


_STEP_KEYS = {
    "pass round trips": (PASS_P50, PASS_P99),
    "print latency": (LAT_P50, LAT_P99),
    "stream": (STREAM_S, STREAM_LPS, STREAM_RECV),
}


def _failure(exc: BaseException) -> Failed:
    """A readable one-line reason for any exception a step can raise."""
    if isinstance(exc, BudgetExhausted):
        return Failed("run time budget used up", "skipped")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return Failed(str(exc) or "timeout")
    text = " ".join(str(exc).split())
    if isinstance(exc, (kernels.KernelStartFailed, kernels.CellFailed)):
        return Failed(text)
    return Failed(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _failed_row(label: str, ranks: int, init: bool, reason: str, *,
                role: str = "ours", kind: str = "failed") -> Row:
    row = Row(label, role, ranks=ranks, init=init)
    for key in ALL_KEYS:
        row.figures[key] = Failed(reason, kind)
    return row


_T0 = time.monotonic()


def progress(text: str) -> None:
    """One progress line on stderr (the report itself goes to stdout)."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {text}", file=sys.stderr, flush=True)



def kernel_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds used so far by a kernel process and everything it started."""
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
