"""ipywidgets in the request core: each rank's Output widget captures that rank's output
(``with out:``, ``interact``), the frontend never captures on its own; a comm the frontend
opens gets one answer, and nothing after it is closed."""

from __future__ import annotations

from typing import Any

from nbdist_provisioner.mux.core.effects import Publish

from sim import Sim

VERSION = {"version": "2.1.0"}


def open_output_widget(sim: Sim, rank: int, comm_id: str, parent: str) -> None:
    sim.rank_says(rank, "iopub", "comm_open", {
        "comm_id": comm_id, "target_name": "jupyter.widget",
        "data": {"state": {"_model_name": "OutputModel", "_model_module": "@jupyter-widgets/output",
                           "msg_id": "", "outputs": []}, "buffer_paths": []}}, parent,
        metadata=VERSION)


def set_msg_id(sim: Sim, rank: int, comm_id: str, msg_id: str, parent: str) -> list[Any]:
    return sim.rank_says(rank, "iopub", "comm_msg", {
        "comm_id": comm_id, "data": {"method": "update", "state": {"msg_id": msg_id},
                                     "buffer_paths": []}}, parent, metadata=VERSION)


def widget_states(sim: Sim, comm_id: str) -> list[dict]:
    return [e.content["data"]["state"] for e in sim.log if isinstance(e, Publish)
            and e.msg_type == "comm_msg" and e.content["comm_id"] == comm_id]


def rank_id(sim: Sim, rank: int) -> str:
    return sim.sent("execute_request", rank=rank)[-1].msg_id


def test_each_ranks_output_widget_captures_that_ranks_output_only():
    sim = Sim(nproc=2)
    sim.auto = False
    cell = sim.execute("out = Output(); display(out)\nwith out: print(rank)")
    for rank in (0, 1):
        open_output_widget(sim, rank, f"out{rank}", rank_id(sim, rank))
        set_msg_id(sim, rank, f"out{rank}", rank_id(sim, rank), rank_id(sim, rank))
        sim.rank_says(rank, "iopub", "stream", {"name": "stdout", "text": f"{rank}\n"},
                      rank_id(sim, rank))
        set_msg_id(sim, rank, f"out{rank}", "", rank_id(sim, rank))
    sim.deliver_all()
    assert sim.stream(cell) == ""  # captured, not in the cell
    for rank in (0, 1):
        states = widget_states(sim, f"out{rank}")
        # the frontend is only ever told msg_id "" (it must not capture by itself)
        assert [s["msg_id"] for s in states if "msg_id" in s] == ["", ""]
        assert [s["outputs"] for s in states if "outputs" in s][-1] == [
            {"output_type": "stream", "name": "stdout", "text": f"{rank}\n"}]
        # the rank's widget learns what it captured, as from a frontend
        (sync,) = [e for e in sim.sent("comm_msg", rank=rank)]
        assert sync.content["data"]["state"]["outputs"] == [
            {"output_type": "stream", "name": "stdout", "text": f"{rank}\n"}]
        assert sync.metadata == VERSION
    updates = [e for e in sim.log if isinstance(e, Publish) and e.msg_type == "comm_msg"]
    assert all(e.metadata == VERSION for e in updates)
    assert sim.reply(cell)["status"] == "ok"


def test_interact_clears_with_wait_and_shows_the_new_result():
    sim = Sim(nproc=1)
    sim.auto = False
    sim.execute("interact(f, x=5)")
    rid = rank_id(sim, 0)
    open_output_widget(sim, 0, "o", rid)
    set_msg_id(sim, 0, "o", rid, rid)
    sim.rank_says(0, "iopub", "clear_output", {"wait": True}, rid)
    sim.rank_says(0, "iopub", "display_data", {"data": {"text/plain": "'5'"}, "metadata": {}},
                  rid)
    set_msg_id(sim, 0, "o", "", rid)
    sim.deliver_all()
    sim.auto = True
    # the slider moves: a comm message to the rank, whose callback captures again
    msg = sim.frontend("comm_msg", {"comm_id": "slider", "data": {"method": "update"}})
    rid = sim.sent("comm_msg")[-1].msg_id
    set_msg_id(sim, 0, "o", rid, rid)
    sim.rank_says(0, "iopub", "clear_output", {"wait": True}, rid)
    sim.rank_says(0, "iopub", "display_data", {"data": {"text/plain": "'6'"}, "metadata": {}},
                  rid)
    set_msg_id(sim, 0, "o", "", rid)
    outputs = [s["outputs"] for s in widget_states(sim, "o") if "outputs" in s]
    assert outputs[-1] == [{"output_type": "display_data", "data": {"text/plain": "'6'"},
                            "metadata": {}}]
    assert not [e for e in sim.outputs(msg) if e.msg_type == "display_data"]


def test_the_echo_of_our_own_state_sync_does_not_reach_the_frontend():
    sim = Sim(nproc=1)
    sim.auto = False
    sim.execute("with out: print(1)")
    rid = rank_id(sim, 0)
    open_output_widget(sim, 0, "o", rid)
    set_msg_id(sim, 0, "o", rid, rid)
    sim.rank_says(0, "iopub", "stream", {"name": "stdout", "text": "1\n"}, rid)
    set_msg_id(sim, 0, "o", "", rid)
    before = len(widget_states(sim, "o"))
    (sync,) = sim.sent("comm_msg", rank=0)
    sim.rank_says(0, "iopub", "comm_msg", {"comm_id": "o", "data": {
        "method": "echo_update", "state": {"outputs": [{"output_type": "stream"}]},
        "buffer_paths": []}}, sync.msg_id)
    assert len(widget_states(sim, "o")) == before


def test_captured_output_is_bounded_and_updates_are_throttled():
    sim = Sim(nproc=1)
    sim.auto = False
    sim.execute("with out: flood()")
    rid = rank_id(sim, 0)
    open_output_widget(sim, 0, "o", rid)
    set_msg_id(sim, 0, "o", rid, rid)
    for _ in range(200):
        sim.rank_says(0, "iopub", "stream", {"name": "stdout", "text": "x" * 10_000}, rid)
    assert len(widget_states(sim, "o")) < 10  # not one update per message
    sim.tick(0.1)
    set_msg_id(sim, 0, "o", "", rid)
    final = [s["outputs"] for s in widget_states(sim, "o") if "outputs" in s][-1]
    assert len(final[0]["text"]) <= 1024 * 1024


def test_a_closed_frontend_comm_gets_no_more_answers():
    """A rank without the comm's target closes it at once: the frontend hears that once;
    the other ranks' closes after it would be "Comm not found" errors in the browser."""
    sim = Sim(nproc=3)
    sim.auto = False
    sim.frontend("comm_open", {"comm_id": "ctl", "target_name": "jupyter.widget.control",
                               "data": {}})
    published = []
    for e in sim.sent("comm_open"):
        published += [x for x in sim.rank_says(e.rank, "iopub", "comm_close",
                                               {"comm_id": "ctl", "data": {}}, e.msg_id)
                      if isinstance(x, Publish) and x.msg_type == "comm_close"]
    assert len(published) == 1
