"""Output of real rank kernels as a frontend sees it, through jupyter_client and nbclient.

Issue 3, points 1-4 and 7: prefixed streams (template, partial lines, stdout/stderr,
C-level and subprocess output), output that arrives while the cell runs, tqdm bars in
one live display, rich outputs merged or labelled, rank display ids, clear_output,
matplotlib, ``%%rank``, ``%rank_output``, the ``output_ranks`` setting, ``%dist_status``.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from kernel_harness import (
    RANK_LABEL,
    CellRun,
    by_rank,
    collect_until_idle,
    iopub_until,
    labelled,
    run_cell,
)

TQDM_CELL = """\
from tqdm import tqdm
import time
for i in tqdm(range(40), desc=f"rank{rank}", ncols=70, mininterval=0):
    time.sleep(0.01)
    if i % 10 == 9:
        print(f"checkpoint {i} on rank {rank}")
"""


@pytest.fixture(scope="module")
def k4(start_module_kernel):
    """One 4-rank kernel shared by the tests of this module that need no special settings."""
    return start_module_kernel("nbdist-test-4")


def wait_for_stream(kc: Any, msg_id: str, done: Any, timeout: float = 60) -> str:
    """Stream text of ``msg_id`` received until ``done(text)``; fails on the cell's idle."""
    text = ""
    messages = iopub_until(kc, timeout)
    while not done(text):
        msg = next(messages, None)
        assert msg is not None, f"timed out; stream so far: {text!r}"
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        assert not (msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "idle"), \
            f"cell ended before the condition held; stream: {text!r}"
        if msg["msg_type"] == "stream":
            text += msg["content"]["text"]
    return text


def finish(kc: Any, msg_id: str) -> CellRun:
    """The rest of a cell whose first stream text was read by ``wait_for_stream``."""
    iopub = collect_until_idle(kc, msg_id)
    reply = kc.get_shell_msg(timeout=60)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=60)
    return CellRun(msg_id, reply, iopub)


# -- 1. streams -----------------------------------------------------------------------


def test_c_level_subprocess_stderr_and_partial_lines_reach_the_cell(k4, tmp_path):
    gate = tmp_path / "gate"
    code = f"""\
import ctypes, os, subprocess, sys, time
print(f"part{{rank}}", end="")
while not os.path.exists({str(gate)!r}):
    time.sleep(0.005)
print(" done")
os.write(1, b"fd-out\\n")
libc = ctypes.CDLL(None)
libc.printf(b"printf %d\\n", rank)
libc.fflush(None)
subprocess.run(["echo", f"sub{{rank}}"], check=True)
sys.stderr.write(f"err{{rank}}\\n")
os.write(2, b"fd-err\\n")
"""
    msg_id = k4.kc.execute(code)
    # a partial line (no newline, no flush) reaches the frontend while the cell waits
    early = wait_for_stream(k4.kc, msg_id, lambda t: all(f"part{r}" in t for r in range(4)))
    gate.touch()
    run = finish(k4.kc, msg_id)
    assert run.status == "ok", run.reply["content"]
    out = by_rank(early + run.stream_text("stdout"))
    err = by_rank(run.stream_text("stderr"))
    assert sorted(out) == sorted(err) == [0, 1, 2, 3]
    for r in range(4):
        # the partial line and its end, possibly split by another rank's line
        assert "".join(out[r]).startswith(f"part{r} done"), out[r]
        assert {"fd-out", f"printf {r}", f"sub{r}"} <= set(out[r]), out[r]
        assert sorted(err[r]) == sorted([f"err{r}", "fd-err"]), err[r]


