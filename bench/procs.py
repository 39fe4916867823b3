"""Process-tree bookkeeping: find and reap what a benchmark subject left behind.

Every subject (kernel, cluster, peer subprocess) is cleaned up by the pids it
started, never by process name: a snapshot of the descendants is taken while
they are alive, and after the polite shutdown anything still running from that
snapshot is terminated, then killed. psutil refuses to signal a pid that was
reused by another process (it checks the creation time), so a late reap cannot
hit an unrelated process.
"""

from __future__ import annotations

import contextlib
import time

import psutil


def snapshot_tree(pid: int | None) -> list[psutil.Process]:
    """Return the process ``pid`` and all its descendants (empty if gone)."""
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def merge_snapshots(*snapshots: list[psutil.Process]) -> list[psutil.Process]:
    """Union of snapshots, keyed by (pid, create_time)."""
    seen: dict[tuple[int, float], psutil.Process] = {}
    for snap in snapshots:
        for proc in snap:
            try:
                seen.setdefault((proc.pid, proc.create_time()), proc)
            except psutil.Error:
                continue
    return list(seen.values())


def reap(procs: list[psutil.Process], grace_s: float = 5.0) -> int:
    """Wait up to ``grace_s`` for ``procs`` to exit, then terminate/kill the rest.

    Returns how many were still alive after the grace period (the "leaked"
    count that the report shows), whether or not killing them succeeded.
    """
    alive = _wait_gone(procs, grace_s)
    leaked = len(alive)
    for sig in ("terminate", "kill"):
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                getattr(proc, sig)()
        alive = _wait_gone(alive, 3.0)
        if not alive:
            break
    return leaked


def rss_bytes(pid: int) -> int:
    """Resident set size of one process."""
    return psutil.Process(pid).memory_info().rss


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Poll until every process has exited (zombies count as exited).

    ``psutil.wait_procs`` cannot be used: for processes that are not our
    children it treats a zombie (waiting for its own parent) as alive.
    """
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if _is_running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _is_running(p)]
    return alive


def _is_running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
