"""The per-rank record the multiplexer hands to each rank, privately.

It carries the rank's HMAC key, so it never travels in argv, the environment
or a file: an exec'ed rank reads it as one JSON line on its stdin, a forked
rank gets it in memory from the agent (see ``nbdist_provisioner.agent``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RankConfig:
    #: where the rank reports ready (the multiplexer's handshake socket)
    handshake_addr: str
    #: the rank kernel's HMAC key (hex)
    key: str
    bind_ip: str = "127.0.0.1"
    init_process_group: bool = True
    backend: str = "auto"
    collective_timeout: float = 300.0
    #: torch.distributed rendezvous: ``file:///...`` in the kernel's private directory
    #: (nothing listens on a port), or ``env://``
    init_method: str = "env://"
    #: Seconds between output flushes; ipykernel's 0.2 s is too slow for live output.
    flush_interval: float = 0.01
    #: Only the primary rank answers history requests; the others skip the sqlite
    #: writes (about a third of an idle cell's CPU in a kernel).
    keep_history: bool = True
    #: Where this rank's kernel writes its connection file: a fresh path in the kernel's
    #: private directory, removed as soon as the kernel has started.
    connection_file: str = ""
    #: The node's name shown for this rank (``{host}``); empty: this host's name.
    host: str = ""
    #: CurveZMQ for a rank on another host than the multiplexer (empty: none): the
    #: rank kernel's key pair (its sockets are CURVE servers, as ipykernel does with
    #: jupyter_client's ``transport_encryption``) and the client public keys its ZAP
    #: handler admits (the multiplexer's), Z85.
    curve_publickey: str = ""
    curve_secretkey: str = ""
    curve_clients: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RankConfig:
        data = json.loads(text)
        data["curve_clients"] = tuple(data.get("curve_clients", ()))
        return cls(**data)
