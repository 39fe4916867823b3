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
import subprocess
import sys
from typing import Any

from ..agent.protocol import decode, encode
from ..settings import KernelSettings
from .agent_client import AGENT_REPLY_TIMEOUT, AgentClient
from .base import Launcher, LauncherError, RankProcess, RankSpec


class LocalAgent(AgentClient):
    """The multiplexer's side of one agent process: commands on its stdin, events on its
    stdout (see ``AgentClient``)."""

    def __init__(self, env: dict[str, str], fork: bool, preload_torch: bool) -> None:
        super().__init__()
        self.host = os.uname().nodename
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
        self._reader: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Start reading events (once an event loop runs)."""
        super().attach()
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read_events())

    def command(self, cmd: dict[str, Any]) -> None:
        if self.ended or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(encode(cmd))
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            self.ended = True

    async def end_all(self) -> None:
        self.attach()
        await super().end_all()

    async def _read_events(self) -> None:
        assert self.proc.stdout is not None
        reader = asyncio.StreamReader(limit=64 << 20)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self.proc.stdout)
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError):
                    self.on_event(decode(line))
        finally:
            transport.close()
            self.lost("the rank agent ended")  # killed? its ranks are gone with it

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
