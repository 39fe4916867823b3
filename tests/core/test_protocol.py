"""The request core against the Jupyter protocol as ipykernel speaks it (its
tests/test_message_spec.py is the reference), one rule per test, in memory."""

from __future__ import annotations

from nbdist_provisioner.mux.core.effects import SendToRank
from nbdist_provisioner.mux.core.lifecycle import Phase

from sim import PORTS, Plan, Sim


def assert_one_busy_one_idle_idle_last(sim: Sim, msg_id: str) -> None:
    seen = sim.iopub(msg_id)
    assert [e.content["execution_state"] for e in seen if e.msg_type == "status"] == [
        "busy", "idle"]
    assert seen[0].msg_type == "status" and seen[-1].content == {"execution_state": "idle"}


# -- start ------------------------------------------------------------------------------
def test_kernel_info_is_answered_before_the_ranks_are_up():
    sim = Sim(ready=False)
    msg_id = sim.frontend("kernel_info_request")
    reply = sim.reply(msg_id)
    assert reply["status"] == "ok" and reply["protocol_version"] == "5.5"
    assert "kernel subshells" in reply["supported_features"]
    assert_one_busy_one_idle_idle_last(sim, msg_id)


def test_requests_before_the_ranks_are_up_wait_and_are_not_lost():
    sim = Sim(ready=False)
    first = sim.execute("a = 1")
    second = sim.frontend("complete_request", {"code": "a", "cursor_pos": 1})
    assert sim.sent() == [] and sim.replies() == []
    sim.ready()
    assert sim.reply(first)["status"] == "ok"
    assert sim.reply(second)["matches"] == ["from0"]
    assert [r.parent["msg_id"] for r in sim.replies()] == [first, second]


def test_connect_request_is_answered_with_the_frontend_ports():
    sim = Sim()
    reply = sim.reply(sim.frontend("connect_request"))
    assert reply == {"status": "ok", **{f"{n}_port": p for n, p in PORTS}}


# -- execute ----------------------------------------------------------------------------
def test_one_busy_one_idle_and_idle_only_after_every_rank_replied_and_went_idle():
    sim = Sim(nproc=3)
    sim.auto = False
    msg_id = sim.execute("print(1)", plan=Plan(prints="hi\n"))
    # deliver everything except rank 2's idle: the kernel must not be idle yet
    for rank in (0, 1):
        for ch in ("iopub", "shell"):
            while sim.ranks[rank].queues.get(ch):
                sim.deliver(rank, ch)
    sim.deliver(2, "shell")
    while len(sim.ranks[2].queues["iopub"]) > 1:
        sim.deliver(2, "iopub")
    assert sim.statuses(msg_id) == ["busy"] and sim.replies(msg_id) == []
    sim.deliver(2, "iopub")
    assert_one_busy_one_idle_idle_last(sim, msg_id)
    assert sim.stream(msg_id) == "[ranks 0-2] hi\n"  # printed identically: once
    # one execute_input, the kernel's; the ranks' own are not forwarded
    assert [e.content for e in sim.outputs(msg_id, "execute_input")] == [
        {"code": "print(1)", "execution_count": 1}]


def test_one_merged_reply_names_the_failed_ranks_and_carries_the_kernels_count():
    sim = Sim(nproc=4)
    sim.execute("x = 1")
    msg_id = sim.execute("bad()", plan=Plan(failing=frozenset({1, 3})))
    reply = sim.reply(msg_id)
    assert reply["status"] == "error" and reply["execution_count"] == 2
    assert reply["ename"] == "ValueError" and "(failed on ranks 1,3 of 4)" in reply["evalue"]
    assert reply["nbdist"] == {"failed_ranks": [1, 3], "first_failed_rank": 1}


def test_every_rank_runs_a_cell_under_the_kernels_execution_count():
    sim = Sim(nproc=2)
    sim.execute("a")
    sim.execute("%%rank 0\nb")
    sim.execute("c", silent=True)
    sim.execute("d", store_history=False)
    sim.execute("e")
    counts = [(e.rank, e.metadata["nbdist_execution_count"]) for e in sim.sent("execute_request")]
    assert counts == [(0, 1), (1, 1), (0, 2), (0, 3), (1, 3), (0, 3), (1, 3), (0, 3), (1, 3)]
    assert sim.reply(sim.sent_requests[-1].header["msg_id"])["execution_count"] == 3


