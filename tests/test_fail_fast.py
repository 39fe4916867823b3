"""The rank-side fail-fast mechanisms with real 4-rank kernels (gloo), end to end.

What the multiplexer will do (see README "Fail fast"): when a rank failed while
others still run, ask the running ones where they wait (``nbdist_stack_request``),
abort the process group on every rank (``nbdist_pg_abort_request``) so that the
blocked collectives raise, and once every rank is idle join a new world
(``nbdist_pg_reinit_request``). Here the test plays the multiplexer's part,
through clients connected straight to each rank's kernel.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from fault_harness import figure, install_spec
from rank_clients import ask, close_all, control_reply, control_request, rank_clients

from kernel_harness import collect_until_idle, iopub_until, printed_by, run_cell

RANKS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def manual4(kernel_prefix: Path) -> str:
    """4 ranks whose multiplexer leaves fail-fast to the test (fail_fast=False): these
    tests play the multiplexer's part on the rank side (tests/test_fail_fast_kernel.py
    checks the multiplexer's own)."""
    return install_spec(kernel_prefix, "nbdist-failfast-manual-4", 4, fail_fast=False)


@pytest.fixture(scope="module")
def spec_short_timeout(kernel_prefix: Path) -> str:
    return install_spec(kernel_prefix, "nbdist-failfast-ct3", 2, backend="gloo",
                        fail_fast=False,
                        collective_timeout=3)


def wait_for_error(client: Any, timeout: float = 120) -> float:
    """Time at which ``client``'s rank published an error on its own iopub."""
    for msg in iopub_until(client, timeout):
        if msg["msg_type"] == "error":
            return time.monotonic()
    raise TimeoutError("the rank published no error")


def wait_cell_done(client: Any, timeout: float = 120) -> None:
    """Until the rank's own iopub says idle after an execute_request."""
    for msg in iopub_until(client, timeout):
        if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                and msg["parent_header"].get("msg_type") == "execute_request"):
            return
    raise TimeoutError("the rank did not finish its cell")


def error_time(client: Any) -> float:
    """Wall time (the rank's clock) of the error its kernel published, already received."""
    for msg in iopub_until(client, 10):
        if msg["msg_type"] == "error":
            return float(msg["header"]["date"].timestamp())
    raise AssertionError("the rank published no error")


def reply_of(kc: Any, msg_id: str, timeout: float = 60) -> dict[str, Any]:
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return dict(reply["content"])


def abort_all(clients: dict[int, Any], reason: str) -> dict[int, dict[str, Any]]:
    ids = {r: control_request(c, "nbdist_pg_abort_request", {"reason": reason})
           for r, c in clients.items()}
    return {r: control_reply(clients[r], ids[r])["content"] for r in ids}


def reinit_all(clients: dict[int, Any], generation: int) -> dict[int, dict[str, Any]]:
    ids = {r: control_request(c, "nbdist_pg_reinit_request", {"generation": generation})
           for r, c in clients.items()}
    return {r: control_reply(clients[r], ids[r])["content"] for r in ids}


def assert_world_works(kc: Any, world: int, generation: int) -> None:
    run = run_cell(kc, "t = torch.ones(1)\ndist.all_reduce(t)\nprint('SUM', t.item())\n"
                       "%dist_status")
    assert run.status == "ok", run.reply["content"]
    text = run.stream_text()
    assert printed_by(text, f"SUM {float(world)}") == world, text
    assert printed_by(text, f"process group healthy (gloo, generation {generation})") == world, text


