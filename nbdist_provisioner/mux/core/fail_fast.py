"""Fail fast, as torchrun does, without losing the kernel's state.

When one rank of a cell fails while others still run, those others are almost
always waiting in a collective for it, and would wait ``collective_timeout``.
When some ranks finished a cell while others still run, and those others wait in
a collective, it is a collective only some ranks entered: it never completes.
In both cases (and on an interrupt) the core:

1. asks the running ranks where they are (``nbdist_stack_request``, answered on
   the rank's control thread while its main thread is blocked);
2. tells the cell, naming each waiting rank's line;
3. ends the process group's collectives on every rank
   (``nbdist_pg_abort_request``): they raise, the cell ends;
4. before the cell's reply, makes a new process group on every rank
   (``nbdist_pg_reinit_request`` with a generation never used before), so the
   next cell's collectives work and every variable is kept. If that fails, the
   ranks are replaced.

The rank side is ``rank/control.py`` and ``rank/process_group.py``.
"""

from __future__ import annotations

from typing import Any

from ...rankset import format_ranks
from . import faults
from .effects import SendToRank
from .lifecycle import Phase
from .request import Request
from .state import CoreState

Json = dict[str, Any]

#: Seconds after a rank's error before ranks still running are asked where they are.
FAIL_FAST_GRACE = 0.5
#: Seconds after the first rank finished before ranks still running are asked (then
#: again, twice as long each time, up to STALL_CHECK_MAX).
STALL_GRACE = 2.0
STALL_CHECK_MAX = 30.0
#: Seconds ranks get to say where they are; a rank that does not answer (its control
#: thread is stuck too) is reported as such.
STACK_TIMEOUT = 2.0


def _where(stack: Json | None) -> str:
    if not stack:
        return "does not say where it is (its control thread does not answer)"
    where = str(stack.get("where") or "")
    if stack.get("in_collective"):
        return f"waits in {where}" if where else f"waits in {stack.get('collective')}"
    return f"runs {where}" if where else "runs"