def test_prefix_template_setting_and_output_ranks_setting(start_kernel, monkeypatch):
    monkeypatch.setenv("NBDIST_STREAM_PREFIX", "<{rank}/{local_rank}@{host}> ")
    monkeypatch.setenv("NBDIST_OUTPUT_RANKS", "1")
    k = start_kernel("nbdist-test-2")
    host = socket.gethostname()
    run = run_cell(k.kc, "print('hi', rank)\nimport sys; print('oops', file=sys.stderr)\nrank")
    assert run.stream_text() == f"<1/1@{host}> hi 1\n"
    assert run.stream_text("stderr") == f"<1/1@{host}> oops\n"
    [result] = run.of_type("execute_result")
    assert result["content"]["data"]["text/plain"] == "1"  # only rank 1 shown: no label
    assert result["content"]["metadata"]["nbdist"]["ranks"] == [1]
    # errors of hidden ranks stay visible, labelled
    run = run_cell(k.kc, "if rank == 0:\n    raise ValueError('hidden rank fails')")
    assert run.status == "error"
    [error] = run.of_type("error")
    assert error["content"]["metadata"]["nbdist"]["rank"] == 0
    assert error["content"]["traceback"][0] == "[rank 0]"
    # the line magic overrides the setting
    run = run_cell(k.kc, "%rank_output all")
    assert run.status == "ok" and "ranks 0-1" in run.stream_text()
    run = run_cell(k.kc, "print('hi', rank)")
    assert sorted(run.stream_text().splitlines()) == [f"<{r}/{r}@{host}> hi {r}" for r in (0, 1)]


def test_empty_prefix_turns_labels_off(start_kernel, monkeypatch):
    monkeypatch.setenv("NBDIST_STREAM_PREFIX", "")
    k = start_kernel("nbdist-test-2")
    run = run_cell(k.kc, "print('plain', rank)")
    assert sorted(run.stream_text().splitlines()) == ["plain 0", "plain 1"]


# -- 2. latency: output arrives while the cell runs ----------------------------------


def test_prints_arrive_while_the_cell_is_still_running(k4, tmp_path):
    gate = tmp_path / "go"
    msg_id = k4.kc.execute(
        f"import os, time\nprint(f'tick {{rank}}')\n"
        f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.005)\n"
        f"print(f'tock {{rank}}')")
    # plain print(), no flush=True: the 10 ms flush interval of the ranks delivers it
    early = wait_for_stream(k4.kc, msg_id, lambda t: all(f"tick {r}" in t for r in range(4)))
    assert "tock" not in early
    gate.touch()
    run = finish(k4.kc, msg_id)
    assert run.status == "ok"
    assert sorted(by_rank(early + run.stream_text())) == [0, 1, 2, 3]
    assert run.stream_text().count("tock") == 4  # (tock 0, tock 1, ...: they differ)


# -- 3. carriage-return progress ------------------------------------------------------


def _assert_tqdm_run(run: CellRun) -> None:
    assert run.status == "ok", run.reply["content"]
    shows = [m for m in run.outputs if m["msg_type"] in ("display_data", "update_display_data")]
    assert shows and shows[0]["msg_type"] == "display_data"
    assert [m["msg_type"] for m in shows[1:]] == ["update_display_data"] * (len(shows) - 1)
    assert len(shows) >= 3, "the bars should animate"
    ids = {m["content"]["transient"]["display_id"] for m in shows}
    assert len(ids) == 1, ids
    for m in shows:
        assert m["content"]["metadata"]["nbdist"]["progress"] is True
        for line in m["content"]["data"]["text/plain"].splitlines():
            rank, text = RANK_LABEL.match(line).groups()
            # a bar line carries only its own rank's bar
            assert text.startswith(f"rank{rank}: ") and "\r" not in text, line
            assert "checkpoint" not in text
    # all four bars were live at once at some point
    assert any(len(m["content"]["data"]["text/plain"].splitlines()) == 4 for m in shows)
    # ordinary prints flowed as labelled lines, none broken by a bar
    out = by_rank(run.stream_text("stdout"))
    for r in range(4):
        assert out[r] == [f"checkpoint {i} on rank {r}" for i in (9, 19, 29, 39)]
    # the final bars stay where they ran, in the live display, one line per rank; none
    # is moved below as stderr text
    final = by_rank(shows[-1]["content"]["data"]["text/plain"])
    for r in range(4):
        assert len(final[r]) == 1 and final[r][0].startswith(f"rank{r}: 100%|"), final
        assert "40/40" in final[r][0]
    assert run.stream_text("stderr") == ""