def test_failed_rank_frees_blocked_ranks_and_the_world_comes_back(start_kernel,
                                                                  manual4) -> None:
    rk = start_kernel(manual4)
    clients = rank_clients(rk.kc)
    try:
        assert run_cell(rk.kc, "import time, torch").status == "ok"
        msg_id = rk.kc.execute(
            "t = torch.ones(1)\n"
            "if rank == 2:\n"
            "    raise ValueError('rank 2 has a bug')\n"
            "try:\n"
            "    dist.all_reduce(t)\n"
            "finally:\n"
            "    raised_at = time.time()\n")
        failed_at = wait_for_error(clients[2])

        # where the others wait, answered while their main thread is blocked
        stacks = {r: ask(clients[r], "nbdist_stack_request") for r in RANKS}
        for r in (0, 1, 3):
            stack = stacks[r]
            assert stack["status"] == "ok" and stack["rank"] == r
            assert stack["busy"] and stack["in_collective"], stack
            assert stack["collective"] == "all_reduce", stack
            assert stack["where"].startswith("dist.all_reduce(t) at line 5 of In["), stack
            assert any(f["cell"] for f in stack["frames"])
        assert not stacks[2]["in_collective"]
        while ask(clients[2], "nbdist_stack_request")["busy"]:
            pass  # its error is out; the cell ends once IPython finished with it

        aborted_at, aborted_wall = time.monotonic(), time.time()
        aborts = abort_all(clients, "rank 2 failed")
        assert all(a["status"] == "ok" and a["aborted"] for a in aborts.values()), aborts
        iopub = collect_until_idle(rk.kc, msg_id, timeout=120)
        ended_at = time.monotonic()
        said = "".join(m["content"].get("text", "") for m in iopub if m["msg_type"] == "stream")
        assert "%dist_init" not in said  # an abort is not the user's destroy
        reply = reply_of(rk.kc, msg_id)
        assert reply["status"] == "error"
        assert reply["nbdist"]["failed_ranks"] == list(RANKS)
        published = {r: error_time(clients[r]) - aborted_wall for r in (0, 1, 3)}
        run = run_cell(rk.kc, "%%rank 0,1,3\nprint('RAISED', rank, raised_at)")
        raised = {int(r): float(t) - aborted_wall
                  for r, t in re.findall(r"RAISED (\d) (\S+)", run.stream_text())}
        assert sorted(raised) == [0, 1, 3], run.stream_text()
        figure("gloo, 4 ranks: abort request -> blocked collective raised "
               + ", ".join(f"rank {r} {t:.3f}s" for r, t in sorted(raised.items()))
               + "; -> error shown (IPython formats the traceback) "
               + ", ".join(f"rank {r} {t:.2f}s" for r, t in sorted(published.items())))
        figure(f"gloo, 4 ranks: abort request -> blocked ranks raised and cell ended "
               f"{ended_at - aborted_at:.2f}s (failure -> cell end {ended_at - failed_at:.2f}s, "
               "including the stack requests)")

        status = ask(clients[1], "nbdist_pg_status_request")
        assert status["state"] == "aborted" and status["detail"] == "rank 2 failed", status
        run = run_cell(rk.kc, "%dist_status")
        assert printed_by(run.stream_text(), "process group aborted: rank 2 failed") == 4

        started = time.monotonic()
        joined = reinit_all(clients, 1)
        assert all(j["status"] == "ok" and j["generation"] == 1 for j in joined.values()), joined
        figure(f"gloo, 4 ranks: re-rendezvous {time.monotonic() - started:.2f}s")
        assert_world_works(rk.kc, 4, 1)
        # variables survive: the ranks were never restarted
        run = run_cell(rk.kc, "print('T', t.item())")
        assert printed_by(run.stream_text(), "T 4.0") == 4
    finally:
        close_all(clients)


def test_collective_only_some_ranks_entered(start_kernel, manual4) -> None:
    """`if rank == 0: dist.barrier()`: rank 0 says where it waits; abort frees it."""
    rk = start_kernel(manual4)
    clients = rank_clients(rk.kc)
    try:
        msg_id = rk.kc.execute("x = rank\nif rank == 0:\n    dist.barrier()\n")
        # the other ranks finish; rank 0 reports its wait
        stack = ask(clients[0], "nbdist_stack_request")
        while not stack["in_collective"]:
            stack = ask(clients[0], "nbdist_stack_request")
        assert stack["collective"] == "barrier", stack
        assert stack["where"].startswith("dist.barrier() at line 3 of In["), stack
        assert "dist.barrier()" in stack["text"]
        for r in (1, 2, 3):
            while ask(clients[r], "nbdist_stack_request")["busy"]:
                pass  # each request is a round trip to the rank: no busy spin
        aborted_at = time.monotonic()
        abort_all(clients, "barrier entered by rank 0 only")
        collect_until_idle(rk.kc, msg_id, timeout=120)
        figure(f"gloo: barrier entered by one rank of 4, abort -> cell end "
               f"{time.monotonic() - aborted_at:.2f}s")
        reply = reply_of(rk.kc, msg_id)
        assert reply["status"] == "error" and reply["nbdist"]["failed_ranks"] == [0]
        reinit_all(clients, 1)
        assert_world_works(rk.kc, 4, 1)
        # a second failure and a second new world: generations are never reused
        abort_all(clients, "again")
        reinit_all(clients, 2)
        assert_world_works(rk.kc, 4, 2)
    finally:
        close_all(clients)


def test_status_tells_a_timed_out_group_is_broken(start_kernel, spec_short_timeout) -> None:
    rk = start_kernel(spec_short_timeout)
    clients = rank_clients(rk.kc)
    try:
        run = run_cell(rk.kc, "if rank == 1:\n    dist.barrier()\n")
        assert run.status == "error" and run.reply["content"]["nbdist"]["failed_ranks"] == [1]
        status = run_cell(rk.kc, "%dist_status").stream_text()
        assert "process group broken (gloo, generation 0): a collective failed" in status
        assert printed_by(status, "process group healthy") == 1, status  # rank 0 saw nothing wrong
        assert ask(clients[1], "nbdist_pg_status_request")["state"] == "broken"
        joined = reinit_all(clients, 7)
        assert all(j["status"] == "ok" for j in joined.values()), joined
        assert_world_works(rk.kc, 2, 7)
    finally:
        close_all(clients)


