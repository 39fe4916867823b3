"""The fail-fast mechanisms on NCCL: needs a CUDA build of torch and at least 2 GPUs.

Skipped elsewhere. On a GPU machine (a CUDA torch in .venv):

    .venv/bin/python -m pytest -q -s tests/test_nccl_fail_fast.py

What differs from gloo: NCCL collectives are asynchronous, so a rank waiting for
a failed peer is usually blocked in whatever synchronises next (``t.item()``,
``torch.cuda.synchronize()``), not in torch.distributed code; ``in_collective``
is then false and ``where`` names that line. Abort is ``ncclCommAbort`` of every
communicator (``_abort_process_group``), which ends the kernels in flight, so
the synchronising call returns (with whatever the buffer held) and the next
collective raises. ``TORCH_NCCL_ASYNC_ERROR_HANDLING=2`` (the ranks' default)
makes the watchdog clean up and raise instead of killing the rank on a timeout.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fault_harness import figure, install_spec
from rank_clients import ask, close_all, rank_clients
from test_fail_fast import abort_all, reinit_all, reply_of, wait_for_error

from kernel_harness import collect_until_idle, printed_by, run_cell

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")

SUM = "t = torch.ones(1, device=device)\ndist.all_reduce(t)\nprint('SUM', t.item())"


@pytest.fixture
def nccl_kernel(start_kernel, kernel_prefix: Path):
    rk = start_kernel(install_spec(kernel_prefix, "nbdist-nccl-2", 2, backend="nccl",
                                   collective_timeout=60))
    assert run_cell(rk.kc, "import torch").status == "ok"
    clients = rank_clients(rk.kc)
    yield rk, clients
    close_all(clients)


def world_works(kc, generation: int) -> None:
    run = run_cell(kc, SUM + "\n%dist_status")
    assert run.status == "ok", run.reply["content"]
    assert printed_by(run.stream_text(), "SUM 2.0") == 2, run.stream_text()
    assert printed_by(run.stream_text(), f"healthy (nccl, generation {generation})") == 2


def test_nccl_barrier_of_one_rank_is_freed_by_abort(nccl_kernel) -> None:
    rk, clients = nccl_kernel
    world_works(rk.kc, 0)
    msg_id = rk.kc.execute("if rank == 0:\n    dist.barrier()\n")
    stack = ask(clients[0], "nbdist_stack_request")
    while not stack["busy"] or not stack["in_collective"]:
        stack = ask(clients[0], "nbdist_stack_request")
    assert stack["collective"] == "barrier", stack
    while ask(clients[1], "nbdist_stack_request")["busy"]:
        pass
    aborted_at = time.monotonic()
    aborts = abort_all(clients, "barrier entered by rank 0 only")
    assert all(a["status"] == "ok" for a in aborts.values()), aborts
    collect_until_idle(rk.kc, msg_id, timeout=120)
    figure(f"nccl, 2 ranks: barrier of one rank, abort -> cell end "
           f"{time.monotonic() - aborted_at:.2f}s")
    assert reply_of(rk.kc, msg_id)["status"] == "error"
    assert all(j["status"] == "ok" for j in reinit_all(clients, 1).values())
    world_works(rk.kc, 1)


def test_nccl_failed_rank_frees_the_synchronising_peer(nccl_kernel) -> None:
    rk, clients = nccl_kernel
    msg_id = rk.kc.execute("t = torch.ones(1, device=device)\n"
                           "if rank == 1:\n    raise ValueError('rank 1 has a bug')\n"
                           "dist.all_reduce(t)\ntorch.cuda.synchronize()\nprint(t.item())\n"
                           "dist.all_reduce(t)\n")
    wait_for_error(clients[1])
    stack = ask(clients[0], "nbdist_stack_request")
    assert stack["busy"] and "of In[" in stack["where"], stack  # waits on rank 1 somewhere
    aborted_at = time.monotonic()
    abort_all(clients, "rank 1 failed")
    collect_until_idle(rk.kc, msg_id, timeout=120)
    figure(f"nccl, 2 ranks: failed rank, abort -> cell end {time.monotonic() - aborted_at:.2f}s"
           f" (rank 0 waited in: {stack['where']})")
    assert reply_of(rk.kc, msg_id)["nbdist"]["failed_ranks"] == [0, 1]
    assert all(j["status"] == "ok" for j in reinit_all(clients, 2).values())
    world_works(rk.kc, 2)
