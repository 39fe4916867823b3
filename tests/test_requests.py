"""Request bookkeeping and reply merging, without sockets."""

from __future__ import annotations

import pytest

from nbdist_provisioner.mux.requests import (
    FrontendRequest,
    RequestTable,
    merge_execute_reply,
    split_rank_magic,
)
from nbdist_provisioner.mux.stdin_router import InputRouter, PendingInput
from nbdist_provisioner.ranks import RankSpecError


def request(targets=(0, 1, 2, 3)) -> FrontendRequest:
    return FrontendRequest("shell", [b"id"], {"msg_id": "m", "msg_type": "execute_request"},
                           {"code": "x"}, {}, targets=targets)


@pytest.mark.parametrize(("code", "ranks", "rest"), [
    ("%%rank 0\nprint(1)", (0,), "print(1)"),
    ("%%rank 0,2\nx", (0, 2), "x"),
    ("%%rank 1-3\nx", (1, 2, 3), "x"),
    ("  %%rank all\nx", (0, 1, 2, 3), "x"),
    ("print(1)", None, "print(1)"),
    ("x = 1\n%%rank 0\n", None, "x = 1\n%%rank 0\n"),
])
def test_rank_magic(code, ranks, rest):
    assert split_rank_magic(code, 4) == (ranks, rest)


@pytest.mark.parametrize("code", ["%%rank\nx", "%%rank 7\nx", "%%rank a\nx", "%%rank 3-1\nx"])
def test_bad_rank_magic_is_a_clear_error(code):
    with pytest.raises(RankSpecError):
        split_rank_magic(code, 4)


def test_complete_needs_reply_and_idle_from_every_target():
    req = request((0, 1))
    req.replies[0] = {"status": "ok"}
    req.idle.add(0)
    assert not req.complete()
    req.idle.add(1)
    assert not req.complete()
    req.replies[1] = {"status": "ok"}
    assert req.complete()


def test_a_dead_rank_counts_as_done():
    req = request((0, 1))
    req.replies[0] = {"status": "ok"}
    req.idle.add(0)
    req.dead[1] = "rank 1 exit code 9"
    assert req.complete()
    reply = merge_execute_reply(req, 5)
    assert reply["status"] == "error" and reply["ename"] == "RankDied"
    assert reply["nbdist"]["failed_ranks"] == [1]


def test_merged_reply_names_failed_ranks_and_keeps_the_count():
    req = request()
    for r in range(4):
        req.replies[r] = {"status": "ok", "user_expressions": {}}
    req.replies[2] = {"status": "error", "ename": "ValueError", "evalue": "bad",
                      "traceback": ["t"]}
    reply = merge_execute_reply(req, 7)
    assert reply["execution_count"] == 7
    assert reply["ename"] == "ValueError"
    assert reply["evalue"] == "bad (failed on rank 2 of 4)"
    req.replies[3] = dict(req.replies[2])
    assert "ranks 2-3" in merge_execute_reply(req, 7)["evalue"]
    for r in range(4):
        req.replies[r] = {"status": "aborted"}
    assert merge_execute_reply(req, 7)["status"] == "aborted"


def test_table_remembers_finished_requests_for_late_output_but_boundedly():
    table = RequestTable()
    for i in range(600):
        req = FrontendRequest("shell", [], {"msg_id": f"f{i}", "msg_type": "execute_request"},
                              {}, {}, targets=(0,))
        table.add(req, 0, f"r{i}")
        table.finish(req)
    assert table.live("r599") is None
    assert table.finished_parent("r599")[0] == "f599"
    assert table.finished_parent("r0") is None


def test_prompts_are_shown_one_at_a_time_in_order():
    router = InputRouter()
    a = PendingInput(0, {"header": {"msg_id": "a"}}, "c")
    b = PendingInput(1, {"header": {"msg_id": "b"}}, "c")
    assert router.add(a) is a
    assert router.add(b) is None
    answered, nxt = router.answer()
    assert answered is a and nxt is b
    assert router.drop_request("c") is None
    assert router.shown is None