def test_identical_errors_after_rank_cells_are_shown_once():
    sim = Sim(nproc=4)
    sim.execute("%%rank 0\nx = 1")
    msg_id = sim.execute("1/0", plan=Plan(failing=frozenset(range(4))))
    errors = sim.outputs(msg_id, "error")
    assert len(errors) == 1 and errors[0].content["metadata"]["nbdist"]["ranks"] == [0, 1, 2, 3]
    assert errors[0].content["traceback"][0] == "Cell In[2]"


def test_ranks_never_abort_their_own_queue():
    sim = Sim()
    sim.execute("1/0", plan=Plan(failing=frozenset({0})))
    assert all(e.content["stop_on_error"] is False for e in sim.sent("execute_request"))


def test_rank_magic_runs_on_the_named_ranks_and_a_bad_spec_fails_clearly():
    sim = Sim(nproc=4)
    sim.execute("%%rank 1-2\nx = 1")
    assert sorted(e.rank for e in sim.sent("execute_request")) == [1, 2]
    assert sim.sent("execute_request")[0].content["code"] == "x = 1"
    bad = sim.execute("%%rank 7\nx = 1")
    assert sim.reply(bad)["ename"] == "RankSetError"
    assert "outside this kernel's ranks 0-3" in sim.reply(bad)["evalue"]


def test_rank_output_magic_alone_is_answered_by_the_kernel():
    sim = Sim(nproc=4)
    msg_id = sim.execute("%rank_output 0,2")
    assert sim.sent("execute_request") == []
    assert sim.reply(msg_id)["status"] == "ok"
    assert "showing output of ranks 0,2" in sim.stream(msg_id)


# -- the shell queue ----------------------------------------------------------------------
def test_shell_requests_are_answered_in_arrival_order():
    """The issue's check: execute (raising), kernel_info, comm_info, inspect back to back."""
    sim = Sim(nproc=2)
    sim.auto = False
    ids = [sim.execute("raise", plan=Plan(failing=frozenset({0, 1}))),
           sim.frontend("kernel_info_request"), sim.frontend("comm_info_request"),
           sim.frontend("inspect_request", {"code": "print", "cursor_pos": 5})]
    assert sim.replies() == []  # kernel_info waits behind the running cell, as in ipykernel
    sim.deliver_all()
    assert [(r.parent["msg_id"], r.content["status"]) for r in sim.replies()] == [
        (ids[0], "error"), (ids[1], "ok"), (ids[2], "ok"), (ids[3], "ok")]


def test_kernel_info_on_control_is_answered_while_a_cell_runs():
    sim = Sim()
    sim.auto = False
    sim.execute("import time; time.sleep(9)")
    info = sim.frontend("kernel_info_request", channel="control")
    assert sim.reply(info)["status"] == "ok"


def test_queued_execute_requests_are_aborted_after_an_error_and_nothing_else():
    sim = Sim()
    sim.auto = False
    failing = sim.execute("raise", plan=Plan(failing=frozenset({1})))
    queued = [sim.execute("a"), sim.frontend("kernel_info_request"), sim.execute("b")]
    sim.deliver_all()
    statuses = [sim.reply(m)["status"] for m in (failing, *queued)]
    assert statuses == ["error", "aborted", "ok", "aborted"]
    # an aborted reply carries no execution count (JupyterLab then shows [ ]:)
    assert sim.reply(queued[0]) == {"status": "aborted"}
    assert_one_busy_one_idle_idle_last(sim, queued[0])
    # requests after the error run again
    sim.auto = True
    later = sim.execute("c")
    assert sim.reply(later)["status"] == "ok"


def test_silent_and_stop_on_error_false_errors_abort_nothing():
    for options in ({"silent": True}, {"stop_on_error": False}):
        sim = Sim()
        sim.auto = False
        sim.execute("raise", plan=Plan(failing=frozenset({0})), **options)
        queued = sim.execute("a")
        sim.deliver_all()
        assert sim.reply(queued)["status"] == "ok", options


