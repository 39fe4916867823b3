"""Fail fast, as torchrun does, keeping the kernel: the core's side of it."""

from __future__ import annotations

from nbdist_provisioner.mux.core import fail_fast
from nbdist_provisioner.mux.core.effects import StartRanks

from sim import Plan, Sim


def test_a_failed_rank_frees_ranks_waiting_in_a_collective_and_the_group_is_made_again():
    sim = Sim(nproc=4)
    cell = sim.execute("all_reduce", plan=Plan(failing=frozenset({2}),
                                               hanging=frozenset({0, 1, 3})))
    assert sim.replies(cell) == []
    sim.tick(fail_fast.FAIL_FAST_GRACE + 0.01)
    text = sim.stream(cell, "stderr")
    assert ("rank 2 failed (ValueError: bad) while rank 0 waits in dist.all_reduce(t) at "
            "line 4 of In[1]; rank 1 waits in") in text
    assert sorted(e.rank for e in sim.sent("nbdist_pg_abort_request")) == [0, 1, 2, 3]
    assert sorted(e.rank for e in sim.sent("nbdist_pg_reinit_request")) == [0, 1, 2, 3]
    generations = {e.content["generation"] for e in sim.sent("nbdist_pg_reinit_request")}
    assert generations == {1}
    reply = sim.reply(cell)
    # the cause is the cell's error, not the collectives it ended
    assert reply["ename"] == "ValueError" and "failed on ranks" in reply["evalue"]
    assert "process group made again (generation 1); variables are kept" in sim.stream(
        cell, "stderr")
    # the idle comes after the new group is there
    assert sim.iopub(cell)[-1].content == {"execution_state": "idle"}
    # a second failure makes a group with a new generation
    again = sim.execute("x", plan=Plan(failing=frozenset({0}), hanging=frozenset({1, 2, 3})))
    sim.tick(fail_fast.FAIL_FAST_GRACE + 0.01)
    assert sim.reply(again)["ename"] == "ValueError"
    assert {e.content["generation"] for e in sim.sent("nbdist_pg_reinit_request")} == {1, 2}


def test_a_collective_only_some_ranks_entered_is_found_and_ended():
    sim = Sim(nproc=4)
    cell = sim.execute("if rank == 0: dist.barrier()", plan=Plan(hanging=frozenset({0})))
    sim.tick(fail_fast.STALL_GRACE + 0.01)
    text = sim.stream(cell, "stderr")
    assert ("ranks 1-3 finished the cell while rank 0 waits in dist.all_reduce(t) at line 4 "
            "of In[1]: a collective that only some ranks entered never completes") in text
    assert sim.reply(cell)["status"] == "error"
    assert "process group made again" in sim.stream(cell, "stderr")


def test_a_rank_still_computing_alone_is_looked_at_again_later_not_aborted():
    sim = Sim(nproc=2)
    cell = sim.execute("if rank == 0: train()", plan=Plan(hanging=frozenset({0}),
                                                         in_collective=False))
    sim.tick(fail_fast.STALL_GRACE + 0.01)
    assert sim.sent("nbdist_pg_abort_request") == []
    asked = len(sim.sent("nbdist_stack_request"))
    sim.tick(fail_fast.STALL_GRACE * 2 + 0.01)
    assert len(sim.sent("nbdist_stack_request")) == asked + 1  # (backing off)
    assert sim.replies(cell) == [] and sim.stream(cell, "stderr") == ""


def test_one_interrupt_frees_ranks_stuck_in_a_collective():
    sim = Sim(nproc=2)
    cell = sim.execute("dist.barrier()", plan=Plan(hanging=frozenset({0, 1})))
    sim.interrupt()
    assert "after the interrupt, rank 0 waits in" in sim.stream(cell, "stderr")
    assert sim.reply(cell)["status"] == "error"
    assert sim.core.generation == 1  # no new ranks needed


def test_a_group_that_cannot_be_made_again_brings_new_ranks():
    sim = Sim(nproc=2)
    cell = sim.execute("x", plan=Plan(failing=frozenset({1}), hanging=frozenset({0}),
                                      reinit_fails=frozenset({1})))
    sim.tick(fail_fast.FAIL_FAST_GRACE + 0.01)
    assert sim.reply(cell)["status"] == "error"
    assert "could not be made again (rank 1: DistStoreError: timed out)" in sim.stream(
        cell, "stderr")
    assert StartRanks(2) in sim.log
    sim.ready()
    assert "These are new ranks" in sim.stream(sim.execute("y"), "stderr")


def test_a_rank_that_does_not_say_where_it_is_is_reported_as_such():
    sim = Sim(nproc=2)
    sim.auto = False
    cell = sim.execute("x", plan=Plan(failing=frozenset({1}), hanging=frozenset({0})))
    sim.deliver_all()
    sim.tick(fail_fast.FAIL_FAST_GRACE + 0.01)
    sim.ranks[0].queues.clear()  # its control thread does not answer
    sim.tick(fail_fast.STACK_TIMEOUT + 0.01)
    assert "rank 0 does not say where it is" in sim.stream(cell, "stderr")
