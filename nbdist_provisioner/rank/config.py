"""The per-rank record the multiplexer passes in the environment."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

#: Environment variable with this rank's JSON record (not the torch variables).
RANK_CONFIG_ENV = "NBDIST_RANK_CONFIG"
#: Environment variable with this rank's HMAC key (hex); kept out of argv.
RANK_KEY_ENV = "NBDIST_RANK_KEY"


@dataclass(frozen=True)
class RankConfig:
    handshake_addr: str
    parent_pid: int
    bind_ip: str = "127.0.0.1"
    init_process_group: bool = True
    backend: str = "auto"
    collective_timeout: float = 300.0
    #: Seconds between output flushes; ipykernel's 0.2 s is too slow for live output.
    flush_interval: float = 0.01
    #: Only the primary rank answers history requests; the others skip the sqlite
    #: writes (about a third of an idle cell's CPU in a kernel).
    keep_history: bool = True
    #: Where this rank's kernel writes its connection file: a fresh path (never loaded).
    connection_file: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_environ(cls) -> RankConfig:
        try:
            raw = os.environ[RANK_CONFIG_ENV]
        except KeyError:
            raise SystemExit(
                f"{RANK_CONFIG_ENV} is not set: rank kernels are started by the "
                "nbdist multiplexer, not by hand"
            ) from None
        return cls(**json.loads(raw))