def test_silent_execute_publishes_nothing_but_status_and_keeps_the_count():
    sim = Sim()
    sim.execute("a")
    msg_id = sim.execute("b", silent=True)
    assert [e.msg_type for e in sim.iopub(msg_id)] == ["status", "status"]
    assert sim.reply(msg_id)["execution_count"] == 1


def test_malformed_requests_get_a_clear_error_and_never_reach_a_rank():
    sim = Sim()
    for msg_type, content in (("complete_request", {"code": 1}),
                              ("inspect_request", {"code": "x"}),
                              ("history_request", {"hist_access_type": "tail", "bogus": 1}),
                              ("execute_request", {})):
        msg_id = sim.frontend(msg_type, content)
        reply = sim.reply(msg_id)
        assert reply["status"] == "error" and reply["ename"] == "BadRequest", reply
        assert_one_busy_one_idle_idle_last(sim, msg_id)
    assert sim.sent() == []


def test_unknown_request_types_are_logged_with_a_busy_idle_on_shell():
    sim = Sim()
    msg_id = sim.frontend("nbdist_no_such_request")
    assert sim.replies() == [] and sim.statuses(msg_id) == ["busy", "idle"]
    assert any("ignored unsupported nbdist_no_such_request" in t for t in sim.logs())


def test_a_rank_that_goes_idle_without_replying_does_not_block_the_shell():
    sim = Sim()
    sim.auto = False
    msg_id = sim.frontend("is_complete_request", {"code": "x"})
    # rank 0's handler failed: busy, idle, and no reply
    sim.ranks[0].queues["shell"].clear()
    sim.deliver_all()
    after = sim.frontend("kernel_info_request")
    assert sim.replies(after) == []
    sim.tick(3)
    assert sim.reply(msg_id)["ename"] == "NoReply"
    assert sim.reply(after)["status"] == "ok"


# -- subshells ------------------------------------------------------------------------------
def test_subshells_one_id_for_the_frontend_one_per_rank_behind_it():
    sim = Sim(nproc=2)
    created = sim.frontend("create_subshell_request", channel="control")
    subshell = sim.reply(created)["subshell_id"]
    assert sim.reply(sim.frontend("list_subshell_request", channel="control"))[
        "subshell_id"] == [subshell]
    sim.auto = False
    main = sim.execute("import time; time.sleep(9)")
    side = sim.frontend("execute_request", {"code": "x"}, header={"subshell_id": subshell},
                        plan=Plan())
    # the subshell's request runs beside the main shell's, under each rank's own id
    sent = [e for e in sim.sent("execute_request") if e.content["code"] == "x"]
    assert sorted((e.rank, e.header_extra["subshell_id"].split("-")[1]) for e in sent) == [
        (0, "0"), (1, "1")]
    sim.deliver_all()
    assert sim.reply(side)["status"] == "ok" and sim.reply(main)["status"] == "ok"
    sim.auto = True
    deleted = sim.frontend("delete_subshell_request", {"subshell_id": subshell},
                           channel="control")
    assert sim.reply(deleted)["status"] == "ok"
    assert sorted(e.content["subshell_id"] for e in sim.sent("delete_subshell_request")) == [
        s.header_extra.get("subshell_id", "") for s in sent]
    unknown = sim.frontend("execute_request", {"code": "x"}, header={"subshell_id": subshell})
    assert sim.reply(unknown)["ename"] == "UnknownSubshellError"


