"""A notebook open in JupyterLab, driven the way a person does: select a cell, Shift+Enter,
read what the page shows (prompts, output text, rendered elements)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import POLL, JupyterServer, wait_for

REPO = Path(__file__).resolve().parents[2]
#: screenshots of failed tests (an ignored folder)
ARTIFACTS = REPO / "test-artifacts"
#: where named screenshots go; NBDIST_SCREENSHOTS=docs/screenshots refreshes the README's
SCREENSHOTS = REPO / os.environ.get("NBDIST_SCREENSHOTS", "test-artifacts/screenshots")
SCREENSHOTS.mkdir(parents=True, exist_ok=True)
#: how long a cell may take to show something on a shared 2-core machine (a deadline for
#: the test's wait, never a limit on the kernel)
UI_TIMEOUT = 120.0
ERROR_MIME = "application/vnd.jupyter.stderr"


def rank_lines(text: str) -> dict[int, list[str]]:
    """The lines of an output by rank: ``[rank 2] x`` is rank 2's, ``[ranks 0-3] x`` (a line
    several ranks printed identically, shown once) is each of theirs."""
    import re

    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"\[ranks? ([\d,-]+)\] ?(.*)$", line)
        if not m:
            continue
        for part in m.group(1).split(","):
            a, _, b = part.partition("-")
            for rank in range(int(a), int(b or a) + 1):
                out.setdefault(rank, []).append(m.group(2))
    return out


def notebook_json(cells: list[str], kernel: str) -> dict[str, Any]:
    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": kernel, "display_name": kernel,
                                    "language": "python"},
                     "language_info": {"name": "python"}},
        "cells": [{"cell_type": "code", "id": f"cell-{i}", "metadata": {},
                   "execution_count": None, "outputs": [], "source": src}
                  for i, src in enumerate(cells)],
    }


@dataclass
class NotebookPage:
    """One notebook file, open in its own browser tab, with its kernel."""

    lab: JupyterServer
    page: Any  # playwright.sync_api.Page
    path: str
    kernel_id: str
    #: the browser console's messages for this tab ("type: text")
    console: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, lab: JupyterServer, context: Any, path: str, cells: list[str],
             kernel: str) -> NotebookPage:
        """Write the notebook through the contents API and open it in a new tab."""
        status, body = lab.api("PUT", f"/api/contents/{path}",
                               {"type": "notebook", "format": "json",
                                "content": notebook_json(cells, kernel)})
        assert status in (200, 201), (status, body)
        page = context.new_page()
        nb = cls(lab, page, path, kernel_id="")
        page.on("console", lambda msg: nb.console.append(f"{msg.type}: {msg.text}"))
        page.goto(f"{lab.base_url}/lab/tree/{path}?reset&token={lab.token}")
        return nb

    def wait_ready(self, n_cells: int) -> None:
        """Until the notebook's kernel is idle (server and page agree) and its cells show."""
        lab, page = self.lab, self.page

        def session_kernel() -> str | None:
            _, sessions = lab.api("GET", "/api/sessions")
            ids = [s["kernel"]["id"] for s in sessions if s["path"] == self.path]
            return ids[0] if ids else None

        self.kernel_id = wait_for(f"a session for {self.path}", session_kernel, UI_TIMEOUT,
                                  lab.proc, lab.log)
        lab.wait_kernel_idle(self.kernel_id)
        self.cell(n_cells - 1).wait_for(timeout=UI_TIMEOUT * 1000)
        self.wait_until("the kernel status shows Idle",
                        lambda: "Idle" in page.locator(".jp-StatusBar-Widget").inner_text())
        self.hide_file_browser()

    def hide_file_browser(self) -> None:
        """Collapse the left panel, as a person reading the notebook would, so screenshots
        show the notebook. Cosmetic: a panel that stays open fails nothing."""
        left = self.page.locator("#jp-left-stack")
        if not left.is_visible():
            return
        self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()
        with contextlib.suppress(AssertionError):
            self.wait_until("the file browser closes", lambda: not left.is_visible(), 10)

    # -- locators -------------------------------------------------------------------

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def prompt(self, index: int) -> str:
        return str(self.cell(index).locator(".jp-InputArea-prompt").inner_text()).strip()

    def outputs(self, index: int) -> Any:
        return self.cell(index).locator(".jp-OutputArea-output")

    def output_text(self, index: int) -> str:
        """The text the cell's output area shows (figure spaces, as tqdm widgets use, read
        as spaces)."""
        text = str(self.cell(index).locator(".jp-Cell-outputArea").inner_text())
        return text.replace("\u2007", " ").replace("\xa0", " ")

    def error_outputs(self, index: int) -> Any:
        return self.cell(index).locator(f'.jp-RenderedText[data-mime-type="{ERROR_MIME}"]')

    def kernel_display_name(self) -> str:
        return str(self.page.locator(".jp-KernelName").first.inner_text()).strip()

    # -- actions --------------------------------------------------------------------

    def run(self, index: int) -> None:
        """Select the cell by its prompt (command mode) and press Shift+Enter."""
        self.cell(index).locator(".jp-InputArea-prompt").click()
        self.page.keyboard.press("Shift+Enter")

    def wait_until(self, what: str, check: Callable[[], Any],
                   timeout: float = UI_TIMEOUT) -> Any:
        """Poll the page until ``check`` is truthy; fail naming ``what`` and the page text."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                text = self.page.locator(".jp-Notebook").inner_text()
                raise AssertionError(f"{what}: not within {timeout:.0f}s; the notebook "
                                     f"shows:\n{text[-3000:]}")
            self.page.wait_for_timeout(POLL * 1000)

    def wait_running(self, index: int) -> None:
        self.wait_until(f"cell {index} shows [*]", lambda: self.prompt(index) == "[*]:")

    def wait_finished(self, index: int, timeout: float = UI_TIMEOUT) -> int:
        """Until the cell's prompt shows an execution count; return it."""
        def count() -> int | None:
            text = self.prompt(index)
            digits = text.strip("[]: ")
            return int(digits) if digits.isdigit() else None
        return int(self.wait_until(f"cell {index} finishes (prompt [n]:)", count, timeout))

    def run_and_wait(self, index: int, timeout: float = UI_TIMEOUT) -> int:
        before = self.prompt(index)
        self.run(index)
        self.wait_until(f"cell {index} starts", lambda: self.prompt(index) != before)
        return self.wait_finished(index, timeout)

    def screenshot(self, name: str, index: int | None = None) -> Path:
        """A named screenshot of the notebook (or of one cell) under SCREENSHOTS."""
        path = SCREENSHOTS / name
        if index is None:
            self.page.screenshot(path=str(path))
            return path
        cell = self.cell(index)
        viewport = self.page.viewport_size
        box = cell.bounding_box()
        if box and viewport and box["height"] + 200 > viewport["height"]:
            # a cell taller than the window: make the window tall enough to render it whole
            self.page.set_viewport_size({"width": viewport["width"],
                                         "height": int(box["height"]) + 300})
        cell.scroll_into_view_if_needed()
        cell.screenshot(path=str(path))
        if viewport:
            self.page.set_viewport_size(viewport)
        return path
