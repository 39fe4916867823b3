"""Ranks over several nodes: one node agent per node, in one scheduler job step.

``NodeLauncher`` is the part ``slurm`` and ``mpi`` share; they only say how to start a
step of one node link per node (``start_step``). The design follows torch elastic:

- **One agent per node**, not one task per rank: the node's agent forks that node's
  ranks from its preloaded imports (a shared cluster filesystem pays for the imports once
  per node, not once per rank), supervises them, and outlives generations of ranks: a
  rank's death is healed by forking new ranks on the same step, in a second or two.
- **Placement** node by node (``GROUP_RANK`` = node index): node i runs ranks
  ``base_i .. base_i + n_i - 1`` with ``LOCAL_RANK`` 0.., the full torchrun environment;
  ``MASTER_ADDR`` is node 0's address as it reaches the multiplexer, ``MASTER_PORT`` the
  port of the store node 0's agent serves (bound there, by it: ``agent.store``), and
  ``TORCHELASTIC_USE_AGENT_STORE=True`` as under torchrun.
- **Links**: node links dial the registration endpoint (``registry``). The multiplexer
  connects to each rank kernel's ports (the ranks opened them; nothing else listens on a
  node), the rank kernels are CURVE servers with a key pair made for this generation and
  a ZAP allow-list of the multiplexer's one client key, HMAC signing kept. Ranks' signed
  handshakes travel up the node links to the rank pool's loopback socket.
- **Liveness**: a node is lost when its heartbeat stops, its link or agent ends, or the
  step ends; its ranks then count as dead (the core starts a new generation, and a new
  step replaces a broken one). No ``getppid()`` across hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import zmq

from ..agent import link
from ..agent.children import STORE
from ..settings import KernelSettings
from .base import Launcher, LauncherError, RankProcess, RankSpec
from .environment import RankPlace, torchrun_environment
from .job import LaunchedJob, RankExit
from .netaddr import AddressError, resolve_listen_address
from .registry import NodeAgent, Registry

log = logging.getLogger("nbdist.mux")
#: Seconds the step gets to end by itself after its node links were asked to exit.
EXIT_GRACE = 5.0


def split_ranks(nproc: int, nodes: int) -> list[int]:
    """Ranks per node, as even as can be (the first nodes get one more), none empty."""
    if not 1 <= nodes <= nproc:
        raise LauncherError(f"{nproc} ranks cannot fill {nodes} nodes: use 1 to {nproc} nodes")
    per, more = divmod(nproc, nodes)
    return [per + 1] * more + [per] * (nodes - more)


class CurveKeys:
    """The client key pair of the multiplexer's rank links and each rank's server key."""

    def __init__(self) -> None:
        self.public, self.secret = zmq.curve_keypair()
        self.servers: dict[int, bytes] = {}

    def for_rank(self, rank: int) -> dict[str, Any]:
        """A fresh server key pair for ``rank`` (what its config carries)."""
        public, secret = zmq.curve_keypair()
        self.servers[rank] = public
        return {"curve_publickey": public.decode(), "curve_secretkey": secret.decode(),
                "curve_clients": [self.public.decode()]}


class NodeLauncher(Launcher):
    """Node agents in one job step; ranks placed node by node."""

    #: the rank pool's handshake socket: fed from the node links, so loopback only
    bind_ip = "127.0.0.1"

    def __init__(self) -> None:
        self.settings = KernelSettings()
        self.env: dict[str, str] = dict(os.environ)
        self.registry: Registry | None = None
        self.job: LaunchedJob | None = None
        self.nodes: list[NodeAgent] = []
        self.keys = CurveKeys()
        #: (a plain context: the pushes never wait, and nothing receives on it)
        self._push_ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._handshake_push: zmq.Socket[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._step_ended = ""

    # -- what a scheduler launcher says ----------------------------------------------------
    @abstractmethod
    def node_count(self) -> int:
        """How many nodes the ranks run on."""

    @abstractmethod
    async def start_step(self, token: link.Token, argv: Sequence[str]) -> LaunchedJob:
        """Run ``argv`` once per node, ``token.line()`` on every task's stdin (kept open:
        its end tells the nodes the kernel is gone)."""

    async def allocate(self) -> None:
        """Before a step: get what it runs in (``slurm``: an allocation of its own)."""

    def own_allocation(self) -> str:
        """The job the launcher made itself (cancelled by the nodes if the kernel dies)."""
        return ""

    async def release(self) -> None:
        """At the end: give back what ``allocate`` got."""

    # -- Launcher --------------------------------------------------------------------------
    def check_settings(self, settings: KernelSettings) -> None:
        self.settings = settings
        split_ranks(settings.nproc, self.node_count())

    def prepare(self, settings: KernelSettings, env: dict[str, str]) -> None:
        self.settings, self.env = settings, env
        self.counts = split_ranks(settings.nproc, self.node_count())

    def node_argv(self) -> list[str]:
        return [self.settings.node_python or sys.executable, "-m", "nbdist_provisioner.agent.node"]

    def link_curve(self, rank: int) -> tuple[bytes, bytes, bytes] | None:
        """(the rank's server key, our public key, our secret key) for its links."""
        server = self.keys.servers.get(rank)
        return None if server is None else (server, self.keys.public, self.keys.secret)

    async def launch(self, specs: list[RankSpec]) -> list[RankProcess]:
        await self._ensure_step()
        master_addr, master_port = await self._store()
        procs: list[RankProcess] = []
        base = 0
        starts = []
        for node, count in zip(self.nodes, self.counts, strict=True):
            mine = [self._remote_spec(s, node.index, s.rank - base, master_addr, master_port)
                    for s in specs[base:base + count]]
            starts.append(node.start(mine))
            base += count
        self._handshake_to(specs[0].config)
        for started in await asyncio.gather(*starts, return_exceptions=True):
            if isinstance(started, BaseException):
                raise LauncherError(f"cannot start ranks: {started}") from started
            procs.extend(started)
        return procs

    async def end_ranks(self) -> None:
        await asyncio.gather(*(n.end_all() for n in self.nodes if not n.ended))

    async def close(self) -> None:
        for node in self.nodes:
            node.command({"op": "exit"})
        if self.job is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.job.wait()), EXIT_GRACE)
        await self._end_step("the kernel is ending")
        await self.release()
        if self._push_ctx is not None:
            self._push_ctx.destroy(linger=0)
        if self.registry is not None:
            await self.registry.close()

    # -- the step ----------------------------------------------------------------------------
    async def _ensure_step(self) -> None:
        """A step whose nodes are all registered and ready; a new one if any node is lost."""
        if self.job is not None and self.job.returncode is None and self.nodes and not any(
                n.ended for n in self.nodes):
            return
        await self._end_step("its step is replaced")
        if self.registry is None:
            try:
                address = resolve_listen_address(self.settings.cluster_address)
            except AddressError as err:
                raise LauncherError(str(err)) from None
            self.registry = Registry(address, self.settings.cluster_ports,
                                     self.settings.heartbeat_timeout, self._relay_handshake)
        s = self.settings
        await self.allocate()
        args = [*(() if s.fork_server else ("--no-fork",)),
                *(("--preload-torch",) if s.init_process_group else ())]
        token = link.new_token(self.registry.endpoint, self.registry.server_public,
                               len(self.counts), heartbeat_timeout=s.heartbeat_timeout,
                               register_timeout=max(1.0, 0.8 * s.start_timeout),
                               agent_args=tuple(args), release_job=self.own_allocation())
        step = self.registry.open_step(token)
        self._step_ended = ""
        self.job = await self.start_step(token, self.node_argv())
        self.job.add_exit_listener(self._node_task_exited)
        self._watch = asyncio.ensure_future(self._watch_step(self.job))
        await self._registered(step, token)

    async def _registered(self, step: Any, token: link.Token) -> None:
        """Every node registered and its agent ready; else a LauncherError saying why."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.start_timeout
        while len(step.nodes) < token.nodes:
            if self._step_ended:
                raise LauncherError(f"the step of node agents ended before every node "
                                    f"registered: {self._step_ended}")
            left = deadline - loop.time()
            if left <= 0:
                missing = sorted(set(range(token.nodes)) - set(step.nodes))
                assert self.registry is not None
                if self.job is not None:
                    # a node gives up on its own clock, which started later than ours
                    # (its imports): let it say why before the step's output is read
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(self.job.wait()), EXIT_GRACE)
                raise LauncherError(
                    f"node(s) {missing} did not register within start_timeout="
                    f"{self.settings.start_timeout:g}s: they cannot reach the multiplexer "
                    f"at {self.registry.endpoint} (set cluster_address to an address the "
                    f"nodes reach). Step output:\n{self.job.output_tail() if self.job else ''}")
            step.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(step.changed.wait(), min(left, 0.5))
        self.nodes = [step.nodes[i] for i in range(token.nodes)]
        try:
            await asyncio.gather(*(n.wait_ready(self.settings.start_timeout)
                                   for n in self.nodes))
        except (asyncio.TimeoutError, LauncherError) as err:
            raise LauncherError(f"a node agent did not start: {err or 'no answer'}. Step "
                                f"output:\n{self.job.output_tail() if self.job else ''}") from None

    def _node_task_exited(self, ex: RankExit) -> None:
        """The scheduler says a node's task ended (its node link)."""
        for node in self.nodes:
            if node.index == ex.rank:
                node.lost(f"the node agent on node {ex.rank} ({node.host}) ended: "
                          f"{ex.describe()}")

    async def _watch_step(self, job: LaunchedJob) -> None:
        code = await job.wait()
        self._step_ended = f"exit status {code}; its output:\n{job.output_tail()}"
        for node in self.nodes:
            node.lost(f"the job step of node agents ended ({code})")
        if self.registry is not None and self.registry.step is not None:
            self.registry.step.changed.set()

    async def _end_step(self, why: str) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.registry is not None:
            self.registry.close_step(why)
        self.nodes = []
        if self.job is not None:
            job, self.job = self.job, None
            await job.terminate()

    # -- one generation ----------------------------------------------------------------------
    async def _store(self) -> tuple[str, int]:
        """Node 0's agent serves this generation's rendezvous store; (its address, port)."""
        node0 = self.nodes[0]
        event = await node0.request({"op": "store", "world_size": self.settings.nproc,
                                     "timeout": self.settings.collective_timeout},
                                    "store", STORE)
        if event.get("event") != "store":
            raise LauncherError(f"node 0 ({node0.host}) cannot serve the rendezvous store: "
                                f"{event.get('error')}")
        return str(event["host"]), int(event["port"])

    def _remote_spec(self, spec: RankSpec, node: int, local_rank: int, master_addr: str,
                     master_port: int) -> RankSpec:
        """The rank's environment and record for its place: only what the kernel's
        settings say plus torchrun's variables go to the node (which adds its own)."""
        s = self.settings
        place = RankPlace(spec.rank, s.nproc, local_rank, self.counts[node], node,
                          len(self.counts))
        env = {"OMP_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1", **s.env}
        env.update(torchrun_environment(place, master_addr, master_port,
                                        spec.env["TORCHELASTIC_RUN_ID"], env))
        env["TORCHELASTIC_USE_AGENT_STORE"] = "True"
        config = {**json.loads(spec.config), **self.keys.for_rank(spec.rank)}
        return RankSpec(spec.rank, local_rank, s.nproc, env, json.dumps(config))

    def _handshake_to(self, config: str) -> None:
        """Ranks' handshakes (from the node links) go to the rank pool's socket."""
        addr = json.loads(config)["handshake_addr"]
        if self._handshake_push is not None:
            self._handshake_push.close(linger=0)
        if self._push_ctx is None:
            self._push_ctx = zmq.Context()
        push = self._push_ctx.socket(zmq.PUSH)
        push.linger = 0
        push.connect(addr)
        self._handshake_push = push

    def _relay_handshake(self, frames: list[bytes]) -> None:
        if self._handshake_push is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._handshake_push.send_multipart(frames, flags=zmq.NOBLOCK)