def test_tqdm_bars_animate_in_one_live_display(k4):
    run = run_cell(k4.kc, TQDM_CELL)
    _assert_tqdm_run(run)


def test_tqdm_notebook_through_nbclient(tmp_path):
    nb = new_notebook(cells=[new_code_cell(TQDM_CELL), new_code_cell("print('next')")])
    NotebookClient(nb, kernel_name="nbdist-test-4", timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.validate(nb)
    outputs = nb.cells[0].outputs
    texts = {name: "".join(o["text"] for o in outputs
                           if o["output_type"] == "stream" and o["name"] == name)
             for name in ("stdout", "stderr")}
    out = by_rank(texts["stdout"])
    for r in range(4):
        assert out[r] == [f"checkpoint {i} on rank {r}" for i in (9, 19, 29, 39)]
    assert texts["stderr"] == ""
    # the live display was updated in place: one output, with every rank's final bar
    displays = [o for o in outputs if o["output_type"] == "display_data"]
    assert len(displays) == 1
    final = by_rank(displays[0]["data"]["text/plain"])
    assert all(len(final[r]) == 1 and "40/40" in final[r][0] for r in range(4)), final
    # printed identically by every rank: shown once
    assert "".join(o["text"] for o in nb.cells[1].outputs) == "[ranks 0-3] next\n"
    nbformat.write(nb, tmp_path / "tqdm.ipynb")


# -- 4. rich output -------------------------------------------------------------------


def test_identical_rich_output_once_differing_per_rank(k4):
    run = run_cell(k4.kc, "from IPython.display import HTML, display\n"
                          "display(HTML('<b>same</b>'))\n"
                          "display(HTML(f'<b>rank {rank}</b>'))\n"
                          "6 * 7")
    assert run.status == "ok"
    displays = run.of_type("display_data")
    same = [d for d in displays if d["content"]["data"]["text/html"] == "<b>same</b>"]
    assert len(same) == 1
    assert same[0]["content"]["data"]["text/plain"] == "<IPython.core.display.HTML object>"
    assert same[0]["content"]["metadata"]["nbdist"]["ranks"] == [0, 1, 2, 3]
    # the differing ones: one composite, each rank's HTML under its caption
    [composite] = [d for d in displays if d not in same]
    html = composite["content"]["data"]["text/html"]
    for r in range(4):
        assert f"<b>rank {r}</b>" in html and f">rank {r}</figcaption>" in html
    kept = composite["content"]["metadata"]["nbdist"]["outputs"]
    assert [(k["ranks"], k["data"]["text/html"]) for k in kept] == [
        ([r], f"<b>rank {r}</b>") for r in range(4)]
    [result] = run.of_type("execute_result")
    assert result["content"]["data"] == {"text/plain": "42"}
    assert result["content"]["metadata"]["nbdist"]["ranks"] == [0, 1, 2, 3]
    run = run_cell(k4.kc, "rank * 10")
    [result] = run.of_type("execute_result")  # one Out[n]
    assert result["content"]["data"]["text/plain"].splitlines() == [
        f"[rank {r}] {r * 10}" for r in range(4)]
    assert result["content"]["execution_count"] == run.reply["content"]["execution_count"]


def test_display_ids_are_per_rank_and_handles_update_from_a_later_cell(k4):
    run = run_cell(k4.kc, "h = display(f'start {rank}', display_id='mine')")
    ids = {m["content"]["metadata"]["nbdist"]["rank"]: m["content"]["transient"]["display_id"]
           for m in run.of_type("display_data")}
    assert len(set(ids.values())) == 4 and sorted(ids) == [0, 1, 2, 3]
    run = run_cell(k4.kc, "h.update(f'new {rank}')")
    updates = run.of_type("update_display_data")
    assert len(updates) == 4
    for m in updates:
        r = m["content"]["metadata"]["nbdist"]["rank"]
        assert m["content"]["transient"]["display_id"] == ids[r]
        assert m["content"]["data"]["text/plain"] == f"[rank {r}] 'new {r}'"


def test_clear_output_clears_only_the_ranks_own_output(k4):
    run = run_cell(k4.kc, "from IPython.display import clear_output\n"
                          "import time\n"
                          "for i in range(3):\n"
                          "    clear_output(wait=True)\n"
                          "    print(f'step {i} of rank {rank}')\n"
                          "    time.sleep(0.02)\n")
    assert run.status == "ok"
    view = frontend_view(run)
    # what the frontend shows at the end: each rank's last step, once
    text = "".join(o["text"] for o in view if o["output_type"] == "stream")
    assert sorted(text.splitlines()) == [f"[rank {r}] step 2 of rank {r}" for r in range(4)]


def frontend_view(run: CellRun) -> list[dict[str, Any]]:
    """Apply a cell's messages the way a notebook frontend does (clear_output included)."""
    outputs: list[dict[str, Any]] = []
    pending_clear = False
    for m in run.outputs:
        t, c = m["msg_type"], m["content"]
        if t == "clear_output":
            if c.get("wait"):
                pending_clear = True
            else:
                outputs.clear()
            continue
        if pending_clear and t != "update_display_data":
            outputs.clear()
            pending_clear = False
        if t == "stream":
            if outputs and outputs[-1]["output_type"] == "stream" \
                    and outputs[-1]["name"] == c["name"]:
                outputs[-1]["text"] += c["text"]
            else:
                outputs.append({"output_type": "stream", "name": c["name"], "text": c["text"]})
        elif t in ("display_data", "execute_result", "error"):
            outputs.append({"output_type": t, **c})
        elif t == "update_display_data":
            for o in outputs:
                if (o.get("transient") or {}).get("display_id") == c["transient"]["display_id"]:
                    o["data"] = c["data"]
                o["metadata"] = c["metadata"]
    return outputs


def test_matplotlib_inline_figures_from_every_rank(k4):
    run = run_cell(k4.kc, "%matplotlib inline\nimport matplotlib.pyplot as plt\n"
                          "plt.plot([0, rank + 1])\nplt.show()")
    assert run.status == "ok", run.reply["content"]
    # one grid of the four figures, each rank's own image kept in the metadata
    shown = frontend_view(run)
    [grid] = [o for o in shown if o["output_type"] == "display_data"]
    assert grid["data"]["text/html"].count("<img ") == 4
    kept = grid["metadata"]["nbdist"]["outputs"]
    assert [k["ranks"] for k in kept] == [[0], [1], [2], [3]]
    assert len({k["data"]["image/png"] for k in kept}) == 4


# -- 7. rank selection ---------------------------------------------------------------


def test_rank_cell_magic_runs_on_the_named_ranks_only(k4):
    for spec, ranks in (("0", [0]), ("0,2", [0, 2]), ("1-3", [1, 2, 3])):
        run = run_cell(k4.kc, f"%%rank {spec}\nsel = '{spec}'\nprint('on', rank)")
        assert run.status == "ok"
        assert sorted(by_rank(run.stream_text())) == ranks
    run = run_cell(k4.kc, "print(globals().get('sel'))")
    assert {r: v[0] for r, v in by_rank(run.stream_text()).items()} == {
        0: "0,2", 1: "1-3", 2: "1-3", 3: "1-3"}
    run = run_cell(k4.kc, "%%rank 7\nprint('never')")
    assert run.status == "error" and "outside" in run.reply["content"]["evalue"]


def test_rank_output_magic_filters_output_but_not_errors(k4):
    run = run_cell(k4.kc, "%rank_output 0,2")
    assert run.status == "ok"
    assert run.stream_text() == "[nbdist] showing output of ranks 0,2 (errors of every rank " \
                                "are always shown)\n"
    assert run.reply["content"]["execution_count"] > 0
    try:
        run = run_cell(k4.kc, "print('visible?', rank)\nrank")
        assert sorted(by_rank(run.stream_text())) == [0, 2]
        [result] = run.of_type("execute_result")
        assert result["content"]["metadata"]["nbdist"]["ranks"] == [0, 2]
        run = run_cell(k4.kc, "if rank == 3:\n    raise RuntimeError('rank 3 fails')")
        assert run.status == "error" and "rank 3" in run.reply["content"]["evalue"]
        [error] = run.of_type("error")
        assert error["content"]["metadata"]["nbdist"]["rank"] == 3
        # on the first line of a code cell, the rest of the cell still runs
        run = run_cell(k4.kc, "%rank_output 1\nprint('after', rank)")
        assert run.stream_text() == "[rank 1] after 1\n"
        run = run_cell(k4.kc, "%rank_output 9")
        assert run.status == "error" and "outside" in run.reply["content"]["evalue"]
        # in the middle of a cell a rank explains where the magic goes
        run = run_cell(k4.kc, "x = 1\n%rank_output 0")
        assert run.status == "error" and "first line" in run.reply["content"]["evalue"]
    finally:
        run = run_cell(k4.kc, "%rank_output all")
    assert run.status == "ok"
    assert sorted(by_rank(run_cell(k4.kc, "print(rank)").stream_text())) == [0, 1, 2, 3]


def test_dist_status_lists_every_rank(k4):
    run = run_cell(k4.kc, "%dist_status")
    assert run.status == "ok"
    lines = by_rank(run.stream_text())
    rank_pids = set(k4.pids()) - {k4.mux_pid}
    host = socket.gethostname()
    assert sorted(lines) == [0, 1, 2, 3]
    for r, (line,) in lines.items():
        m = re.search(r"pid (\d+) host (\S+) device (\S+) rss (\d+) MiB", line)
        assert m and line.startswith(f"rank {r}/4 "), line
        assert int(m.group(1)) in rank_pids and m.group(2) == host and m.group(3) == "cpu"


# -- property: any writes of any ranks come out whole, in order, under the right label --

_OPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["stdout", "stderr"]),
                  st.text(alphabet="x\n", min_size=1, max_size=12)),
        st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.02, 0.05]))),
    max_size=8)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plans=st.lists(_OPS, min_size=4, max_size=4))
