"""StreamMerger, without sockets: any interleaving keeps every rank's lines whole and in order."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from nbdist_provisioner.mux.core.output.streams import (
    MAX_PENDING,
    StreamMerger,
    StreamText,
    apply_carriage_returns,
)

PREFIXES = {r: f"[rank {r}] " for r in range(4)}


def frontend_lines(chunks: list[StreamText], name: str = "stdout") -> list[str]:
    text = "".join(c.text for c in chunks if c.name == name)
    assert text == "" or text.endswith("\n"), repr(text[-50:])
    return text.split("\n")[:-1] if text else []


def pieces_by_rank(lines: list[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for line in lines:
        for rank, prefix in PREFIXES.items():
            if line.startswith(prefix):
                out.setdefault(rank, []).append(line[len(prefix):])
                break
        else:
            raise AssertionError(f"unlabelled line {line!r}")
    return out


def assert_lines_whole(original: list[str], pieces: list[str]) -> None:
    """Each original line is one piece, or consecutive pieces of a line broken by another rank."""
    i = 0
    for line in original:
        acc = None
        while acc != line:
            assert i < len(pieces), f"missing {line!r}"
            acc = (acc or "") + pieces[i]
            i += 1
            assert line.startswith(acc), f"{acc!r} is not the start of {line!r}"
    assert i == len(pieces), f"extra pieces {pieces[i:]}"


line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                    max_size=20)


@st.composite
def interleavings(draw):
    """Per-rank text split into random chunks, interleaved at random, with random ticks."""
    ranks = draw(st.integers(1, 4))
    lines = {r: draw(st.lists(line_text, max_size=8)) for r in range(ranks)}
    queues = {}
    for r, ls in lines.items():
        text = "".join(line + "\n" for line in ls)
        cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=6)))
        bounds = [0, *cuts, len(text)]
        queues[r] = [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    events = []
    while any(queues.values()):
        r = draw(st.sampled_from([r for r, q in queues.items() if q]))
        events.append(("feed", r, queues[r].pop(0)))
        if draw(st.booleans()):
            events.append(("tick", draw(st.floats(0, 0.1)), None))
    return lines, events


@settings(max_examples=300, deadline=None)
@given(interleavings())
def test_any_interleaving_keeps_each_rank_whole_and_in_order(case):
    lines, events = case
    m = StreamMerger(PREFIXES)
    now = 0.0
    out: list[StreamText] = []
    for kind, a, b in events:
        if kind == "feed":
            out += m.feed(a, "stdout", b, "cell", now)
        else:
            now += a
            out += m.tick(now)
    out += m.finish("cell")
    assert all(c.parent == "cell" for c in out)
    got = pieces_by_rank(frontend_lines(out))
    for rank, ls in lines.items():
        assert_lines_whole(ls, got.get(rank, []))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["bar", "line"]),
                          st.integers(0, 100)), max_size=40))
def test_progress_never_leaks_into_another_ranks_line(events):
    m = StreamMerger(PREFIXES)
    out: list[StreamText] = []
    expected: dict[int, list[str]] = {}
    bar_open: set[int] = set()
    for i, (rank, kind, pct) in enumerate(events):
        if kind == "bar":
            out += m.feed(rank, "stderr", f"\rrank{rank} {pct}%", "cell", float(i))
            assert m.progress[("cell", rank, "stderr")] == f"rank{rank} {pct}%"
            bar_open.add(rank)
        else:
            close = "\n" if rank in bar_open else ""  # like tqdm.write: end the bar line first
            bar_open.discard(rank)
            out += m.feed(rank, "stderr", f"{close}ckpt{rank}-{i}\n", "cell", float(i))
            expected.setdefault(rank, []).append(f"ckpt{rank}-{i}")
        out += m.tick(float(i) + 0.5)
        for (parent, r, _), text in m.progress.items():
            assert parent == "cell" and text.startswith(f"rank{r} ")
    out += m.finish("cell")
    got = pieces_by_rank(frontend_lines(out, "stderr"))
    for rank, lines in got.items():
        # completed bars stay in the live display: only the rank's ordinary lines are text
        assert [x for x in lines if x] == expected.get(rank, [])


def test_partial_line_waits_briefly_then_goes_out():
    m = StreamMerger(PREFIXES, partial_delay=0.03)
    assert m.feed(0, "stdout", "Loading", "c", now=1.0) == []
    assert m.next_deadline() == 1.03
    assert m.tick(1.01) == []
    assert m.tick(1.04) == [StreamText("c", "stdout", "[rank 0] Loading")]
    # the rest of the line continues it, with no second prefix
    assert m.feed(0, "stdout", " done\n", "c", now=1.1) == [StreamText("c", "stdout", " done\n")]


def test_another_rank_breaks_an_open_partial_line_and_it_is_relabelled():
    m = StreamMerger(PREFIXES, partial_delay=0.0)
    m.feed(0, "stdout", "Loading", "c", now=0.0)
    out = m.tick(0.0)
    out += m.feed(1, "stdout", "hello\n", "c", now=0.1)
    out += m.feed(0, "stdout", " done\n", "c", now=0.2)
    assert "".join(o.text for o in out) == (
        "[rank 0] Loading\n[rank 1] hello\n[rank 0]  done\n")


def test_stdout_and_stderr_stay_apart():
    m = StreamMerger(PREFIXES)
    out = m.feed(0, "stdout", "out\n", "c", 0.0) + m.feed(0, "stderr", "err\n", "c", 0.0)
    assert out == [StreamText("c", "stdout", "[rank 0] out\n"),
                   StreamText("c", "stderr", "[rank 0] err\n")]


def test_empty_prefix_turns_labels_off():
    m = StreamMerger({0: "", 1: ""})
    assert m.feed(1, "stdout", "plain\n", "c", 0.0) == [StreamText("c", "stdout", "plain\n")]


def test_a_huge_line_without_newline_is_forwarded_not_hoarded():
    m = StreamMerger(PREFIXES)
    out = m.feed(0, "stdout", "x" * (MAX_PENDING + 10), "c", 0.0)
    assert len(out) == 1 and len(out[0].text) == MAX_PENDING + 10 + len(PREFIXES[0])


def test_a_progress_bar_never_grows_memory():
    m = StreamMerger(PREFIXES)
    for i in range(10_000):
        m.feed(0, "stderr", f"\r{i:>6}/10000", "c", float(i))
    assert m.progress[("c", 0, "stderr")] == "  9999/10000"
    assert len(m._streams[(0, "stderr")].pending) < 20


def test_finished_bar_stays_in_the_live_display_not_as_a_line():
    m = StreamMerger(PREFIXES)
    m.feed(2, "stderr", "\r 50%|#####     |", "c", 0.0)
    assert ("c", 2, "stderr") in m.progress
    out = m.feed(2, "stderr", "\r100%|##########|\n", "c", 0.1)
    assert out == []
    assert ("c", 2, "stderr") not in m.progress
    assert m.bar_events == [("c", 2, "stderr", " 50%|#####     |", False),
                            ("c", 2, "stderr", "100%|##########|", True)]


def test_output_for_a_new_parent_flushes_the_old_partial_first():
    m = StreamMerger(PREFIXES)
    m.feed(0, "stdout", "tail of cell 1", "c1", 0.0)
    out = m.feed(0, "stdout", "cell 2\n", "c2", 0.01)
    assert out == [StreamText("c1", "stdout", "[rank 0] tail of cell 1"),
                   StreamText("c2", "stdout", "[rank 0] cell 2\n")]


def test_carriage_returns_show_what_a_terminal_shows():
    assert apply_carriage_returns("a\rbb\rccc") == "ccc"
    assert apply_carriage_returns("abc\r") == "abc"
    assert apply_carriage_returns("\r\r") == ""
