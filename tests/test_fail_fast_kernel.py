"""Fail fast through the multiplexer, as a user meets it: unattended runs, a collective
only some ranks enter, an interrupt of ranks stuck in a collective. Each ends within
seconds and leaves a working process group with the variables kept (issue 10)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from fault_harness import figure, install_spec
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from kernel_harness import collect_until_idle, iopub_until, printed_by, reply_to, run_cell

FAILING = ("import torch\nx = 41 + rank\nif rank == 1:\n    raise ValueError('rank 1 broke')\n"
           "t = torch.ones(1)\ndist.all_reduce(t)  # the others wait for rank 1\n")
AFTER = ("t = torch.ones(1)\ndist.all_reduce(t)\nprint('sum', t.item(), 'x', x)")


@pytest.fixture(scope="module")
def gloo4(kernel_prefix: Path) -> str:
    return install_spec(kernel_prefix, "nbdist-failfast-4", 4, backend="gloo")


def test_an_unattended_notebook_fails_fast_and_the_group_works_after(gloo4, tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(FAILING),
                                         nbformat.v4.new_code_cell(AFTER)])
    started = time.monotonic()
    client = NotebookClient(nb, kernel_name=gloo4, timeout=None, allow_errors=True)
    client.execute()
    took = time.monotonic() - started
    failed, after = nb.cells
    errors = [o for o in failed.outputs if o.output_type == "error"]
    assert any(e.ename == "ValueError" and "rank 1 broke" in e.evalue for e in errors)
    text = "".join(o.get("text", "") for o in failed.outputs if o.output_type == "stream")
    assert "rank 1 failed (ValueError: rank 1 broke)" in text
    assert "waits in dist.all_reduce(t)" in text and "process group made again" in text
    shown = "".join(o.get("text", "") for o in after.outputs if o.output_type == "stream")
    assert sorted(shown.splitlines()) == [f"[rank {r}] sum 4.0 x {41 + r}" for r in range(4)]
    figure(f"fail fast, nbclient, 4 gloo ranks: both cells in {took:.1f}s (start included)")
    # and nbclient's default (stop at the first error) raises at once, naming the ranks
    client = NotebookClient(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(FAILING)]),
                            kernel_name=gloo4, timeout=None)
    with pytest.raises(CellExecutionError, match="rank 1 broke"):
        client.execute()


def test_failure_to_cell_end_next_to_torchrun(start_kernel, gloo4, tmp_path):
    k = start_kernel(gloo4)
    run_cell(k.kc, "import torch")
    msg_id = k.kc.execute(FAILING)
    failed_at = None
    for msg in iopub_until(k.kc, 60):
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "error" and "rank 1 broke" in msg["content"]["evalue"]:
            failed_at = time.monotonic()
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    ended = time.monotonic()
    reply = reply_to(k.kc, msg_id)
    assert reply["content"]["ename"] == "ValueError"
    assert failed_at is not None
    run = run_cell(k.kc, AFTER)
    assert run.status == "ok", run.reply["content"]
    script = tmp_path / "failing.py"
    script.write_text("import os, torch, torch.distributed as dist\n"
                      "dist.init_process_group('gloo')\nrank = dist.get_rank()\n" + FAILING)
    started = time.monotonic()
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run",
                               "--nproc-per-node", "4", str(script)],
                              capture_output=True, text=True, timeout=300)
    torchrun_took = time.monotonic() - started
    assert torchrun.returncode != 0
    figure(f"fail fast, 4 gloo ranks: rank 1's error to the cell's end {ended - failed_at:.2f}s "
           f"(process group made again, variables kept); torchrun on the same code: "
           f"{torchrun_took:.2f}s from start to exit (start included)")
    assert ended - failed_at < 15


def test_a_barrier_only_some_ranks_enter_is_found_and_ended(start_kernel, gloo4):
    k = start_kernel(gloo4)
    run_cell(k.kc, "import torch\nkept = rank * 10")
    started = time.monotonic()
    run = run_cell(k.kc, "if rank == 0:\n    dist.barrier()\nprint('done')", timeout=120)
    took = time.monotonic() - started
    text = run.stream_text("stderr")
    assert ("ranks 1-3 finished the cell while rank 0 waits in dist.barrier() at line 2 of "
            "In[2]") in text, text
    assert "process group made again" in text
    after = run_cell(k.kc, "t = torch.ones(1)\ndist.all_reduce(t)\nprint(t.item(), kept)")
    assert sorted(after.stream_text().splitlines()) == [
        f"[rank {r}] 4.0 {r * 10}" for r in range(4)]
    figure(f"barrier entered by rank 0 only: found and ended after {took:.1f}s")
    assert took < 15


def test_one_interrupt_frees_ranks_stuck_in_a_collective(start_kernel, gloo4):
    k = start_kernel(gloo4)
    run_cell(k.kc, "import torch")
    # every rank waits to receive from its neighbour, which also only receives
    msg_id = k.kc.execute("t = torch.zeros(1)\nprint('waiting', flush=True)\n"
                          "dist.recv(t, src=(rank + 1) % world_size)")
    waiting = 0
    for msg in iopub_until(k.kc, 60):
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream"
                and "waiting" in msg["content"]["text"]):
            waiting += printed_by(msg["content"]["text"], "waiting")
            if waiting == 4:
                break
    interrupted = time.monotonic()
    k.km.interrupt_kernel()
    iopub = collect_until_idle(k.kc, msg_id, timeout=60)
    ended = time.monotonic()
    text = "".join(m["content"]["text"] for m in iopub
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
    assert "after the interrupt" in text and "waits in" in text, text
    assert "Interrupt again" not in text
    after = run_cell(k.kc, "t = torch.ones(1)\ndist.all_reduce(t)\nprint(t.item())")
    assert printed_by(after.stream_text(), "4.0") == 4
    figure(f"one interrupt of 4 ranks stuck in dist.recv: cell ended {ended - interrupted:.2f}s "
           f"later; process group made again")
    assert ended - interrupted < 15
