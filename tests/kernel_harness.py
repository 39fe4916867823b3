"""Drive a real kernel the way a frontend does, and record what it receives."""

from __future__ import annotations

import contextlib
import queue
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil


@dataclass
class CellRun:
    """Everything a frontend saw for one execute_request."""

    msg_id: str
    reply: dict[str, Any]
    #: every iopub message parented to the request, in arrival order
    iopub: list[dict[str, Any]] = field(default_factory=list)

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return [m for m in self.iopub if m["msg_type"] not in ("status", "execute_input")]

    def stream_text(self, name: str = "stdout") -> str:
        return "".join(m["content"]["text"] for m in self.iopub
                       if m["msg_type"] == "stream" and m["content"]["name"] == name)

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.iopub if m["msg_type"] == msg_type]

    @property
    def status(self) -> str:
        return str(self.reply["content"]["status"])


def iopub_until(kc: Any, timeout: float) -> Iterator[dict[str, Any]]:
    """iopub messages as they arrive, until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            yield kc.get_iopub_msg(timeout=left)
        except queue.Empty:
            continue


def collect_until_idle(kc: Any, msg_id: str, timeout: float = 120) -> list[dict[str, Any]]:
    """iopub messages of ``msg_id`` up to and including its idle; others are kept aside."""
    got: list[dict[str, Any]] = []
    for msg in iopub_until(kc, timeout):
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        got.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return got
    raise TimeoutError(f"no idle for {msg_id} within {timeout}s; saw {got}")


def drain_iopub(kc: Any, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Everything on iopub until it has been quiet for ``quiet`` seconds."""
    got = []
    while True:
        try:
            got.append(kc.get_iopub_msg(timeout=quiet))
        except queue.Empty:
            return got


def reply_to(kc: Any, msg_id: str, timeout: float = 120) -> dict[str, Any]:
    """The shell reply to ``msg_id`` (replies to earlier requests, such as the extra
    kernel_info requests of ``wait_for_ready``, are skipped)."""
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return dict(reply)


def run_cell(kc: Any, code: str, timeout: float = 120, **kwargs: Any) -> CellRun:
    msg_id = kc.execute(code, **kwargs)
    iopub = collect_until_idle(kc, msg_id, timeout)
    return CellRun(msg_id, reply_to(kc, msg_id, timeout), iopub)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (what a kernel start created)."""
    try:
        proc = psutil.Process(pid)
        return [pid] + [c.pid for c in proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    """Wait until none of ``pids`` runs; return the ones still alive (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        if alive:
            time.sleep(0.05)
    return alive


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


RANK_LABEL = re.compile(r"^\[rank (\d+)\] (.*)$")
RANKS_LABEL = re.compile(r"^\[ranks ([\d,-]+)\] (.*)$")


def labelled(line: str) -> tuple[list[int], str] | None:
    """(ranks, text) of a labelled line: one rank's, or several ranks' identical line."""
    m = RANK_LABEL.match(line)
    if m:
        return [int(m.group(1))], m.group(2)
    m = RANKS_LABEL.match(line)
    if not m:
        return None
    ranks: list[int] = []
    for part in m.group(1).split(","):
        a, _, b = part.partition("-")
        ranks += range(int(a), int(b or a) + 1)
    return ranks, m.group(2)


def by_rank(text: str) -> dict[int, list[str]]:
    """Lines of merged stream text, grouped by the rank in their ``[rank R] `` prefix (a line
    labelled ``[ranks 0-3] `` counts for each of them)."""
    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        got = labelled(line)
        assert got, f"unlabelled line {line!r} in {text!r}"
        for rank in got[0]:
            out.setdefault(rank, []).append(got[1])
    return out


def printed_by(text: str, what: str) -> int:
    """How many ranks printed a line containing ``what``: a ``[ranks 0-3]`` line (several
    ranks' identical line, shown once) counts for each of its ranks."""
    count = 0
    for line in text.splitlines():
        if what in line:
            got = labelled(line)
            count += len(got[0]) if got else 1
    return count


def per_rank_lines(text: str) -> list[str]:
    """The lines as each rank printed them: a ``[ranks 0-3] x`` line (identical lines of
    several ranks, shown once) becomes ``[rank 0] x`` … ``[rank 3] x``; other lines stay."""
    out = []
    for line in text.splitlines():
        got = labelled(line)
        if got and len(got[0]) > 1:
            out += [f"[rank {r}] {got[1]}" for r in got[0]]
        else:
            out.append(line)
    return out
