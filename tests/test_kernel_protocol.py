"""The multi-rank kernel through jupyter_client, asserting what a frontend receives."""

from __future__ import annotations

import os
import signal

import pytest

from nbdist_provisioner.rankset import parse_rank_set

from kernel_harness import drain_iopub, reply_to, run_cell, wait_gone


def assert_frontend_order(run) -> None:
    """busy first, idle last, exactly one each, everything parented to the request."""
    states = [m["content"]["execution_state"] for m in run.iopub if m["msg_type"] == "status"]
    assert states == ["busy", "idle"], states
    assert run.iopub[0]["msg_type"] == "status"
    assert run.iopub[-1]["msg_type"] == "status"
    assert all(m["parent_header"]["msg_id"] == run.msg_id for m in run.iopub)
    assert run.reply["parent_header"]["msg_id"] == run.msg_id
    assert len(run.of_type("execute_input")) == 1


def ranks_saying(text: str, said: str) -> set[int]:
    """The ranks whose lines in ``text`` say ``said`` (``[rank 1]`` or merged ``[ranks 0-3]``
    lines: identical lines of several ranks come once)."""
    ranks: set[int] = set()
    for line in text.splitlines():
        label, _, rest = line.partition("] ")
        if rest == said:
            ranks.update(parse_rank_set(label.split(" ", 1)[1], 1024))
    return ranks


def test_each_rank_sees_its_own_environment(start_kernel):
    k = start_kernel("nbdist-test-4")
    run = run_cell(k.kc, "import os\nprint(os.environ['RANK'], os.environ['WORLD_SIZE'], "
                         "os.environ['LOCAL_RANK'], os.environ['LOCAL_WORLD_SIZE'], "
                         "os.environ['GROUP_RANK'], os.environ['MASTER_ADDR'], "
                         "os.environ['OMP_NUM_THREADS'], rank, world_size, local_rank)")
    assert run.status == "ok"
    assert_frontend_order(run)
    lines = sorted(run.stream_text().splitlines())
    assert lines == [f"[rank {r}] {r} 4 {r} 4 0 127.0.0.1 1 {r} 4 {r}" for r in range(4)]


def test_all_reduce_across_four_ranks(start_kernel):
    k = start_kernel("nbdist-test-4-torch")
    run = run_cell(k.kc, "import torch\nt = torch.tensor([float(rank + 1)])\n"
                         "dist.all_reduce(t)\nprint(dist.is_initialized(), "
                         "dist.get_world_size(), dist.get_rank() == rank, t.item())")
    assert run.status == "ok", run.reply
    assert ranks_saying(run.stream_text(), "True 4 True 10.0") == {0, 1, 2, 3}
    # The process group persists between cells, as state does.
    run = run_cell(k.kc, "t.item() * 2")
    results = run.of_type("execute_result")
    assert len(results) == 1 and results[0]["content"]["data"]["text/plain"] == "20.0"
    assert results[0]["content"]["metadata"]["nbdist"]["ranks"] == [0, 1, 2, 3]


def test_one_reply_one_count_and_merged_errors(start_kernel):
    k = start_kernel("nbdist-test-4")
    first = run_cell(k.kc, "x = 1")
    second = run_cell(k.kc, "x + 1")
    assert first.reply["content"]["execution_count"] == 1
    assert second.reply["content"]["execution_count"] == 2
    assert second.of_type("execute_result")[0]["content"]["execution_count"] == 2
    failed = run_cell(k.kc, "if rank in (1, 3):\n    raise ValueError(f'bad {rank}')")
    assert_frontend_order(failed)
    content = failed.reply["content"]
    assert content["status"] == "error"
    assert content["ename"] == "ValueError"
    assert "ranks 1,3" in content["evalue"]
    errors = failed.of_type("error")
    assert sorted(e["content"]["metadata"]["nbdist"]["rank"] for e in errors) == [1, 3]
    # nothing arrives for the request after its idle
    late = [m for m in drain_iopub(k.kc)
            if m["parent_header"].get("msg_id") == failed.msg_id]
    assert late == []


def test_queued_cells_after_an_error_are_aborted(start_kernel):
    k = start_kernel("nbdist-test-2")
    ids = [k.kc.execute("raise RuntimeError('stop')"), k.kc.execute("print('never')")]
    replies = {}
    while len(replies) < 2:
        msg = k.kc.get_shell_msg(timeout=60)
        if msg["parent_header"]["msg_id"] in ids:
            replies[msg["parent_header"]["msg_id"]] = msg["content"]["status"]
    assert replies == {ids[0]: "error", ids[1]: "aborted"}


def test_kernel_info_is_answered_by_the_multiplexer(start_kernel):
    k = start_kernel("nbdist-test-2")
    msg_id = k.kc.kernel_info()
    reply = reply_to(k.kc, msg_id, timeout=10)
    assert reply["content"]["implementation"] == "nbdist"
    assert reply["content"]["language_info"]["name"] == "python"


