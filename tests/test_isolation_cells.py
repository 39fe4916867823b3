"""Cell isolation with real rank kernels (issue 3, point 8).

A queued Run-All, background threads that print after their cell finished, and an
interrupt in the middle never put output into the wrong cell or after its ``idle``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kernel_harness import drain_iopub, iopub_until, printed_by, run_cell


@pytest.fixture(scope="module")
def k4(start_module_kernel):
    return start_module_kernel("nbdist-test-4")


def is_idle(msg: dict[str, Any]) -> bool:
    return msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


def collect_all(kc: Any, ids: list[str], timeout: float = 120,
                got: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every iopub message until each of ``ids`` went idle, then until iopub is quiet.

    ``got``: messages of these cells already read from iopub.
    """
    got = list(got or [])
    idle = {m["parent_header"].get("msg_id") for m in got if is_idle(m)} & set(ids)
    messages = iopub_until(kc, timeout)
    while idle != set(ids):
        msg = next(messages, None)
        assert msg is not None, f"no idle for {set(ids) - idle}"
        got.append(msg)
        if is_idle(msg) and msg["parent_header"].get("msg_id") in ids:
            idle.add(msg["parent_header"]["msg_id"])
    return got + drain_iopub(kc, quiet=0.5)


def per_cell(msgs: list[dict[str, Any]], ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Messages by cell; asserts each cell's are framed by exactly one busy and one idle."""
    cells: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for msg in msgs:
        parent = msg["parent_header"].get("msg_id")
        if parent in cells:
            cells[parent].append(msg)
    for msg_id, cell in cells.items():
        states = [(n, m["content"]["execution_state"]) for n, m in enumerate(cell)
                  if m["msg_type"] == "status"]
        assert [s for _, s in states] == ["busy", "idle"], (msg_id, states)
        assert states[0][0] == 0 and states[1][0] == len(cell) - 1, \
            f"output outside busy..idle of {msg_id}: {[m['msg_type'] for m in cell]}"
    return cells


def stream(cell: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(m["content"]["text"] for m in cell
                   if m["msg_type"] == "stream" and m["content"]["name"] == name)


def replies(kc: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}
    while len(got) < len(ids):
        msg = kc.get_shell_msg(timeout=60)
        if msg["parent_header"].get("msg_id") in ids:
            got[msg["parent_header"]["msg_id"]] = msg["content"]
    return got


def test_run_all_of_twenty_queued_cells_keeps_every_output_in_its_cell(k4):
    cells = []
    for i in range(20):
        body = [f"print(f'cell {i} line 1 rank {{rank}}')"]
        if i % 3 == 0:  # ranks finish at different times
            body.insert(0, f"import time; time.sleep(0.01 * ((rank + {i}) % 4))")
        if i % 4 == 1:  # a partial line, forwarded after a delay or at the end
            body.append(f"print('cell {i} partial', end='')")
        if i % 5 == 2:
            body.append(f"import sys; print('cell {i} err', file=sys.stderr)")
        if i % 6 == 3:
            body.append(f"from IPython.display import display; display('cell {i} display')")
        cells.append("\n".join(body))
    ids = [k4.kc.execute(code) for code in cells]  # all at once, as JupyterLab's Run All
    msgs = collect_all(k4.kc, ids)
    by_cell = per_cell(msgs, ids)
    results = replies(k4.kc, ids)
    counts = [results[i]["execution_count"] for i in ids]
    assert counts == list(range(counts[0], counts[0] + 20))
    for i, msg_id in enumerate(ids):
        assert results[msg_id]["status"] == "ok"
        cell = by_cell[msg_id]
        text = stream(cell) + stream(cell, "stderr")
        for m in cell:
            if m["msg_type"] in ("display_data", "execute_result"):
                text += m["content"]["data"]["text/plain"]
        assert text.count(f"cell {i} ") == text.count("cell "), (i, text)
        assert text.count(f"cell {i} line 1 rank") == 4
        if i % 4 == 1:
            assert printed_by(text, f"cell {i} partial") == 4
        if i % 5 == 2:
            assert printed_by(stream(cell, "stderr"), f"cell {i} err") == 4
        if i % 6 == 3:
            assert text.count(f"cell {i} display") == 1  # identical on every rank: once


def test_background_thread_output_never_lands_in_a_later_cell(k4):
    started = k4.kc.execute(
        "import threading, time\n"
        "bg_count = 0\n"
        "def _bg():\n"
        "    global bg_count\n"
        "    for i in range(400):\n"
        "        print(f'bg {i}', flush=True)\n"
        "        bg_count += 1\n"
        "        time.sleep(0.005)\n"
        "bg = threading.Thread(target=_bg, daemon=True)\n"
        "bg.start()\n"
        "while bg_count < 3:\n"
        "    time.sleep(0.001)\n"
        "print('started')")
    # the next cell runs while the thread keeps printing
    later = k4.kc.execute("n = bg_count\nwhile bg_count < n + 20:\n    time.sleep(0.001)\n"
                          "print('later')")
    msgs = collect_all(k4.kc, [started, later])
    by_cell = per_cell(msgs, [started, later])
    assert "bg 0" in stream(by_cell[started])  # printed while its own cell ran: shown there
    assert printed_by(stream(by_cell[later]), "later") == 4
    assert "bg" not in stream(by_cell[later])
    # thread pools run the work of the cell that submits it: that output stays
    run = run_cell(k4.kc, "from concurrent.futures import ThreadPoolExecutor\n"
                          "pool = ThreadPoolExecutor(2)\n"
                          "list(pool.map(print, ['pool first']))")
    assert printed_by(run.stream_text(), "pool first") == 4
    run = run_cell(k4.kc, "list(pool.map(lambda s: print(s), ['pool again']))\nbg.join()")
    text = run.stream_text()
    assert printed_by(text, "pool again") == 4 and "bg " not in text


def test_interrupt_in_the_middle_of_a_run_all(k4):
    cells = [f"print('before {i}')" for i in range(3)]
    cells.append("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    cells += [f"print('after {i}')" for i in range(5)]
    ids = [k4.kc.execute(code) for code in cells]
    seen, early = "", []
    deadline = time.monotonic() + 60
    while printed_by(seen, "sleeping") < 4:
        assert time.monotonic() < deadline, seen
        msg = k4.kc.get_iopub_msg(timeout=60)
        early.append(msg)
        if msg["msg_type"] == "stream":
            assert msg["parent_header"]["msg_id"] in ids[:4]
            seen += msg["content"]["text"]
    k4.km.interrupt_kernel()
    msgs = collect_all(k4.kc, ids, got=early)
    by_cell = per_cell(msgs, ids)
    results = replies(k4.kc, ids)
    assert [results[i]["status"] for i in ids] == ["ok"] * 3 + ["error"] + ["aborted"] * 5
    assert results[ids[3]]["ename"] == "KeyboardInterrupt"
    for i in range(3):
        assert printed_by(stream(by_cell[ids[i]]), f"before {i}") == 4
    for msg_id in ids[4:]:
        assert [m["msg_type"] for m in by_cell[msg_id]] == ["status", "status"]
    run = run_cell(k4.kc, "print('still here')")
    assert printed_by(run.stream_text(), "still here") == 4
