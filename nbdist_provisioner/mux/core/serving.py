"""Serving frontend requests: the shell queues, dispatch to ranks, one reply each.

Shell requests are served one at a time in arrival order (per subshell), control
requests and comm messages at once; a request the ranks answer is finished when
every target replied and went idle; after an execute error the execute requests
already queued are aborted, as ipykernel does.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ...protocol import EXECUTION_COUNT_KEY
from ...rankset import RankSetError
from . import faults
from .effects import ReadHistory, SendToRank
from .events import FrontendMessage, HistoryRead
from .kernel_info import kernel_info_content
from .lifecycle import Phase
from .magics import describe_shown, split_mux_magics, split_rank_magic
from .policy import Merge, Route, bad_content, policy_for
from .request import Request, error_content, merge_execute_reply, merge_reply
from .state import CoreState

Json = dict[str, Any]


def _history_tail(req: Request) -> bool:
    """A history request the database answers as the rank would (the tail, no outputs)."""
    c = req.content
    return (req.msg_type == "history_request" and c.get("hist_access_type") == "tail"
            and not c.get("output") and isinstance(c.get("n", 1000), int))


class Serving(CoreState):
    def _on_frontend(self, m: FrontendMessage) -> None:
        msg_type = str(m.header.get("msg_type", ""))
        if m.channel == "stdin":
            if msg_type == "input_reply":
                self._on_input_reply(m)
            else:
                self._log("warning", f"ignored unsupported {msg_type} on stdin")
            return
        policy = policy_for(msg_type)
        if policy is None:
            # as ipykernel: logged, with a busy/idle so no client waits for it
            self._log("warning", f"ignored unsupported {msg_type} on {m.channel}")
            self._status("busy", m.header)
            self._status("idle", m.header)
            return
        req = Request(m, policy)
        bad = bad_content(msg_type, m.content)
        if bad is None and policy.control_only and m.channel != "control":
            bad = f"{msg_type} is only served on the control channel"
        if bad is not None:
            self._log("warning", f"refused a malformed {msg_type} on {m.channel}: {bad}")
            self._status("busy", req.header)
            self._fail(req, "BadRequest", bad)
            return
        if m.channel != "shell" or not policy.ordered:
            self._serve(req)
            return
        queue = str(m.header.get("subshell_id") or "")
        if queue and not self.subshells.known(queue):
            self._status("busy", req.header)
            self._reply(req, {"status": "error", **error_content(
                "UnknownSubshellError", f"no subshell {queue!r}")})
            self._status("idle", req.header)
            return
        req.queue = queue
        self._queues.setdefault(queue, deque()).append(req)
        self._active.setdefault(queue, None)
        self._pump(queue)

    def _pump(self, queue: str) -> None:
        """Serve the next request of ``queue`` while none of it is being served."""
        if self._pumping:
            return
        self._pumping = True
        try:
            again = True
            while again:
                again = False
                for name, q in list(self._queues.items()):
                    while q and self._active.get(name) is None:
                        req = q.popleft()
                        if req.aborted:
                            self._status("busy", req.header)
                            self._reply(req, {"status": "aborted"}, {"status": "aborted"})
                            self._status("idle", req.header)
                            continue
                        self._active[name] = req
                        self._serve(req)
                        again = True
        finally:
            self._pumping = False

    def _serve(self, req: Request) -> None:
        self._status("busy", req.header)
        if req.policy.route is Route.MUX:
            self._answer_here(req)
        elif self.life.phase is Phase.STARTING and _history_tail(req):
            # jupyter console asks for history right after kernel_info (which is answered
            # at once) and gives up after 1 s: read it from the database, not the ranks
            self._history_reads[req.msg_id] = req
            self._fx.append(ReadHistory(req.msg_id, int(req.content.get("n") or 1000),
                                        bool(req.content.get("raw", True))))
        elif self.life.phase is Phase.STARTING:
            self._waiting.append(req)
        elif self.life.phase is Phase.READY or req.msg_type == "execute_request":
            self._dispatch(req)  # (an execute that cannot run still counts, then fails)
        else:
            self._fail(req, *self._unavailable())

    def _on_history_read(self, ev: HistoryRead) -> None:
        req = self._history_reads.pop(ev.request_id, None)
        if req is None:
            return
        if ev.history is not None:
            self._done(req, {"status": "ok", "history": [list(h) for h in ev.history]})
        elif self.life.phase is Phase.STARTING:
            self._waiting.append(req)
        elif self.life.phase is Phase.READY:
            self._dispatch(req)
        else:
            self._fail(req, *self._unavailable())

    def _unavailable(self) -> tuple[str, str]:
        """(ename, evalue) of a request that cannot reach the ranks."""
        if self.life.phase is Phase.FAILED:
            return "RankStartError", self.life.failure or "the ranks could not start"
        return "KernelShutdown", "the kernel is shutting down"

    def _answer_here(self, req: Request) -> None:
        t = req.msg_type
        if t == "kernel_info_request":
            primary = self.rank_infos.get(self.config.primary_rank)
            language = (primary.kernel_info.get("language_info") if primary else None)
            self._done(req, kernel_info_content(self.config.nproc, language,
                                                primary.kernel_info if primary else None))
        elif t == "connect_request":
            self._done(req, {"status": "ok", **{f"{name}_port": port
                                                for name, port in self.config.ports}})
        elif t == "list_subshell_request":
            self._done(req, {"status": "ok", "subshell_id": self.subshells.ids()})
        elif t == "interrupt_request":
            self._interrupt()
            self._done(req, {"status": "ok"})
        elif t == "shutdown_request":
            self._shutdown(req, "a shutdown request")

    def _dispatch(self, req: Request) -> None:
        """Send ``req`` to its ranks (they are ready)."""
        if req.msg_type == "execute_request":
            self._start_execute(req)
            return
        route = req.policy.route
        content = req.content
        if route is Route.DEBUG:
            targets: tuple[int, ...] = (self.debugging.rank_for(content),)
        elif route is Route.PRIMARY:
            targets = (self.config.primary_rank,)
        elif route is Route.COMM:
            targets = self.out.comms.targets(str(content.get("comm_id", "")), self.ranks)
        else:
            targets = self.ranks
        if req.msg_type == "comm_open":
            self.out.comms.frontend_opened(str(content.get("comm_id", "")), targets)
        elif req.msg_type == "comm_close":
            self.out.comms.closed(str(content.get("comm_id", "")))
        if req.msg_type == "delete_subshell_request":
            subshell = str(content.get("subshell_id", ""))
            if not self.subshells.known(subshell):
                self._done(req, {"status": "error", **error_content(
                    "UnknownSubshellError", f"no subshell {subshell!r}")})
                return
        req.targets = targets
        if req.policy.merge is Merge.NONE:
            self._send_comm(req)
            return
        self.book.opened(req)
        for rank in targets:
            rank_content = content
            if req.msg_type == "delete_subshell_request":
                rank_content = {"subshell_id": self.subshells.rank_id(
                    str(content.get("subshell_id", "")), rank)}
            self.book.sent(req, rank, self._send_request(req, rank, rank_content))

    def _send_comm(self, req: Request) -> None:
        """A comm message has no reply. A rank handles it in turn and goes idle after,
        except a rank busy with a shell request: ipykernel handles the comm beside it at
        once and publishes no status, so the kernel does not wait for that rank. Output
        of the comm's handler (a widget callback's) is routed either way."""
        self.out.remember(req)
        main = self._active.get("")
        busy = ({r for r in main.targets if not main.rank_done(r)}
                 if main is not None and main in self.book.open else set())
        for rank in req.targets:
            msg_id = self._send_request(req, rank, req.content)
            if rank in busy:
                self.book.sent_untracked(req, rank, msg_id)
            else:
                self.book.sent(req, rank, msg_id)
        req.targets = tuple(r for r in req.targets if r not in busy)
        if not req.targets:
            self.book.finished.add(req)
            self._status("idle", req.header)
            return
        for rank in req.targets:
            req.replies[rank] = {}
        self.book.opened(req)
        req.idle_probe_at = self._now + faults.IDLE_PROBE_AFTER

    def _send_request(self, req: Request, rank: int, content: Json,
                      metadata: Json | None = None) -> str:
        msg_id = self._new_id()
        extra: Json = {}
        if req.queue:
            rank_subshell = self.subshells.rank_id(req.queue, rank)
            if rank_subshell is not None:
                extra["subshell_id"] = rank_subshell
        channel = "control" if req.msg.channel == "control" else "shell"
        self._fx.append(SendToRank(self.life.generation, rank, channel, req.msg_type, msg_id,
                                   content, req.msg.metadata if metadata is None else metadata,
                                   req.msg.buffers, extra))
        return msg_id

    def _start_execute(self, req: Request) -> None:
        count_before = self.execution_count
        if req.store_history:
            self.execution_count += 1
        req.execution_count = self.execution_count
        code = str(req.content.get("code", ""))
        if not req.silent:
            self._publish("execute_input", {"code": code,
                                            "execution_count": self.execution_count}, req)
            for note in self._notes:
                self._notice(req, note)
            self._notes.clear()
        if self.life.phase is not Phase.READY:
            self._fail(req, *self._unavailable())
            return
        try:
            magics = split_mux_magics(code, self.config.nproc)
            targets, code = split_rank_magic(magics.code, self.config.nproc)
        except RankSetError as err:
            self._fail(req, "RankSetError", str(err))
            return
        if magics.shown is not None:
            self.out.merger.shown_ranks = set(magics.shown)
        if magics.debug is not None:
            self.debugging.choose(magics.debug)
        if magics.used and not code.strip():
            if not req.silent:
                said = "".join(
                    self.debugging.describe() if name == "debug_rank"
                    else describe_shown(self.out.merger.shown_ranks)
                    for name in dict.fromkeys(magics.named))
                self._publish("stream", {"name": "stdout", "text": said}, req)
            self._done(req, {"status": "ok", "execution_count": req.execution_count,
                             "user_expressions": {}, "payload": []})
            return
        req.targets = targets if targets is not None else self.ranks
        self.book.opened(req)
        self.out.start(req)
        content = {**req.content, "code": code, "stop_on_error": False}
        metadata = {**req.msg.metadata, EXECUTION_COUNT_KEY: count_before + 1}
        for rank in req.targets:
            self.book.sent(req, rank, self._send_request(req, rank, content, metadata))

    def _done(self, req: Request, content: Json) -> None:
        """Answer a request the ranks did not (have to) answer: reply, idle, next."""
        self._reply(req, content)
        self._status("idle", req.header)
        if (req.msg_type == "execute_request" and content.get("status") == "error"
                and req.stop_on_error and req.queue is not None):
            self._mark_aborted(req.queue)
        self._advance(req)

    def _fail(self, req: Request, ename: str, evalue: str,
              traceback: list[str] | None = None) -> None:
        """End a request that cannot reach the ranks, as an error."""
        error = error_content(ename, evalue, traceback)
        if req.msg_type == "execute_request":
            self._publish("error", error, req)
            self._done(req, {"status": "error", "execution_count": req.execution_count,
                             **error})
        elif req.policy.merge is Merge.NONE:
            self._status("idle", req.header)
            self._advance(req)
        else:
            self._done(req, {"status": "error", **error})

    def _advance(self, req: Request) -> None:
        if req.queue is not None and self._active.get(req.queue) is req:
            self._active[req.queue] = None
            if req.queue not in self._queues:  # a subshell deleted while this ran
                del self._active[req.queue]
            self._pump(req.queue)

    def _mark_aborted(self, queue: str) -> None:
        """After an execute error, the execute requests already queued are aborted."""
        for queued in self._queues.get(queue, ()):
            if queued.msg_type == "execute_request":
                queued.aborted = True

    def _finish(self, req: Request) -> None:
        """Every target replied and went idle (or died): one reply, then idle."""
        if req.msg_type == "execute_request" and self._hold_for_new_group(req):
            return  # (finished once the ranks have a new process group)
        self.book.close(req)
        if req.policy.merge is Merge.NONE:  # a comm message: what its handler printed, idle
            self._fx.extend(self.out.finish(req, self._now))
            self._status("idle", req.header)
            return
        if req.msg_type == "execute_request":
            self._fx.extend(self.out.finish(req, self._now))
            reply = merge_execute_reply(req)
        elif req.policy.merge is Merge.SUBSHELL:
            reply = self._made_subshell(req)
        else:
            reply = merge_reply(req)
            if (req.msg_type == "delete_subshell_request" and reply.get("status") == "ok"):
                self._drop_subshell(str(req.content.get("subshell_id", "")), "it was deleted")
        self._show_input(self.inputs.drop_request(req.msg_id))
        self._done(req, reply)

    def _made_subshell(self, req: Request) -> Json:
        ids = {r: str(rep.get("subshell_id", "")) for r, rep in req.replies.items()
               if rep.get("status") == "ok" and rep.get("subshell_id")}
        if len(ids) != len(req.targets):
            # one subshell for some ranks only is no subshell: undo it where it was made
            for rank, rank_id in ids.items():
                msg_id = self._new_id()
                self.book.internal(msg_id, "delete a half-made subshell")
                self._fx.append(SendToRank(self.life.generation, rank, "control",
                                           "delete_subshell_request", msg_id,
                                           {"subshell_id": rank_id}))
            failed = [r for r in req.targets if r not in ids]
            why = next((f"{rep.get('ename', 'Error')}: {rep.get('evalue', '')}"
                        for r, rep in sorted(req.replies.items()) if r in failed),
                       req.dead.get(failed[0], "no answer") if failed else "no answer")
            return {"status": "error", **error_content(
                "SubshellError", f"ranks {failed} could not make a subshell ({why})")}
        subshell_id = self._new_id()
        self.subshells.add(subshell_id, ids)
        self._queues.setdefault(subshell_id, deque())
        self._active.setdefault(subshell_id, None)
        return {"status": "ok", "subshell_id": subshell_id}

    def _drop_subshell(self, subshell_id: str, why: str) -> None:
        """A subshell is gone: what waits in its queue fails, the queue goes."""
        self.subshells.remove(subshell_id)
        for queued in self._queues.pop(subshell_id, ()):
            queued.queue = None
            self._status("busy", queued.header)
            self._fail(queued, "UnknownSubshellError", f"subshell {subshell_id!r} is gone "
                                                       f"({why})")
        if self._active.get(subshell_id) is None:
            self._active.pop(subshell_id, None)