# -- comms and widgets --------------------------------------------------------------------
def test_rank_message_metadata_and_buffers_reach_the_frontend_unchanged():
    """ipywidgets checks a comm's protocol version in the message metadata; JupyterLab then
    drops the next kernel message when it is missing (a cell hangs at [*])."""
    sim = Sim(nproc=2)
    sim.auto = False
    live = sim.execute("y")
    rank_msg = sim.sent("execute_request", rank=1)[-1].msg_id
    for msg_type, content in (
            ("comm_open", {"comm_id": "w1", "target_name": "jupyter.widget", "data": {}}),
            ("comm_msg", {"comm_id": "w1", "data": {"method": "update"}}),
            ("clear_output", {"wait": False}),
            ("debug_event", {"seq": 1, "event": "stopped", "body": {}}),
            ("update_display_data", {"data": {"text/plain": "u"}, "metadata": {},
                                     "transient": {"display_id": "d"}}),
            ("comm_close", {"comm_id": "w1", "data": {}}),
            ("display_data", {"data": {"text/plain": "d"}, "metadata": {}, "transient": {}})):
        sim.rank_says(1, "iopub", msg_type, content, rank_msg,
                      metadata={"version": "2.1.0", "kind": msg_type}, buffers=(b"\x00\x01",))
    sim.tick(2)  # (a display waits a moment for the other rank's identical one)
    for msg_type in ("comm_open", "comm_msg", "clear_output", "debug_event",
                     "update_display_data", "comm_close", "display_data"):
        (published,) = sim.outputs(live, msg_type)
        assert published.metadata == {"version": "2.1.0", "kind": msg_type}, msg_type
        if msg_type.startswith("comm_"):
            assert published.buffers == (b"\x00\x01",)


def test_a_rank_opened_comm_is_routed_back_to_that_rank_only():
    sim = Sim(nproc=3)
    sim.auto = False
    cell = sim.execute("w = IntSlider()")
    sim.rank_says(2, "iopub", "comm_open", {"comm_id": "w2", "target_name": "jupyter.widget",
                                            "data": {}}, sim.sent("execute_request", rank=2)[0]
                  .msg_id)
    sim.deliver_all()
    assert sim.reply(cell)["status"] == "ok"
    sim.auto = True
    sim.frontend("comm_msg", {"comm_id": "w2", "data": {"method": "update"}})
    assert [e.rank for e in sim.sent("comm_msg")] == [2]


def test_a_frontend_opened_comm_reaches_every_rank_and_one_rank_answers():
    sim = Sim(nproc=3)
    opened = sim.frontend("comm_open", {"comm_id": "ctl", "target_name": "jupyter.widget.control",
                                        "data": {}})
    assert sorted(e.rank for e in sim.sent("comm_open")) == [0, 1, 2]
    assert_one_busy_one_idle_idle_last(sim, opened)
    msg = sim.frontend("comm_msg", {"comm_id": "ctl", "data": {"method": "request_states"}})
    answers = []
    for e in sim.sent("comm_msg"):
        answers += sim.rank_says(e.rank, "iopub", "comm_msg",
                                 {"comm_id": "ctl", "data": {"method": "update_states",
                                                             "rank": e.rank}}, e.msg_id)
    forwarded = [e for e in answers if getattr(e, "msg_type", "") == "comm_msg"]
    assert [e.content["data"]["rank"] for e in forwarded] == [0]
    assert forwarded[0].parent["msg_id"] == msg


def test_output_of_a_widget_callback_is_forwarded_under_the_comm_message():
    sim = Sim(nproc=1)
    msg = sim.frontend("comm_msg", {"comm_id": "button", "data": {"method": "custom"}})
    rank_id = sim.sent("comm_msg")[0].msg_id
    sim.rank_says(0, "iopub", "stream", {"name": "stdout", "text": "clicked\n"}, rank_id)
    sim.tick(1)
    assert "clicked" in sim.stream(msg)


def test_a_comm_message_while_a_cell_runs_gets_its_idle_at_once():
    """ipykernel handles it beside the running cell and publishes no status for it."""
    sim = Sim(nproc=2)
    sim.auto = False
    sim.execute("import time; time.sleep(9)")
    msg = sim.frontend("comm_msg", {"comm_id": "w", "data": {}})
    assert sim.statuses(msg) == ["busy", "idle"]


