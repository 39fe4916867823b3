"""Supervision: ranks ready, failing to start, dying, interrupted, stopped; the timers.

A rank that dies ends every open request at once and the next generation of
ranks is started (``lifecycle`` decides when to give up); some ranks failing
while others hang is diagnosed after a grace; a second interrupt of a cell that
did not stop brings up new ranks; lost idles are probed, missing replies given
up on.
"""

from __future__ import annotations

from typing import Any

from . import faults
from .effects import Exit, SendToRank, StartRanks, StopRanks
from .events import RankExited, RanksFailed, RanksReady, RanksStopped
from .lifecycle import Phase
from .request import Request, error_content
from .state import CoreState


class Supervision(CoreState):
    def _on_ready(self, ev: RanksReady) -> None:
        if not self.life.ready(ev.generation, self._now):
            return
        self.rank_infos = dict(ev.ranks)
        for rank, info in ev.ranks.items():
            self.prefixes[rank] = self._prefix(rank, info.local_rank, info.host)
        errors = {r: str(i.dist.get("error")) for r, i in ev.ranks.items() if i.dist.get("error")}
        if errors:
            rank, error = min(errors.items())
            where = "every rank" if len(errors) == self.config.nproc else f"rank {rank}"
            self._notes.append(f"[nbdist] torch.distributed is not set up on {where}: "
                               f"{error}\n")
        waiting, self._waiting = self._waiting, []
        for req in waiting:
            self._dispatch(req)

    def _on_start_failed(self, ev: RanksFailed) -> None:
        if not self.life.start_failed(ev.generation, f"{ev.error}\nRestart the kernel to try "
                                                     "again."):
            return
        self._log("error", f"ranks could not start: {ev.error}")
        self._notes.clear()  # ("these are new ranks": there are none)
        self._fx.append(StopRanks(ev.generation, graceful=False))
        waiting, self._waiting = self._waiting, []
        for req in waiting:
            if req.msg_type == "execute_request":
                self._start_execute(req)  # counts, shows the input, then fails
            else:
                self._fail(req, *self._unavailable())

    def _on_rank_exit(self, ev: RankExited) -> None:
        if ev.generation != self.life.generation or self.life.phase is not Phase.READY:
            return  # a start-up death is reported as RanksFailed; a stop is expected
        self._log("error", f"{ev.how}; last stderr lines:\n{ev.stderr_tail}")
        busy = any(r.msg_type == "execute_request" for r in self.book.open)
        restarting = self._replace_ranks(
            ev.how, dead_rank=ev.rank, death=True,
            cell_error=lambda restart: faults.death_error(ev.how, ev.stderr_tail,
                                                          self.config.nproc, restart))
        if restarting:
            if busy:
                self._notes.append(faults.new_ranks_note(f"rank {ev.rank} died"))
            else:
                self._notes.append(faults.idle_death_note(ev.how, ev.stderr_tail))
                self._notes.append(faults.new_ranks_note("they replaced the lost ones"))

    def _replace_ranks(self, why: str, dead_rank: int | None, cell_error: Any,
                       death: bool = False) -> bool:
        """The ranks are lost (``death``: one died, else the user gave them up): end every
        open request, then start new ranks, or give up when they keep dying."""
        old = self.life.generation
        restarting = self.life.replace(self._now, why, death)
        error = cell_error(restarting)
        for name in [n for n in self._queues if n]:  # the ranks' subshells went with them
            self._drop_subshell(name, f"it was lost with its ranks: {why}")
        for req in list(self.book.open):
            req.dead_ename = str(error["ename"])
            lost = [r for r in req.targets if not req.rank_done(r)]
            for rank in lost:
                req.dead[rank] = str(error["evalue"]) if dead_rank in (None, rank) else (
                    f"stopped because {why}")
            # what ended the cell comes first in its reply
            if dead_rank in lost or (dead_rank is None and lost):
                req.first_failure = dead_rank if dead_rank in lost else lost[0]
            req.group_aborted = False  # (the ranks are replaced: no new group for them)
            if req.msg_type == "execute_request":
                self._publish("error", error, req)
            self._finish(req)
        for name in list(self._active):
            if name and name not in self._queues:
                del self._active[name]
        self.book.forget_ranks()
        self.out.ranks_replaced()
        self.subshells.clear()
        self.inputs.clear()
        self._fx.append(StopRanks(old, graceful=False))
        if restarting:
            self._fx.append(StartRanks(self.life.generation))
        else:
            self._log("error", self.life.failure or "")
        return restarting

    def _replace_ranks_for(self, why: str) -> None:
        """Replace the ranks for a reason other than a death (no request is left open)."""
        error = {"ename": "RanksReplaced", "evalue": why,
                 "traceback": [f"RanksReplaced: {why}"]}
        if self._replace_ranks(why, None, lambda _restart: error):
            self._notes.append(faults.new_ranks_note(why))

    # -- interrupt, shutdown ------------------------------------------------------------
    def _interrupt(self) -> None:
        """Every rank gets KeyboardInterrupt; ranks still starting run nothing of the
        user's and are left alone. A second interrupt of a cell whose ranks did not
        stop after the first brings up new ranks."""
        if self.life.phase is not Phase.READY:
            return
        cells = [r for r in self.book.open if r.msg_type == "execute_request"]
        armed = [r for r in cells if r.escalation_armed]
        if armed:
            error = faults.escalation_error(armed[0].running_ranks(), self.config.nproc)
            self._replace_ranks(str(error["evalue"]), None, lambda _restart: error)
            self._notes.append(faults.new_ranks_note("an interrupt could not stop the last "
                                                     "cell"))
            return
        # the ranks that run something (a SIGINT between two cells could cost an idle rank
        # the reply of its next cell); with nothing running, every rank
        running = sorted({r for req in self.book.open for r in req.running_ranks()})
        for rank in running or self.ranks:
            msg_id = self._new_id()
            self.book.internal(msg_id, "interrupt")
            self._fx.append(SendToRank(self.life.generation, rank, "control",
                                       "interrupt_request", msg_id, {}))
        for req in cells:
            req.interrupt_check_at = self._now + faults.INTERRUPT_GRACE
            self._interrupted_cell(req)

    def _shutdown(self, req: Request | None, why: str) -> None:
        if req is not None:
            self._shutdowns.append(req)
        if self.life.phase is Phase.STOPPING:
            return
        self._log("info", f"shutting down: {why}")
        self.life.stopping()
        for open_req in list(self.book.open):
            open_req.dead_ename = "KernelShutdown"
            for rank in open_req.targets:
                if not open_req.rank_done(rank):
                    open_req.dead[rank] = "the kernel is shutting down"
            self._finish(open_req)
        waiting, self._waiting = self._waiting, []
        for waiting_req in waiting:
            self._fail(waiting_req, "KernelShutdown", "the kernel is shutting down")
        self._fx.append(StopRanks(self.life.generation, graceful=True))

    def _on_stopped(self, ev: RanksStopped) -> None:
        if self.life.phase is not Phase.STOPPING or ev.generation != self.life.generation:
            return
        for req in self._shutdowns:
            self._reply(req, {"status": "ok",
                              "restart": bool(req.content.get("restart", False))})
            self._status("idle", req.header)
        self._shutdowns.clear()
        self._fx.append(Exit(0))

    def _on_tick(self) -> None:
        now = self._now
        self._fx.extend(self.out.tick(now))
        for req in list(self.book.open):
            self._fail_fast_ticks(req)
            if req not in self.book.open:
                continue
            if req.idle_probe_at is not None and req.idle_probe_at <= now:
                self._probe_idles(req)
            if req.missing_reply_at is not None and req.missing_reply_at <= now:
                self._give_up_replies(req)
                if req not in self.book.open:
                    continue
            if req.failure_check_at is not None and req.failure_check_at <= now:
                req.failure_check_at, req.failure_checked = None, True
                failed, running = req.failed_ranks(), req.running_ranks()
                if failed and running:
                    self._notice(req, faults.partial_failure_notice(
                        failed, running, req.replies.get(failed[0], {}),
                        faults.PARTIAL_FAILURE_GRACE, self.config.collective_timeout))
            if req.interrupt_check_at is not None and req.interrupt_check_at <= now:
                req.interrupt_check_at = None
                if req.aborted_at is not None and now - req.aborted_at < faults.ABORT_GRACE:
                    # (its collectives were just ended: give their errors time to come)
                    req.interrupt_check_at = req.aborted_at + faults.ABORT_GRACE
                    continue
                running = req.running_ranks()
                if running and not req.escalation_armed:
                    req.escalation_armed = True
                    self._notice(req, faults.interrupt_notice(running, faults.INTERRUPT_GRACE))

    def _give_up_replies(self, req: Request) -> None:
        """Ranks went idle long ago without answering: their handler failed (ipykernel logs
        it and sends no reply). The request ends with an error instead of blocking the
        shell queue for good."""
        req.missing_reply_at = None
        silent = [r for r in req.targets if r in req.idle and r not in req.replies]
        if not silent:
            return  # (the replies came after all)
        for rank in silent:
            req.replies[rank] = {"status": "error", **error_content(
                "NoReply", f"rank {rank} went idle without answering {req.msg_type} "
                           "(its handler failed: see the kernel's log)")}
        self._log("warning", f"ranks {silent} sent no reply to {req.msg_type} {req.msg_id}")
        if req.complete():
            self._finish(req)

    def _probe_idles(self, req: Request) -> None:
        """Ranks replied but their iopub idle has not come: ZMQ may have dropped it (the
        rank's output queue overflowed). A request on a rank's control channel makes it
        publish busy/idle behind everything it published before; that idle then counts
        as the request's own (and its stamp reports what was lost)."""
        req.idle_probe_at = None
        waiting = [r for r in req.targets if r in req.replies and r not in req.idle
                   and r not in req.dead]
        req.probes += 1
        if req.probes > faults.MAX_IDLE_PROBES:
            # its idles keep being lost (a thread of it floods output): take it as idle
            self._log("warning", f"ranks {waiting} never went idle for {req.msg_type} "
                                 f"{req.msg_id}; taken as idle after {req.probes - 1} probes")
            req.idle.update(waiting)
            if req.complete():
                self._finish(req)
            return
        for rank in waiting:
            msg_id = self._new_id()
            self.book.probe(msg_id, req, rank)
            self._fx.append(SendToRank(self.life.generation, rank, "control",
                                       "kernel_info_request", msg_id, {}))
        if waiting:
            req.idle_probe_at = self._now + faults.IDLE_PROBE_AFTER

