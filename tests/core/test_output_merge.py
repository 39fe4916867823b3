"""How the outputs of N ranks become what a person reads: identical lines and displays once,
differing ones side by side with rank labels every frontend shows, one result per cell,
nothing held longer than the merge window, each rank's output in the order it was printed."""

from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from nbdist_provisioner.mux.core.output.composite import MAX_COMPOSITE
from nbdist_provisioner.mux.core.output.merger import Out, OutputMerger
from nbdist_provisioner.mux.core.output.rich import namespaced_display_id
from nbdist_provisioner.mux.core.output.streams import HOLD_BLOCK_MAX

from sim import Plan, Sim

PREFIXES = {r: f"[rank {r}] " for r in range(4)}
W = 0.1


def merger(window: float = W, shown: set[int] | None = None,
           ranks: tuple[int, ...] = (0, 1, 2, 3)) -> OutputMerger:
    m = OutputMerger(dict(PREFIXES), shown, window=window)
    m.start("c", ranks)
    return m


def text(outs: list[Out], name: str = "stdout") -> str:
    return "".join(o.content["text"] for o in outs if o.msg_type == "stream"
                   and o.content["name"] == name)


def say(m: OutputMerger, rank: int, line: str, now: float, name: str = "stdout") -> list[Out]:
    return m.feed(rank, "stream", {"name": name, "text": line}, "c", now)


def png(n: int) -> dict:
    return {"data": {"image/png": f"iVBORw0KGgo{n}", "text/plain": f"<Figure {n}>"},
            "metadata": {"image/png": {"width": 300, "height": 200}}}


def show(m: OutputMerger, rank: int, content: dict, now: float,
         msg_type: str = "display_data") -> list[Out]:
    return m.feed(rank, msg_type, content, "c", now)


def rich(outs: list[Out]) -> list[Out]:
    return [o for o in outs if o.msg_type != "stream"]


# -- identical lines ----------------------------------------------------------------------
def test_a_line_every_rank_prints_within_the_window_appears_once_with_the_ranks():
    m = merger()
    out = [o for r in range(4) for o in say(m, r, "Epoch 1/10\n", 0.01 * r)]
    assert text(out) == "[ranks 0-3] Epoch 1/10\n"


def test_a_line_some_ranks_print_appears_once_for_them_after_the_window():
    m = merger()
    out = [o for r in range(3) for o in say(m, r, "saving\n", 0.0)]
    assert out == [] and m.next_deadline() == W
    out = m.tick(W)
    assert text(out) == "[ranks 0-2] saving\n"


def test_differing_lines_go_out_once_every_rank_printed_something_else():
    """Nothing waits for the window when no rank can print the line any more."""
    m = merger()
    out = []
    for r in range(3):
        out += say(m, r, f"loss on rank {r}: 0.{r}\n", 0.001 * r)
    assert out == []  # rank 3 may still print any of them
    out = say(m, 3, "loss on rank 3: 0.3\n", 0.003)
    # every rank printed its first line, and they differ: no copy of any is coming
    assert text(out) == "".join(f"[rank {r}] loss on rank {r}: 0.{r}\n" for r in range(4))
    assert m.next_deadline() is None


def test_no_line_is_held_longer_than_the_window():
    m = merger()
    assert say(m, 0, "only rank 0\n", 1.0) == []
    assert m.next_deadline() == 1.0 + W
    assert text(m.tick(1.0 + W)) == "[rank 0] only rank 0\n"


def test_identical_lines_merge_only_where_each_rank_keeps_its_own_order():
    m = merger()
    out = say(m, 0, "a\n", 0.0) + say(m, 1, "b\n", 0.01) + say(m, 1, "a\n", 0.02)
    out += m.tick(1.0)
    # rank 1 printed b before its a: b moves up before rank 0's a (order across ranks,
    # within the window), so that rank 1's a can join it
    assert text(out) == "[rank 1] b\n[ranks 0-1] a\n"
    m = merger()
    out = say(m, 0, "a\n", 0.0) + say(m, 1, "a\n", 0.0) + say(m, 1, "b\n", 0.01)
    out += say(m, 0, "b\n", 0.01) + say(m, 0, "c\n", 0.01) + say(m, 1, "c\n", 0.01)
    out += m.tick(1.0)
    assert text(out) == "[ranks 0-1] a\n[ranks 0-1] b\n[ranks 0-1] c\n"