class FailFast(CoreState):
    """The fail-fast part of the core (see the module docstring)."""

    # -- triggers ---------------------------------------------------------------------
    def _rank_replied(self, req: Request, rank: int, content: Json) -> None:
        """A rank answered an execute while others still run: schedule a look."""
        if (not self.config.fail_fast or req.msg_type != "execute_request"
                or not req.running_ranks()):
            return
        if content.get("status") == "error":
            if req.fail_fast_at is None and not req.fail_fast_done:
                req.fail_fast_at = self._now + FAIL_FAST_GRACE
        elif req.stall_check_at is None and not req.fail_fast_done:
            req.stall_check_at = self._now + STALL_GRACE

    def _fail_fast_ticks(self, req: Request) -> None:
        now = self._now
        if req.fail_fast_at is not None and req.fail_fast_at <= now:
            req.fail_fast_at = None
            self._ask_stacks(req, "failure")
        if req.stall_check_at is not None and req.stall_check_at <= now:
            req.stall_check_at = None
            if not req.fail_fast_done and not req.failed_ranks():
                self._ask_stacks(req, "stall")
        if req.stacks_deadline is not None and req.stacks_deadline <= now:
            self._stacks_done(req)

    def _interrupted_cell(self, req: Request) -> None:
        """An interrupt: a rank blocked in a collective does not see KeyboardInterrupt;
        look where the running ranks are, and free them if they wait in one."""
        if self.config.fail_fast:
            self._ask_stacks(req, "interrupt")

    # -- where are they? ---------------------------------------------------------------
    def _ask_stacks(self, req: Request, why: str) -> None:
        running = req.running_ranks()
        if not running or req.stacks_pending:
            return
        req.stacks_why = why
        req.stacks = {}
        req.stacks_pending = set(running)
        req.stacks_deadline = self._now + STACK_TIMEOUT
        for rank in running:
            msg_id = self._new_id()
            self.book.internal(msg_id, "stack", req, rank)
            self._fx.append(SendToRank(self.life.generation, rank, "control",
                                       "nbdist_stack_request", msg_id, {}))

    def _on_stack_reply(self, req: Request, rank: int, content: Json) -> None:
        if rank not in req.stacks_pending:
            return
        req.stacks_pending.discard(rank)
        if content.get("status") == "ok":
            req.stacks[rank] = content
        if not req.stacks_pending:
            self._stacks_done(req)

    def _stacks_done(self, req: Request) -> None:
        req.stacks_pending = set()
        req.stacks_deadline = None
        if req not in self.book.open:
            return
        running = req.running_ranks()
        if not running:
            return
        why = req.stacks_why
        waiting = [r for r in running if req.stacks.get(r, {}).get("in_collective")]
        where = "; ".join(f"rank {r} {_where(req.stacks.get(r))}" for r in running)
        if why == "failure":
            failed = req.failed_ranks()
            first = req.replies.get(failed[0], {}) if failed else {}
            what = f"{first.get('ename', 'Error')}: {first.get('evalue', '')}"[:200]
            self._notice(req, f"[nbdist] {faults.ranks_text(failed)} failed ({what}) while "
                              f"{where}.\n")
            if waiting or self._process_group_in_use():
                self._abort_group(req, f"{faults.ranks_text(failed)} failed: {what}")
        elif why == "stall":
            if waiting and len(waiting) == len(running):
                done = [r for r in req.targets if r not in running]
                self._notice(req, f"[nbdist] {faults.ranks_text(done)} finished the cell while "
                                  f"{where}: a collective that only some ranks entered never "
                                  f"completes.\n")
                self._abort_group(req, f"{faults.ranks_text(running)} waited in a collective "
                                       f"that {faults.ranks_text(done)} never entered")
            else:
                req.stall_backoff = min(STALL_CHECK_MAX, 2 * req.stall_backoff)
                req.stall_check_at = self._now + req.stall_backoff
        elif why == "interrupt" and waiting:
            self._notice(req, f"[nbdist] after the interrupt, {where}.\n")
            self._abort_group(req, "interrupted")

    def _process_group_in_use(self) -> bool:
        return any(info.dist.get("initialized") for info in self.rank_infos.values())

    # -- end the collectives, then a new process group ------------------------------------
    def _abort_group(self, req: Request, reason: str) -> None:
        if req.fail_fast_done:
            return
        req.fail_fast_done = True
        req.group_aborted = True
        req.aborted_at = self._now
        self._notice(req, "[nbdist] ending the collectives on every rank (fail fast, as "
                          "torchrun does); the process group is made again when the cell "
                          "ends, and variables are kept.\n")
        for rank in self.ranks:  # every rank: a ring collective waits on its neighbours
            msg_id = self._new_id()
            self.book.internal(msg_id, "abort", req, rank)
            self._fx.append(SendToRank(self.life.generation, rank, "control",
                                       "nbdist_pg_abort_request", msg_id, {"reason": reason}))

    def _hold_for_new_group(self, req: Request) -> bool:
        """Before an aborted cell's reply: make the new process group; True while that
        is under way (the cell is finished once every rank has answered)."""
        if not req.group_aborted or self.life.phase is not Phase.READY:
            return False
        if req.reinit_pending is None:
            self.group_generation += 1
            req.reinit_pending = set(self.ranks)
            for rank in self.ranks:
                msg_id = self._new_id()
                self.book.internal(msg_id, "reinit", req, rank)
                self._fx.append(SendToRank(self.life.generation, rank, "control",
                                           "nbdist_pg_reinit_request", msg_id,
                                           {"generation": self.group_generation}))
        return bool(req.reinit_pending)

    def _on_reinit_reply(self, req: Request, rank: int, content: Json) -> None:
        if req.reinit_pending is None or rank not in req.reinit_pending:
            return
        req.reinit_pending.discard(rank)
        if content.get("status") != "ok":
            req.reinit_errors[rank] = f"{content.get('ename', 'Error')}: " \
                                      f"{content.get('evalue', '')}"
        if req.reinit_pending:
            return
        req.group_aborted = False  # (done: the cell may finish)
        if req.reinit_errors:
            ranks = sorted(req.reinit_errors)
            rank0 = ranks[0]
            self._notice(req, f"[nbdist] the process group could not be made again "
                              f"(rank {rank0}: {req.reinit_errors[rank0]}); new ranks are "
                              f"started (variables are lost).\n")
            self._finish(req)
            self._replace_ranks_for(f"the process group could not be made again on ranks "
                                    f"{format_ranks(ranks)}")
            return
        self._notice(req, f"[nbdist] process group made again (generation "
                          f"{self.group_generation}); variables are kept. Objects made with "
                          f"the old group (a DDP model, dist.new_group) must be made again.\n")
        self._finish(req)

    def _on_internal_reply(self, purpose: str, req: Request | None, rank: int,
                           content: Json) -> None:
        if req is None or req not in self.book.open:
            return
        if purpose == "stack":
            self._on_stack_reply(req, rank, content)
        elif purpose == "reinit":
            self._on_reinit_reply(req, rank, content)
