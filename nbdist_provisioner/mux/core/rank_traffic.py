"""Rank messages and stdin: replies and idles counted, output routed, prompts shown.

A reply or an iopub idle completes a rank's part of its request; output goes
through the ``OutputRouter``; prompts of several ranks wait their turn, each
labelled with its rank, and an answer goes back to the rank that asked.
"""

from __future__ import annotations

from . import faults
from .effects import AskInput, SendToRank
from .events import FrontendMessage, RankMessage
from .inputs import PendingInput
from .lifecycle import Phase
from .state import CoreState


class RankTraffic(CoreState):
    def _on_rank(self, m: RankMessage) -> None:
        if m.generation != self.life.generation or self.life.phase is not Phase.READY:
            return
        parent_id = str(m.parent_header.get("msg_id", ""))
        if m.channel == "iopub":
            self._on_rank_iopub(m, parent_id)
            return
        internal = self.book.internal_entry(parent_id)
        if internal is not None:
            self._on_internal_reply(internal.purpose, internal.request, internal.rank,
                                    m.content)
            return
        if self.book.is_internal(parent_id):
            return  # the reply to a probe: its idle is what counts
        entry = self.book.live(parent_id)
        if entry is None:
            self._log("debug", f"rank {m.rank}: {m.header.get('msg_type')} for no live request")
            return
        req, rank = entry
        if m.channel == "stdin":
            if m.header.get("msg_type") == "input_request":
                self._show_input(self.inputs.add(
                    PendingInput(rank, m.header, m.content, req.msg_id)))
            return
        req.replies[rank] = m.content
        if m.content.get("status") == "error" and req.first_failure is None:
            req.first_failure = rank
        if len(req.replies) == len(req.targets) and not req.complete():
            req.idle_probe_at = self._now + faults.IDLE_PROBE_AFTER
        self._rank_replied(req, rank, m.content)
        if (m.content.get("status") == "error" and req.msg_type == "execute_request"
                and req.failure_check_at is None and not req.failure_checked
                and req.running_ranks()):
            req.failure_check_at = self._now + faults.PARTIAL_FAILURE_GRACE
        if req.complete():
            self._finish(req)

    def _on_rank_iopub(self, m: RankMessage, parent_id: str) -> None:
        msg_type = m.header.get("msg_type")
        if msg_type == "execute_input":
            return
        entry = self.book.live(parent_id)
        probe = self.book.probe_for(parent_id) if entry is None else None
        if probe is not None:
            entry = (probe.request, probe.rank) if probe.request in self.book.open else None
        if msg_type in ("status", "stream"):
            header = entry[0].header if entry else None
            if header is None:
                finished = self.book.finished_entry(parent_id)
                header = finished.header if finished else None
            self._fx.extend(self.out.dropped_output(m, header))
        if msg_type == "status":
            if m.content.get("execution_state") == "idle":
                if probe is not None:
                    self.book.probe_done(parent_id)
                if entry is not None:
                    req, rank = entry
                    if rank not in req.idle:
                        req.idle.add(rank)
                        self._fx.extend(self.out.rank_finished(req, rank, self._now))
                        if req.complete():
                            self._finish(req)
                        elif rank not in req.replies and req.missing_reply_at is None:
                            req.missing_reply_at = self._now + faults.MISSING_REPLY_GRACE
            return
        if probe is not None:
            return
        target = entry[0] if entry else self.book.finished_entry(parent_id)
        self._fx.extend(self.out.route(m, target, self._now))
        self._after_rank_output(m)

    def _show_input(self, item: PendingInput | None) -> None:
        while item is not None:
            req = next((r for r in self.book.open if r.msg_id == item.request_id), None)
            if req is not None:
                content = dict(item.content)
                # a prompt says which rank asks, even with stream prefixes turned off
                label = self.prefixes.get(item.rank) or (
                    f"[rank {item.rank}] " if self.config.nproc > 1 else "")
                content["prompt"] = label + str(content.get("prompt", ""))
                msg_id = self._new_id()
                self.inputs.showing(item, msg_id)
                self._fx.append(AskInput(req.msg.idents, msg_id, content, req.header))
                return
            item = self.inputs.drop_request(item.request_id)

    def _on_input_reply(self, m: FrontendMessage) -> None:
        answered, following = self.inputs.answer(str(m.parent_header.get("msg_id", "")))
        if answered is None:
            self._log("warning", "input_reply that answers no pending prompt dropped")
            return
        if self.life.phase is Phase.READY:
            self._fx.append(SendToRank(self.life.generation, answered.rank, "stdin",
                                       "input_reply", self._new_id(), m.content,
                                       parent=answered.rank_header))
        self._show_input(following)

