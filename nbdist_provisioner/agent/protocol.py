"""What the multiplexer and the rank agent say to each other: one JSON object a line.

The multiplexer writes commands on the agent's stdin; the agent writes events on
its stdout. The pipe is also the agent's lifeline: when the multiplexer ends, in
any way, the agent reads end-of-file and ends every rank.

Commands (multiplexer -> agent)::

    {"op": "start", "ranks": [{"rank": 0, "env": {...}, "config": "<RankConfig JSON>"}]}
    {"op": "signal", "rank": 0, "signum": 9}
    {"op": "tail", "rank": 0}
    {"op": "store", "host": "10.0.0.5", "world_size": 8, "timeout": 300}
                                           serve the rendezvous store (node 0 of several)
    {"op": "end_all"}                      end every rank and what they started

Events (agent -> multiplexer)::

    {"event": "ready", "pid": 41, "forking": true, "why_not": ""}
    {"event": "started", "rank": 0, "pid": 42}
    {"event": "failed", "rank": 0, "error": "..."}      could not even start it
    {"event": "exited", "rank": 0, "pid": 42, "returncode": -9, "tail": "..."}
    {"event": "tail", "rank": 0, "tail": "..."}
    {"event": "store", "rank": -1, "pid": 43, "host": "10.0.0.5", "port": 29500}
    {"event": "ended"}                                   after end_all

The store's child is supervised as rank -1: its end is an ``exited`` event for rank -1.
"""

from __future__ import annotations

import json
from typing import Any

#: A command or event line longer than this is refused (a rank's record is ~1 KiB,
#: a start of 1024 ranks with their environments stays far below).
MAX_LINE = 64 << 20


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {type(message).__name__}")
    return message
