"""RankPool: start N rank kernels, take their handshakes, connect, supervise.

Readiness is a handshake (each rank pushes a message signed with its own key
once its ports are bound and torch.distributed is set up), never a sleep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from jupyter_client.session import Session

from ...launchers import Launcher, RankProcess, RankSpec
from ...rank.config import RankConfig
from ...settings import KernelSettings
from ..core.events import RankExited, RankInfo
from .rank_env import new_run_id, rank_env
from .rank_link import MessageHandler, RankLink
from .socket_io import SocketIO

log = logging.getLogger("nbdist.mux")

#: Seconds a rank gets to exit after shutdown_request before it is killed.
SHUTDOWN_GRACE = 3.0


class RankStartError(RuntimeError):
    """A rank could not start; the message carries its exit status and stderr."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        #: the ranks did not come up within start_timeout (rather than: one died)
        self.timed_out = timed_out


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


def how_it_ended(proc: RankProcess) -> str:
    """``rank 2 (pid 41) was killed by signal SIGKILL``: one line for users."""
    how = proc.describe_exit()
    verb = "was" if how.startswith(("killed", "lost")) else "exited with"
    return f"rank {proc.rank} (pid {proc.pid}) {verb} {how}"


def describe_death(proc: RankProcess) -> str:
    text = how_it_ended(proc)
    tail = proc.stderr_tail()
    if tail:
        text += "; last stderr lines:\n" + tail
    return text