def test_bad_requests_answer_errors(start_kernel) -> None:
    rk = start_kernel("nbdist-test-2")  # no process group: torch never initialised
    clients = rank_clients(rk.kc)
    try:
        bad = ask(clients[0], "nbdist_pg_reinit_request", {"generation": "1"})
        assert bad["status"] == "error" and "generation" in bad["evalue"], bad
        idle = ask(clients[0], "nbdist_stack_request")
        assert idle["status"] == "ok" and not idle["busy"] and idle["frames"] == []
    finally:
        close_all(clients)


FAILING_SCRIPT = """\
import os, sys, time
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)  # everyone is up
if dist.get_rank() == 2:
    print("FAILED_AT", time.time(), flush=True)
    raise ValueError("rank 2 has a bug")
dist.all_reduce(t)
"""


@pytest.mark.slow
def test_torchrun_reference_on_the_same_failure(tmp_path: Path) -> None:
    """torchrun's fail-fast on the same code: the figure the kernel is compared with."""
    import subprocess
    import sys

    script = tmp_path / "fails.py"
    script.write_text(FAILING_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", str(script)],
        capture_output=True, text=True, timeout=600)
    exited = time.time()
    assert proc.returncode != 0
    assert "rank 2 has a bug" in proc.stderr
    failed_at = float(next(line.split()[1] for line in proc.stdout.splitlines()
                           if line.startswith("FAILED_AT")))
    figure(f"torchrun --nproc-per-node 4, same failure: failure -> torchrun exit "
           f"{exited - failed_at:.2f}s")


def test_interrupt_then_abort_frees_a_rank_stuck_in_a_collective(start_kernel,
                                                                   manual4) -> None:
    """SIGINT alone cannot stop a rank waiting in gloo's C++ wait; with the abort it can."""
    rk = start_kernel(manual4)
    clients = rank_clients(rk.kc)
    try:
        msg_id = rk.kc.execute("if rank == 3:\n    dist.barrier()\n")
        stack = ask(clients[3], "nbdist_stack_request")
        while not stack["in_collective"]:
            stack = ask(clients[3], "nbdist_stack_request")
        for r in (0, 1, 2):  # interrupt only once they are done (not mid-way in ipykernel)
            wait_cell_done(clients[r])
        rk.km.interrupt_kernel()
        # the interrupt was delivered, yet the rank still waits in the barrier
        assert ask(clients[3], "nbdist_stack_request")["in_collective"]
        abort_all(clients, "interrupted by the user")
        collect_until_idle(rk.kc, msg_id, timeout=120)
        reply = reply_of(rk.kc, msg_id)
        assert reply["status"] == "error" and reply["nbdist"]["failed_ranks"] == [3], reply
        reinit_all(clients, 1)
        assert_world_works(rk.kc, 4, 1)
    finally:
        close_all(clients)


def test_ddp_training_step_of_a_failed_peer(start_kernel, kernel_prefix: Path) -> None:
    """The everyday case: one rank's bug mid-epoch while the others wait in DDP's gradient
    all-reduce, inside ``loss.backward()`` (autograd, not torch.distributed, is on top of
    the stack); the DDP model holds the process group, so only the abort frees them."""
    rk = start_kernel(install_spec(kernel_prefix, "nbdist-failfast-ddp", 2, backend="gloo",
                                   fail_fast=False))
    clients = rank_clients(rk.kc)
    try:
        run = run_cell(rk.kc, "import torch\nfrom torch import nn\n"
                              "model = nn.parallel.DistributedDataParallel(nn.Linear(8, 1))\n"
                              "x = torch.randn(16, 8)")
        assert run.status == "ok", run.reply["content"]
        msg_id = rk.kc.execute("for step in range(3):\n"
                               "    if rank == 1 and step == 1:\n"
                               "        raise ValueError('bad batch on rank 1')\n"
                               "    model(x).sum().backward()\n")
        wait_for_error(clients[1])
        stack = ask(clients[0], "nbdist_stack_request")
        assert stack["busy"] and "backward() at line 4 of In[" in stack["where"], stack
        abort_all(clients, "rank 1 failed")
        collect_until_idle(rk.kc, msg_id, timeout=120)
        assert reply_of(rk.kc, msg_id)["nbdist"]["failed_ranks"] == [0, 1]
        reinit_all(clients, 1)
        assert_world_works(rk.kc, 2, 1)
        # a DDP model made in the new world trains again
        run = run_cell(rk.kc, "model = nn.parallel.DistributedDataParallel(nn.Linear(8, 1))\n"
                              "model(x).sum().backward()\nprint('STEP OK')")
        assert printed_by(run.stream_text(), "STEP OK") == 2, run.reply["content"]
    finally:
        close_all(clients)
