"""Multiplexer: the I/O shell around the request core.

It turns socket reads, rank exits, signals and timers into core events, and
carries out the effects the core returns: sends, publishes, replies, rank
starts and stops, exit. Every decision about requests lives in
``core.kernel.KernelCore``; this module only moves bytes and processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import uuid
from collections.abc import Coroutine
from typing import Any

import zmq
from jupyter_client.session import Session

from ...launchers import Launcher
from ...rankset import parse_rank_set
from ...settings import KernelSettings
from ..core.effects import (
    AskInput,
    Effect,
    Exit,
    Log,
    Publish,
    ReadHistory,
    Reply,
    SendToRank,
    StartRanks,
    StopRanks,
)
from ..core.events import (
    Event,
    FrontendMessage,
    HistoryRead,
    InterruptSignal,
    RanksFailed,
    RanksReady,
    RanksStopped,
    ShutdownSignal,
    Tick,
)
from ..core.kernel import CoreConfig, KernelCore
from .frontend import FrontendChannels
from .history import history_database, read_tail
from .publisher import Publisher
from .rank_pool import RankPool, RankStartError

log = logging.getLogger("nbdist.mux")

PARENT_POLL_SECONDS = 0.5
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class Multiplexer:
    """One multi-rank kernel: frontend channels in front, generations of ranks behind."""

    def __init__(self, connection_file: str, settings: KernelSettings, launcher: Launcher,
                 rundir: str, shared_env: dict[str, str]) -> None:
        with open(connection_file) as fh:
            conn = json.load(fh)
        self.settings = settings
        self.launcher = launcher
        self.rundir = rundir
        self.shared_env = shared_env
        self.session = Session(key=conn["key"].encode(),
                               signature_scheme=conn.get("signature_scheme", "hmac-sha256"),
                               username="kernel")
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.front = FrontendChannels(self.ctx, conn, self.session, self._on_frontend)
        self.loop = asyncio.get_running_loop()
        self.publisher = Publisher(self.session, self.front, self.loop)
        ports = tuple((name, int(conn[f"{name}_port"]))
                      for name in ("shell", "iopub", "stdin", "control", "hb"))
        self.core = KernelCore(CoreConfig(
            nproc=settings.nproc, primary_rank=settings.primary_rank,
            stream_prefix=settings.stream_prefix,
            output_ranks=parse_rank_set(settings.output_ranks, settings.nproc),
            collective_timeout=settings.collective_timeout, fail_fast=settings.fail_fast,
            ports=ports, merge_window=settings.merge_window, debug_rank=settings.debug_rank,
        ), id_prefix=uuid.uuid4().hex[:12])
        self.pools: dict[int, RankPool] = {}
        self._starts: dict[int, asyncio.Task[None]] = {}
        self._stops: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._done = asyncio.Event()
        self._background: set[asyncio.Future[Any]] = set()
        self.exit_status = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> int:
        self.loop.add_signal_handler(signal.SIGINT, self.feed, InterruptSignal())
        self.loop.add_signal_handler(signal.SIGTERM, self.feed, ShutdownSignal("SIGTERM"))
        tasks = [asyncio.ensure_future(self._watch_parent())]
        self.execute(self.core.start(self.loop.time()))
        await self._done.wait()
        for task in tasks:
            task.cancel()
        self.publisher.flush()
        await self.launcher.close()
        self.front.close()
        self.ctx.destroy(linger=200)
        return self.exit_status

    def owner_gone(self) -> None:
        log.warning("the process that owns this kernel is gone; shutting down")
        self.feed(ShutdownSignal("the kernel's owner is gone"))

    def feed(self, event: Event) -> None:
        """Hand one event to the core and carry out what it decides."""
        self.execute(self.core.handle(event, self.loop.time()))
        self._schedule_tick()

    def execute(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Publish):
                self.publisher.publish(effect)
            elif isinstance(effect, SendToRank):
                self._send_to_rank(effect)
            elif isinstance(effect, Reply):
                self.publisher.reply(effect)
            elif isinstance(effect, AskInput):
                self.publisher.ask_input(effect)
            elif isinstance(effect, Log):
                log.log(_LEVELS.get(effect.level, logging.WARNING), "%s", effect.text)
            elif isinstance(effect, StartRanks):
                self._starts[effect.generation] = self._spawn(self._start(effect.generation))
            elif isinstance(effect, StopRanks):
                self._stops.append(self._spawn(self._stop(effect.generation,
                                                          effect.graceful)))
            elif isinstance(effect, ReadHistory):
                self._spawn(self._read_history(effect))
            elif isinstance(effect, Exit):
                self.exit_status = effect.status
                self._done.set()

    def _send_to_rank(self, e: SendToRank) -> None:
        pool = self.pools.get(e.generation)
        link = pool.link(e.rank) if pool is not None else None
        if link is None or not pool.alive(e.rank):  # type: ignore[union-attr]
            log.debug("no rank %d of generation %d for %s", e.rank, e.generation, e.msg_type)
            return
        link.send(e.channel, e.msg_type, e.content, metadata=e.metadata,
                  buffers=list(e.buffers) or None, msg_id=e.msg_id,
                  header_extra=e.header_extra or None, parent=e.parent)

    async def _start(self, generation: int) -> None:
        """Start a generation once every earlier one is stopped; whatever goes wrong is
        reported as RanksFailed (a start never leaves the kernel waiting)."""
        try:
            for stop in [t for t in self._stops if not t.done()]:
                await asyncio.shield(stop)
            for old in [g for g in self.pools if g != generation]:
                await self._stop(old, graceful=False, report=False)
            pool = await self._start_pool(generation)
        except asyncio.CancelledError:
            return  # stopped while starting
        except RankStartError as err:
            self.feed(RanksFailed(generation, str(err)))
            return
        except Exception as err:  # a launcher (plug-in) raising anything: never hang
            log.exception("starting ranks failed")
            self.feed(RanksFailed(generation, f"{type(err).__name__}: {err}"))
            return
        log.info("%d ranks of generation %d ready", self.settings.nproc, generation)
        self.feed(RanksReady(generation, pool.infos()))

    async def _start_pool(self, generation: int) -> RankPool:
        """Start the ranks; a start in which a rank died (a clash with another process on
        the machine, say) is tried once more, with the first cause in the log. A start
        that ran out of time is not: that would only double the wait."""
        for attempt in (1, 2):
            pool = RankPool(self.settings, self.launcher, self.ctx, generation, self.rundir,
                            self.shared_env, self.feed, self.feed)
            self.pools[generation] = pool
            try:
                await pool.start()
                return pool
            except RankStartError as err:
                if attempt == 2 or err.timed_out:
                    raise
                log.warning("starting the ranks failed, trying once more: %s", err)
                await pool.stop(graceful=False)
        raise AssertionError("unreachable")

    async def _stop(self, generation: int, graceful: bool, report: bool = True) -> None:
        start = self._starts.pop(generation, None)
        if start is not None and not start.done():
            start.cancel()
        pool = self.pools.pop(generation, None)
        try:
            if pool is not None:
                await pool.stop(graceful=graceful)
        except Exception:  # a launcher (plug-in) raising: the kernel must still go on
            log.exception("stopping ranks of generation %d failed", generation)
        if report:
            self.feed(RanksStopped(generation))

    async def _read_history(self, e: ReadHistory) -> None:
        path = history_database(self.shared_env)
        history = await self.loop.run_in_executor(None, read_tail, path, e.n, e.raw)
        self.feed(HistoryRead(e.request_id, history))

    async def _watch_parent(self) -> None:
        """Stop everything if the process that owns us (server, nbclient) is gone: the
        watch set up at start (``__main__``) covers the first instant; this poll is the
        fallback where there is neither a parent-death signal nor a pidfd."""
        parent = int(os.environ.get("JPY_PARENT_PID") or 0)
        if not parent or os.getppid() != parent:
            return
        while os.getppid() == parent:
            await asyncio.sleep(PARENT_POLL_SECONDS)
        self.owner_gone()

    # -- frontend ----------------------------------------------------------------------
    def _on_frontend(self, channel: str, idents: list[bytes], msg: dict[str, Any]) -> None:
        self.feed(FrontendMessage(channel, tuple(idents), msg["header"], msg["content"],
                                  msg.get("metadata") or {}, tuple(msg.get("buffers") or ()),
                                  msg.get("parent_header") or {}))

    # -- timers ------------------------------------------------------------------------
    def _schedule_tick(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self.feed(Tick())
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= self.loop.time():
            # a deadline that a tick did not move would spin: look again a little later
            log.debug("deadline %.3f did not move after a tick", deadline)
            self._timer_at = self.loop.time() + 0.01
            self._timer = self.loop.call_at(self._timer_at, self._on_timer)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)
        return task