def test_window_zero_turns_line_merging_off():
    m = merger(window=0.0)
    out = [o for r in range(4) for o in say(m, r, "same\n", 0.0)]
    assert text(out) == "".join(f"[rank {r}] same\n" for r in range(4))


def test_a_flood_block_is_not_held():
    m = merger()
    block = "".join(f"{i}\n" for i in range(HOLD_BLOCK_MAX + 5))
    out = say(m, 2, block, 0.0)
    assert text(out).count("[rank 2] ") == HOLD_BLOCK_MAX + 5


def test_a_partial_line_lets_out_what_its_rank_printed_before():
    m = merger()
    out = say(m, 0, "done\nLoading", 0.0)
    out += m.tick(0.05)  # the partial line is due (30 ms): rank 0's held line goes first
    assert text(out) == "[rank 0] done\n[rank 0] Loading"


def test_group_label_follows_the_prefix_template_and_vanishes_without_labels():
    sim = Sim(nproc=2, stream_prefix="{host}:{rank}> ")
    cell = sim.execute("print('hi')", plan=Plan(prints="hi\n"))
    assert sim.stream(cell) == "node:0-1> hi\n"
    m = OutputMerger({0: "", 1: ""}, window=W)
    m.start("c", (0, 1))
    out = m.feed(0, "stream", {"name": "stdout", "text": "x\n"}, "c", 0.0)
    out += m.feed(1, "stream", {"name": "stdout", "text": "x\n"}, "c", 0.0)
    assert text(out) == "x\n"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=5), min_size=4,
                max_size=4),
       st.randoms(use_true_random=False))
def test_any_interleaving_shows_each_ranks_lines_once_in_order(lines, rnd):
    m = merger()
    queues = {r: list(ls) for r, ls in enumerate(lines)}
    now, out = 0.0, []
    while any(queues.values()):
        r = rnd.choice([r for r, q in queues.items() if q])
        out += say(m, r, queues[r].pop(0) + "\n", now)
        now += rnd.choice([0.0, 0.01, 0.2])
        out += m.tick(now)
        if not queues[r] and rnd.random() < 0.5:
            out += m.rank_finished("c", r, now)
    out += m.finish("c", now)
    seen: dict[int, list[str]] = {r: [] for r in range(4)}
    for line in text(out).splitlines():
        match = re.fullmatch(r"\[ranks? ([\d,-]+)\] (.*)", line)
        assert match, line
        for rank in _ranks(match.group(1)):
            seen[rank].append(match.group(2))
    assert seen == {r: ls for r, ls in enumerate(lines)}


def _ranks(spec: str) -> list[int]:
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return out


# -- displays -------------------------------------------------------------------------
def test_identical_displays_are_shown_once_unaltered():
    m = merger()
    html = {"data": {"text/html": "<b>x</b>"}, "metadata": {}}
    out = [o for r in range(4) for o in show(m, r, html, 0.0)]
    (o,) = rich(out)
    assert o.content["data"] == {"text/html": "<b>x</b>"}
    assert o.content["metadata"]["nbdist"] == {"ranks": [0, 1, 2, 3]}
    assert "transient" not in o.content


def test_identical_displays_are_matched_by_content_not_position():
    m = merger()
    out = show(m, 0, {"data": {"text/plain": "'header'"}}, 0.0)
    out += show(m, 0, {"data": {"text/plain": "'same'"}}, 0.0)
    for r in (1, 2, 3):
        out += show(m, r, {"data": {"text/plain": "'same'"}}, 0.01)
    out += m.finish("c", 0.02)
    shown = [o.content["data"]["text/plain"] for o in rich(out)]
    assert shown == ["[rank 0] 'header'", "'same'"]


def test_differing_figures_become_one_grid_with_a_caption_per_rank():
    m = merger()
    out = [o for r in range(4) for o in show(m, r, png(r), 0.01 * r)]
    (o,) = rich(out)
    html = o.content["data"]["text/html"]
    assert html.count("<img ") == 4
    for r in range(4):
        assert f"rank {r}</figcaption>" in html and f"iVBORw0KGgo{r}" in html
    assert o.content["data"]["text/plain"].splitlines()[0] == "[rank 0] <Figure 0>"
    kept = o.content["metadata"]["nbdist"]["outputs"]
    assert [(k["ranks"], k["data"]["image/png"]) for k in kept] == [
        ([r], f"iVBORw0KGgo{r}") for r in range(4)]


