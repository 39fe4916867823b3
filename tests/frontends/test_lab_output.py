"""JupyterLab in Chromium: what a person sees of a 4-rank cell's output while and after
it runs (labelled streams, errors, progress bars, figures)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def wait_helper(go: Path) -> str:
    """A first cell defining wait_for_test(): it returns once the test creates ``go``, so a
    cell stays busy exactly until the test has seen what it wants (no timing involved)."""
    return (f"import os, time\n"
            f"def wait_for_test():\n"
            f"    while not os.path.exists({str(go)!r}):\n"
            f"        time.sleep(0.02)")


def test_labelled_output_streams_in_while_the_cell_runs(notebook, tmp_path):
    go = tmp_path / "go"
    nb = notebook([wait_helper(go),
                   "print(f'working on rank {rank} of {world_size}', flush=True)\n"
                   "wait_for_test()\n"
                   "print(f'done on rank {rank}', flush=True)"])
    assert nb.kernel_display_name() == "Python 3 (multi-rank, 4 ranks)"
    nb.run_and_wait(0)
    nb.run(1)
    working = [f"[rank {r}] working on rank {r} of 4" for r in range(4)]
    nb.wait_until("every rank's first line is shown",
                  lambda: all(line in nb.output_text(1) for line in working))
    # shown while the cell still runs: the ranks are blocked until the test creates `go`
    assert nb.prompt(1) == "[*]:"
    assert "done on rank" not in nb.output_text(1)
    nb.screenshot("streaming-labelled-output.png")
    go.touch()
    assert nb.wait_finished(1) == 2
    lines = nb.output_text(1).splitlines()
    for r in range(4):
        assert f"[rank {r}] done on rank {r}" in lines, lines
        # per rank, in the order printed
        assert lines.index(f"[rank {r}] working on rank {r} of 4") < lines.index(
            f"[rank {r}] done on rank {r}")
    assert nb.error_outputs(1).count() == 0


def test_failing_cell_shows_the_error_and_finishes(notebook):
    nb = notebook(["print(f'rank {rank} before', flush=True)\n"
                   "if rank == 2:\n"
                   "    1 / 0\n"
                   "print(f'rank {rank} after', flush=True)",
                   "print('queued after the error')"])
    nb.run(0)
    nb.wait_finished(0)
    errors = nb.error_outputs(0)
    nb.wait_until("the error is shown", lambda: errors.count() > 0)
    error_text = "\n".join(errors.all_inner_texts())
    assert "ZeroDivisionError" in error_text and "division by zero" in error_text
    # the error output is styled as one (JupyterLab's red error background)
    background = errors.first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent"), background
    text = nb.output_text(0)
    for r in (0, 1, 3):
        assert f"[rank {r}] rank {r} after" in text, text
    assert "rank 2 after" not in text
    nb.screenshot("error-on-one-rank.png", index=0)
    # the kernel is usable after the error
    assert nb.run_and_wait(1) == 2
    # printed identically by every rank: shown once, with the ranks
    assert "[ranks 0-3] queued after the error" in nb.output_text(1)


def test_tqdm_bars_of_four_ranks_animate_in_one_place(notebook, tmp_path):
    go = tmp_path / "go"
    nb = notebook([wait_helper(go),
                   "from tqdm import tqdm\n"
                   "print(f'rank {rank} starts', flush=True)\n"
                   "for i in tqdm(range(40), desc=f'rank {rank}', mininterval=0, ncols=70):\n"
                   "    if i == 20 + rank:\n"
                   "        wait_for_test()\n"
                   "print(f'rank {rank} done', flush=True)"])
    nb.run_and_wait(0)
    nb.run(1)
    # each rank's bar, live, while the cell runs: rank r is stopped at step 20 + r
    live = nb.wait_until("a live bar per rank at its waiting step",
                         lambda: len(bars(nb, 1, "{step}/40", 20)) == 4)
    assert live and nb.prompt(1) == "[*]:"
    text = nb.output_text(1)
    for r in range(4):
        assert text.count(f"rank {r}: ") == 1, text  # one line per rank, redrawn in place
        assert f"rank {r} starts" in text
    nb.screenshot("tqdm-live-bars.png", index=1)
    go.touch()
    nb.wait_finished(1)
    nb.wait_until("every bar at 40/40", lambda: len(bars(nb, 1, "40/40")) == 4)
    text = nb.output_text(1)
    for r in range(4):
        assert f"rank {r} done" in text
        assert text.count(f"rank {r}: ") == 1, text


def bars(nb, index: int, shows: str, base: int = 0) -> dict[int, str]:
    """Each rank's tqdm line in the cell's output that shows ``shows`` (``{step}`` is
    ``base`` + the rank)."""
    found = {}
    for line in nb.output_text(index).splitlines():
        m = re.search(r"rank (\d): +\d+%", line)
        if m and shows.format(step=base + int(m.group(1))) in line:
            found[int(m.group(1))] = line
    return found


def test_matplotlib_figures_of_four_ranks_are_shown(notebook):
    nb = notebook(["import matplotlib.pyplot as plt\n"
                   "fig, ax = plt.subplots(figsize=(3, 2))\n"
                   "ax.plot(range(10), [x * (rank + 1) for x in range(10)])\n"
                   "ax.set_title(f'rank {rank}')\n"
                   "plt.show()"])
    nb.run_and_wait(0)
    images = nb.cell(0).locator(".jp-OutputArea-output img")
    nb.wait_until("four figures", lambda: images.count() == 4)
    sources = {images.nth(i).get_attribute("src") for i in range(4)}
    assert len(sources) == 4, "four different figures"
    for i in range(4):
        assert images.nth(i).evaluate("e => e.complete && e.naturalWidth > 0")
    nb.screenshot("figures-four-ranks.png", index=0)
    assert nb.error_outputs(0).count() == 0


def test_each_rank_figure_is_labelled_on_the_page(notebook):
    nb = notebook(["import matplotlib.pyplot as plt\n"
                   "plt.plot([0, rank])\n"
                   "plt.show()"])
    nb.run_and_wait(0)
    images = nb.cell(0).locator(".jp-OutputArea-output img")
    nb.wait_until("four figures", lambda: images.count() == 4)
    visible = nb.output_text(0)
    for r in range(4):
        assert re.search(rf"\brank {r}\b", visible), visible


def test_differing_results_of_four_ranks_show_one_out_prompt(notebook):
    nb = notebook(["rank * 10"])
    count = nb.run_and_wait(0)
    text = nb.output_text(0)
    for r in range(4):
        assert str(r * 10) in text, text
    prompts = [p.strip() for p in nb.cell(0).locator(".jp-OutputPrompt").all_inner_texts()]
    assert prompts.count(f"[{count}]:") == 1, prompts


def test_identical_display_after_a_rank_only_one_is_shown_once(notebook):
    nb = notebook(["from IPython.display import display\n"
                   "if rank == 0:\n"
                   "    display('header')\n"
                   "display('same')"], kernel="nbdist-test-4-window")
    nb.run_and_wait(0)
    text = nb.output_text(0)
    assert text.count("'header'") == 1, text
    assert text.count("'same'") == 1, text
