"""The multiplexer's registration endpoint: node links dial in, the multiplexer serves.

One ROUTER, bound on the cluster address (``cluster_address``, ``cluster_ports``), is a
CurveZMQ server; its ZAP handler admits only the public keys of live steps' tokens (the
allow-list). Every message is signed with the step's HMAC key (``agent.link``). Each
registered node becomes a ``NodeAgent``: an ``AgentClient`` whose commands go down this
link and whose events come up it, with heartbeats both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session
from zmq.auth.asyncio import AsyncioAuthenticator

from ..agent import link
from .agent_client import AgentClient
from .base import LauncherError
from .netaddr import parse_port_range

log = logging.getLogger("nbdist.mux")
ZAP_DOMAIN = "nbdist-nodes"


class NodeAgent(AgentClient):
    """The agent of one node, reached through its node link."""

    def __init__(self, registry: Registry, ident: bytes, session: Session,
                 info: dict[str, Any]) -> None:
        super().__init__()
        self.registry, self.ident, self.session = registry, ident, session
        self.index = int(info["node"])
        self.host = str(info.get("name") or f"node{self.index}")
        self.address = str(info["address"])
        self.last_heard = time.monotonic()
        self.attach()

    def command(self, cmd: dict[str, Any]) -> None:
        if not self.ended:
            self.registry.send(self, link.COMMAND, cmd)


@dataclass
class Step:
    """The node links of one job step: who may register, who did."""

    token: link.Token
    session: Session
    nodes: dict[int, NodeAgent] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Registry:
    """Bound ROUTER + ZAP allow-list + the registered node links and their heartbeats."""

    def __init__(self, address: str, ports: str, heartbeat_timeout: float,
                 on_handshake: Callable[[list[bytes]], None]) -> None:
        self.address = address
        self.heartbeat_timeout = heartbeat_timeout
        self._on_handshake = on_handshake
        self.ctx = zmq.asyncio.Context()
        self.server_public, server_secret = zmq.curve_keypair()
        self.auth = AsyncioAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)
        sock = self.ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = self.server_public, server_secret
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.setsockopt(zmq.MAXMSGSIZE, link.MAX_MESSAGE)
        sock.router_mandatory = True
        self.sock = sock
        self.out = link.Sender(sock)
        self.port = self._bind(ports)
        self.endpoint = f"tcp://{address}:{self.port}"
        self.step: Step | None = None
        self._by_ident: dict[bytes, NodeAgent] = {}
        self._tasks = [asyncio.ensure_future(self._serve()),
                       asyncio.ensure_future(self._heartbeat())]

    def _bind(self, ports: str) -> int:
        span = parse_port_range(ports)
        if span is None:
            return int(self.sock.bind_to_random_port(f"tcp://{self.address}"))
        for port in range(span[0], span[1] + 1):
            try:
                self.sock.bind(f"tcp://{self.address}:{port}")
                return port
            except zmq.ZMQError as err:
                if err.errno != zmq.EADDRINUSE:
                    raise LauncherError(f"cannot listen on {self.address}:{port} "
                                        f"(cluster_address): {err}") from None
        raise LauncherError(f"every port of cluster_ports={ports} on {self.address} is taken")

    # -- allow-list (ZAP) ------------------------------------------------------------------
    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: a node link's CURVE key must be the live step's."""
        step = self.step
        return step is not None and key == step.token.client_public

    # -- steps -----------------------------------------------------------------------------
    def open_step(self, token: link.Token) -> Step:
        """From now on, ``token``'s node links may register (and no earlier step's)."""
        self.close_step("a new step replaced it")
        self.step = Step(token, link.session(token.key))
        return self.step

    def close_step(self, why: str) -> None:
        step, self.step = self.step, None
        if step is None:
            return
        for node in step.nodes.values():
            self._by_ident.pop(node.ident, None)
            node.lost(why)

    # -- messages --------------------------------------------------------------------------
    def send(self, node: NodeAgent, msg_type: str, content: dict[str, Any]) -> None:
        node.session.send(self.out, msg_type, content, ident=node.ident)

    async def _serve(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                self._on_frames(frames)
            except Exception:  # a bug of ours must not stop the endpoint
                log.exception("internal error on the registration endpoint")

    def _on_frames(self, frames: list[bytes]) -> None:
        step = self.step
        if step is None:
            return
        ident = frames[0]
        node = self._by_ident.get(ident)
        session = node.session if node is not None else step.session
        try:
            _, msg_frames = session.feed_identities(frames[1:], copy=True)
            msg = session.deserialize(msg_frames, content=True)
        except Exception as err:  # unsigned, replayed, another step's: not for us
            log.warning("dropped a bad message on the registration endpoint: %s", err)
            return
        kind, content = msg["msg_type"], msg["content"]
        if node is None:
            if kind == link.REGISTER:
                self._register(step, ident, content)
            return
        node.last_heard = time.monotonic()
        if kind == link.EVENT:
            if content.get("event") == "agent_ended":
                node.lost(f"the agent on node {node.index} ({node.host}) ended "
                          f"({content.get('returncode')})")
            else:
                node.on_event(content)
        elif kind == link.HANDSHAKE:
            self._on_handshake([bytes(b) for b in msg["buffers"]])

    def _register(self, step: Step, ident: bytes, info: dict[str, Any]) -> None:
        def refuse(why: str) -> None:
            log.warning("refused a node registration: %s", why)
            step.session.send(self.out, link.REFUSED, {"why": why}, ident=ident)

        try:
            index = int(info["node"])
            str(info["address"])
        except (KeyError, TypeError, ValueError):
            return refuse("a registration without node index and address")
        if info.get("step") != step.token.step:
            return refuse(f"registration for step {info.get('step')!r}, not this step's")
        if not 0 <= index < step.token.nodes:
            return refuse(f"node index {index} outside the {step.token.nodes} nodes of the step")
        if index in step.nodes:
            return refuse(f"node {index} registered already (this token registers each node "
                          "once)")
        node = NodeAgent(self, ident, step.session, info)
        step.nodes[index] = node
        self._by_ident[ident] = node
        step.session.send(self.out, link.WELCOME, {"node": index}, ident=ident)
        step.changed.set()

    async def _heartbeat(self) -> None:
        every = link.beat_interval(self.heartbeat_timeout)
        while True:
            await asyncio.sleep(every)
            step = self.step
            if step is None:
                continue
            now = time.monotonic()
            for node in list(step.nodes.values()):
                if node.ended:
                    continue
                silent = now - node.last_heard
                if silent > self.heartbeat_timeout:
                    node.lost(f"node {node.index} ({node.host}) is lost: no heartbeat for "
                              f"{silent:.1f}s")
                    step.changed.set()
                else:
                    self.send(node, link.BEAT, {})

    async def close(self) -> None:
        self.close_step("the kernel is ending")
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            self.auth.stop()
        self.ctx.destroy(linger=0)