def test_a_late_rank_joins_the_grid_in_place():
    m = merger()
    out = [o for r in range(3) for o in show(m, r, png(r), 0.0)]
    assert rich(out) == []
    (first,) = rich(m.tick(W))
    display_id = first.content["transient"]["display_id"]
    assert first.content["data"]["text/html"].count("<img ") == 3
    (update,) = rich(show(m, 3, png(3), 0.5) + m.tick(0.5 + W))
    assert update.msg_type == "update_display_data"
    assert update.content["transient"]["display_id"] == display_id
    assert update.content["data"]["text/html"].count("<img ") == 4


def test_a_late_identical_display_updates_the_shown_one_to_all_ranks():
    m = merger()
    html = {"data": {"text/html": "<i>same</i>", "text/plain": "same"}, "metadata": {}}
    for r in range(3):
        show(m, r, html, 0.0)
    (first,) = rich(m.tick(W))
    assert "ranks 0-2" in first.content["data"]["text/html"]
    (update,) = rich(show(m, 3, html, 0.3))
    assert update.msg_type == "update_display_data"
    assert update.content["data"] == html["data"]  # whole again: unaltered
    assert update.content["metadata"]["nbdist"]["ranks"] == [0, 1, 2, 3]


def test_a_display_is_not_held_behind_the_prints_that_follow_it():
    m = merger()
    out = show(m, 0, {"data": {"text/plain": "'table'"}}, 0.0)
    out += say(m, 0, "after the table\n", 0.001)
    out += m.tick(W + 0.001)
    assert [o.msg_type for o in out] == ["display_data", "stream"]
    assert m.next_deadline() is None


