"""The link between a node's agent and the multiplexer, across hosts: token and messages.

One job step runs one node link per node (``agent.node``). Each dials the multiplexer's
registration endpoint; the multiplexer is the server and never connects to a node for
this link. What makes that safe:

- **The token** (``Token``), one per step, reaches every node link on its stdin (``srun
  --input=all`` / ``mpiexec --stdin all`` give each the same bytes), never in argv or the
  job's environment, which ``ps`` and ``scontrol show job`` show to others. It holds the
  endpoint, the multiplexer's CURVE public key, a CURVE key pair for the step's node
  links, and an HMAC key.
- **CurveZMQ**: the multiplexer's ROUTER is a CURVE server whose ZAP handler admits only
  the step's public key (an allow-list of one key per live step); the link is encrypted
  and the server authenticated by the pinned public key.
- **HMAC signing** stays (``jupyter_client.Session`` with the token's key, its replay
  check included): every message is signed, and a registration names the node index
  the scheduler gave the task; each index registers once per token.

Messages are ``Session`` messages; ``content`` is the agent protocol's JSON (``protocol``:
commands down, events up), plus ``register``/``welcome``/``refused``, ``beat`` both
ways, and ``handshake`` (a rank's signed handshake, its frames as buffers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

log = logging.getLogger("nbdist.link")

#: Message types on the link.
REGISTER, WELCOME, REFUSED = "nbdist_register", "nbdist_welcome", "nbdist_refused"
COMMAND, EVENT, BEAT, HANDSHAKE = "nbdist_command", "nbdist_event", "nbdist_beat", \
    "nbdist_handshake"
#: Largest message the multiplexer reads from a node link (a start of many ranks).
MAX_MESSAGE = 64 << 20


def beat_interval(timeout: float) -> float:
    """Seconds between heartbeats: a few per timeout, at most one a second."""
    return max(0.05, min(1.0, timeout / 4))


@dataclass(frozen=True)
class Token:
    """What a node link needs to find and join its kernel; secret (stdin only)."""

    endpoint: str
    #: the multiplexer's CURVE public key (Z85)
    server_key: str
    #: the step's CURVE secret key (Z85); its public key is on the multiplexer's allow-list
    client_secret: str
    #: HMAC key (hex) of every message on the link
    key: str
    step: str
    nodes: int
    heartbeat_timeout: float = 10.0
    #: seconds a node link tries to register before it gives up with a message
    register_timeout: float = 120.0
    #: the agent's arguments (``--no-fork``, ``--preload-torch``)
    agent_args: tuple[str, ...] = ()
    #: a job the node links cancel when they lose the multiplexer (an allocation the
    #: launcher made): a killed kernel then leaves no allocation behind
    release_job: str = ""
    #: stdin's end means the multiplexer is gone (srun/mpiexec forward it)
    stdin_lifeline: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    def line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def parse(cls, line: bytes | str) -> Token:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("the token is not a JSON object")
        data["agent_args"] = tuple(data.get("agent_args", ()))
        return cls(**data)

    @property
    def client_public(self) -> bytes:
        return zmq.curve_public(self.client_secret.encode())


def new_token(endpoint: str, server_public: bytes, nodes: int, **kw: Any) -> Token:
    """A fresh token for one step: new CURVE key pair, new HMAC key."""
    _, client_secret = zmq.curve_keypair()
    return Token(endpoint=endpoint, server_key=server_public.decode(),
                 client_secret=client_secret.decode(), key=secrets.token_hex(32),
                 step=secrets.token_hex(6), nodes=nodes, **kw)


def session(key: str) -> Session:
    """The signing session of a link (a fresh one per side: its replay check is its own)."""
    return Session(key=key.encode(), signature_scheme="hmac-sha256", username="nbdist-node")


class Sender:
    """What ``Session.send`` is given for a zmq.asyncio socket that a receive loop waits
    on: sends through the asyncio socket itself (``Session.send`` would use a sync shadow,
    which can swallow the edge that wakes the receive loop),
    and a send that fails (a peer gone, under ``router_mandatory``) is logged, not left
    as a future nobody reads."""

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.socket = sock

    def send_multipart(self, frames: Any, *args: Any, **kwargs: Any) -> Any:
        sent = self.socket.send_multipart(frames, *args, **kwargs)
        sent.add_done_callback(_log_failure)
        return sent


def _log_failure(sent: asyncio.Future[Any]) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.debug("a link message was not sent: %s", sent.exception())
