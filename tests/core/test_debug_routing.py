"""The debugger in the request core: advertised when the ranks' kernels can debug, every
debug_request of a session to one chosen rank, its events back, the cell told when it stops."""

from __future__ import annotations

from sim import Plan, Sim

DEBUGPY = {"supported_features": ["kernel subshells", "debugger"]}


def debug(sim: Sim, command: str, **arguments: object) -> str:
    return sim.frontend("debug_request", {"type": "request", "seq": 1, "command": command,
                                          "arguments": arguments}, channel="control")


def test_kernel_info_advertises_the_debugger_when_the_ranks_can_debug():
    sim = Sim(nproc=2, rank_kernel_info=DEBUGPY)
    info = sim.reply(sim.frontend("kernel_info_request"))
    assert info["debugger"] is True and "debugger" in info["supported_features"]
    plain = Sim(nproc=2)
    info = plain.reply(plain.frontend("kernel_info_request"))
    assert info["debugger"] is False and "debugger" not in info["supported_features"]


def test_debug_requests_go_to_the_primary_rank_by_default_and_the_reply_comes_back():
    sim = Sim(nproc=3, primary_rank=1, rank_kernel_info=DEBUGPY)
    msg = debug(sim, "initialize", clientID="lab")
    assert [e.rank for e in sim.sent("debug_request")] == [1]
    assert sim.sent("debug_request")[0].channel == "control"
    assert sim.reply(msg)["status"] == "ok"


def test_the_setting_and_the_magic_choose_the_debugged_rank():
    sim = Sim(nproc=4, debug_rank=2)
    debug(sim, "debugInfo")
    assert sim.sent("debug_request")[-1].rank == 2
    cell = sim.execute("%debug_rank 3")
    assert sim.stream(cell) == "[nbdist] the debugger debugs rank 3\n"
    assert not sim.sent("execute_request")  # the kernel answered it itself
    debug(sim, "debugInfo")
    assert sim.sent("debug_request")[-1].rank == 3
    assert sim.reply(sim.execute("%debug_rank 9"))["ename"] == "RankSetError"


def test_a_choice_made_during_a_session_applies_to_the_next_session():
    sim = Sim(nproc=4)
    debug(sim, "initialize")
    cell = sim.execute("%debug_rank 2")
    assert "until it is switched off" in sim.stream(cell)
    debug(sim, "stackTrace", threadId=1)
    assert sim.sent("debug_request")[-1].rank == 0  # the session's breakpoints are rank 0's
    debug(sim, "disconnect", restart=False)
    assert sim.sent("debug_request")[-1].rank == 0
    debug(sim, "initialize")
    assert sim.sent("debug_request")[-1].rank == 2


def test_debug_events_come_back_and_the_cell_says_which_rank_stopped():
    sim = Sim(nproc=2)
    sim.auto = False
    cell = sim.execute("f(2, 3)", plan=Plan(hanging=frozenset({0})))
    rank0 = sim.sent("execute_request", rank=0)[0].msg_id
    sim.rank_says(0, "iopub", "debug_event", {"seq": 3, "type": "event", "event": "stopped",
                                              "body": {"reason": "breakpoint", "threadId": 1}},
                  rank0)
    (event,) = sim.outputs(cell, "debug_event")
    assert event.content["body"]["reason"] == "breakpoint"
    assert "[nbdist] debugger: rank 0 stopped (breakpoint)" in sim.stream(cell, "stderr")