# -- stdin ------------------------------------------------------------------------------------
def test_prompts_are_labelled_shown_one_at_a_time_and_answers_matched_by_parent():
    sim = Sim(nproc=2)
    sim.auto = False
    cell = sim.execute("input('name? ')", allow_stdin=True)
    for e in sim.sent("execute_request"):
        sim.rank_says(e.rank, "stdin", "input_request", {"prompt": "name? ", "password": False},
                      e.msg_id)
    (first,) = sim.prompts()
    assert first.content["prompt"] == "[rank 0] name? " and first.parent["msg_id"] == cell
    # a stale answer (to no prompt on view) is dropped
    sim.frontend("input_reply", {"value": "x"}, channel="stdin",
                 parent={"msg_id": "not-a-prompt"})
    assert len(sim.prompts()) == 1 and sim.sent("input_reply") == []
    sim.frontend("input_reply", {"value": "alice"}, channel="stdin",
                 parent={"msg_id": first.msg_id})
    (answer,) = sim.sent("input_reply")
    assert answer.rank == 0 and answer.content == {"value": "alice"}
    assert answer.parent is not None and answer.parent["msg_type"] == "input_request"
    second = sim.prompts()[1]
    assert second.content["prompt"] == "[rank 1] name? "
    # KernelClient.input() sends no parent: it answers the prompt on view
    sim.frontend("input_reply", {"value": "bob"}, channel="stdin")
    assert [e.rank for e in sim.sent("input_reply")] == [0, 1]


# -- late output ---------------------------------------------------------------------------
def test_output_after_a_cells_idle_never_lands_anywhere_but_comm_traffic_does():
    sim = Sim(nproc=1)
    first = sim.execute("start a thread")
    rank_id = sim.sent("execute_request")[0].msg_id
    second = sim.execute("x")
    late = sim.rank_says(0, "iopub", "stream", {"name": "stdout", "text": "late\n"}, rank_id)
    sim.tick(1)
    assert "late" not in sim.stream(first) + sim.stream(second)
    assert any("after its idle" in t for t in sim.logs("warning"))
    comm = sim.rank_says(0, "iopub", "comm_msg", {"comm_id": "w", "data": {}}, rank_id)
    assert [e.parent["msg_id"] for e in comm if getattr(e, "msg_type", "") == "comm_msg"] == [
        first]
    del late


def test_shutdown_request_stops_the_ranks_then_replies_and_exits():
    sim = Sim()
    msg_id = sim.frontend("shutdown_request", {"restart": True}, channel="control")
    assert sim.core.phase is Phase.STOPPING and sim.stopped == [1]
    assert sim.replies(msg_id) == [] and sim.exited is None
    cell = sim.execute("x")  # arrives while stopping
    assert sim.reply(cell)["ename"] == "KernelShutdown"
    sim.stopped_ranks(1)
    assert sim.reply(msg_id) == {"status": "ok", "restart": True}
    assert sim.exited == 0
    assert all(not isinstance(e, SendToRank) or e.msg_type != "execute_request"
               or e.content["code"] != "x" for e in sim.log)


# -- found in review ---------------------------------------------------------------------
def test_a_subshell_some_ranks_could_not_make_is_an_error_and_is_undone():
    sim = Sim(nproc=2)
    sim.auto = False
    created = sim.frontend("create_subshell_request", channel="control")
    for e in sim.sent("create_subshell_request"):
        content = ({"status": "ok", "subshell_id": "made-on-0"} if e.rank == 0 else
                   {"status": "error", "ename": "RuntimeError", "evalue": "no thread"})
        sim.rank_says(e.rank, "control", "create_subshell_reply", content, e.msg_id)
        sim.rank_says(e.rank, "iopub", "status", {"execution_state": "idle"}, e.msg_id)
    reply = sim.reply(created)
    assert reply["status"] == "error" and "ranks [1]" in reply["evalue"]
    (undo,) = sim.sent("delete_subshell_request")
    assert undo.rank == 0 and undo.content == {"subshell_id": "made-on-0"}
    assert sim.core.subshells.ids() == []


def test_deleting_a_subshell_fails_what_waits_in_it():
    sim = Sim(nproc=1)
    subshell = sim.reply(sim.frontend("create_subshell_request", channel="control"))[
        "subshell_id"]
    sim.auto = False
    running = sim.frontend("execute_request", {"code": "a"}, header={"subshell_id": subshell})
    waiting = sim.frontend("execute_request", {"code": "b"}, header={"subshell_id": subshell})
    deleted = sim.frontend("delete_subshell_request", {"subshell_id": subshell},
                           channel="control")
    sim.deliver(0, "control")
    while sim.ranks[0].queues["iopub"]:
        sim.deliver(0, "iopub")  # the delete is done while "a" still runs
    sim.deliver_all()
    assert sim.reply(deleted)["status"] == "ok"
    assert sim.reply(waiting)["ename"] == "UnknownSubshellError"
    assert sim.reply(running)["status"] == "ok"
    assert subshell not in sim.core._queues and subshell not in sim.core._active


