"""RankPool: start N rank kernels, take their handshakes, connect, supervise.

Readiness is a handshake (each rank pushes a message signed with its own key
once its ports are bound and torch.distributed is set up), never a sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from ..launchers import Launcher, RankProcess, RankSpec
from ..launchers.environment import local_rank_environment
from ..rank.config import RANK_CONFIG_ENV, RANK_KEY_ENV, RankConfig
from ..settings import SETTINGS_ENV, KernelSettings
from .rank_link import MessageHandler, RankLink

log = logging.getLogger("nbdist.mux")

#: Seconds a rank gets to exit after shutdown_request before it is killed.
SHUTDOWN_GRACE = 3.0


class RankStartError(RuntimeError):
    """A rank could not start; the message carries its exit status and stderr."""


@dataclass
class RankState:
    rank: int
    process: RankProcess
    key: bytes
    link: RankLink | None = None
    info: dict[str, Any] | None = None
    exited: bool = False


def free_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def describe_death(proc: RankProcess) -> str:
    how = proc.describe_exit()
    verb = "was" if how.startswith("killed") else "exited with"
    text = f"rank {proc.rank} (pid {proc.pid}) {verb} {how}"
    tail = proc.stderr_tail()
    if tail:
        text += "; last stderr lines:\n" + tail
    return text


class RankPool:
    """The ranks of one kernel start."""

    def __init__(self, settings: KernelSettings, launcher: Launcher,
                 ctx: zmq.asyncio.Context, on_message: MessageHandler,
                 on_exit: Callable[[int, str], None]) -> None:
        self.settings = settings
        self.launcher = launcher
        self.ctx = ctx
        self._on_message = on_message
        self._on_exit = on_exit
        self.ranks: dict[int, RankState] = {}
        self.dist_reports: dict[int, dict[str, Any]] = {}
        self.started_at = time.monotonic()
        self._watchers: list[asyncio.Task[None]] = []
        self._ready: set[int] = set()
        self.stopping = False
        # Each rank's connection file lives here, new for every start: ipykernel *loads*
        # an existing connection file (its key and ports), and its default name,
        # kernel-<pid>.json, is left behind by every killed kernel, so a reused pid would
        # make a rank sign with a stale key that nothing here can verify.
        self.rundir = tempfile.mkdtemp(prefix="nbdist-ranks-")

    def rank_env(self, rank: int, master_port: int, handshake: str, key: bytes) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.pop(SETTINGS_ENV, None)
        env.pop("JPY_PARENT_PID", None)
        env.update(s.env)
        # the whole torchrun set; the run id is this start's private directory name
        env.update(local_rank_environment(rank, s.nproc, s.master_addr, master_port,
                                          os.path.basename(self.rundir), env))
        env[RANK_KEY_ENV] = key.decode()
        env[RANK_CONFIG_ENV] = RankConfig(
            handshake_addr=handshake, parent_pid=os.getpid(), bind_ip=self.launcher.bind_ip,
            init_process_group=s.init_process_group, backend=s.backend,
            collective_timeout=s.collective_timeout, keep_history=rank == s.primary_rank,
            connection_file=os.path.join(self.rundir, f"rank-{rank}.json"),
        ).to_json()
        return env

    async def start(self) -> None:
        """Start every rank and return once all are connected; raise RankStartError if not."""
        s = self.settings
        pull = self.ctx.socket(zmq.PULL)
        pull.linger = 0
        port = pull.bind_to_random_port(f"tcp://{self.launcher.bind_ip}")
        handshake = f"tcp://{self.launcher.bind_ip}:{port}"
        master_port = free_port(s.master_addr)
        keys = {r: secrets.token_hex(32).encode() for r in range(s.nproc)}
        argv = (sys.executable, "-m", "nbdist_provisioner.rank")
        specs = [RankSpec(r, r, s.nproc, argv, self.rank_env(r, master_port, handshake, keys[r]))
                 for r in range(s.nproc)]
        try:
            procs = await self.launcher.launch(specs)
            for proc in procs:
                self.ranks[proc.rank] = RankState(proc.rank, proc, keys[proc.rank])
            self._watchers = [asyncio.ensure_future(self._watch(st)) for st in self.ranks.values()]
            deadline = time.monotonic() + s.start_timeout
            await asyncio.wait_for(self._handshakes(pull), timeout=s.start_timeout)
            await asyncio.wait_for(self._links_ready(),
                                   timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            # the ranks that never reported; once all did, the ones that never answered
            waiting = (sorted(r for r, st in self.ranks.items() if st.info is None)
                       or sorted(r for r in self.ranks if r not in self._ready))
            detail = "; ".join(
                f"rank {r}: " + (self.ranks[r].process.stderr_tail() or "no stderr output")
                for r in waiting[:4])
            raise RankStartError(
                f"ranks {waiting} did not become ready within start_timeout="
                f"{s.start_timeout:g}s. {detail}") from None
        finally:
            pull.close(linger=0)

    async def _handshakes(self, pull: zmq.asyncio.Socket) -> None:
        pending = set(self.ranks)
        recv: asyncio.Future[list[bytes]] | None = None
        while pending:
            dead = [st for st in self.ranks.values() if st.process.returncode is not None]
            if dead:
                st = dead[0]
                await st.process.wait()
                raise RankStartError("a rank failed to start: " + describe_death(st.process))
            if recv is None:
                recv = asyncio.ensure_future(pull.recv_multipart())
            exits = [w for w in self._watchers if not w.done()]
            await asyncio.wait([recv, *exits], return_when=asyncio.FIRST_COMPLETED)
            if not recv.done():
                continue
            frames, recv = recv.result(), None
            rank = self._accept_handshake(frames)
            if rank is not None:
                pending.discard(rank)

    async def _links_ready(self) -> None:
        """Every linked rank answers kernel_info; one that dies meanwhile fails the start."""

        async def ready(st: RankState) -> None:
            assert st.link is not None
            await st.link.wait_ready()
            self._ready.add(st.rank)

        waiting = asyncio.ensure_future(asyncio.gather(
            *(ready(st) for st in self.ranks.values() if st.link is not None)))
        try:
            while not waiting.done():
                exits = [w for w in self._watchers if not w.done()]
                await asyncio.wait([waiting, *exits], return_when=asyncio.FIRST_COMPLETED)
                dead = [st for st in self.ranks.values() if st.process.returncode is not None]
                if dead:
                    await dead[0].process.wait()
                    raise RankStartError(
                        "a rank failed to start: " + describe_death(dead[0].process))
            waiting.result()
        finally:
            waiting.cancel()

    def _accept_handshake(self, frames: list[bytes]) -> int | None:
        try:
            idents, msg_list = Session().feed_identities(frames, copy=True)
            rank = int(idents[0].decode().removeprefix("rank-"))
            st = self.ranks[rank]
            msg = Session(key=st.key, signature_scheme="hmac-sha256").deserialize(msg_list)
            info = msg["content"]
            if int(info["rank"]) != rank:
                raise ValueError("rank mismatch")
        except Exception as err:  # forged or garbled: ignore, the real one will come
            log.warning("ignored a bad rank handshake: %s", err)
            return None
        st.info = info
        self.dist_reports[rank] = info.get("dist") or {}
        st.link = RankLink(self.ctx, rank, info, st.key, self._on_message)
        return rank

    async def _watch(self, st: RankState) -> None:
        await st.process.wait()
        st.exited = True
        if not self.stopping:
            self._on_exit(st.rank, describe_death(st.process))

    def link(self, rank: int) -> RankLink:
        link = self.ranks[rank].link
        assert link is not None
        return link

    def alive(self, rank: int) -> bool:
        st = self.ranks.get(rank)
        return st is not None and not st.exited and st.process.returncode is None

    def signal_all(self, signum: int) -> None:
        for st in self.ranks.values():
            st.process.send_signal(signum)

    async def stop(self, graceful: bool = True) -> None:
        """Ask every rank to shut down (or, not graceful, kill at once: a restart after a
        death or a wedged cell), then kill whatever is left. Never leaves a process."""
        self.stopping = True
        for st in self.ranks.values():
            if graceful and st.link is not None and self.alive(st.rank):
                st.link.send("control", "shutdown_request", {"restart": False})
        if not graceful:
            self.signal_all(9)
        waits = [st.process.wait() for st in self.ranks.values()]
        if waits:
            _done, pending = await asyncio.wait(
                [asyncio.ensure_future(w) for w in waits], timeout=SHUTDOWN_GRACE)
            if pending:
                self.signal_all(9)
                await asyncio.wait(pending, timeout=SHUTDOWN_GRACE)
        self.signal_all(9)  # the ranks' own children, if any outlived them
        for st in self.ranks.values():
            if st.link is not None:
                st.link.close()
        for w in self._watchers:
            w.cancel()
        shutil.rmtree(self.rundir, ignore_errors=True)