def test_widget_views_are_never_composed():
    m = merger()
    out = []
    for r in range(4):
        out += show(m, r, {"data": {"application/vnd.jupyter.widget-view+json":
                                    {"model_id": f"m{r}"}, "text/plain": "IntSlider()"}}, 0.0)
    out += m.tick(W)
    views = rich(out)
    assert [o.content["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
            for o in views] == ["m0", "m1", "m2", "m3"]


def test_a_composite_too_big_goes_out_per_rank():
    m = merger()
    big = {"data": {"image/png": "x" * (MAX_COMPOSITE // 2), "text/plain": "f"}}
    out = [o for r in range(4) for o in show(m, r, {**big, "metadata": {"n": r}}, 0.0)]
    assert len(rich(out + m.tick(W))) == 4


def test_display_ids_are_namespaced_per_rank_and_never_merged():
    m = merger()
    msg = {"data": {"text/plain": "v1"}, "metadata": {}, "transient": {"display_id": "d"}}
    out = show(m, 0, msg, 0.0) + show(m, 1, msg, 0.0)
    ids = [o.content["transient"]["display_id"] for o in rich(out)]
    assert ids == [namespaced_display_id("d", 0), namespaced_display_id("d", 1)]
    upd = show(m, 1, {**msg, "data": {"text/plain": "v2"}}, 0.1, "update_display_data")
    assert upd[0].content["transient"]["display_id"] == namespaced_display_id("d", 1)


# -- results and errors ----------------------------------------------------------------
def result(value: str) -> dict:
    return {"data": {"text/plain": value}, "metadata": {}, "execution_count": 7}


def test_differing_results_become_one_result_with_a_value_per_rank():
    m = merger()
    out = [o for r in range(4) for o in show(m, r, result(str(r * 10)), 0.0, "execute_result")]
    (o,) = rich(out)
    assert o.msg_type == "execute_result" and o.content["execution_count"] == 7
    assert o.content["data"]["text/plain"].splitlines() == [
        f"[rank {r}] {r * 10}" for r in range(4)]
    assert o.content["data"]["text/html"].count("<tr>") == 4


def test_identical_results_once_and_a_rank_without_one_does_not_hold_them():
    m = merger()
    out = [o for r in range(3) for o in show(m, r, result("'ok'"), 0.0, "execute_result")]
    assert rich(out) == []
    (o,) = rich(m.rank_finished("c", 3, 0.1))
    assert o.content["data"]["text/plain"].startswith("[ranks 0-2] 'ok'")


def test_a_late_result_becomes_a_display_not_a_second_out_prompt():
    m = merger()
    show(m, 0, result("1"), 0.0, "execute_result")
    (first,) = rich(m.tick(1.5))
    (late,) = rich(show(m, 1, result("2"), 2.0, "execute_result"))
    assert first.msg_type == "execute_result" and late.msg_type == "display_data"
    assert "execution_count" not in late.content


def test_identical_errors_once_differing_errors_labelled():
    m = merger()
    err = {"ename": "E", "evalue": "v", "traceback": ["tb"]}
    out = [o for r in range(4) for o in show(m, r, err, 0.0, "error")]
    (o,) = rich(out)
    assert o.content["traceback"] == ["tb"]
    m.start("d", (0, 1))
    out = m.feed(0, "error", err, "d", 0.0) + m.rank_finished("d", 1, 0.0)
    assert rich(out)[0].content["traceback"] == ["[rank 0]", "tb"]


def test_output_ranks_filter_hides_streams_but_never_errors():
    m = OutputMerger(dict(PREFIXES), shown_ranks={0}, window=W)
    m.start("c", (0, 1))
    assert m.feed(1, "stream", {"name": "stdout", "text": "hidden\n"}, "c", 0.0) == []
    out = m.feed(1, "error", {"ename": "E", "evalue": "v", "traceback": []}, "c", 0.0)
    out += m.rank_finished("c", 0, 0.0)
    assert out and out[0].msg_type == "error"


# -- progress bars ----------------------------------------------------------------------
def bar_text(outs: list[Out]) -> list[str]:
    return [o.content["data"]["text/plain"] for o in outs
            if o.content.get("metadata", {}).get("nbdist", {}).get("progress")]


def test_a_finished_bar_stays_where_it_ran_not_below_as_stderr():
    m = merger()
    out = say(m, 0, "\r 50%|#####     |", 0.0, "stderr")
    out += say(m, 1, "\r 10%|#         |", 0.0, "stderr")
    out += say(m, 0, "\r100%|##########|\n", 0.2, "stderr")
    out += say(m, 0, "rank 0 done\n", 0.21)
    out += m.finish("c", 0.3)
    assert text(out, "stderr") == ""
    assert bar_text(out)[-1] == "[rank 0] 100%|##########|\n[rank 1]  10%|#         |"
    ids = {o.content["transient"]["display_id"] for o in out if o.msg_type.endswith(
        "display_data")}
    assert len(ids) == 1  # one live display, redrawn in place


def test_bars_that_all_ended_show_their_final_state_before_the_next_line():
    # (not a throttled redraw after it: a terminal, which can only append, shows the
    # bars where they ended only if their final state comes first)
    m = merger(ranks=(0, 1))
    out = say(m, 0, "\r 50%", 0.0, "stderr") + say(m, 1, "\r 40%", 0.0, "stderr")
    out += say(m, 0, "\r100%\n", 0.01, "stderr") + say(m, 1, "\r100%\n", 0.02, "stderr")
    out += say(m, 0, "after\n", 0.03) + say(m, 1, "after\n", 0.03)
    out += m.finish("c", 0.04)
    kinds = [o.msg_type if o.msg_type != "stream" else "text" for o in out]
    last_bar = max(i for i, k in enumerate(kinds) if k.endswith("display_data"))
    assert last_bar < kinds.index("text")
    assert bar_text(out)[-1] == "[rank 0] 100%\n[rank 1] 100%"
    final = [o for o in out if o.msg_type.endswith("display_data")][-1]
    assert final.content["metadata"]["nbdist"]["live"] is False


def test_bars_of_a_second_loop_open_a_block_below_what_was_printed_between():
    m = merger(ranks=(0, 1))
    out = []
    for r in (0, 1):
        out += say(m, r, "\repoch 1: 100%\n", 0.0, "stderr")
    out += say(m, 0, "loss 0.5\n", 0.1) + say(m, 1, "loss 0.6\n", 0.1)
    out += say(m, 0, "\repoch 2:  10%", 0.2, "stderr")
    out += m.finish("c", 0.5)
    kinds = [o.msg_type if o.msg_type != "stream" else "text" for o in out]
    first_display = kinds.index("display_data")
    second_display = kinds.index("display_data", first_display + 1)
    assert kinds.index("text") < second_display
    assert bar_text(out)[-1] == "[rank 0] epoch 2:  10%"


def test_bars_that_erase_themselves_leave_no_empty_output():
    m = merger()
    out = say(m, 0, "before\n", 0.0) + m.tick(W)
    out += say(m, 0, "\r 50%", 0.2, "stderr") + say(m, 1, "\r 60%", 0.2, "stderr")
    out += say(m, 0, "\r    \r", 0.3, "stderr") + say(m, 1, "\r    \r", 0.3, "stderr")
    out += m.finish("c", 0.4)
    clear = [i for i, o in enumerate(out) if o.msg_type == "clear_output"]
    assert clear, [o.msg_type for o in out]
    after = out[clear[-1] + 1:]
    assert [o.content.get("text") for o in after] == ["[rank 0] before\n"]


# -- through the core -----------------------------------------------------------------
def test_the_core_merges_identical_prints_and_keeps_one_out_per_cell():
    sim = Sim(nproc=4)
    sim.auto = False
    cell = sim.execute("print('hi'); rank")
    for rank in range(4):
        rank_id = sim.sent("execute_request", rank=rank)[-1].msg_id
        sim.rank_says(rank, "iopub", "stream", {"name": "stdout", "text": "hi\n"}, rank_id)
        sim.rank_says(rank, "iopub", "execute_result", {
            "data": {"text/plain": str(rank)}, "metadata": {}, "execution_count": 1}, rank_id)
    sim.deliver_all()
    assert sim.stream(cell) == "[ranks 0-3] hi\n"
    (out,) = sim.outputs(cell, "execute_result")
    assert out.content["execution_count"] == 1
    assert [e.msg_type for e in sim.iopub(cell)][-1] == "status"


def test_identical_merge_keeps_rank_message_metadata_for_one_rank():
    m = merger()
    out = m.feed(2, "display_data", {"data": {"text/plain": "x"}}, "c", 0.0,
                 metadata={"version": "2.1.0"})
    out += m.tick(W)
    (o,) = rich(out)
    assert o.metadata == {"version": "2.1.0"}
    assert list(itertools.chain(o.content["metadata"]["nbdist"]["ranks"])) == [2]


def test_a_rank_joins_an_identical_display_that_came_before_its_own_extra_one():
    """Ranks 1-3 display 'same' before rank 0's 'header': rank 0's 'same' still joins them,
    and 'header' moves before it (only the order across ranks changes, within the window)."""
    m = merger()
    out = show(m, 1, {"data": {"text/plain": "'same'"}}, 0.0)
    out += show(m, 0, {"data": {"text/plain": "'header'"}}, 0.001)
    out += show(m, 0, {"data": {"text/plain": "'same'"}}, 0.002)
    out += show(m, 2, {"data": {"text/plain": "'same'"}}, 0.003)
    out += show(m, 3, {"data": {"text/plain": "'same'"}}, 0.004)
    out += m.finish("c", 0.01)
    assert [o.content["data"]["text/plain"] for o in rich(out)] == ["[rank 0] 'header'",
                                                                     "'same'"]


def test_figures_that_come_in_waves_end_in_one_grid():
    """Rank 1's figure alone first, ranks 2 and 3 together later, rank 0's after the others
    finished: one output, updated in place, all four figures in rank order."""
    m = merger()
    out = show(m, 1, png(1), 0.0) + m.tick(W)
    out += show(m, 2, png(2), 0.5) + show(m, 3, png(3), 0.5) + m.tick(0.5 + W)
    for r in (1, 2, 3):
        out += m.rank_finished("c", r, 0.7)
    out += show(m, 0, png(0), 0.8) + m.rank_finished("c", 0, 0.9) + m.finish("c", 0.9)
    shown = rich(out)
    assert [o.msg_type for o in shown] == ["display_data"] + ["update_display_data"] * 2
    assert len({o.content["transient"]["display_id"] for o in shown}) == 1
    assert [k["ranks"] for k in shown[-1].content["metadata"]["nbdist"]["outputs"]] == [
        [0], [1], [2], [3]]
