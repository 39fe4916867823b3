"""The rank agent (``python -m nbdist_provisioner.agent``) over its JSON-lines pipe, as the
launchers drive it: a child it replaces while the old one still ends is reaped once, by
the agent's own bookkeeping, and the agent keeps serving."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

STORE = -1


class AgentPipe:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nbdist_provisioner.agent", "--no-fork"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def until(self, event: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
        """Events up to the first ``event`` (all kept in ``seen``); fails if the agent ends."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, f"the agent ended ({self.proc.wait()}) before {event!r}: {seen}"
            msg = json.loads(line)
            seen.append(msg)
            if msg.get("event") == event:
                return msg

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def agent():
    pipe = AgentPipe()
    yield pipe
    if pipe.proc.poll() is None:
        pipe.proc.kill()
        pipe.proc.wait()


def test_replacing_a_child_while_the_old_one_ends_keeps_the_agent_serving(agent):
    """A new generation's store (or rank) replaces the old one under the same number while
    the old one is still dying; its SIGCHLD and its pidfd both fire. Reaping it in the
    orphan sweep made the pidfd handler's waitpid fail and the agent exit (1)."""
    seen: list[dict[str, Any]] = []
    agent.until("ready", seen)
    stores = []
    for _ in range(40):
        agent.send({"op": "store", "host": "127.0.0.1", "world_size": 1, "timeout": 30})
        stores.append(agent.until("store", seen)["pid"])
    agent.send({"op": "end_all"})
    agent.until("ended", seen)
    exited = {m["pid"]: m["returncode"] for m in seen if m.get("event") == "exited"}
    # every store ended exactly once, each reported with its own pid and a signal status
    assert sorted(exited) == sorted(stores)
    assert len([m for m in seen if m.get("event") == "exited"]) == len(stores)
    assert all(code == -9 for code in exited.values()), exited
    assert not [m for m in seen if m.get("event") in ("error", "failed")], seen
    started = time.monotonic()
    assert agent.close() == 0
    assert time.monotonic() - started < 30
