"""``local``: every rank a subprocess on this host, each in a session of its own.

Own sessions mean a rank's signals reach the rank and the processes it started,
and never the multiplexer or another rank.

A process group id stays reserved while its leader is a zombie, and can go to
an unrelated process once the leader is reaped. So a rank's exit is noticed
*without* reaping it (a pidfd, or ``waitid(WNOWAIT)`` where there is none),
what it started is killed while its group id is still its own, and only then is
it reaped. After that no signal goes to its group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import threading

from .base import Launcher, LauncherError, RankProcess, RankSpec, StderrTail


class LocalRankProcess(RankProcess):
    """A rank running as a local subprocess; its stderr is drained into a bounded tail."""

    def __init__(self, rank: int, popen: subprocess.Popen[bytes]) -> None:
        self.rank = rank
        self.host = socket.gethostname()
        self._popen = popen
        self._returncode: int | None = None
        self._tail = StderrTail()
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._drain = asyncio.ensure_future(self._drain_stderr())
        self._watch_exit()

    # -- exit, without reaping first -------------------------------------------------------
    def _watch_exit(self) -> None:
        try:
            pidfd = os.pidfd_open(self._popen.pid)
        except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3): a thread waits
            threading.Thread(target=self._wait_in_thread, daemon=True,
                             name=f"nbdist-rank-{self.rank}-exit").start()
            return

        def readable() -> None:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
            self._on_exit()

        self._loop.add_reader(pidfd, readable)

    def _wait_in_thread(self) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOWAIT)
        self._loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        # The rank is a zombie: its group id is still reserved. What it started dies
        # with it (no orphans), which also closes their copies of the stderr pipe.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)
        self._returncode = self._popen.wait()  # reaps
        if not self._exited.done():
            self._exited.set_result(self._returncode)

    async def _drain_stderr(self) -> None:
        reader = asyncio.StreamReader(limit=1 << 16)
        stderr = self._popen.stderr
        assert stderr is not None
        transport, _ = await self._loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), stderr)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line longer than the limit: keep its start
                    line = await reader.read(4096)
                if not line:
                    return
                self._tail.add(line)
        finally:
            transport.close()

    # -- RankProcess ------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        code = await asyncio.shield(self._exited)
        # Let the drain finish so the tail holds the rank's last words.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), timeout=2.0)
        return code

    def send_signal(self, signum: int) -> None:
        if self._returncode is not None:
            return  # reaped: its group id may belong to someone else now
        with contextlib.suppress(ProcessLookupError):
            try:
                os.killpg(self._popen.pid, signum)  # the rank is its session's leader
            except PermissionError:
                self._popen.send_signal(signum)

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
                popen = subprocess.Popen(
                    list(spec.argv), env=spec.env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
                started.append(LocalRankProcess(spec.rank, popen))
        except OSError as err:
            for proc in started:
                proc.send_signal(signal.SIGKILL)
            raise LauncherError(f"cannot start rank {len(started)}: {err}") from err
        return started
