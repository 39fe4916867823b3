"""The multiplexer's side of one rank agent, whatever carries its JSON protocol.

The local agent talks over its stdin/stdout pipes; a node's agent over an encrypted
link its node link dials (``launchers.nodes``). Both speak ``agent.protocol``: commands
down, events up. This class turns the events into ``RankProcess`` objects and the
answers the launcher waits for; a subclass only says how a command is sent and calls
``on_event`` / ``lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from abc import ABC, abstractmethod
from typing import Any

from .base import LauncherError, RankProcess, RankSpec

#: Events of the agent waited for at most this long (a start waits per rank).
AGENT_REPLY_TIMEOUT = 60.0


class AgentRank(RankProcess):
    """A rank an agent started; its exit and stderr arrive as agent events.

    ``pid`` is the rank's pid on its host (only signalled through its agent)."""

    def __init__(self, agent: AgentClient, rank: int, pid: int, host: str) -> None:
        self.rank = rank
        self.host = host
        self._agent = agent
        self._pid = pid
        self._returncode: int | None = None
        self._tail = ""
        #: why the rank counts as dead although nobody saw it end (its agent or node lost)
        self.lost_because = ""
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def exited(self, returncode: int, tail: str) -> None:
        self._returncode, self._tail = returncode, tail
        if not self._exited.done():
            self._exited.set_result(returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, signum: int) -> None:
        if self._returncode is None:
            self._agent.command({"op": "signal", "rank": self.rank, "signum": int(signum)})

    def stderr_tail(self) -> str:
        return self._tail

    def describe_exit(self) -> str:
        if self.lost_because:
            return f"lost ({self.lost_because})"
        return super().describe_exit()

    async def fetch_stderr_tail(self) -> str:
        if self._returncode is None:
            self._tail = await self._agent.tail(self.rank)
        return self._tail


class AgentClient(ABC):
    """Commands to one agent, its events turned into rank processes and answers."""

    #: the host the agent's ranks run on (what ``{host}`` shows)
    host: str

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self.ranks: dict[int, AgentRank] = {}
        self._waiters: dict[tuple[str, int], asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        #: no command can reach the agent any more
        self.ended = False
        self._gone = False
        self.why_ended = "the rank agent ended"

    @abstractmethod
    def command(self, cmd: dict[str, Any]) -> None:
        """Send one command (a no-op once the agent is gone)."""

    def attach(self) -> None:
        """Start listening for the agent's ``ready`` (once an event loop runs)."""
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()

    async def wait_ready(self, timeout: float = AGENT_REPLY_TIMEOUT) -> dict[str, Any]:
        self.attach()
        assert self._ready is not None
        self.info = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        return self.info

    async def request(self, cmd: dict[str, Any], answer: str, rank: int = -1,
                      timeout: float = AGENT_REPLY_TIMEOUT) -> dict[str, Any]:
        """Send ``cmd`` and wait for the event ``answer`` (for ``rank``)."""
        loop = asyncio.get_running_loop()
        fut = self._waiters.setdefault((answer, rank), loop.create_future())
        self.command(cmd)
        return await asyncio.wait_for(asyncio.shield(fut), timeout)

    async def start(self, specs: list[RankSpec]) -> list[RankProcess]:
        await self.wait_ready()
        loop = asyncio.get_running_loop()
        waits = {s.rank: self._waiters.setdefault(("started", s.rank), loop.create_future())
                 for s in specs}
        self.command({"op": "start", "ranks": [
            {"rank": s.rank, "env": s.env, "config": s.config} for s in specs]})
        started: list[RankProcess] = []
        for rank, fut in waits.items():
            event = await asyncio.wait_for(fut, AGENT_REPLY_TIMEOUT)
            if event["event"] == "failed":
                for proc in started:
                    proc.send_signal(signal.SIGKILL)
                raise LauncherError(f"cannot start rank {rank}: {event.get('error')}")
            proc = self.ranks[rank] = AgentRank(self, rank, int(event["pid"]), self.host)
            started.append(proc)
        return started

    async def end_all(self) -> None:
        """End every rank and what they started; return once the agent says so."""
        with contextlib.suppress(asyncio.TimeoutError):
            await self.request({"op": "end_all"}, "ended")

    async def tail(self, rank: int) -> str:
        with contextlib.suppress(asyncio.TimeoutError):
            event = await self.request({"op": "tail", "rank": rank}, "tail", rank, 5.0)
            return str(event.get("tail", ""))
        return ""

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(event)
        elif kind in ("started", "failed", "tail", "ended", "store"):
            waiting_for = {"failed": "started"}.get(kind, kind)
            rank = int(event.get("rank", -1))
            fut = self._waiters.pop((waiting_for, rank), None)
            if fut is None and kind == "failed":  # (a failed store)
                fut = self._waiters.pop(("store", rank), None)
            if fut is not None and not fut.done():
                fut.set_result(event)
        elif kind == "exited":
            proc = self.ranks.get(int(event["rank"]))
            if proc is not None and proc.pid == event.get("pid"):
                proc.exited(int(event["returncode"]), str(event.get("tail", "")))

    def lost(self, why: str) -> None:
        """The agent is gone (killed, its host lost): so are its ranks."""
        if self._gone:
            return
        self._gone, self.ended, self.why_ended = True, True, why
        for proc in self.ranks.values():
            if proc.returncode is None:
                proc.lost_because = why
            proc.exited(-9, proc.stderr_tail() + f"\n({why})")
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result({"event": "failed", "error": why})
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(LauncherError(f"{why} at start"))
