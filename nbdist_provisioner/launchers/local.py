"""``local``: every rank a subprocess on this host, each in a session of its own.

Own sessions mean a rank's interrupt (``killpg``) reaches the rank and the
processes it started, and never the multiplexer or another rank.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess

from .base import Launcher, LauncherError, RankProcess, RankSpec, StderrTail


class LocalRankProcess(RankProcess):
    """A rank running as a local subprocess; its stderr is drained into a bounded tail."""

    def __init__(self, rank: int, proc: asyncio.subprocess.Process) -> None:
        self.rank = rank
        self.host = socket.gethostname()
        self._proc = proc
        self._tail = StderrTail()
        self._drain = asyncio.ensure_future(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        stream = self._proc.stderr
        assert stream is not None
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the stream limit: keep its start
                line = await stream.read(4096)
            if not line:
                return
            self._tail.add(line)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        code = await self._proc.wait()
        # What the rank started dies with it (no orphans), which also closes their copies
        # of the stderr pipe, so the drain below ends at once.
        self.send_signal(signal.SIGKILL)
        # Let the drain finish so the tail holds the rank's last words.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), timeout=2.0)
        return code

    def send_signal(self, signum: int) -> None:
        # The group outlives its leader while any member is left, and Linux never
        # hands a live group's id to a new process, so killpg stays safe after exit.
        try:
            os.killpg(self._proc.pid, signum)  # the rank is its session's leader
        except ProcessLookupError:
            pass
        except PermissionError:
            if self._proc.returncode is None:
                self._proc.send_signal(signum)

    def stderr_tail(self) -> str:
        return self._tail.text()


class LocalLauncher(Launcher):
    """Subprocesses on this machine; ports on loopback."""

    name = "local"
    bind_ip = "127.0.0.1"

    async def launch(self, specs: list[RankSpec]) -> list[RankProcess]:
        started: list[RankProcess] = []
        try:
            for spec in specs:
                proc = await asyncio.create_subprocess_exec(
                    *spec.argv,
                    env=spec.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                started.append(LocalRankProcess(spec.rank, proc))
        except OSError as err:
            for proc in started:
                proc.send_signal(9)
            raise LauncherError(f"cannot start rank {len(started)}: {err}") from err
        return started
