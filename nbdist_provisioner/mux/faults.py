"""What the multiplexer tells users when ranks fail, and when it gives up and restarts.

Pure decisions and texts (no sockets, no timers); ``kernel.py`` schedules the
checks and publishes the texts:

- a cell where some ranks failed and others are still running a few seconds
  later (the usual sign of a collective waiting for the failed rank) gets a
  diagnosis: which ranks failed, which still run, what to do;
- an interrupt that leaves ranks running gets a notice, and arms escalation:
  the next interrupt of that cell ends it and restarts the kernel;
- a multiplexer that exits for a restart leaves a note next to the connection
  file, which the next multiplexer started on that file shows in its first cell
  (so a rank that died while the kernel was idle is explained, too).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from ..ranks import format_ranks

#: Seconds after a rank's error before a cell whose other ranks still run is diagnosed.
PARTIAL_FAILURE_GRACE = 3.0
#: Seconds after an interrupt before ranks still running are reported (and the next
#: interrupt escalates to a restart).
INTERRUPT_GRACE = 2.0
#: Seconds after a rank's reply without its iopub idle before the rank is probed (the
#: idle may have been dropped with an overflowing output queue).
IDLE_PROBE_AFTER = 1.0
#: Appended to the connection file's path for the restart note.
NOTE_SUFFIX = ".nbdist-restart"
_MAX_NOTE = 16 * 1024


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + format_ranks(ranks)


def failed_ranks(req: Any) -> list[int]:
    """Targets of ``req`` that replied with an error."""
    return sorted(r for r in req.targets if req.replies.get(r, {}).get("status") == "error")


def running_ranks(req: Any) -> list[int]:
    """Targets of ``req`` that have not replied (and did not die)."""
    return sorted(r for r in req.targets if r not in req.replies and r not in req.dead)


class FaultMonitor:
    """Per running cell: partial-failure diagnosis and interrupt escalation."""

    def __init__(self, collective_timeout: float) -> None:
        self.collective_timeout = collective_timeout
        self._partial_checked: set[str] = set()
        self._interrupted: set[str] = set()
        self._armed: set[str] = set()

    def rank_failed(self, req: Any) -> bool:
        """A rank of ``req`` replied with an error; True if a partial check is now due."""
        if req.msg_id in self._partial_checked:
            return False
        self._partial_checked.add(req.msg_id)
        return True

    def partial_failure_notice(self, req: Any, waited: float) -> str | None:
        failed, running = failed_ranks(req), running_ranks(req)
        if not failed or not running:
            return None
        reply = req.replies[failed[0]]
        what = f"{reply.get('ename', 'Error')}: {reply.get('evalue', '')}"
        if len(what) > 200:
            what = what[:200] + "…"
        one = len(running) == 1
        return (
            f"[nbdist] {_ranks(failed)} failed ({what}) while {_ranks(running)} "
            f"{'is' if one else 'are'} still running {waited:g}s later, probably waiting in "
            f"a collective for {'it' if len(failed) == 1 else 'them'}. Interrupt the kernel "
            f"to stop {'it' if one else 'them'}; if the cell does not end, interrupt again to "
            f"restart the kernel (variables are lost). Collectives give up by themselves "
            f"after collective_timeout={self.collective_timeout:g}s.\n")

    def interrupted(self, req: Any) -> bool:
        """An interrupt arrived during ``req``; True if it must escalate to a restart."""
        self._interrupted.add(req.msg_id)
        return req.msg_id in self._armed

    def interrupt_notice(self, req: Any, waited: float) -> str | None:
        """Ranks still running ``waited`` s after an interrupt: say so, arm escalation."""
        running = running_ranks(req)
        if not running or req.msg_id in self._armed:
            return None
        self._armed.add(req.msg_id)
        return (
            f"[nbdist] {_ranks(running)} {'is' if len(running) == 1 else 'are'} still running "
            f"{waited:g}s after the interrupt (a rank blocked in a collective or in native code "
            f"does not see KeyboardInterrupt). Interrupt again to restart the kernel; "
            f"variables are lost.\n")

    def escalation_text(self, req: Any) -> str:
        """Why a second interrupt restarts the kernel, for the cell's error."""
        running = running_ranks(req)
        who = _ranks(running) if running else "the ranks"
        return f"{who} did not stop after an interrupt"

    def forget(self, msg_id: str) -> None:
        self._partial_checked.discard(msg_id)
        self._interrupted.discard(msg_id)
        self._armed.discard(msg_id)


# -- restart notes ---------------------------------------------------------------
def note_path(connection_file: str) -> str:
    return connection_file + NOTE_SUFFIX


def restart_note(reason: str) -> str:
    """The text the next multiplexer shows in its first cell."""
    when = time.strftime("%H:%M:%S")
    return (f"[nbdist] The kernel restarted at {when} because {reason}\n"
            f"[nbdist] All ranks are new: variables and imports from before are gone.\n")


def write_note(connection_file: str, text: str) -> None:
    """Leave ``text`` for the next multiplexer on this connection file (mode 0600)."""
    path = note_path(connection_file)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text[:_MAX_NOTE])


def take_note(connection_file: str) -> str | None:
    """Read and delete the note a previous multiplexer left, if any."""
    path = note_path(connection_file)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(_MAX_NOTE)
    except FileNotFoundError:
        return None
    discard_note(connection_file)
    return text or None


def discard_note(connection_file: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(note_path(connection_file))
