"""Fixtures for the browser tests: one JupyterLab and one Chromium per module (both gone
before the rest of the suite runs), a page per test, a screenshot of the page when a test
fails.

JupyterLab runs on 127.0.0.1 with a token in a temporary root; it finds the test
kernelspecs that tests/conftest.py installs (JUPYTER_PATH). Chromium is Debian's
(/usr/bin/chromium, installed by dev.py), driven by Playwright.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notebook_ui import ARTIFACTS, NotebookPage
from servers import (
    JupyterServer,
    clean_env,
    free_port,
    keep_log,
    require,
    start_process,
    stop_process_group,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
#: JupyterLab user settings: no news/update pop-ups over the notebook, every cell in the DOM
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
        {"windowingMode": "none"},
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="module")
def lab(kernel_prefix: Path, tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[JupyterServer]:
    """JupyterLab 4 on 127.0.0.1 with a token, in a temporary root."""
    base = tmp_path_factory.mktemp("lab")
    dirs = {name: base / name for name in ("root", "runtime", "config", "data", "settings",
                                           "workspaces")}
    for d in dirs.values():
        d.mkdir()
    for rel, values in LAB_SETTINGS.items():
        path = dirs["settings"] / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = clean_env(
        JUPYTER_PATH=str(kernel_prefix / "share" / "jupyter"),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]))
    port, token = free_port(), uuid.uuid4().hex
    log = base / "lab.log"
    proc = start_process(
        [sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         "--ServerApp.open_browser=False", "--ServerApp.allow_root=True",
         f"--ServerApp.root_dir={dirs['root']}", "--LabApp.news_url=None"],
        env, dirs["root"], log)
    server = JupyterServer(proc, f"http://127.0.0.1:{port}", token, dirs["root"], log)
    try:
        wait_for("JupyterLab API", lambda: server.api("GET", "/api/status", timeout=5)[0] == 200,
                 120, proc, log)
        yield server
    finally:
        left = stop_process_group(proc)
        keep_log(log, f"lab-{request.module.__name__}.log")
        assert not left, f"left running after JupyterLab stopped: {left}\n{server.log_tail()}"


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's chromium, headless, with a fresh profile."""
    require(CHROMIUM, "Debian's chromium")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def notebook(lab: JupyterServer, browser_context: Any, request: pytest.FixtureRequest
             ) -> Iterator[Any]:
    """Factory: notebook(cells, kernel="nbdist-test-4") -> NotebookPage, open in Lab with
    its kernel idle. After the test: screenshot if it failed, kernel shut down, pids checked."""
    opened: list[NotebookPage] = []

    def open_notebook(cells: list[str], kernel: str = "nbdist-test-4") -> NotebookPage:
        name = f"{request.node.name.split('[')[0]}-{uuid.uuid4().hex[:6]}.ipynb"
        page = NotebookPage.open(lab, browser_context, name, cells, kernel)
        opened.append(page)  # before the waits: a page that never gets ready is kept too
        page.wait_ready(len(cells))
        return page

    yield open_notebook
    report = getattr(request.node, "report_call", None)
    # a failure, or an expected one (xfail): keep what the page showed
    failed = report is not None and (report.failed or hasattr(report, "wasxfail"))
    left: list[int] = []
    for page in opened:
        if failed:
            ARTIFACTS.mkdir(exist_ok=True)
            page.page.screenshot(path=str(ARTIFACTS / f"failed-{page.path}.png"))
        page.page.close()
        left += lab.shutdown_session_of(page.path)
    assert not left, f"kernel processes left after the session was deleted: {left}"
