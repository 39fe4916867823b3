"""The request core when ranks fail to start, die, hang or lose messages."""

from __future__ import annotations

from nbdist_provisioner.mux.core import faults
from nbdist_provisioner.mux.core.effects import StartRanks, StopRanks
from nbdist_provisioner.mux.core.events import RankMessage, RanksFailed
from nbdist_provisioner.mux.core.lifecycle import MAX_QUICK_DEATHS, QUICK_DEATH_WINDOW, Phase

from sim import Plan, Sim

NOISE = ("[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All "
         "communication (including code and outputs) is sent in plain text\n"
         "0.00s - Debugger warning: It seems that frozen modules are being used, which may\n"
         "0.00s - Note: Debugging will proceed. Set PYDEVD_DISABLE_FILE_VALIDATION=1\n")


# -- start failures ---------------------------------------------------------------------
def test_a_start_failure_fails_waiting_and_later_cells_with_the_cause():
    sim = Sim(ready=False)
    waiting = sim.execute("x = 1")
    sim.start_failed("a rank failed to start: rank 1 (pid 7) exited with exit code 1; "
                     "last stderr lines:\nImportError: libzmq.so.5")
    for msg_id in (waiting, sim.execute("y = 2")):
        reply = sim.reply(msg_id)
        assert reply["status"] == "error" and reply["ename"] == "RankStartError"
        assert "libzmq.so.5" in reply["evalue"] and "Restart the kernel" in reply["evalue"]
        assert sim.outputs(msg_id, "error")
    assert sim.reply(sim.execute("z"))["execution_count"] == 3  # cells still count
    assert sim.reply(sim.frontend("kernel_info_request"))["status"] == "ok"
    assert sim.reply(sim.frontend("complete_request", {"code": "a", "cursor_pos": 1}))[
        "ename"] == "RankStartError"
    assert sim.stopped == [1] and sim.started == [1]  # whatever started is stopped


def test_start_events_of_another_generation_are_ignored():
    sim = Sim(ready=False)
    sim.feed(RanksFailed(7, "stale"))
    assert sim.core.phase is Phase.STARTING


# -- a rank dies --------------------------------------------------------------------------
def test_a_rank_death_ends_the_cell_at_once_and_new_ranks_come_up():
    sim = Sim(nproc=4)
    sim.auto = False
    cell = sim.execute("train()", plan=Plan(hanging=frozenset(range(4))))
    queued = [sim.execute("after"), sim.frontend("kernel_info_request"),
              sim.frontend("complete_request", {"code": "a", "cursor_pos": 1})]
    sim.deliver_all()
    sim.kill(2, "rank 2 (pid 102) was killed by signal SIGKILL (out of memory? the OOM "
                "killer sends SIGKILL)", NOISE + "allocating 40 GiB\n")
    reply = sim.reply(cell)
    assert reply["status"] == "error" and reply["ename"] == "RankDied"
    assert "rank 2 (pid 102) was killed by signal SIGKILL" in reply["evalue"]
    (error,) = sim.outputs(cell, "error")
    text = "\n".join(error.content["traceback"])
    assert "allocating 40 GiB" in text
    assert "without encryption" not in text and "frozen modules" not in text
    assert "Starting 4 new ranks" in text
    # the queue: executes aborted, the rest waits for the new ranks
    assert sim.reply(queued[0]) == {"status": "aborted"}
    assert sim.reply(queued[1])["status"] == "ok"
    assert sim.replies(queued[2]) == []
    assert [e for e in sim.log if isinstance(e, (StopRanks, StartRanks))] == [
        StartRanks(1), StopRanks(1, graceful=False), StartRanks(2)]
    assert sim.core.phase is Phase.STARTING and sim.core.generation == 2
    # a new cell waits, then runs on the new ranks and says once what happened
    sim.auto = True
    nxt = sim.execute("print(rank)")
    sim.ready()
    assert sim.reply(queued[2])["matches"] == ["from0"]
    assert sim.reply(nxt)["status"] == "ok"
    note = sim.stream(nxt, "stderr")
    assert "These are new ranks (rank 2 died)" in note and "40 GiB" not in note
    assert "new ranks" not in sim.stream(sim.execute("x"), "stderr")


def test_messages_of_dead_ranks_are_ignored():
    sim = Sim(nproc=2)
    sim.auto = False
    cell = sim.execute("x", plan=Plan(hanging=frozenset({0, 1})))
    old = sim.ranks[0].generation
    sim.kill(1)
    sim.ready()
    before = len(sim.log)
    sim.feed(RankMessage(old, 0, "shell", {"msg_id": "m", "msg_type": "execute_reply"},
                         {"msg_id": sim.sent("execute_request")[0].msg_id},
                         {"status": "ok"}))
    assert sim.log[before:] == [] and len(sim.replies(cell)) == 1


