"""``python -m nbdist_provisioner.agent.node``: one node's part of a multi-node kernel.

The ``slurm`` and ``mpi`` launchers run this once per node (``srun --ntasks-per-node=1``,
``mpiexec --map-by ppr:1:node``), as torch elastic runs one agent per node. It is to the
node's agent (``python -m nbdist_provisioner.agent``, started here with pipes, exactly as
the multiplexer starts the local one) what the multiplexer is on one host, and relays
the agent's JSON protocol over an encrypted link that *it* dials (see ``link``):

    multiplexer ◄──CURVE+HMAC (registration endpoint)── node link ──pipes── agent ──fork── ranks

- The token arrives as the first line on stdin; the node index is the scheduler's
  (``SLURM_NODEID`` / ``OMPI_COMM_WORLD_RANK`` of a one-task-per-node step).
- The node's address is the one it reaches the multiplexer from; ranks bind their
  kernels and node 0 its store there, and ``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME``
  default to its interface.
- Ranks report ready to a socket of this process in the node's private (0700) directory
  (``ipc://``); their signed handshakes go up the link unchanged.
- **Liveness**: heartbeats both ways. The multiplexer is lost when none came for
  ``heartbeat_timeout`` seconds or stdin ends (``srun``/``mpiexec`` forward its end when
  the kernel dies); then the agent's stdin is closed (it ends every rank and what they
  started), and node 0 cancels an allocation the launcher made. The agent ends with
  this process (parent-death signal); this process's end ends the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import zmq
import zmq.asyncio

from ..launchers.netaddr import interface_of, source_address_toward
from ..launchers.placement import PlacementError, from_scheduler
from . import link
from .protocol import decode, encode

#: Variables of this task (the scheduler's view of the agent's task, not of a rank's):
#: ranks must not see them, or frameworks take the node index for their rank
#: (Lightning's SLURMEnvironment) or join the agent's MPI job.
_TASK_PREFIXES = ("SLURM_STEP", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
                  "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_TASK_PID", "SLURM_GTIDS",
                  "SLURM_CPU_BIND", "SLURM_TASKS_PER_NODE", "SLURM_LAUNCH_NODE_IPADDR",
                  "SLURM_SRUN_COMM", "OMPI_", "PMIX_", "PMI_", "NBDIST_KERNEL_SETTINGS")


def node_identity(env: dict[str, str], nodes: int) -> tuple[int, str]:
    """(node index, node name) from the scheduler's variables of this task."""
    name = env.get("SLURMD_NODENAME") or socket.gethostname()
    try:
        place = from_scheduler(env)
    except PlacementError:
        if nodes == 1:
            return 0, name
        raise
    if place.local_world_size != 1:
        raise PlacementError(f"{place.local_world_size} node agents on {name}: the step must "
                             "run one task per node")
    return place.group_rank, name


