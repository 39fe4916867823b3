"""Random interleavings of requests, rank messages, deaths, interrupts and timers, with the
protocol's invariants checked on everything the frontend received:

- every request that has a reply gets exactly one;
- exactly one busy and one idle per request, busy first, idle last (nothing after it);
- shell requests are answered in arrival order;
- an execute request is aborted exactly when ipykernel would abort it: it was queued
  behind an execute that ended in error (stop_on_error, not silent) when that error
  was answered.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbdist_provisioner.mux.core.effects import Publish, Reply
from nbdist_provisioner.mux.core.lifecycle import Phase

from sim import Plan, Sim

NPROC = 3
KINDS = ["ok", "print", "fail", "fail_silent", "fail_nostop", "hang", "kernel_info",
         "complete", "comm_info", "inspect", "comm_msg", "rank_cell"]
NO_REPLY = {"comm_msg"}


def send(sim: Sim, kind: str, data: st.DataObject) -> str:
    ranks = st.sets(st.integers(0, NPROC - 1), min_size=1)
    if kind == "ok":
        return sim.execute("ok")
    if kind == "print":
        return sim.execute("print", plan=Plan(prints="a line\npartial"))
    if kind == "rank_cell":
        return sim.execute("%%rank 1\nx", plan=Plan())
    if kind.startswith("fail"):
        options = {"fail_silent": {"silent": True},
                   "fail_nostop": {"stop_on_error": False}}.get(kind, {})
        return sim.execute("raise", plan=Plan(failing=frozenset(data.draw(ranks))), **options)
    if kind == "hang":
        return sim.execute("wait", plan=Plan(hanging=frozenset(data.draw(ranks))))
    if kind == "kernel_info":
        channel = data.draw(st.sampled_from(["shell", "control"]))
        return sim.frontend("kernel_info_request", channel=channel)
    if kind == "complete":
        return sim.frontend("complete_request", {"code": "a", "cursor_pos": 1})
    if kind == "inspect":
        return sim.frontend("inspect_request", {"code": "a", "cursor_pos": 1})
    if kind == "comm_info":
        return sim.frontend("comm_info_request")
    return sim.frontend("comm_msg", {"comm_id": "w", "data": {}})


def settle(sim: Sim) -> None:
    """Let everything finish: deliver, start ranks, let timers run, end hung cells."""
    for _ in range(200):
        sim.deliver_all()
        if sim.core.phase is Phase.STARTING:
            sim.ready()
            continue
        busy = bool(sim.core.book.open) or any(sim.core._queues.values())
        if not busy:
            return
        sim.tick(5.0)
        if sim.core.book.open and not sim.pending() and sim.core.phase is Phase.READY:
            sim.kill(0)  # a hung collective: the death ends it (as a second interrupt would)
    raise AssertionError("the kernel never settled")


def check(sim: Sim, arrivals: dict[str, int], kinds: dict[str, str]) -> None:
    log = sim.log
    replies = [(i, e) for i, e in enumerate(log) if isinstance(e, Reply)]
    for msg_id, kind in kinds.items():
        mine = [e for _, e in replies if e.parent.get("msg_id") == msg_id]
        assert len(mine) == (0 if kind in NO_REPLY else 1), (msg_id, kind, mine)
        published = [(i, e) for i, e in enumerate(log) if isinstance(e, Publish)
                     and e.parent.get("msg_id") == msg_id]
        states = [e.content["execution_state"] for _, e in published if e.msg_type == "status"]
        assert states == ["busy", "idle"], (msg_id, kind, states)
        assert published[0][1].msg_type == "status" and published[-1][1].content == {
            "execution_state": "idle"}, (msg_id, kind)
    # shell requests (not comm messages, not control) answered in arrival order
    ordered = [m for m in arrivals if kinds[m] not in NO_REPLY
               and next(r for r in sim.sent_requests if r.header["msg_id"] == m).channel
               == "shell"]
    answered = [e.parent["msg_id"] for _, e in replies if e.parent["msg_id"] in ordered]
    assert answered == ordered
    # aborts exactly as ipykernel's
    executes = [m for m in ordered if kinds[m] not in ("kernel_info", "complete", "inspect",
                                                       "comm_info")]
    reply_at = {e.parent["msg_id"]: i for i, e in replies}
    should_abort: set[str] = set()
    for m in executes:
        content = next(e for _, e in replies if e.parent["msg_id"] == m).content
        stops = kinds[m] not in ("fail_silent", "fail_nostop")
        if content["status"] == "error" and stops:
            later = executes[executes.index(m) + 1:]
            should_abort.update(x for x in later if arrivals[x] <= reply_at[m])
    aborted = {m for m in executes
               if next(e for _, e in replies if e.parent["msg_id"] == m).content["status"]
               == "aborted"}
    assert aborted == should_abort


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_interleavings_keep_the_protocol(data: st.DataObject) -> None:
    sim = Sim(nproc=NPROC, ready=data.draw(st.booleans()))
    sim.auto = False
    arrivals: dict[str, int] = {}
    kinds: dict[str, str] = {}
    for _ in range(data.draw(st.integers(1, 40))):
        action = data.draw(st.sampled_from(["send", "send", "deliver", "deliver", "deliver",
                                            "kill", "interrupt", "tick", "ready"]))
        if action == "send":
            kind = data.draw(st.sampled_from(KINDS))
            at = len(sim.log)
            msg_id = send(sim, kind, data)
            arrivals[msg_id], kinds[msg_id] = at, kind
        elif action == "deliver" and sim.pending():
            rank, channel = data.draw(st.sampled_from(sim.pending()))
            sim.deliver(rank, channel)
        elif action == "kill" and sim.core.phase is Phase.READY:
            sim.kill(data.draw(st.integers(0, NPROC - 1)))
        elif action == "interrupt":
            sim.interrupt()
        elif action == "tick":
            sim.tick(data.draw(st.sampled_from([0.01, 0.5, 1.5, 3.5])))
        elif action == "ready" and sim.core.phase is Phase.STARTING:
            sim.ready()
    settle(sim)
    check(sim, arrivals, kinds)
