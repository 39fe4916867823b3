"""The primary rank's IPython history, read from its database while the ranks start.

``jupyter console`` asks for the history tail right after ``kernel_info`` (which the
multiplexer answers at once) and gives up after one second; the ranks take longer to
come up, and a late history reply is then taken for the answer to the console's first
``is_complete_request``. The history is IPython's sqlite database, which only the
primary rank writes: reading it read-only gives the same entries the rank would send.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

Entry = tuple[int, int, str]


def history_database(env: dict[str, str]) -> Path:
    """Where the ranks' IPython keeps its history (its default profile)."""
    ipython_dir = env.get("IPYTHONDIR") or os.path.join(os.path.expanduser("~"), ".ipython")
    return Path(ipython_dir) / "profile_default" / "history.sqlite"


def read_tail(path: Path, n: int, raw: bool = True) -> tuple[Entry, ...] | None:
    """The last ``n`` inputs, oldest first, as IPython's ``get_tail(include_latest=True)``;
    None when the database exists but cannot be read."""
    if not path.exists():
        return ()  # no history yet: what a rank would answer too
    column = "source_raw" if raw else "source"
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
        try:
            rows = con.execute(f"SELECT session, line, {column} FROM history "
                               "ORDER BY session DESC, line DESC LIMIT ?",
                               (max(0, n),)).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return tuple((int(s), int(line), str(src)) for s, line, src in reversed(rows))