def test_completion_and_inspection_come_from_the_primary_rank(start_kernel):
    k = start_kernel("nbdist-test-2")
    run_cell(k.kc, "some_distinct_name = 3")
    msg_id = k.kc.complete("some_disti", 10)
    reply = reply_to(k.kc, msg_id, timeout=30)
    assert "some_distinct_name" in reply["content"]["matches"]
    msg_id = k.kc.inspect("some_distinct_name", 5)
    reply = reply_to(k.kc, msg_id, timeout=30)
    assert reply["content"]["found"]
    msg_id = k.kc.is_complete("for i in range(3):")
    reply = reply_to(k.kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "incomplete"


@pytest.mark.parametrize("mode", ["signal", "message"])
def test_interrupt_reaches_every_rank(start_kernel, mode):
    k = start_kernel("nbdist-test-4")
    if mode == "message":
        k.km.kernel_spec.interrupt_mode = "message"
    msg_id = k.kc.execute("import time\nprint('start', flush=True)\n"
                          "try:\n    time.sleep(600)\nexcept KeyboardInterrupt:\n"
                          "    print('interrupted', flush=True)\n    raise\n")
    seen = ""
    while ranks_saying(seen, "start") != {0, 1, 2, 3}:
        msg = k.kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream":
            seen += msg["content"]["text"]
    k.km.interrupt_kernel()
    reply = reply_to(k.kc, msg_id, timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert "ranks 0-3" in reply["content"]["evalue"]
    # still usable afterwards
    assert ranks_saying(run_cell(k.kc, "print('alive')").stream_text(), "alive") == {
        0, 1, 2, 3}


def test_restart_gives_fresh_ranks_and_leaves_nothing_behind(start_kernel):
    k = start_kernel("nbdist-test-4")
    run_cell(k.kc, "x = 42")
    before = k.pids()
    assert len(before) >= 5  # multiplexer + 4 ranks
    k.km.restart_kernel(now=False)
    k.kc.wait_for_ready(timeout=120)
    assert wait_gone(before) == []
    run = run_cell(k.kc, "print('x' in dir())")
    assert ranks_saying(run.stream_text(), "False") == {0, 1, 2, 3}


def test_sigkill_of_the_multiplexer_takes_the_ranks_down(start_kernel):
    k = start_kernel("nbdist-test-2")
    run_cell(k.kc, "pass")  # (the ranks are up)
    pids = k.pids()
    rest = [p for p in pids if p != k.mux_pid]
    assert len(rest) == 3  # the agent and 2 ranks
    os.kill(k.mux_pid, signal.SIGKILL)
    assert wait_gone(rest, timeout=10) == []


def test_rank_connection_files_are_fresh_and_gone_once_the_ranks_run(start_kernel):
    """ipykernel loads an existing connection file (key, ports); its default name,
    kernel-<pid>.json, is left behind by every killed kernel. A rank whose pid was
    reused would sign with a stale key, and the kernel's first cell would hang. And a
    connection file holds the rank's key: none may stay on disk."""
    k = start_kernel("nbdist-test-2")
    run = run_cell(k.kc, "from ipykernel.kernelapp import IPKernelApp\n"
                         "print(IPKernelApp.instance().abs_connection_file)")
    paths = [line.split("] ", 1)[1] for line in run.stream_text().splitlines()]
    assert len(set(paths)) == 2
    folder = os.path.dirname(paths[0])
    assert all(os.path.dirname(p) == folder for p in paths)
    assert os.path.basename(folder).startswith(f"nbdist-{k.mux_pid}-")
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert not any(os.path.exists(p) for p in paths)
    k.km.shutdown_kernel(now=False)
    assert not os.path.exists(folder)


def test_a_ranks_stderr_and_stdout_keep_the_order_they_were_written_in(start_kernel):
    # ipykernel flushes each stream on its own; at a cell's end stdout goes first, so
    # tqdm's closing newline on stderr used to come after the next print
    k = start_kernel("nbdist-test-2")
    run = run_cell(k.kc, "import sys\nfor i in range(3):\n"
                         "    sys.stderr.write(f'err {i}\\n')\n    print(f'out {i}')")
    assert run.status == "ok"
    per_rank: dict[int, list[str]] = {0: [], 1: []}
    for m in run.of_type("stream"):
        for line in m["content"]["text"].splitlines():
            label, text = line.split("] ", 1)
            ranks = (0, 1) if label == "[ranks 0-1" else (int(label.split()[-1]),)
            for r in ranks:
                per_rank[r].append(text)
    expected = [f"{kind} {i}" for i in range(3) for kind in ("err", "out")]
    assert per_rank == {0: expected, 1: expected}, per_rank
