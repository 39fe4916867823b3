"""``nbdist run``'s terminal view, without a kernel: printed lines as they come, the live
progress display redrawn in place on a terminal, only its last state in a log."""

from __future__ import annotations

import io
import re

from nbdist_provisioner.cli.terminal import TerminalView


def bar(display_id: str, text: str, update: bool = False, live: bool = True) -> dict:
    return {"msg_type": "update_display_data" if update else "display_data",
            "content": {"data": {"text/plain": text},
                        "metadata": {"nbdist": {"progress": True, "ranks": [0, 1],
                                                "live": live}},
                        "transient": {"display_id": display_id}}}


def line(text: str, name: str = "stdout") -> dict:
    return {"msg_type": "stream", "content": {"name": name, "text": text}}


IDLE = {"msg_type": "status", "content": {"execution_state": "idle"}}


def screen(written: str) -> list[str]:
    """The lines a terminal shows after ``written`` (cursor-up-and-clear applied)."""
    lines: list[str] = []
    for i, part in enumerate(re.split(r"\x1b\[(\d+)F\x1b\[J", written)):
        if i % 2:
            del lines[len(lines) - int(part):]
        else:
            lines += part.splitlines()
    return lines


def test_on_a_terminal_bars_are_redrawn_in_place_below_the_printed_lines():
    term = io.StringIO()
    view = TerminalView(term, term, live=True, width=80)
    view.message(line("[rank 0] start\n"))
    view.message(bar("b1", "[rank 0]  10%\n[rank 1]   5%"))
    view.message(bar("b1", "[rank 0]  50%\n[rank 1]  40%", update=True))
    view.message(line("[rank 1] checkpoint\n"))
    view.message(bar("b1", "[rank 0] 100%\n[rank 1] 100%", update=True))
    view.message(IDLE)
    shown = term.getvalue()
    # each redraw moves up over the two bar lines and clears them
    assert shown.count("\x1b[2F\x1b[J") == 3
    assert screen(shown) == ["[rank 0] start", "[rank 1] checkpoint", "[rank 0] 100%",
                             "[rank 1] 100%"]


def test_without_a_terminal_only_the_last_state_is_written_as_plain_lines():
    out, err = io.StringIO(), io.StringIO()
    view = TerminalView(out, err, live=False)
    view.message(bar("b1", "[rank 0]  10%"))
    view.message(bar("b1", "[rank 0]  90%", update=True))
    view.message(line("[rank 0] between\n"))
    view.message(bar("b1", "[rank 0] 100%", update=True))
    view.message(bar("b2", "[rank 0] epoch 2:   0%"))
    view.message(IDLE)
    assert err.getvalue() == "[rank 0] 100%\n[rank 0] epoch 2:   0%\n"
    assert out.getvalue() == "[rank 0] between\n"
    assert "\x1b" not in err.getvalue()


def test_bars_that_ended_stay_above_what_is_printed_after_them():
    term = io.StringIO()
    view = TerminalView(term, term, live=True, width=80)
    view.message(bar("b1", "[rank 0]  50%\n[rank 1]  40%"))
    view.message(bar("b1", "[rank 0] 100%\n[rank 1] 100%", update=True, live=False))
    view.message(line("[ranks 0-1] after the bars\n"))
    view.message(IDLE)
    assert screen(term.getvalue()) == ["[rank 0] 100%", "[rank 1] 100%",
                                       "[ranks 0-1] after the bars"]
    # in a log, too, the final bars come before the line printed after them
    out = io.StringIO()
    view = TerminalView(out, out, live=False)
    view.message(bar("b1", "[rank 0]  50%"))
    view.message(bar("b1", "[rank 0] 100%", update=True, live=False))
    view.message(line("[rank 0] after\n"))
    view.message(IDLE)
    assert out.getvalue() == "[rank 0] 100%\n[rank 0] after\n"


def test_rich_outputs_by_their_text_and_errors_by_their_traceback():
    out, err = io.StringIO(), io.StringIO()
    view = TerminalView(out, err, live=False)
    view.message({"msg_type": "execute_result", "content": {
        "data": {"text/plain": "[rank 0] 0\n[rank 1] 10", "text/html": "<table>"}}})
    view.message({"msg_type": "error", "content": {"traceback": ["[rank 1]", "ZeroDivision"]}})
    assert out.getvalue() == "[rank 0] 0\n[rank 1] 10\n"
    assert err.getvalue() == "[rank 1]\nZeroDivision\n"