def test_any_writes_arrive_once_in_order_with_the_right_label(k4, plans):
    # rank r writes only the letter chr(ord('a') + r) (the plan's "x"), so a leak shows
    code = ("import sys, time\n"
            f"for kind, arg in {plans!r}[rank]:\n"
            "    if kind == 'sleep':\n"
            "        time.sleep(arg)\n"
            "    else:\n"
            "        s = getattr(sys, kind)\n"
            "        s.write(arg.replace('x', chr(ord('a') + rank)))\n"
            "        s.flush()\n")
    run = run_cell(k4.kc, code)
    assert run.status == "ok", run.reply["content"]
    assert not run.of_type("display_data")
    for name in ("stdout", "stderr"):
        got: dict[int, str] = {}
        for line in run.stream_text(name).split("\n"):
            if not line:
                continue
            m = labelled(line)
            assert m, (name, line)
            ranks, text = m
            if len(ranks) > 1:
                assert text == "", (name, line)  # only empty lines can be identical
                continue
            r = ranks[0]
            assert set(text) <= {chr(ord("a") + r)}, (name, line)
            got[r] = got.get(r, "") + text
        want = {r: "".join(arg for kind, arg in plan if kind == name).replace("\n", "")
                for r, plan in enumerate(plans)}
        want = {r: text.replace("x", chr(ord("a") + r)) for r, text in want.items() if text}
        assert {r: t for r, t in got.items() if t} == want, (name, run.stream_text(name))
