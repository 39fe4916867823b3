"""Comms, widgets and stdin of real rank kernels, driven like a frontend (issue 3, points 5-6)."""

from __future__ import annotations

import queue
import re
import time
from typing import Any

import pytest

from kernel_harness import (
    by_rank,
    collect_until_idle,
    drain_iopub,
    printed_by,
    reply_to,
    run_cell,
)


@pytest.fixture(scope="module")
def k4(start_module_kernel):
    return start_module_kernel("nbdist-test-4")


def lines_by_rank(text: str) -> dict[int, str]:
    """Each rank's (one) line; a "[ranks 0-3]" line counts for each of its ranks."""
    out = {}
    for rank, lines in by_rank(text).items():
        assert len(lines) == 1, (rank, lines)
        out[rank] = lines[0]
    return out


def send_shell(kc: Any, msg_type: str, content: dict[str, Any]) -> str:
    """Send a message a frontend sends without a helper in KernelClient (comm_open, comm_msg)."""
    msg = kc.session.msg(msg_type, content)
    kc.shell_channel.send(msg)
    return str(msg["header"]["msg_id"])


# -- 5. comms and widgets ---------------------------------------------------------


def test_widget_round_trip_reaches_only_the_rank_that_owns_the_model(k4):
    run = run_cell(k4.kc, "import ipywidgets as widgets\n"
                          "slider = widgets.IntSlider(value=rank)\n"
                          "print(slider.model_id)")
    assert run.status == "ok"
    model_ids = lines_by_rank(run.stream_text())
    assert sorted(model_ids) == [0, 1, 2, 3] and len(set(model_ids.values())) == 4
    opened = {m["content"]["comm_id"] for m in run.of_type("comm_open")}
    assert set(model_ids.values()) <= opened
    for m in run.of_type("comm_open"):
        assert m["content"]["target_name"] == "jupyter.widget"
    # comm_info is merged over the ranks
    info_id = k4.kc.comm_info(target_name="jupyter.widget")
    reply = reply_to(k4.kc, info_id, timeout=30)
    assert reply["msg_type"] == "comm_info_reply"
    assert set(model_ids.values()) <= set(reply["content"]["comms"])
    # the frontend moves rank 2's slider
    msg_id = send_shell(k4.kc, "comm_msg", {
        "comm_id": model_ids[2],
        "data": {"method": "update", "state": {"value": 42}, "buffer_paths": []}})
    iopub = collect_until_idle(k4.kc, msg_id, timeout=30)
    echoes = [m for m in iopub if m["msg_type"] == "comm_msg"]
    assert echoes and all(m["content"]["comm_id"] == model_ids[2] for m in echoes)
    run = run_cell(k4.kc, "print(slider.value)")
    assert lines_by_rank(run.stream_text()) == {0: "0", 1: "1", 2: "42", 3: "3"}
    # and a display of the widget is one view per rank
    run = run_cell(k4.kc, "slider")
    # (one Out[n]: the first rank's view is the result, the others' are displays)
    assert len(run.of_type("execute_result")) == 1
    views = [m for m in run.of_type("execute_result") + run.of_type("display_data")
             if "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
    assert sorted(v["content"]["metadata"]["nbdist"]["rank"] for v in views) == [0, 1, 2, 3]
    for v in views:
        data = v["content"]["data"]["application/vnd.jupyter.widget-view+json"]
        assert data["model_id"] == model_ids[v["content"]["metadata"]["nbdist"]["rank"]]


def test_tqdm_auto_widget_bars_from_every_rank(k4):
    run = run_cell(k4.kc, "from tqdm.auto import tqdm\n"
                          "for i in tqdm(range(20), desc=f'rank{rank}'):\n"
                          "    pass\n")
    assert run.status == "ok", run.reply["content"]
    views = [m for m in run.of_type("display_data")
             if "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
    assert sorted(m["content"]["metadata"]["nbdist"]["rank"] for m in views) == [0, 1, 2, 3]
    opened = {m["content"]["comm_id"] for m in run.of_type("comm_open")}
    for m in views:
        assert m["content"]["data"]["application/vnd.jupyter.widget-view+json"][
            "model_id"] in opened
    # the bars move through comm messages of the models the ranks opened
    updates = [m for m in run.of_type("comm_msg") if m["content"]["comm_id"] in opened]
    assert any("20/20" in str(m["content"]["data"]) for m in updates)
    assert not run.stream_text("stderr")  # no text bars besides the widgets


def test_frontend_opened_comm_reaches_every_rank_and_one_rank_answers(k4):
    run = run_cell(k4.kc, "import comm\n"
                          "got = []\n"
                          "def _opened(c, msg):\n"
                          "    got.append(msg['content']['data']['hello'])\n"
                          "    c.on_msg(lambda m: (got.append(m['content']['data']['n']),"
                          " c.send({'rank': rank, 'n': m['content']['data']['n']})))\n"
                          "comm.get_comm_manager().register_target('nbdist_test', _opened)")
    assert run.status == "ok", run.reply["content"]
    comm_id = "frontend-comm-1"
    open_id = send_shell(k4.kc, "comm_open", {"comm_id": comm_id, "target_name": "nbdist_test",
                                              "data": {"hello": "world"}})
    collect_until_idle(k4.kc, open_id, timeout=30)
    msg_id = send_shell(k4.kc, "comm_msg", {"comm_id": comm_id, "data": {"n": 7}})
    answers = [m for m in collect_until_idle(k4.kc, msg_id, timeout=30)
               if m["msg_type"] == "comm_msg"]
    # every rank got it, but the frontend gets exactly one answer (as from one kernel)
    assert [m["content"]["data"] for m in answers] == [{"rank": 0, "n": 7}]
    assert answers[0]["content"]["comm_id"] == comm_id
    late = [m for m in drain_iopub(k4.kc) if m["msg_type"] == "comm_msg"]
    assert late == []
    run = run_cell(k4.kc, "print(got)")
    assert lines_by_rank(run.stream_text()) == {r: "['world', 7]" for r in range(4)}


# -- 6. stdin ---------------------------------------------------------------------


def test_concurrent_input_and_getpass_are_queued_and_answered_per_rank(k4):
    msg_id = k4.kc.execute(
        "import getpass\n"
        "print('asking', flush=True)\n"
        "name = input(f'name of {rank}? ')\n"
        "secret = getpass.getpass(f'secret of {rank}: ')\n"
        "print(name, secret)", allow_stdin=True)
    # every rank is asking before anything is answered
    seen = ""
    deadline = time.monotonic() + 60
    while printed_by(seen, "asking") < 4:
        assert time.monotonic() < deadline, seen
        msg = k4.kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            seen += msg["content"]["text"]
    prompts = []
    for _ in range(8):
        msg = k4.kc.get_stdin_msg(timeout=30)
        assert msg["parent_header"]["msg_id"] == msg_id
        prompt = msg["content"]["prompt"]
        m = re.fullmatch(r"\[rank (\d)\] (name|secret) of (\d)(\? |: )", prompt)
        assert m and m.group(1) == m.group(3), prompt
        assert msg["content"]["password"] is (m.group(2) == "secret")
        if not prompts:
            # one prompt at a time: the others wait in the multiplexer's queue
            with pytest.raises(queue.Empty):
                k4.kc.get_stdin_msg(timeout=0.3)
        prompts.append(prompt)
        k4.kc.input(f"{m.group(2)}-{m.group(1)}")
    iopub = collect_until_idle(k4.kc, msg_id, timeout=30)
    reply = reply_to(k4.kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "ok", reply["content"]
    text = "".join(m["content"]["text"] for m in iopub if m["msg_type"] == "stream")
    answers = lines_by_rank("".join(line + "\n" for line in (seen + text).splitlines()
                                    if not line.endswith("] asking")))
    assert answers == {r: f"name-{r} secret-{r}" for r in range(4)}
    assert len(set(prompts)) == 8


def test_input_without_allow_stdin_fails_cleanly(k4):
    run = run_cell(k4.kc, "input('never shown')", allow_stdin=False)
    assert run.status == "error"
    assert run.reply["content"]["ename"] == "StdinNotImplementedError"
