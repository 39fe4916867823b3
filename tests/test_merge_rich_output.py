"""RichMerger and OutputMerger without sockets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nbdist_provisioner.mux.core.output.merger import OutputMerger
from nbdist_provisioner.mux.core.output.rich import RichMerger, namespaced_display_id

PREFIXES = {r: f"[rank {r}] " for r in range(4)}


def result(text: str) -> dict:
    return {"data": {"text/plain": text}, "metadata": {}, "execution_count": 1}


@settings(max_examples=200, deadline=None)
@given(st.permutations(range(4)), st.lists(st.integers(0, 2), min_size=4, max_size=4),
       st.lists(st.floats(0, 2.0), min_size=4, max_size=4))
def test_every_rank_output_appears_exactly_once(order, values, delays):
    m = RichMerger(deadline=1.0)
    m.start("c", (0, 1, 2, 3))
    out = []
    now = 0.0
    for rank, delay in zip(order, delays, strict=False):
        now += delay
        out += m.tick(now)
        out += m.feed(rank, "execute_result", result(str(values[rank])), "c", now)
    out += m.finish("c")
    covered = sorted(r for o in out for r in o.content["metadata"]["nbdist"]["ranks"])
    assert covered == [0, 1, 2, 3]
    for o in out:
        ranks = o.content["metadata"]["nbdist"]["ranks"]
        assert {values[r] for r in ranks} == {int(o.content["data"]["text/plain"].split()[-1])}


def test_identical_outputs_are_shown_once_unaltered():
    m = RichMerger()
    m.start("c", (0, 1, 2, 3))
    out = []
    for r in range(4):
        out += m.feed(r, "display_data", {"data": {"text/html": "<b>x</b>"}, "metadata": {}},
                      "c", 0.0)
    assert len(out) == 1
    assert out[0].content["data"] == {"text/html": "<b>x</b>"}
    assert out[0].content["metadata"]["nbdist"] == {"ranks": [0, 1, 2, 3]}


def test_differing_outputs_are_labelled_per_rank():
    m = RichMerger()
    m.start("c", (0, 1))
    out = m.feed(0, "execute_result", result("0"), "c", 0.0)
    assert out == []  # waits for rank 1's
    out = m.feed(1, "execute_result", result("1"), "c", 0.01)
    assert [o.content["data"]["text/plain"] for o in out] == ["[rank 0] 0", "[rank 1] 1"]
    assert [o.content["metadata"]["nbdist"]["rank"] for o in out] == [0, 1]


def test_a_rank_that_finishes_without_output_does_not_hold_others():
    m = RichMerger()
    m.start("c", (0, 1))
    assert m.feed(0, "display_data", {"data": {"text/plain": "only 0"}}, "c", 0.0) == []
    out = m.rank_finished("c", 1, 0.1)
    assert [o.content["data"]["text/plain"] for o in out] == ["[rank 0] only 0"]


def test_slow_rank_goes_out_after_the_deadline():
    m = RichMerger(deadline=1.0)
    m.start("c", (0, 1))
    m.feed(0, "display_data", {"data": {"text/plain": "a"}}, "c", 0.0)
    assert m.next_deadline() == 1.0
    assert m.tick(0.5) == []
    assert len(m.tick(1.0)) == 1
    late = m.feed(1, "display_data", {"data": {"text/plain": "a"}}, "c", 2.0)
    assert late[0].content["metadata"]["nbdist"]["rank"] == 1


def test_display_ids_are_namespaced_per_rank_and_never_merged():
    m = RichMerger()
    m.start("c", (0, 1))
    msg = {"data": {"text/plain": "v1"}, "metadata": {}, "transient": {"display_id": "d"}}
    out = m.feed(0, "display_data", msg, "c", 0.0) + m.feed(1, "display_data", msg, "c", 0.0)
    ids = [o.content["transient"]["display_id"] for o in out]
    assert ids == [namespaced_display_id("d", 0), namespaced_display_id("d", 1)]
    upd = m.feed(1, "update_display_data", {**msg, "data": {"text/plain": "v2"}}, "c", 0.1)
    assert upd[0].msg_type == "update_display_data"
    assert upd[0].content["transient"]["display_id"] == namespaced_display_id("d", 1)


def test_identical_errors_once_differing_errors_labelled():
    m = RichMerger()
    m.start("c", (0, 1, 2))
    err = {"ename": "E", "evalue": "v", "traceback": ["tb"]}
    out = []
    for r in range(3):
        out += m.feed(r, "error", err, "c", 0.0)
    assert len(out) == 1 and out[0].content["traceback"] == ["tb"]
    m.start("d", (0, 1))
    out = m.feed(0, "error", err, "d", 0.0) + m.rank_finished("d", 1, 0.0)
    assert out[0].content["traceback"] == ["[rank 0]", "tb"]


def test_output_merger_coalesces_and_orders_streams_before_rich():
    m = OutputMerger(PREFIXES)
    m.start("c", (0, 1))
    out = m.feed(0, "stream", {"name": "stdout", "text": "a\nb\n"}, "c", 0.0)
    assert [o.content["text"] for o in out] == ["[rank 0] a\n[rank 0] b\n"]
    out = m.feed(0, "execute_result", result("x"), "c", 0.0)
    out += m.feed(1, "execute_result", result("x"), "c", 0.0)
    assert [o.msg_type for o in out] == ["execute_result"]


def test_output_merger_progress_display_is_created_updated_and_throttled():
    m = OutputMerger(PREFIXES, progress_interval=0.1)
    m.start("c", (0, 1))
    out = m.feed(0, "stream", {"name": "stderr", "text": "\r 10%"}, "c", 0.0)
    assert [o.msg_type for o in out] == ["display_data"]
    display_id = out[0].content["transient"]["display_id"]
    assert out[0].content["data"]["text/plain"] == "[rank 0]  10%"
    assert m.feed(1, "stream", {"name": "stderr", "text": "\r 20%"}, "c", 0.05) == []
    out = m.tick(0.1)
    assert [o.msg_type for o in out] == ["update_display_data"]
    assert out[0].content["transient"]["display_id"] == display_id
    assert out[0].content["data"]["text/plain"] == "[rank 0]  10%\n[rank 1]  20%"
    out = m.feed(0, "stream", {"name": "stderr", "text": "\r100%\n"}, "c", 0.3)
    assert out[0].msg_type == "stream" and out[0].content["text"] == "[rank 0] 100%\n"
    # the finished bar left the live display, which now shows rank 1 alone
    assert out[1].msg_type == "update_display_data"
    assert out[1].content["data"]["text/plain"] == "[rank 1]  20%"
    out = m.feed(1, "stream", {"name": "stderr", "text": "\r 30%"}, "c", 0.32)
    assert out == []  # throttled
    out = m.finish("c", 0.33)  # the final state goes out when the cell ends
    assert [o.content["data"]["text/plain"] for o in out] == ["[rank 1]  30%"]


def test_output_ranks_filter_hides_streams_but_never_errors():
    m = OutputMerger(PREFIXES, shown_ranks={0})
    m.start("c", (0, 1))
    assert m.feed(1, "stream", {"name": "stdout", "text": "hidden\n"}, "c", 0.0) == []
    out = m.feed(1, "error", {"ename": "E", "evalue": "v", "traceback": []}, "c", 0.0)
    assert out and out[0].msg_type == "error"