class RankPool:
    """The ranks of one generation: start, handshake, supervise, stop."""

    def __init__(self, settings: KernelSettings, launcher: Launcher,
                 ctx: zmq.Context[Any], generation: int, rundir: str,
                 shared_env: dict[str, str], on_message: MessageHandler,
                 on_exit: Callable[[RankExited], None]) -> None:
        self.settings = settings
        self.launcher = launcher
        self.ctx = ctx
        self.generation = generation
        #: the kernel's private (0700) directory: connection files, the rendezvous store
        self.rundir = rundir
        self.shared_env = shared_env
        self._on_message = on_message
        self._on_exit = on_exit
        self.ranks: dict[int, RankState] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._ready: set[int] = set()
        self.stopping = False

    def rank_config(self, rank: int, handshake: str, key: bytes) -> str:
        """The rank's private record (its key: never in argv or the environment)."""
        s = self.settings
        gen = self.generation
        # A fresh connection file per rank and generation: ipykernel *loads* an existing
        # one (its key and ports). A file store for the rendezvous: no port to race for.
        init_method = (f"file://{os.path.join(self.rundir, f'store-{gen}')}"
                       if self.launcher.name == "local" else "env://")
        return RankConfig(
            handshake_addr=handshake, key=key.decode(), bind_ip=self.launcher.bind_ip,
            init_process_group=s.init_process_group, backend=s.backend,
            collective_timeout=s.collective_timeout, init_method=init_method,
            keep_history=rank == s.primary_rank,
            connection_file=os.path.join(self.rundir, f"rank-{gen}-{rank}.json"),
        ).to_json()

    async def start(self) -> None:
        """Start every rank and return once all are connected; raise RankStartError if not."""
        s = self.settings
        sock = self.ctx.socket(zmq.PULL)
        sock.linger = 0
        port = sock.bind_to_random_port(f"tcp://{self.launcher.bind_ip}")
        arrived: asyncio.Queue[list[bytes]] = asyncio.Queue()
        pull = SocketIO(sock, arrived.put_nowait, "rank handshakes")
        handshake = f"tcp://{self.launcher.bind_ip}:{port}"
        master_port = free_port(self.launcher.bind_ip)
        run_id = new_run_id()
        keys = {r: secrets.token_hex(32).encode() for r in range(s.nproc)}
        specs = [RankSpec(r, r, s.nproc,
                          rank_env(self.shared_env, r, s.nproc, self.launcher.bind_ip,
                                   master_port, run_id),
                          self.rank_config(r, handshake, keys[r]))
                 for r in range(s.nproc)]
        try:
            procs = await self.launcher.launch(specs)
            for proc in procs:
                self.ranks[proc.rank] = RankState(proc.rank, proc, keys[proc.rank])
            self._watchers = [asyncio.ensure_future(self._watch(st)) for st in self.ranks.values()]
            deadline = time.monotonic() + s.start_timeout
            await asyncio.wait_for(self._handshakes(arrived), timeout=s.start_timeout)
            await asyncio.wait_for(self._links_ready(),
                                   timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            # the ranks that never reported; once all did, the ones that never answered
            waiting = (sorted(r for r, st in self.ranks.items() if st.info is None)
                       or sorted(r for r in self.ranks if r not in self._ready))
            tails = [await self.ranks[r].process.fetch_stderr_tail() for r in waiting[:4]]
            detail = "; ".join(f"rank {r}: " + (tail or "no stderr output")
                               for r, tail in zip(waiting, tails, strict=False))
            raise RankStartError(
                f"ranks {waiting} did not become ready within start_timeout="
                f"{s.start_timeout:g}s. {detail}", timed_out=True) from None
        finally:
            pull.close(linger=0)

    async def _handshakes(self, arrived: asyncio.Queue[list[bytes]]) -> None:
        pending = set(self.ranks)
        recv: asyncio.Future[list[bytes]] | None = None
        try:
            while pending:
                dead = [st for st in self.ranks.values() if st.process.returncode is not None]
                if dead:
                    st = dead[0]
                    await st.process.wait()
                    raise RankStartError("a rank failed to start: "
                                         + describe_death(st.process))
                if recv is None:
                    recv = asyncio.ensure_future(arrived.get())
                exits = [w for w in self._watchers if not w.done()]
                await asyncio.wait([recv, *exits], return_when=asyncio.FIRST_COMPLETED)
                if not recv.done():
                    continue
                frames, recv = recv.result(), None
                rank = self._accept_handshake(frames)
                if rank is not None:
                    pending.discard(rank)
        finally:
            if recv is not None:
                recv.cancel()

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
            if st.link is not None:
                raise ValueError(f"rank {rank} already reported (a replayed handshake?)")
            msg = Session(key=st.key, signature_scheme="hmac-sha256").deserialize(msg_list)
            info = msg["content"]
            if int(info["rank"]) != rank:
                raise ValueError("rank mismatch")
        except Exception as err:  # forged, garbled or replayed: ignore it
            log.warning("ignored a bad rank handshake: %s", err)
            return None
        st.info = info
        st.link = RankLink(self.ctx, self.generation, rank, info, st.key, self._on_message,
                           curve=self.launcher.link_curve(rank))
        return rank

    def infos(self) -> dict[int, RankInfo]:
        """What every rank reported, for the core's RanksReady."""
        out = {}
        for rank, st in self.ranks.items():
            info = st.info or {}
            out[rank] = RankInfo(host=str(info.get("host", "")),
                                 local_rank=int(info.get("local_rank", rank)),
                                 pid=int(info.get("pid", 0)), dist=dict(info.get("dist") or {}),
                                 kernel_info=st.link.kernel_info if st.link else {})
        return out

    async def _watch(self, st: RankState) -> None:
        await st.process.wait()
        st.exited = True
        if not self.stopping:
            self._on_exit(RankExited(self.generation, st.rank, how_it_ended(st.process),
                                     st.process.stderr_tail()))

    def link(self, rank: int) -> RankLink | None:
        st = self.ranks.get(rank)
        return st.link if st is not None else None

    def alive(self, rank: int) -> bool:
        st = self.ranks.get(rank)
        return st is not None and not st.exited and st.process.returncode is None

    def signal_all(self, signum: int) -> None:
        for st in self.ranks.values():
            st.process.send_signal(signum)

    async def stop(self, graceful: bool = True) -> None:
        """Ask every rank to shut down (or, not graceful, kill at once: a restart after a
        death or a wedged cell), then have the launcher end whatever is left: ranks,
        ranks still starting, and what they started. Never leaves a process."""
        self.stopping = True
        for st in self.ranks.values():
            if graceful and st.link is not None and self.alive(st.rank):
                st.link.send("control", "shutdown_request", {"restart": False})
            elif self.alive(st.rank):
                # never linked (still starting) or no grace: nothing to wait for
                st.process.send_signal(9)
        waits = [asyncio.ensure_future(st.process.wait()) for st in self.ranks.values()]
        if waits and graceful:
            await asyncio.wait(waits, timeout=SHUTDOWN_GRACE)
        await self.launcher.end_ranks()
        if waits:
            await asyncio.wait(waits, timeout=SHUTDOWN_GRACE)
        for st in self.ranks.values():
            if st.link is not None:
                st.link.close()
        for w in self._watchers:
            w.cancel()
