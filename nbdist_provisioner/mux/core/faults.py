"""What the kernel tells users when ranks fail, die or will not stop.

Pure texts and rules; the request core decides when they apply:

- a cell where some ranks failed while others still run a few seconds later
  (the usual sign of a collective waiting for the failed rank) is diagnosed;
- an interrupt that leaves ranks running is reported and arms escalation: the
  next interrupt of that cell ends it and brings up new ranks;
- a rank that dies ends the cell with a short report: which rank, how, its
  last *meaningful* stderr lines (ipykernel's and debugpy's start-up chatter
  left out), and that the ranks are being replaced.
"""

from __future__ import annotations

import re
from typing import Any

from ...rankset import format_ranks

#: Seconds after a rank's error before a cell whose other ranks still run is diagnosed.
PARTIAL_FAILURE_GRACE = 3.0
#: Seconds ranks get to end a cell after fail-fast ended their collectives (formatting a
#: torch traceback alone can take seconds) before an interrupt is taken as not working.
ABORT_GRACE = 6.0
#: Seconds after an interrupt before ranks still running are reported (and the next
#: interrupt of the cell escalates).
INTERRUPT_GRACE = 2.0
#: Seconds after the last rank reply without its iopub idle before the ranks are
#: probed (the idle may have been dropped with an overflowing output queue).
IDLE_PROBE_AFTER = 1.0
#: Idle probes of a request before a rank whose idles keep being lost is taken as idle.
MAX_IDLE_PROBES = 5
#: Seconds a rank that went idle gets for its reply to arrive (on another socket)
#: before the request is taken as unanswered (ipykernel sends none when a handler fails).
MISSING_REPLY_GRACE = 2.0
#: How many stderr lines of a dead rank the cell shows.
REPORT_LINES = 8

#: Lines every rank writes at start-up; they never explain a death.
_NOISE = re.compile(
    r"running over TCP without encryption"
    r"|^\d+\.\d+s - "  # debugpy / pydevd notes ("frozen modules", "Debugging will proceed")
    r"|frozen_modules|PYDEVD_DISABLE_FILE_VALIDATION"
    r"|No such comm"
    r"|^\s*$"
)


def ranks_text(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + format_ranks(ranks)


def meaningful_lines(stderr_tail: str, keep: int = REPORT_LINES) -> list[str]:
    """The last ``keep`` stderr lines that say something about the rank's end.

    A crash report of faulthandler ("Fatal Python error: Segmentation fault", then
    every thread's stack, innermost frame first) is cut to its first line and the top
    frames of the crashing thread, after the last lines the rank wrote before it.
    """
    lines = [line for line in stderr_tail.splitlines() if not _NOISE.search(line)]
    fatal = max((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")),
                default=None)
    if fatal is None:
        return lines[-keep:]
    report = [lines[fatal]]
    for i in range(fatal + 1, len(lines)):
        if "most recent call first" in lines[i]:
            report += lines[i:i + 4]
            break
    before = lines[:fatal][-max(1, keep - len(report)):]
    return before + report


def death_error(how: str, stderr_tail: str, nproc: int, restarting: bool) -> dict[str, Any]:
    """The ``error`` content that ends a cell whose rank died."""
    lines = meaningful_lines(stderr_tail)
    traceback = [f"RankDied: {how}"]
    if lines:
        traceback.append("Its last stderr lines:")
        traceback.extend("    " + line for line in lines)
    if restarting:
        traceback.append(f"Starting {nproc} new ranks: variables and imports from before "
                         "are lost.")
    else:
        traceback.append("The kernel cannot start new ranks: restart it to try again.")
    return {"ename": "RankDied", "evalue": how, "traceback": traceback}


def new_ranks_note(why: str) -> str:
    """Said once, in the first cell after new ranks replaced dead ones."""
    return f"[nbdist] These are new ranks ({why}): variables and imports from before are gone.\n"


def idle_death_note(how: str, stderr_tail: str) -> str:
    """A rank died while no cell ran: the next cell explains it in full."""
    text = f"[nbdist] While the kernel was idle, {how}."
    lines = meaningful_lines(stderr_tail)
    if lines:
        text += " Its last stderr lines:\n" + "\n".join("    " + line for line in lines)
    return text + "\n"


def partial_failure_notice(failed: list[int], running: list[int], reply: dict[str, Any],
                           waited: float, collective_timeout: float) -> str:
    what = f"{reply.get('ename', 'Error')}: {reply.get('evalue', '')}"
    if len(what) > 200:
        what = what[:200] + "…"
    one = len(running) == 1
    return (
        f"[nbdist] {ranks_text(failed)} failed ({what}) while {ranks_text(running)} "
        f"{'is' if one else 'are'} still running {waited:g}s later, probably waiting in "
        f"a collective for {'it' if len(failed) == 1 else 'them'}. Interrupt the kernel "
        f"to stop {'it' if one else 'them'}; if the cell does not end, interrupt again to "
        f"start new ranks (variables are lost). Collectives give up by themselves "
        f"after collective_timeout={collective_timeout:g}s.\n")


def interrupt_notice(running: list[int], waited: float) -> str:
    return (
        f"[nbdist] {ranks_text(running)} {'is' if len(running) == 1 else 'are'} still running "
        f"{waited:g}s after the interrupt (a rank blocked in a collective or in native code "
        f"does not see KeyboardInterrupt). Interrupt again to start new ranks; "
        f"variables are lost.\n")


def escalation_error(running: list[int], nproc: int) -> dict[str, Any]:
    who = ranks_text(running) if running else "the ranks"
    text = f"{who} did not stop after an interrupt"
    return {"ename": "KernelRestarting", "evalue": text,
            "traceback": [f"KernelRestarting: {text}, and a second interrupt was sent.",
                          f"Starting {nproc} new ranks: variables and imports from before "
                          "are lost."]}