def test_subshell_requests_are_only_served_on_control():
    sim = Sim()
    reply = sim.reply(sim.frontend("create_subshell_request"))
    assert reply["ename"] == "BadRequest" and "control channel" in reply["evalue"]
    assert sim.sent() == []


def test_execute_on_control_is_served_and_unknown_control_requests_get_a_status():
    sim = Sim()
    cell = sim.frontend("execute_request", {"code": "x"}, channel="control", plan=Plan())
    assert sim.reply(cell)["status"] == "ok"
    assert [e.channel for e in sim.sent("execute_request")] == ["control", "control"]
    usage = sim.frontend("usage_request", channel="control")
    assert sim.statuses(usage) == ["busy", "idle"]


def test_a_comm_message_waits_for_the_idle_of_ranks_a_cell_does_not_keep_busy():
    """%%rank 0 runs: rank 1 handles the comm in turn (busy/idle), rank 0 beside the cell."""
    sim = Sim(nproc=2)
    sim.auto = False
    sim.execute("%%rank 0\nwait()", plan=Plan(hanging=frozenset({0})))
    msg = sim.frontend("comm_open", {"comm_id": "c", "target_name": "t", "data": {}})
    assert sim.statuses(msg) == ["busy"]
    (to_rank_1,) = sim.sent("comm_open", rank=1)
    sim.rank_says(1, "iopub", "stream", {"name": "stdout", "text": "opened on 1\n"},
                  to_rank_1.msg_id)
    sim.deliver_all()
    seen = [e.msg_type for e in sim.iopub(msg)]
    assert seen[-1] == "status" and "stream" in seen
    assert sim.statuses(msg) == ["busy", "idle"]


def test_an_error_is_not_held_behind_a_display_that_waits_for_a_slow_rank():
    sim = Sim(nproc=3)
    sim.auto = False
    cell = sim.execute("plot()")
    rank_ids = {e.rank: e.msg_id for e in sim.sent("execute_request")}
    sim.rank_says(2, "iopub", "error", {"ename": "E", "evalue": "v", "traceback": []},
                  rank_ids[2])
    sim.tick(0.2)
    sim.rank_says(0, "iopub", "display_data", {"data": {"text/plain": "fig"}, "metadata": {}},
                  rank_ids[0])
    deadlines = []
    for _ in range(30):
        deadline = sim.core.next_deadline()
        assert deadline is None or deadline > sim.now, "a deadline in the past: it would spin"
        deadlines.append(deadline)
        sim.tick(0.1)
    assert sim.outputs(cell, "error")


# -- history before the ranks are up ------------------------------------------------------
def test_history_tail_before_the_ranks_are_up_is_read_from_the_database():
    """jupyter console asks for it right after kernel_info and gives up after 1 s."""
    from nbdist_provisioner.mux.core.effects import ReadHistory
    from nbdist_provisioner.mux.core.events import HistoryRead

    sim = Sim(ready=False)
    msg = sim.frontend("history_request", {"hist_access_type": "tail", "n": 1000,
                                           "raw": True, "output": False})
    (read,) = [e for e in sim.log if isinstance(e, ReadHistory)]
    assert read.n == 1000 and read.raw
    sim.feed(HistoryRead(read.request_id, ((1, 1, "a = 1"), (1, 2, "a"))))
    assert sim.reply(msg) == {"status": "ok", "history": [[1, 1, "a = 1"], [1, 2, "a"]]}
    assert_one_busy_one_idle_idle_last(sim, msg)
    # an unreadable database: the primary rank answers once it is up
    msg = sim.frontend("history_request", {"hist_access_type": "tail", "n": 5})
    read = [e for e in sim.log if isinstance(e, ReadHistory)][-1]
    sim.feed(HistoryRead(read.request_id, None))
    assert sim.replies(msg) == []
    sim.ready()
    assert sim.reply(msg)["status"] == "ok" and sim.sent("history_request", rank=0)
