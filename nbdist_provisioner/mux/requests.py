"""Frontend requests in flight across ranks, and how rank replies merge into one.

Pure data and functions: which ranks a request waits on, when it is complete
(every target replied *and* went idle on iopub, or died), and the merged reply.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..ranks import RankSpecError, format_ranks, parse_rank_spec

#: How many finished requests are remembered for late (background-thread) output.
REMEMBER_FINISHED = 512

_RANK_MAGIC = re.compile(r"\A[ \t]*%%rank(?:[ \t]+(?P<spec>[^\n]*))?(?:\n|\Z)")


@dataclass
class FrontendRequest:
    """One request from the frontend, fanned out to ``targets``."""

    channel: str
    idents: list[bytes]
    header: dict[str, Any]
    content: dict[str, Any]
    metadata: dict[str, Any]
    targets: tuple[int, ...] = ()
    rank_msg_ids: dict[int, str] = field(default_factory=dict)
    replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    idle: set[int] = field(default_factory=set)
    dead: dict[int, str] = field(default_factory=dict)
    #: binary buffers of the frontend message (comm messages), forwarded as they are
    buffers: list[Any] = field(default_factory=list)

    @property
    def msg_id(self) -> str:
        return str(self.header["msg_id"])

    @property
    def msg_type(self) -> str:
        return str(self.header["msg_type"])

    def rank_done(self, rank: int) -> bool:
        return rank in self.dead or (rank in self.replies and rank in self.idle)

    def complete(self) -> bool:
        return all(self.rank_done(r) for r in self.targets)


class RequestTable:
    """rank msg_id -> (request, rank), plus a bounded memory of finished requests."""

    def __init__(self) -> None:
        self._live: dict[str, tuple[FrontendRequest, int]] = {}
        self._finished: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()

    def add(self, req: FrontendRequest, rank: int, rank_msg_id: str) -> None:
        req.rank_msg_ids[rank] = rank_msg_id
        self._live[rank_msg_id] = (req, rank)

    def live(self, rank_msg_id: str) -> tuple[FrontendRequest, int] | None:
        return self._live.get(rank_msg_id)

    def finished_parent(self, rank_msg_id: str) -> tuple[str, dict[str, Any]] | None:
        """(frontend msg_id, header) of a finished request, for output that arrives late."""
        return self._finished.get(rank_msg_id)

    def requests(self) -> list[FrontendRequest]:
        seen: dict[str, FrontendRequest] = {}
        for req, _ in self._live.values():
            seen.setdefault(req.msg_id, req)
        return list(seen.values())

    def finish(self, req: FrontendRequest) -> None:
        for rank_msg_id in req.rank_msg_ids.values():
            self._live.pop(rank_msg_id, None)
            self._finished[rank_msg_id] = (req.msg_id, req.header)
        while len(self._finished) > REMEMBER_FINISHED:
            self._finished.popitem(last=False)


def split_rank_magic(code: str, world_size: int) -> tuple[tuple[int, ...] | None, str]:
    """``%%rank 0,2`` on the first line: (ranks, the rest of the cell); else (None, code).

    Raises RankSpecError for a bad spec, so the cell fails with a clear message.
    """
    match = _RANK_MAGIC.match(code)
    if not match:
        return None, code
    spec = (match.group("spec") or "").strip()
    if not spec:
        raise RankSpecError("%%rank needs ranks, e.g. %%rank 0 or %%rank 0,2 or %%rank 1-3")
    return parse_rank_spec(spec, world_size), code[match.end():]


def merge_execute_reply(req: FrontendRequest, execution_count: int) -> dict[str, Any]:
    """One execute_reply for all ranks: ``error`` if any rank failed or died."""
    failed = sorted(
        r for r in req.targets
        if r in req.dead or req.replies.get(r, {}).get("status") == "error"
    )
    aborted = [r for r in req.targets if req.replies.get(r, {}).get("status") == "aborted"]
    base: dict[str, Any] = {"execution_count": execution_count, "user_expressions": {},
                            "payload": []}
    primary = req.replies.get(min(req.targets)) if req.targets else None
    if primary is not None:
        base["user_expressions"] = primary.get("user_expressions", {})
        base["payload"] = primary.get("payload", [])
    if failed:
        first = failed[0]
        reply = req.replies.get(first)
        if reply is not None and reply.get("status") == "error":
            ename, evalue = reply.get("ename", "Error"), reply.get("evalue", "")
            traceback = list(reply.get("traceback", []))
        else:
            ename, evalue, traceback = "RankDied", req.dead.get(first, ""), []
        where = f"rank {first}" if len(failed) == 1 else f"ranks {format_ranks(failed)}"
        merged_evalue = f"{evalue} (failed on {where} of {len(req.targets)})"
        return {
            **base,
            "status": "error",
            "ename": ename,
            "evalue": merged_evalue,
            # nbclient/papermill show the reply's traceback: make it name the ranks too
            "traceback": [*traceback, f"{ename}: {merged_evalue}"],
            "nbdist": {"failed_ranks": failed},
        }
    if aborted and len(aborted) == len(req.targets):
        return {**base, "status": "aborted"}
    return {**base, "status": "ok"}


def merge_comm_info(req: FrontendRequest) -> dict[str, Any]:
    comms: dict[str, Any] = {}
    for rank in sorted(req.replies):
        comms.update(req.replies[rank].get("comms", {}) or {})
    return {"status": "ok", "comms": comms}