class NodeLink:
    def __init__(self, token: link.Token, index: int, name: str) -> None:
        self.token, self.index, self.name = token, index, name
        host, port = token.endpoint.removeprefix("tcp://").rsplit(":", 1)
        try:
            self.address = source_address_toward(host, int(port))
        except OSError as err:
            raise SystemExit(self.unreachable(f"this node has no route there ({err})")) from None
        from ..mux.rundir import make_rundir, remove_rundir

        self.rundir = make_rundir()
        self._remove_rundir = remove_rundir
        self.handshake_addr = f"ipc://{self.rundir}/handshake"
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(_TASK_PREFIXES)}
        self.session = link.session(token.key)
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 1000
        self.sock.curve_serverkey = token.server_key.encode()
        self.sock.curve_secretkey = token.client_secret.encode()
        self.sock.curve_publickey = token.client_public
        self.out = link.Sender(self.sock)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.linger = 0
        self.last_heard = time.monotonic()
        self.done = asyncio.Event()
        self.why = ""
        self.agent: subprocess.Popen[bytes] | None = None

    # -- start ---------------------------------------------------------------------------
    def start_agent(self) -> None:
        argv = [sys.executable, "-Xfrozen_modules=off", "-m", "nbdist_provisioner.agent",
                *self.token.agent_args]
        self.agent = subprocess.Popen(argv, env=self.base_env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, start_new_session=True)

    async def register(self) -> None:
        """Say who we are; return once welcomed. Fails with a message naming the endpoint."""
        self.pull.bind(self.handshake_addr)
        self.sock.connect(self.token.endpoint)
        self.send(link.REGISTER, {"node": self.index, "name": self.name, "step": self.token.step,
                                  "address": self.address, "pid": os.getpid(),
                                  "agent_pid": self.agent.pid if self.agent else None})
        try:
            msg = await asyncio.wait_for(self.recv(), self.token.register_timeout)
        except asyncio.TimeoutError:
            raise SystemExit(self.unreachable(
                f"no answer within {self.token.register_timeout:g}s from {self.address}")) from None
        if msg is None or msg["msg_type"] != link.WELCOME:
            why = (msg or {}).get("content", {}).get("why", "an unreadable answer")
            raise SystemExit(f"nbdist node {self.index} ({self.name}): the multiplexer "
                             f"refused this node: {why}")

    def unreachable(self, detail: str) -> str:
        return (f"nbdist node {self.index} ({self.name}): cannot reach the multiplexer at "
                f"{self.token.endpoint}: {detail}. Is that address reachable from the nodes "
                "(firewall, another network)? Set cluster_address to an address or interface "
                "of the kernel's host that the nodes reach, and cluster_ports to ports a "
                "firewall lets through.")

    # -- messages ------------------------------------------------------------------------
    def send(self, msg_type: str, content: dict[str, Any],
             buffers: list[bytes] | None = None) -> None:
        self.session.send(self.out, msg_type, content, buffers=buffers)

    async def recv(self) -> dict[str, Any] | None:
        """The next verified message (None for one that is not: dropped)."""
        frames = await self.sock.recv_multipart()
        try:
            _, msg_frames = self.session.feed_identities(frames, copy=True)
            msg = self.session.deserialize(msg_frames, content=True)
        except Exception as err:  # unsigned, replayed, garbled: not from our multiplexer
            print(f"nbdist node {self.index}: dropped a bad message: {err}", file=sys.stderr)
            return None
        self.last_heard = time.monotonic()
        return msg

    # -- relays --------------------------------------------------------------------------
    async def commands(self) -> None:
        while True:
            msg = await self.recv()
            if msg is None or msg["msg_type"] != link.COMMAND:
                continue
            if msg["content"].get("op") == "exit":
                self.finish("the multiplexer ends the kernel")
            else:
                self.to_agent(self.translate(msg["content"]))

    def translate(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Fill in what only this node knows: its address, its private directory, its name,
        the environment its ranks inherit."""
        if cmd.get("op") == "store":
            return {**cmd, "host": self.address}
        if cmd.get("op") != "start":
            return cmd
        ranks = []
        for spec in cmd["ranks"]:
            config = json.loads(spec["config"])
            config.update(bind_ip=self.address, handshake_addr=self.handshake_addr,
                          host=self.name, connection_file=os.path.join(
                              self.rundir, os.path.basename(config["connection_file"])))
            env = {**self.base_env, **spec["env"]}
            ifname = interface_of(self.address)
            if ifname:
                env.setdefault("GLOO_SOCKET_IFNAME", ifname)
                env.setdefault("NCCL_SOCKET_IFNAME", ifname)
            ranks.append({**spec, "config": json.dumps(config), "env": env})
        return {**cmd, "ranks": ranks}

    def to_agent(self, cmd: dict[str, Any]) -> None:
        assert self.agent is not None and self.agent.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.agent.stdin.write(encode(cmd))
            self.agent.stdin.flush()

    async def events(self) -> None:
        assert self.agent is not None and self.agent.stdout is not None
        reader = asyncio.StreamReader(limit=link.MAX_MESSAGE)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     self.agent.stdout)
        while line := await reader.readline():
            with contextlib.suppress(ValueError):
                self.send(link.EVENT, decode(line))
        code = await loop.run_in_executor(None, self.agent.wait)
        self.send(link.EVENT, {"event": "agent_ended", "returncode": code})
        self.finish(f"the agent ended ({code})")

    async def handshakes(self) -> None:
        while True:
            frames = await self.pull.recv_multipart()
            self.send(link.HANDSHAKE, {}, buffers=frames)

    async def heartbeat(self) -> None:
        every = link.beat_interval(self.token.heartbeat_timeout)
        while True:
            self.send(link.BEAT, {})
            await asyncio.sleep(every)
            silent = time.monotonic() - self.last_heard
            if silent > self.token.heartbeat_timeout:
                self.finish(f"no heartbeat from the multiplexer for {silent:.1f}s")

    def watch_stdin(self) -> None:
        """Read stdin to its end (a reader, not a thread: nothing may block the exit)."""
        fd = sys.stdin.fileno()
        os.set_blocking(fd, False)

        def readable() -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(fd)
                self.finish("stdin closed: the multiplexer is gone")

        asyncio.get_running_loop().add_reader(fd, readable)

    def finish(self, why: str) -> None:
        if not self.done.is_set():
            self.why = why
            self.done.set()

    # -- end -----------------------------------------------------------------------------
    async def end(self, lost: bool) -> None:
        """End the agent (it ends every rank and what they started); with the multiplexer
        lost, node 0 also cancels the allocation the launcher made for it."""
        if self.agent is not None and self.agent.poll() is None:
            with contextlib.suppress(OSError):
                assert self.agent.stdin is not None
                self.agent.stdin.close()
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(None, self.agent.wait), 10)
            except asyncio.TimeoutError:
                self.agent.kill()
        self._remove_rundir(self.rundir)
        if lost and self.index == 0 and self.token.release_job:
            subprocess.run(["scancel", self.token.release_job], timeout=30, check=False,
                           stdin=subprocess.DEVNULL)
        self.ctx.destroy(linger=0 if lost else 1000)  # (let a last event go out)


async def serve(node: NodeLink) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, node.finish, f"signal {signum}")
    node.start_agent()
    try:
        await node.register()
    except SystemExit:
        await node.end(lost=False)
        raise
    tasks = [asyncio.ensure_future(c) for c in (
        node.commands(), node.events(), node.handshakes(), node.heartbeat())]
    if node.token.stdin_lifeline:
        node.watch_stdin()
    await node.done.wait()
    for task in tasks:
        task.cancel()
    lost = node.why.startswith(("no heartbeat", "stdin closed"))
    print(f"nbdist node {node.index} ({node.name}): ending: {node.why}", file=sys.stderr)
    await node.end(lost)
    return 1 if node.why.startswith("the agent ended") else 0


def main() -> int:
    from .. import proctree

    proctree.become_subreaper()
    line = sys.stdin.buffer.readline()
    if not line.strip():
        print("nbdist node: no token on stdin: node agents are started by the nbdist "
              "multiplexer's slurm/mpi launcher, not by hand", file=sys.stderr)
        return 2
    token = link.Token.parse(line)
    try:
        index, name = node_identity(dict(os.environ), token.nodes)
    except PlacementError as err:
        print(f"nbdist node: {err}", file=sys.stderr)
        return 2
    return asyncio.run(serve(NodeLink(token, index, name)))


if __name__ == "__main__":
    sys.exit(main())
