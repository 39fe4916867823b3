"""JupyterLab's debugger on a 4-rank kernel, in Chromium: the toolbar's bug turns it on, a
breakpoint in a cell stops the debugged rank (rank 0 unless %debug_rank says otherwise), the
call stack and the variables show, the cell says which rank stopped, Continue resumes it
(issue 9 point 8)."""

from __future__ import annotations

from typing import Any

import pytest

from notebook_ui import NotebookPage, rank_lines

pytestmark = pytest.mark.slow

CODE = ("def f(a, b):\n"
        "    c = a + b * (rank + 1)\n"
        "    return c\n"
        "\n"
        "print('result', f(2, 3))")


def enable_debugger(nb: NotebookPage) -> None:
    bug = nb.page.locator(".jp-Notebook-toolbar .jp-DebuggerBugButton, "
                          ".jp-NotebookPanel-toolbar .jp-DebuggerBugButton").first
    nb.wait_until("the debugger button is enabled (the kernel can debug)",
                  lambda: bug.is_visible() and bug.locator("button").is_enabled())
    bug.locator("button").click()
    nb.wait_until("the debugger sidebar shows",
                  lambda: nb.page.locator(".jp-DebuggerCallstack").first.is_visible())


def set_breakpoint(nb: NotebookPage, index: int, line: int) -> None:
    gutter = nb.cell(index).locator(".cm-gutter.cm-breakpoint-gutter .cm-gutterElement")
    breakpoints = nb.page.locator(".jp-DebuggerBreakpoint")
    before = breakpoints.count()

    def shown() -> list[Any]:
        # (the gutter's first element is a hidden spacer when it renders one)
        elements = [gutter.nth(i) for i in range(gutter.count())]
        return [e for e in elements
                if e.is_visible() and (e.bounding_box() or {}).get("height")]

    nb.wait_until("the breakpoint gutter shows", lambda: len(shown()) >= line)
    shown()[line - 1].dispatch_event("mousedown")
    nb.wait_until("the breakpoint is set", lambda: breakpoints.count() > before)


def resume(nb: NotebookPage) -> None:
    """Click Continue in the call stack's toolbar (in its accordion title, outside the panel
    body), once the debugger has enabled it."""
    button = nb.page.locator('jp-button[data-command="debugger:continue"]').first
    nb.wait_until("Continue is enabled",
                  lambda: button.is_visible() and button.get_attribute("aria-disabled") == "false")
    button.click()


def frames(nb: NotebookPage) -> list[str]:
    return [t.strip() for t in
            nb.page.locator(".jp-DebuggerCallstackFrame-name").all_inner_texts()]


def test_a_breakpoint_stops_rank_0_and_the_panel_shows_its_frame(notebook):
    nb = notebook([CODE, "%debug_rank 2", CODE])
    enable_debugger(nb)
    set_breakpoint(nb, 0, 2)
    nb.run(0)
    nb.wait_until("the call stack shows f", lambda: "f" in frames(nb))
    variables = nb.page.locator(".jp-DebuggerVariables-body")
    nb.wait_until("the variables show a and b", lambda: {"a", "b"} <= set(
        t.strip() for t in variables.locator(".jp-DebuggerVariables-name").all_inner_texts()))
    nb.wait_until("the cell says which rank stopped",
                  lambda: "[nbdist] debugger: rank 0 stopped (breakpoint)" in nb.output_text(0))
    assert nb.prompt(0) == "[*]:"
    # the other ranks ran the cell to its end; rank 0 waits at the breakpoint
    nb.wait_until("ranks 1-3 printed", lambda: all(
        r in rank_lines(nb.output_text(0)) for r in (1, 2, 3)))
    assert 0 not in rank_lines(nb.output_text(0))
    nb.screenshot("debugger-breakpoint.png")
    resume(nb)
    nb.wait_finished(0)
    results = rank_lines(nb.output_text(0))
    assert results[0] == ["result 5"] and results[3] == ["result 14"], results

    # %debug_rank 2, and the debugger off and on again: the breakpoint stops rank 2
    nb.run_and_wait(1)
    assert "debugs rank 0 until it is switched off" in nb.output_text(1)
    bug = nb.page.locator(".jp-DebuggerBugButton button").first
    bug.click()
    nb.wait_until("the debugger is off",
                  lambda: not nb.page.locator(".jp-DebuggerCallstack").first.is_visible()
                  or bug.get_attribute("aria-pressed") in ("false", None))
    enable_debugger(nb)
    set_breakpoint(nb, 2, 2)
    nb.run(2)
    nb.wait_until("the cell says rank 2 stopped",
                  lambda: "[nbdist] debugger: rank 2 stopped (breakpoint)" in nb.output_text(2))
    nb.wait_until("the call stack shows f", lambda: "f" in frames(nb))
    resume(nb)
    nb.wait_finished(2)
    assert rank_lines(nb.output_text(2))[2] == ["result 11"]
