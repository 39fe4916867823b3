"""``local``: the ranks of a kernel on this host, started and supervised by its agent.

``prepare`` starts the agent (``python -m nbdist_provisioner.agent``) at once,
while the multiplexer is still importing: the agent imports what ranks need
(torch too, when the process group is initialised) and then forks each rank
from itself, so N ranks pay for the imports once and share those pages (see
``agent.preload``); with ``fork_server`` off it starts them by exec. Each rank
runs in a session of its own. Ranks' records (their keys) go to the agent
through its stdin, never argv or the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

from ..agent.protocol import decode, encode
from ..settings import KernelSettings
from .base import Launcher, LauncherError, RankProcess, RankSpec

#: Events of the agent waited for at most this long (a start waits per rank).
AGENT_REPLY_TIMEOUT = 60.0


class AgentRank(RankProcess):
    """A rank the agent started; its exit and stderr arrive as agent events."""

    def __init__(self, agent: LocalAgent, rank: int, pid: int) -> None:
        self.rank = rank
        self.host = os.uname().nodename
        self._agent = agent
        self._pid = pid
        self._returncode: int | None = None
        self._tail = ""
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

    async def fetch_stderr_tail(self) -> str:
        if self._returncode is None:
            self._tail = await self._agent.tail(self.rank)
        return self._tail


class LocalAgent:
    """The multiplexer's side of one agent process: commands in, events out."""

    def __init__(self, env: dict[str, str], fork: bool, preload_torch: bool) -> None:
        argv = [sys.executable, "-Xfrozen_modules=off", "-m", "nbdist_provisioner.agent"]
        if not fork:
            argv.append("--no-fork")
        if preload_torch:
            argv.append("--preload-torch")
        try:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, start_new_session=True)
        except OSError as err:
            raise LauncherError(f"cannot start the rank agent ({argv[0]}): {err}") from err
        self.info: dict[str, Any] = {}
        self.ranks: dict[int, AgentRank] = {}
        self._waiters: dict[tuple[str, int], asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.ended = False

    def attach(self) -> None:
        """Start reading events (once an event loop runs)."""
        if self._reader is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._reader = asyncio.ensure_future(self._read_events())

    def command(self, cmd: dict[str, Any]) -> None:
        if self.ended or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(encode(cmd))
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            self.ended = True

    async def start(self, specs: list[RankSpec]) -> list[RankProcess]:
        self.attach()
        assert self._ready is not None
        self.info = await asyncio.wait_for(asyncio.shield(self._ready), AGENT_REPLY_TIMEOUT)
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
            proc = self.ranks[rank] = AgentRank(self, rank, int(event["pid"]))
            started.append(proc)
        return started

    async def end_all(self) -> None:
        """End every rank and what they started; return once the agent says so."""
        fut = self._waiters.setdefault(("ended", -1), asyncio.get_running_loop().create_future())
        self.command({"op": "end_all"})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(fut), AGENT_REPLY_TIMEOUT)

    async def tail(self, rank: int) -> str:
        fut = self._waiters.setdefault(("tail", rank), asyncio.get_running_loop().create_future())
        self.command({"op": "tail", "rank": rank})
        with contextlib.suppress(asyncio.TimeoutError):
            event = await asyncio.wait_for(asyncio.shield(fut), 5.0)
            return str(event.get("tail", ""))
        return ""

    async def _read_events(self) -> None:
        assert self.proc.stdout is not None
        reader = asyncio.StreamReader(limit=64 << 20)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self.proc.stdout)
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError):
                    self._on_event(decode(line))
        finally:
            transport.close()
            self.ended = True
            # the agent is gone (killed?): so are its ranks
            for proc in self.ranks.values():
                proc.exited(-9, proc.stderr_tail() + "\n(the rank agent ended)")
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_result({"event": "failed", "error": "the rank agent ended"})
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(LauncherError("the rank agent ended at start"))

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(event)
        elif kind in ("started", "failed", "tail", "ended"):
            waiting_for = {"failed": "started"}.get(kind, kind)
            fut = self._waiters.pop((waiting_for, int(event.get("rank", -1))), None)
            if fut is not None and not fut.done():
                fut.set_result(event)
        elif kind == "exited":
            proc = self.ranks.get(int(event["rank"]))
            if proc is not None and proc.pid == event.get("pid"):
                proc.exited(int(event["returncode"]), str(event.get("tail", "")))

    async def close(self) -> None:
        """End the agent: it ends every rank and what they started, then exits."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, self.proc.wait), 5.0)
        except asyncio.TimeoutError:
            self.proc.kill()
            await loop.run_in_executor(None, self.proc.wait)
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 2.0)


class LocalLauncher(Launcher):
    """Ranks on this machine, forked by the kernel's agent; ports on loopback."""

    name = "local"
    bind_ip = "127.0.0.1"

    def __init__(self) -> None:
        self.fork = True
        self.agent: LocalAgent | None = None
        self._env: dict[str, str] = dict(os.environ)
        self._preload_torch = False

    def prepare(self, settings: KernelSettings, env: dict[str, str]) -> None:
        self.fork = settings.fork_server
        self._env, self._preload_torch = env, settings.init_process_group
        if self.agent is None:
            self.agent = LocalAgent(env, self.fork, self._preload_torch)

    async def launch(self, specs: list[RankSpec]) -> list[RankProcess]:
        if self.agent is None or self.agent.ended:
            if self.agent is not None:
                await self.agent.close()
            self.agent = LocalAgent(self._env, self.fork, self._preload_torch)
        try:
            return await self.agent.start(specs)
        except asyncio.TimeoutError:
            raise LauncherError("the rank agent did not answer within "
                                f"{AGENT_REPLY_TIMEOUT:g}s") from None

    async def end_ranks(self) -> None:
        if self.agent is not None and not self.agent.ended:
            await self.agent.end_all()

    async def close(self) -> None:
        if self.agent is not None:
            await self.agent.close()
