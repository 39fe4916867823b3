"""Multiplexer: the I/O shell that joins the frontend channels to the rank links.

Decisions about output live in ``OutputMerger`` and about replies in
``requests``; this class moves messages between sockets, keeps the execute
queue (one cell at a time across all ranks, so ranks never drift apart), and
owns the kernel's lifecycle (start, interrupt, rank death, shutdown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from collections import OrderedDict, deque
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from ..launchers import get_launcher
from ..ranks import RankSpecError, parse_rank_spec
from ..settings import KernelSettings
from .faults import (
    IDLE_PROBE_AFTER,
    INTERRUPT_GRACE,
    PARTIAL_FAILURE_GRACE,
    FaultMonitor,
    restart_note,
    take_note,
    write_note,
)
from .frontend import FrontendChannels
from .kernel_info import kernel_info_content
from .mux_magics import describe_shown, split_mux_magics
from .outflow import DropDetector
from .output import OutputMerger
from .publisher import HEADERS_KEPT, FrontendPublisher
from .rank_pool import RankPool, RankStartError
from .requests import (
    FrontendRequest,
    RequestTable,
    merge_comm_info,
    merge_execute_reply,
    split_rank_magic,
)
from .stdin_router import InputRouter, PendingInput

log = logging.getLogger("nbdist.mux")

#: Requests answered by the primary rank alone.
PRIMARY_REQUESTS = ("complete_request", "inspect_request", "is_complete_request",
                    "history_request")
COMM_MESSAGES = ("comm_open", "comm_msg", "comm_close")
#: Rank messages still forwarded after their cell is idle: they carry no new cell output.
LATE_FORWARDED = (*COMM_MESSAGES, "update_display_data")
#: Exit status of a multiplexer that ends for a restart: a rank died, or a second interrupt
#: could not stop a cell (Jupyter's restarter then starts a fresh one).
EXIT_RANK_DIED = 3
PARENT_POLL_SECONDS = 0.5


class Multiplexer:
    """One multi-rank kernel: frontend channels in front, a RankPool behind."""

    def __init__(self, connection_file: str, settings: KernelSettings) -> None:
        with open(connection_file) as fh:
            conn = json.load(fh)
        self.settings = settings
        self.session = Session(key=conn["key"].encode(),
                               signature_scheme=conn.get("signature_scheme", "hmac-sha256"),
                               username="kernel")
        self.ctx = zmq.asyncio.Context()
        self.front = FrontendChannels(self.ctx, conn, self.session)
        self.pool = RankPool(settings, get_launcher(settings.launcher), self.ctx,
                             self._on_rank_message, self._on_rank_exit)
        host = socket.gethostname()
        n = settings.nproc
        prefixes = {r: settings.stream_prefix.format(rank=r, local_rank=r, host=host,
                                                     world_size=n) for r in range(n)}
        self.prefixes = prefixes
        self.merger = OutputMerger(prefixes, set(parse_rank_spec(settings.output_ranks, n)))
        self.table = RequestTable()
        self.inputs = InputRouter()
        self.exec_queue: deque[FrontendRequest] = deque()
        self.waiting: list[FrontendRequest] = []
        self.active: FrontendRequest | None = None
        self.execution_count = 0
        self.ready = False
        self.start_error: str | None = None
        self.connection_file = connection_file
        #: Set once the kernel is going down to be restarted: requests then fail at once.
        self.restart_reason: str | None = None
        self.faults = FaultMonitor(settings.collective_timeout)
        self.drops = DropDetector()
        #: probe msg_id -> the rank msg_id of the request whose idle it stands in for
        self._probes: dict[str, str] = {}
        #: Why the previous multiplexer on this connection file restarted (shown once).
        self._restart_note = take_note(connection_file)
        self.comm_owner: dict[str, tuple[int, ...]] = {}
        self._exec_counts: dict[str, int] = {}
        self._notice_pending = True
        self._done = asyncio.Event()
        self._background: set[asyncio.Future[Any]] = set()
        self._late_logged: OrderedDict[str, None] = OrderedDict()
        self.exit_status = 0
        self.loop = asyncio.get_running_loop()
        self.pub = FrontendPublisher(self.session, self.front, self.merger, self.loop)

    # -- lifecycle --------------------------------------------------------------
    async def run(self) -> int:
        self.loop.add_signal_handler(signal.SIGINT, self.interrupt)
        self.loop.add_signal_handler(signal.SIGTERM, lambda: self._spawn(self.shutdown(None)))
        tasks = [asyncio.ensure_future(self.front.serve(ch, self._on_frontend))
                 for ch in ("shell", "control", "stdin")]
        tasks.append(asyncio.ensure_future(self.front.serve_subscriptions()))
        tasks.append(asyncio.ensure_future(self._watch_parent()))
        tasks.append(asyncio.ensure_future(self._start_ranks()))
        await self._done.wait()
        for task in tasks:
            task.cancel()
        self.front.close()
        self.ctx.destroy(linger=200)
        return self.exit_status

    async def _start_ranks(self) -> None:
        try:
            await self.pool.start()
        except RankStartError as err:
            self.start_error = f"{err}\nRestart the kernel to try again."
            log.error("start failed: %s", err)
            await self.pool.stop()
        else:
            self.ready = True
            self._refresh_prefixes()
            log.info("%d ranks ready", self.settings.nproc)
        for req in self.waiting:
            self._dispatch(req)
        self.waiting.clear()
        self._pump()

    def _refresh_prefixes(self) -> None:
        """Fill the prefix template with what each rank reported: its host and local rank."""
        for rank, st in self.pool.ranks.items():
            info = st.info or {}
            self.prefixes[rank] = self.settings.stream_prefix.format(
                rank=rank, local_rank=info.get("local_rank", rank),
                host=info.get("host") or socket.gethostname(), world_size=self.settings.nproc)

    async def _watch_parent(self) -> None:
        """Stop everything if the process that owns us (server, nbclient) is gone."""
        parent = int(os.environ.get("JPY_PARENT_PID") or 0)
        if not parent or os.getppid() != parent:
            return
        while os.getppid() == parent:
            await asyncio.sleep(PARENT_POLL_SECONDS)
        log.warning("parent process %d is gone; shutting down", parent)
        await self.shutdown(None)

    async def shutdown(self, req: FrontendRequest | None, graceful: bool = True) -> None:
        if req is not None:
            self.pub.status("busy", req.header)
        await self.pool.stop(graceful=graceful)
        if req is not None:
            restart = bool(req.content.get("restart", False))
            self.pub.reply(req, {"status": "ok", "restart": restart})
            self.pub.status("idle", req.header)
        self._done.set()

    def interrupt(self) -> None:
        """SIGINT (signal mode) or interrupt_request: every rank gets KeyboardInterrupt.

        Ranks that are still starting run nothing of the user's (jupyter_client
        interrupts before every shutdown), so they are left alone. A second interrupt
        of a cell whose ranks did not stop after the first restarts the kernel.
        """
        if not self.ready or self.restart_reason is not None or self.pool.stopping:
            return
        req = self.active
        if req is not None and self.faults.interrupted(req):
            text = self.faults.escalation_text(req)
            self._end_and_restart("KernelRestarting", text,
                                  f"{text}, and a second interrupt was sent.")
            return
        self.pool.signal_all(signal.SIGINT)
        if req is not None:
            self.loop.call_later(INTERRUPT_GRACE, self._after_interrupt, req)

    def _after_interrupt(self, req: FrontendRequest) -> None:
        if req is self.active and not req.complete() and self.restart_reason is None:
            self._notice(req, self.faults.interrupt_notice(req, INTERRUPT_GRACE))

    def _check_partial_failure(self, req: FrontendRequest) -> None:
        if req is self.active and not req.complete() and self.restart_reason is None:
            self._notice(req, self.faults.partial_failure_notice(req, PARTIAL_FAILURE_GRACE))

    def _notice(self, req: FrontendRequest, text: str | None) -> None:
        """An nbdist message for the user, on stderr of the cell ``req``."""
        if text:
            self.pub.publish("stream", {"name": "stderr", "text": text}, req.header)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)

    # -- frontend -> ranks ------------------------------------------------------
    def _on_frontend(self, channel: str, idents: list[bytes], msg: dict[str, Any]) -> None:
        req = FrontendRequest(channel, idents, msg["header"], msg["content"], msg["metadata"],
                              buffers=list(msg.get("buffers") or []))
        for forgotten in self.pub.remember(req):
            self._exec_counts.pop(forgotten, None)  # (else one entry per cell, forever)
        t = req.msg_type
        if t == "kernel_info_request":
            self.pub.status("busy", req.header)
            self.pub.reply(req, kernel_info_content(self.settings.nproc, self._language_info()))
            self.pub.status("idle", req.header)
        elif t == "execute_request" and channel == "shell":
            self.exec_queue.append(req)
            self._pump()
        elif t == "shutdown_request":
            self._spawn(self.shutdown(req))
        elif t == "interrupt_request":
            self.pub.status("busy", req.header)
            self.interrupt()
            self.pub.reply(req, {"status": "ok"})
            self.pub.status("idle", req.header)
        elif t in PRIMARY_REQUESTS:
            req.targets = (self.settings.primary_rank,)
            self._submit(req)
        elif t == "comm_info_request":
            req.targets = tuple(range(self.settings.nproc))
            self._submit(req)
        elif t in COMM_MESSAGES and channel == "shell":
            comm_id = str(req.content.get("comm_id", ""))
            if t == "comm_open":
                self.comm_owner[comm_id] = tuple(range(self.settings.nproc))
            req.targets = self.comm_owner.get(comm_id, tuple(range(self.settings.nproc)))
            if t == "comm_close":
                self.comm_owner.pop(comm_id, None)
            self._submit(req)
        elif t == "input_reply" and channel == "stdin":
            self._on_input_reply(req)
        else:
            log.warning("ignored unsupported %s on %s", t, channel)

    def _submit(self, req: FrontendRequest) -> None:
        if self.ready or self.start_error:
            self._dispatch(req)
        else:
            self.waiting.append(req)

    def _dispatch(self, req: FrontendRequest) -> None:
        self.pub.status("busy", req.header)
        failure = self._unavailable()
        if failure is not None:
            self._fail_now(req, *failure)
            return
        if req.msg_type in COMM_MESSAGES:
            for rank in req.targets:  # comm messages get no reply: only idle is awaited
                req.replies[rank] = {}
        self.merger.start(req.msg_id, req.targets)
        channel = "control" if req.channel == "control" else "shell"
        for rank in req.targets:
            msg_id = self.pool.link(rank).send(channel, req.msg_type, req.content,
                                               metadata=req.metadata, buffers=req.buffers)
            self.table.add(req, rank, msg_id)

    def _pump(self) -> None:
        """Start the next queued cell once ranks are ready and no cell runs."""
        while self.active is None and self.exec_queue and (self.ready or self.start_error):
            req = self.exec_queue.popleft()
            self._start_execute(req)

    def _start_execute(self, req: FrontendRequest) -> None:
        content = req.content
        code = str(content.get("code", ""))
        silent = bool(content.get("silent", False))
        if content.get("store_history", not silent) and not silent:
            self.execution_count += 1
        self._exec_counts[req.msg_id] = self.execution_count
        self.pub.status("busy", req.header)
        if not silent:
            self.pub.publish("execute_input", {"code": code,
                                            "execution_count": self.execution_count}, req.header)
            self._publish_restart_note(req)
        failure = self._unavailable()
        if failure is not None:
            self._fail_now(req, *failure)
            return
        try:
            magics = split_mux_magics(code, self.settings.nproc)
            ranks, code = split_rank_magic(magics.code, self.settings.nproc)
        except RankSpecError as err:
            self._fail_now(req, "RankSpecError", str(err))
            return
        if magics.shown is not None:
            self.merger.shown_ranks = set(magics.shown)
        if magics.used and not code.strip():
            self._answer_alone(req, describe_shown(self.merger.shown_ranks))
            return
        req.targets = ranks if ranks is not None else tuple(range(self.settings.nproc))
        self._publish_notice_once(req)
        self.active = req
        self.merger.start(req.msg_id, req.targets)
        rank_content = {**content, "code": code}
        for rank in req.targets:
            msg_id = self.pool.link(rank).send("shell", "execute_request", rank_content,
                                               metadata=req.metadata)
            self.table.add(req, rank, msg_id)

    def _publish_notice_once(self, req: FrontendRequest) -> None:
        """Tell the user once, in their first cell, that torch.distributed is not set up."""
        if not self._notice_pending:
            return
        self._notice_pending = False
        errors = {r: rep.get("error") for r, rep in self.pool.dist_reports.items()
                  if rep.get("error")}
        if not errors:
            return
        rank, error = min(errors.items())
        where = "every rank" if len(errors) == self.settings.nproc else f"rank {rank}"
        self.pub.publish("stream", {"name": "stderr",
                                 "text": f"[nbdist] torch.distributed is not set up on {where}: "
                                         f"{error}\n"}, req.header)

    def _publish_restart_note(self, req: FrontendRequest) -> None:
        """Say once, in the first cell after a restart, why the kernel restarted."""
        if self._restart_note is not None:
            note, self._restart_note = self._restart_note, None
            self._notice(req, note)

    def _unavailable(self) -> tuple[str, str] | None:
        """(ename, evalue) when requests cannot reach the ranks: no cell waits on a dead rank."""
        if self.start_error:
            return "RankStartError", self.start_error
        if self.restart_reason is not None:
            return "KernelRestarting", self.restart_reason
        return None

    def _answer_alone(self, req: FrontendRequest, text: str) -> None:
        """End a cell that only held multiplexer magics: their output, ok, idle."""
        if not req.content.get("silent", False):
            self.pub.publish("stream", {"name": "stdout", "text": text}, req.header)
        self.pub.reply(req, {"status": "ok", "payload": [], "user_expressions": {},
                          "execution_count": self._exec_counts.get(req.msg_id, 0)})
        self.pub.status("idle", req.header)

    def _fail_now(self, req: FrontendRequest, ename: str, evalue: str) -> None:
        """Answer a request that never reached the ranks, as an error."""
        error = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        count = self._exec_counts.get(req.msg_id, self.execution_count)
        if req.msg_type == "execute_request":
            self.pub.publish("error", error, req.header)
            self.pub.reply(req, {"status": "error", "execution_count": count, **error})
        elif req.msg_type not in COMM_MESSAGES:
            self.pub.reply(req, {"status": "error", **error})
        self.pub.status("idle", req.header)
        if req.msg_type == "execute_request":
            self._abort_queue()

    # -- ranks -> frontend ------------------------------------------------------
    def _on_rank_message(self, rank: int, channel: str, msg: dict[str, Any]) -> None:
        parent_id = str((msg.get("parent_header") or {}).get("msg_id", ""))
        t = msg["header"].get("msg_type")
        if channel == "iopub":
            if t == "status" and parent_id in self._probes:
                target = self._probes[parent_id]  # a probe's status stands for its request's
                if msg["content"].get("execution_state") == "idle":
                    self._probes = {k: v for k, v in self._probes.items() if v != target}
                entry = self.table.live(target)
                if entry is None or rank in entry[0].idle:
                    return  # the request's own idle came after all
                parent_id = target
            if t in ("stream", "status"):
                self._check_dropped(rank, msg, parent_id)
            self._on_rank_iopub(rank, t, msg["content"], parent_id, msg.get("buffers"))
            return
        entry = self.table.live(parent_id)
        if entry is None:
            log.debug("rank %d: %s for no live request", rank, t)
            return
        req, _ = entry
        if channel == "stdin":
            if t == "input_request":
                shown = self.inputs.add(PendingInput(rank, msg, req.msg_id))
                self._show_input(shown)
            return
        req.replies[rank] = msg["content"]
        if len(req.replies) == len(req.targets) and not req.complete():
            # Every rank replied but some idle is missing: one check for the request
            # (not a timer per rank and reply, on the per-message path).
            self.loop.call_later(IDLE_PROBE_AFTER, self._probe_idles, req)
        if (req is self.active and msg["content"].get("status") == "error"
                and self.faults.rank_failed(req)):
            self.loop.call_later(PARTIAL_FAILURE_GRACE, self._check_partial_failure, req)
        self._maybe_finish(req)

    def _probe_idles(self, req: FrontendRequest) -> None:
        """Ranks replied but their iopub idle has not come: ZMQ may have dropped it (the
        rank's output queue overflowed). A request on a rank's control channel makes it
        publish busy/idle behind everything it published before; that idle then counts
        as the request's own (and its stamp reports what was lost)."""
        if req.complete() or self.restart_reason is not None:
            return
        waiting = False
        for rank in req.targets:
            rank_msg_id = req.rank_msg_ids.get(rank, "")
            if (req.rank_done(rank) or self.table.live(rank_msg_id) is None
                    or not self.pool.alive(rank)):
                continue
            probe = self.pool.link(rank).send("control", "kernel_info_request", {})
            self._probes[probe] = rank_msg_id
            waiting = True
        if waiting:
            self.loop.call_later(IDLE_PROBE_AFTER, self._probe_idles, req)

    def _check_dropped(self, rank: int, msg: dict[str, Any], parent_id: str) -> None:
        """Tell the cell when ZMQ dropped output of ``rank`` before it reached us."""
        dropped = self.drops.observe(rank, msg.get("metadata"), msg["content"].get("text"),
                                     stream=msg["header"].get("msg_type") == "stream")
        if dropped is None:
            return
        log.warning("rank %d: %d stream messages (%d characters) dropped", rank,
                    dropped.messages, dropped.chars)
        entry = self.table.live(parent_id)
        finished = self.table.finished_parent(parent_id)
        header = entry[0].header if entry else (finished[1] if finished else None)
        if header:
            self.pub.publish("stream", {"name": "stderr", "text": dropped.notice()}, header)

    def _on_rank_iopub(self, rank: int, t: str, content: dict[str, Any], parent_id: str,
                       buffers: list[Any] | None = None) -> None:
        now = self.loop.time()
        entry = self.table.live(parent_id)
        if entry is not None:
            req = entry[0]
            if t == "status":
                if content.get("execution_state") == "idle":
                    req.idle.add(rank)
                    self.pub.emit(self.merger.rank_finished(req.msg_id, rank, now))
                    self._maybe_finish(req)
                return
            key = req.msg_id
        else:
            if t in ("status", "execute_input"):
                return
            finished = self.table.finished_parent(parent_id)
            key = finished[0] if finished else ""
            if finished and t not in LATE_FORWARDED:
                # Its cell is idle: never after the idle, never into another cell.
                self._drop_late(rank, t, key)
                return
        if t == "execute_input":
            return
        if t == "comm_open":
            self.comm_owner[str(content.get("comm_id", ""))] = (rank,)
        elif t == "execute_result":
            content = {**content, "execution_count": self._exec_counts.get(key, 0)}
        self.pub.emit(self.merger.feed(rank, t, content, key, now, buffers))

    def _drop_late(self, rank: int, msg_type: str, request_id: str) -> None:
        """Output of a finished cell (a background thread of it): logged, once per cell."""
        if request_id in self._late_logged:
            return
        self._late_logged[request_id] = None
        while len(self._late_logged) > HEADERS_KEPT:
            self._late_logged.popitem(last=False)
        log.warning("rank %d: %s for request %s after its idle (a background thread of a "
                    "finished cell?) is not shown; further late output of that cell is dropped "
                    "silently", rank, msg_type, request_id)

    def _maybe_finish(self, req: FrontendRequest) -> None:
        if req.complete():
            self._finish(req)

    def _finish(self, req: FrontendRequest) -> None:
        self.pub.emit(self.merger.finish(req.msg_id, self.loop.time()))
        self.pub.flush()
        t = req.msg_type
        if t == "execute_request":
            reply = merge_execute_reply(req, self._exec_counts.get(req.msg_id, 0))
        elif t == "comm_info_request":
            reply = merge_comm_info(req)
        elif t in COMM_MESSAGES:
            reply = None
        else:
            primary = req.targets[0]
            reply = req.replies.get(primary) or {
                "status": "error", "ename": "RankDied", "evalue": req.dead.get(primary, ""),
                "traceback": []}
        if reply is not None:
            self.pub.reply(req, reply)
        self.pub.status("idle", req.header)
        self.table.finish(req)
        self.faults.forget(req.msg_id)
        self._show_input(self.inputs.drop_request(req.msg_id))
        if t == "execute_request" and req is self.active:
            self.active = None
            if (reply is not None and reply["status"] == "error"
                    and req.content.get("stop_on_error", True)
                    and not req.content.get("silent", False)):
                self._abort_queue()
            self._pump()

    def _abort_queue(self) -> None:
        """After an error, queued cells are aborted, as ipykernel does."""
        while self.exec_queue:
            req = self.exec_queue.popleft()
            self.pub.status("busy", req.header)
            self.pub.reply(req, {"status": "aborted", "execution_count": self.execution_count})
            self.pub.status("idle", req.header)

    def _on_rank_exit(self, rank: int, description: str) -> None:
        """A rank died: end every cell now with the reason, then exit so Jupyter restarts us."""
        log.error("%s", description)
        if not self.ready or self.restart_reason is not None:
            return  # start-up failures are reported by RankPool.start
        summary = description.splitlines()[0].removesuffix("; last stderr lines:")
        self._end_and_restart("RankDied", summary, description, dead_rank=rank)

    def _end_and_restart(self, ename: str, summary: str, detail: str,
                         dead_rank: int | None = None) -> None:
        """End every open request with the reason, leave a note for the next multiplexer,
        then exit with EXIT_RANK_DIED so that Jupyter's restarter starts a fresh kernel."""
        log.error("restarting: %s", summary)
        self.restart_reason = f"{summary}; the kernel is restarting"
        write_note(self.connection_file, restart_note(detail))
        for req in self.table.requests():
            if req.complete():
                continue
            if req.msg_type == "execute_request":
                self.pub.publish("error", {
                    "ename": ename, "evalue": summary,
                    "traceback": [f"{ename}: {detail}",
                                  "The kernel restarts with all ranks; variables are lost."],
                }, req.header)
            for target in req.targets:
                if not req.rank_done(target):
                    req.dead[target] = detail if target == dead_rank else (
                        f"stopped because {summary}")
            self._finish(req)
        self._abort_queue()
        self.exit_status = EXIT_RANK_DIED
        self._spawn(self.shutdown(None, graceful=False))

    # -- stdin ------------------------------------------------------------------
    def _show_input(self, item: PendingInput | None) -> None:
        if item is None:
            return
        entry = next((r for r in self.table.requests() if r.msg_id == item.request_id), None)
        if entry is None:
            return
        content = dict(item.rank_msg["content"])
        # A prompt always says which rank asks, even with stream prefixes turned off.
        label = self.prefixes[item.rank] or (
            f"[rank {item.rank}] " if self.settings.nproc > 1 else "")
        content["prompt"] = label + str(content.get("prompt", ""))
        self.pub.send_input_request(entry, content)

    def _on_input_reply(self, req: FrontendRequest) -> None:
        answered, nxt = self.inputs.answer()
        if answered is None:
            log.warning("input_reply with no prompt pending; dropped")
            return
        link = self.pool.ranks[answered.rank].link
        if link is not None and self.pool.alive(answered.rank):
            link.send_raw_reply("stdin", "input_reply", req.content,
                                parent=answered.rank_msg["header"])
        self._show_input(nxt)

    def _language_info(self) -> dict[str, Any] | None:
        if not self.ready:
            return None
        link = self.pool.ranks[self.settings.primary_rank].link
        return link.kernel_info.get("language_info") if link else None
