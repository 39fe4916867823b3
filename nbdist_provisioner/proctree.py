"""Process-tree guarantees: who notices a death, and who ends what was left behind.

Linux gives three tools, used together so that nothing outlives a kernel:

- a **child subreaper** (``PR_SET_CHILD_SUBREAPER``) adopts the orphaned
  descendants of its children, so a process that a rank started in a session of
  its own still has an ancestor of ours that can end it;
- a **pidfd** (``pidfd_open``) becomes readable the instant a process ends, so a
  parent's death is seen at once, not at the next poll;
- a **parent-death signal** (``PR_SET_PDEATHSIG``), set first thing, covers the
  moment before anything else is in place.

Only processes we started are signalled: a descendant is found by walking
``/proc/<pid>/stat`` parent links from our own pid, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux
        return False


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux); False where the platform has no such thing."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_parent_death_signal(signum: int) -> bool:
    """Get ``signum`` when the thread that forked us ends (Linux only)."""
    return _prctl(_PR_SET_PDEATHSIG, int(signum))


def set_name(name: str) -> None:
    """Name this process (``ps``, ``top``: at most 15 characters). A forked rank would
    otherwise look like the agent it was forked from."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc (empty where there is no /proc)."""
    kids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def descendants_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children first), from /proc."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        nxt = []
        for parent in frontier:
            for child in children_of(parent):
                if child not in found:
                    found.append(child)
                    nxt.append(child)
        frontier = nxt
    return found


def kill_descendants(pid: int) -> list[int]:
    """SIGKILL every descendant of ``pid``. They are stopped first and the tree walked
    again, so none can fork away in between."""
    victims = descendants_of(pid)
    for victim in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGSTOP)
    victims += [p for p in descendants_of(pid) if p not in victims]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    return victims


def reap_children() -> None:
    """Reap every child that has ended (adopted orphans included), without blocking."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def watch_process(pid: int, on_death: Callable[[], None], name: str) -> bool:
    """Call ``on_death`` (in a daemon thread) the moment ``pid`` ends; False if ``pid``
    is already gone. Uses a pidfd where there is one, else a short poll."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):
        pidfd = -1

    def wait() -> None:
        if pidfd >= 0:
            select.select([pidfd], [], [])
            os.close(pidfd)
        else:
            import time

            while alive(pid):
                time.sleep(0.1)
        on_death()

    threading.Thread(target=wait, name=name, daemon=True).start()
    return True


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return stat[stat.rfind(b")") + 2:][:1] != b"Z"
    except OSError:
        return True
    return True