def test_a_death_while_idle_is_explained_in_full_in_the_next_cell():
    sim = Sim(nproc=2)
    sim.kill(1, "rank 1 (pid 101) exited with exit code 3", "Traceback...\nSystemExit: 3\n")
    sim.ready()
    cell = sim.execute("x")
    note = sim.stream(cell, "stderr")
    assert "While the kernel was idle, rank 1 (pid 101) exited with exit code 3" in note
    assert "SystemExit: 3" in note and "These are new ranks" in note


def test_a_rank_that_keeps_dying_stops_the_loop():
    sim = Sim(nproc=2)
    for _ in range(MAX_QUICK_DEATHS - 1):
        sim.kill(0)
        sim.now += 1
        sim.ready()
    sim.kill(0)
    assert sim.core.phase is Phase.FAILED
    reply = sim.reply(sim.execute("x"))
    assert reply["ename"] == "RankStartError"
    assert f"ranks died {MAX_QUICK_DEATHS} times in a row" in reply["evalue"]
    assert sim.started == list(range(1, MAX_QUICK_DEATHS + 1))  # no more starts


def test_ranks_that_ran_a_while_before_dying_keep_being_healed():
    sim = Sim(nproc=2)
    for _ in range(2 * MAX_QUICK_DEATHS):
        sim.now += QUICK_DEATH_WINDOW + 1
        sim.kill(1)
        sim.ready()
    assert sim.core.phase is Phase.READY
    assert sim.reply(sim.execute("x"))["status"] == "ok"


# -- partial failure, interrupts ---------------------------------------------------------
def test_a_rank_hung_outside_a_collective_is_diagnosed_then_a_second_interrupt_helps():
    """A failed rank, and another that runs on in code of its own (not in a collective:
    fail-fast cannot end it): said after a while; two interrupts bring new ranks."""
    sim = Sim(nproc=2)
    cell = sim.execute("all_reduce", plan=Plan(failing=frozenset({1}), hanging=frozenset({0}),
                                               in_collective=False))
    assert sim.replies(cell) == []
    sim.tick(faults.PARTIAL_FAILURE_GRACE - 0.1)
    assert "rank 1 failed (ValueError: bad) while rank 0 runs train() at line 2 of In[1]" \
        in sim.stream(cell, "stderr")
    assert sim.sent("nbdist_pg_abort_request") == []  # (no process group in use)
    sim.tick(0.2)
    diagnosis = sim.stream(cell, "stderr")
    assert "rank 1 failed (ValueError: bad) while rank 0 is still running" in diagnosis
    sim.interrupt()
    # only the rank that runs is interrupted (a SIGINT between cells could hurt the other)
    assert sorted(e.rank for e in sim.sent("interrupt_request")) == [0]
    sim.tick(faults.INTERRUPT_GRACE + 0.1)
    assert "rank 0 is still running 2s after the interrupt" in sim.stream(cell, "stderr")
    sim.interrupt()
    reply = sim.reply(cell)
    assert reply["ename"] == "KernelRestarting"
    assert "rank 0 did not stop after an interrupt" in reply["evalue"]
    assert sim.core.generation == 2
    sim.ready()
    assert "an interrupt could not stop the last cell" in sim.stream(sim.execute("x"), "stderr")


def test_an_interrupt_that_works_is_not_escalated():
    sim = Sim(nproc=2)
    sim.auto = False
    cell = sim.execute("sleep", plan=Plan(hanging=frozenset({0, 1})))
    sim.interrupt()
    # the ranks stop at once (KeyboardInterrupt) and the cell ends
    for rank in (0, 1):
        rank_id = sim.sent("execute_request", rank=rank)[0].msg_id
        sim.rank_says(rank, "shell", "execute_reply", {"status": "error", "ename":
                      "KeyboardInterrupt", "evalue": "", "traceback": []}, rank_id)
        sim.rank_says(rank, "iopub", "status", {"execution_state": "idle"}, rank_id)
    assert sim.reply(cell)["ename"] == "KeyboardInterrupt"
    sim.tick(faults.INTERRUPT_GRACE + 1)
    sim.interrupt()
    assert sim.core.generation == 1 and sim.core.phase is Phase.READY


def test_interrupts_while_ranks_start_are_ignored():
    sim = Sim(ready=False)
    sim.interrupt()
    assert sim.sent() == []


