"""Output floods and a bounded soak, with real kernels.

- A rank writing tens of MB fast: every line reaches the cell (or a notice says exactly
  what was dropped), the multiplexer keeps answering, its memory stays bounded.
- Output ZMQ had to drop (a multiplexer starved of CPU) is reported exactly.
- Soak: many cells on 4 ranks; every marker line once, in order, in its own cell, and
  the multiplexer's memory flat. ``tests/soak.py`` is the full 1000-cell run.
"""

from __future__ import annotations

import re
import threading
import time

import psutil
import zmq
from fault_harness import figure
from jupyter_client.session import Session

from kernel_harness import printed_by, run_cell

NOTICE = re.compile(r"rank (\d+): (?:([\d.]+) MB|(\d+) characters) of output \((\d+) messages\) "
                    r"dropped")
LINE = re.compile(r"\[rank (\d+)\] (\d{8}) ")


class RssSampler:
    """Peak RSS of a process, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class ControlProbe:
    """kernel_info_request on the control port in a loop: the slowest answer."""

    def __init__(self, info: dict) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(f"tcp://{info['ip']}:{info['control_port']}")
        self.session = Session(key=info["key"], signature_scheme=info["signature_scheme"])
        self.slowest = 0.0
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            self.session.send(self.sock, "kernel_info_request", {})
            if not self.sock.poll(30_000):
                self.slowest = float("inf")
                return
            self.sock.recv_multipart()
            self.answered += 1
            self.slowest = max(self.slowest, time.monotonic() - sent)
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.ctx.destroy(linger=0)


def lines_of(text: str, rank: int) -> list[int]:
    return [int(m.group(2)) for m in LINE.finditer(text) if int(m.group(1)) == rank]


def dropped_notices(text: str) -> list[tuple[int, int]]:
    """(rank, messages) per drop notice."""
    return [(int(m.group(1)), int(m.group(4))) for m in NOTICE.finditer(text)]


FLOOD = """\
import sys
if rank == 1:
    for block in range({blocks}):
        sys.stdout.write(''.join(f'{{block * 10000 + i:08d}} ' + 'x' * 90 + '\\n'
                                 for i in range(10000)))
print('flood done')
"""


def test_a_flood_of_tens_of_mb_reaches_the_cell_and_memory_stays_bounded(start_kernel):
    k = start_kernel("nbdist-test-2")
    mux = psutil.Process(k.mux_pid)
    run_cell(k.kc, "x = 1")
    before = mux.memory_info().rss
    peaks = []
    for blocks in (40, 80):  # 40 MB, then 80 MB in 1 MB writes from rank 1
        rss = RssSampler(k.mux_pid)
        probe = ControlProbe(k.km.get_connection_info())
        started = time.monotonic()
        run = run_cell(k.kc, FLOOD.format(blocks=blocks), timeout=120)
        took = time.monotonic() - started
        probe.stop()
        peaks.append(rss.stop())
        assert run.status == "ok"
        text = run.stream_text()
        got = lines_of(text, 1)
        notices = dropped_notices(run.stream_text("stderr"))
        lost = sum(n for _, n in notices)
        assert got == sorted(set(got)), "lines duplicated or out of order"
        if not notices:
            assert got == list(range(blocks * 10000)), "lines lost without a notice"
        assert printed_by(text, "flood done") == 2
        assert probe.answered > 0 and probe.slowest < 2.0, probe.slowest
        after = mux.memory_info().rss
        figure(f"flood {blocks} MB from rank 1: {took:.1f}s, {len(got)} lines "
               f"delivered, {lost} messages reported dropped; control answered in "
               f"<= {probe.slowest * 1000:.0f} ms; mux RSS before {before >> 20} MB, peak "
               f"{peaks[-1] >> 20} MB, after {after >> 20} MB")
    # bounded: twice the output does not take twice the memory
    assert peaks[1] - before < 1.5 * (peaks[0] - before) + (32 << 20), peaks
    assert peaks[1] - before < 256 << 20, peaks


def test_output_zmq_dropped_is_reported_exactly(start_kernel):
    """The multiplexer is stopped (SIGSTOP from the rank) while rank 1 writes 20 MB,
    one message per line: the rank's bounded queue overflows and ZMQ drops lines.
    The notice must account for exactly the lines that never arrived."""
    k = start_kernel("nbdist-test-2")
    run_cell(k.kc, "print('baseline')")
    run = run_cell(k.kc, """\
import os, signal, sys, psutil
if rank == 1:
    mux = psutil.Process(os.getppid()).ppid()  # (the rank's parent is the agent)
    os.kill(mux, signal.SIGSTOP)
    try:
        for i in range(20000):
            sys.stdout.write(f'{i:08d} ' + 'y' * 1000 + '\\n')
            sys.stdout.flush()
    finally:
        os.kill(mux, signal.SIGCONT)
""", timeout=120)
    assert run.status == "ok"
    got = lines_of(run.stream_text(), 1)
    assert got == sorted(set(got))
    missing = 20000 - len(got)
    notices = dropped_notices(run.stream_text("stderr"))
    assert missing > 0, "nothing was dropped: the test did not overflow the queue"
    assert notices and all(r == 1 for r, _ in notices), run.stream_text("stderr")[-3000:]
    assert sum(n for _, n in notices) == missing, (notices, missing)
    # ... and how much: each line is one message of 1010 characters
    for m in NOTICE.finditer(run.stream_text("stderr")):
        reported = float(m.group(2)) * 1e6 if m.group(2) else int(m.group(3))
        assert abs(reported - int(m.group(4)) * 1010) <= 0.05e6, m.group(0)
    figure(f"drop detection: {missing} of 20000 lines dropped by ZMQ while the mux was "
           f"stopped; notices: {run.stream_text('stderr').strip()}")
    assert printed_by(run_cell(k.kc, "print('alive')").stream_text(), "alive") == 2


def test_soak_cells_on_four_ranks_every_line_once_in_order_in_its_cell(start_kernel):
    k = start_kernel("nbdist-test-4")
    mux = psutil.Process(k.mux_pid)
    run_cell(k.kc, "import sys")
    cells, lines = 100, 5
    before = mux.memory_info().rss
    started = time.monotonic()
    for cell in range(cells):
        run = run_cell(k.kc, f"for i in range({lines}):\n"
                             f"    print(f'soak {cell} {{rank}} {{i}}')", timeout=60)
        assert run.status == "ok", run.reply["content"]
        got = run.stream_text().splitlines()
        for r in range(4):
            mine = [line for line in got if line.startswith(f"[rank {r}] ")]
            assert mine == [f"[rank {r}] soak {cell} {r} {i}" for i in range(lines)], got
        assert len(got) == 4 * lines, got
    took = time.monotonic() - started
    after = mux.memory_info().rss
    figure(f"soak {cells} cells x 4 ranks x {lines} lines: {took:.1f}s, mux RSS before "
           f"{before >> 20} MB, after {after >> 20} MB")
    assert after - before < 16 << 20
