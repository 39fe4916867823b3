"""``jupyter console`` on the multi-rank kernel, driven for real in a pseudo-terminal: the
first Enter gets no "did not respond properly to an is_complete_request" warning, and
up-arrow brings back this session's and earlier sessions' inputs (issue 9 point 6)."""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from pathlib import Path

import pexpect
import pytest

from nbdist_provisioner.mux.shell.history import history_database, read_tail

UP = "\x1b[A"
#: colours, cursor moves, screen modes: what prompt_toolkit puts between the characters
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: a kernel start on 2 busy cores, and each cell after it (a deadline for the test's wait)
START_TIMEOUT = 120
CELL_TIMEOUT = 60


def earlier_session(ipython_dir: Path, sources: list[str]) -> Path:
    """An IPython history database with ``sources`` as the inputs of an earlier session."""
    from IPython.core.history import HistoryAccessor

    path = history_database({"IPYTHONDIR": str(ipython_dir)})
    path.parent.mkdir(parents=True)
    HistoryAccessor(hist_file=str(path))  # creates the tables
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO sessions (session, start) VALUES (1, '2020-01-01 00:00')")
        con.executemany("INSERT INTO history VALUES (1, ?, ?, ?)",
                        [(i + 1, s, s) for i, s in enumerate(sources)])
    return path


def wait_for(console: pexpect.spawn, text: str, timeout: float) -> None:
    """Read the console until ``text`` shows (escape sequences taken out); what was read up
    to it is used up, so the next wait looks after it."""
    deadline = time.monotonic() + timeout
    seen = ""
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{text!r} did not show; the console showed {seen[-800:]!r}")
        try:
            seen += console.read_nonblocking(4096, timeout=left)
        except pexpect.TIMEOUT:
            continue
        seen = ANSI.sub("", seen)


def test_history_tail_is_read_as_ipython_gives_it(tmp_path):
    path = earlier_session(tmp_path, ["a = 1", "b = a + 1", "b"])
    assert read_tail(path, 2) == ((1, 2, "b = a + 1"), (1, 3, "b"))
    assert read_tail(tmp_path / "none.sqlite", 5) == ()
    (tmp_path / "bad.sqlite").write_text("not a database")
    assert read_tail(tmp_path / "bad.sqlite", 5) is None


@pytest.mark.slow
def test_console_first_enter_and_up_arrow_history(tmp_path, kernel_prefix):
    ipython_dir = tmp_path / "ipython"
    earlier_session(ipython_dir, ["earlier_value = 41"])
    env = {**os.environ, "IPYTHONDIR": str(ipython_dir), "TERM": "xterm",
           "JUPYTER_PATH": str(kernel_prefix / "share" / "jupyter"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "PYTHONUNBUFFERED": "1"}
    console = pexpect.spawn(sys.executable, ["-m", "jupyter_console", "--kernel",
                                             "nbdist-test-2", "--no-confirm-exit"],
                            env=env, encoding="utf-8",
                            dimensions=(40, 200), timeout=START_TIMEOUT, cwd=str(tmp_path))
    console.logfile_read = (tmp_path / "console.log").open("w")
    try:
        wait_for(console, "In [1]: ", START_TIMEOUT)  # the first prompt, after kernel_info
        console.send("x = 6 * 7\r")  # the first Enter: an is_complete_request
        wait_for(console, "In [2]: ", CELL_TIMEOUT)
        console.send("print(x + 0)\r")
        wait_for(console, "[ranks 0-1] 42", CELL_TIMEOUT)
        wait_for(console, "In [3]: ", CELL_TIMEOUT)
        # up-arrow: this session's inputs, then the earlier session's
        console.send(UP + UP + UP)
        wait_for(console, "earlier_value", CELL_TIMEOUT)
        console.send("\r")
        wait_for(console, "In [4]: ", CELL_TIMEOUT)
        console.send("print(earlier_value + 1)\r")
        wait_for(console, "[ranks 0-1] 42", CELL_TIMEOUT)
        wait_for(console, "In [5]: ", CELL_TIMEOUT)
        console.send("exit\r")
        console.expect(pexpect.EOF, timeout=CELL_TIMEOUT)
    finally:
        if console.isalive():
            console.terminate(force=True)
        console.logfile_read.close()
    seen = (tmp_path / "console.log").read_text(errors="replace")
    assert "did not respond" not in seen, seen[-2000:]
    assert "is_complete" not in seen, seen[-2000:]
    # the primary rank wrote this session's inputs to the same database
    sources = [src for _s, _l, src in read_tail(history_database(
        {"IPYTHONDIR": str(ipython_dir)}), 10) or ()]
    assert "x = 6 * 7" in sources