def test_a_lost_idle_is_probed_and_the_probes_idle_stands_in_for_it():
    sim = Sim(nproc=2)
    sim.auto = False
    cell = sim.execute("flood")
    sim.deliver(1, "shell")
    sim.deliver(0, "shell")
    sim.deliver(0, "iopub")
    sim.deliver(0, "iopub")
    sim.deliver(1, "iopub")  # busy; the idle was dropped (the rank's queue overflowed)
    sim.ranks[1].queues["iopub"].clear()
    sim.tick(faults.IDLE_PROBE_AFTER + 0.1)
    (probe,) = sim.sent("kernel_info_request", rank=1)
    assert probe.channel == "control" and sim.replies(cell) == []
    sim.deliver_all()
    assert sim.reply(cell)["status"] == "ok"


def test_sigterm_and_owner_death_stop_the_ranks_and_exit():
    sim = Sim()
    sim.auto = False
    cell = sim.execute("x", plan=Plan(hanging=frozenset({0, 1})))
    sim.shutdown_signal()
    assert sim.reply(cell)["status"] == "error"
    assert sim.stopped == [1] and sim.exited is None
    sim.stopped_ranks(1)
    assert sim.exited == 0


def test_a_shutdown_while_ranks_start_stops_them_without_waiting():
    sim = Sim(ready=False)
    waiting = sim.execute("x")
    msg = sim.frontend("shutdown_request", {"restart": False}, channel="control")
    assert sim.reply(waiting)["ename"] == "KernelShutdown"
    assert sim.stopped == [1]
    sim.stopped_ranks(1)
    assert sim.reply(msg)["status"] == "ok" and sim.exited == 0


def test_death_report_keeps_only_meaningful_stderr():
    tail = NOISE + "".join(f"line {i}\n" for i in range(20)) + "No such comm: abc\n"
    lines = faults.meaningful_lines(tail)
    assert lines == [f"line {i}" for i in range(12, 20)]
    crash = ("my last words\nFatal Python error: Segmentation fault\n\n"
             "Current thread 0x01 (most recent call first):\n  File \"<cell>\", line 3 in f\n"
             "  File \"<cell>\", line 5 in <module>\n" + "  File \"x.py\", line 1 in g\n" * 30)
    report = faults.meaningful_lines(crash)
    assert report[0] == "my last words"
    assert report[1] == "Fatal Python error: Segmentation fault"
    assert report[3] == '  File "<cell>", line 3 in f' and len(report) <= 8


def test_second_interrupts_do_not_count_as_deaths():
    sim = Sim(nproc=2)
    for _ in range(MAX_QUICK_DEATHS + 1):
        cell = sim.execute("wait", plan=Plan(hanging=frozenset({0, 1}), in_collective=False))
        sim.interrupt()
        sim.tick(faults.INTERRUPT_GRACE + 0.1)
        sim.interrupt()
        assert sim.reply(cell)["ename"] == "KernelRestarting"
        sim.ready()
    assert sim.core.phase is Phase.READY


def test_no_new_ranks_note_when_the_new_ranks_fail_to_start():
    sim = Sim(nproc=2)
    sim.kill(0)
    sim.start_failed("rank 0 could not bind")
    note = sim.stream(sim.execute("x"), "stderr")
    assert "These are new ranks" not in note


def test_a_lost_idle_that_never_comes_is_given_up_after_a_few_probes():
    sim = Sim(nproc=2)
    sim.auto = False
    cell = sim.execute("flood")
    sim.deliver(0, "shell")
    sim.deliver(1, "shell")
    while sim.ranks[0].queues.get("iopub"):
        sim.deliver(0, "iopub")
    sim.ranks[1].queues["iopub"].clear()
    for _ in range(faults.MAX_IDLE_PROBES + 1):
        sim.ranks[1].queues.clear()  # its probes' idles are lost too
        sim.tick(faults.IDLE_PROBE_AFTER + 0.1)
    assert sim.reply(cell)["status"] == "ok"
    assert any("never went idle" in t for t in sim.logs("warning"))


def test_an_idle_that_overtakes_its_reply_is_no_missing_reply():
    sim = Sim(nproc=2)
    sim.auto = False
    cell = sim.execute("x", plan=Plan(hanging=frozenset({1})))
    while sim.ranks[0].queues.get("iopub"):
        sim.deliver(0, "iopub")  # busy, idle: the reply is still on its way
    sim.deliver(0, "shell")
    sim.tick(faults.MISSING_REPLY_GRACE + 0.1)
    assert not any("sent no reply" in t for t in sim.logs())
    assert sim.replies(cell) == []
