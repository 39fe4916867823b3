"""One record per frontend request, and how its ranks' replies become one.

A ``Request`` holds everything about one frontend request while it is served:
the message, the ranks it went to and under which rank msg_ids, what each
rank answered, which ranks went idle or died, and its fault bookkeeping.
``FinishedRequests`` remembers, boundedly, which frontend request a rank
msg_id belonged to, for output that arrives after its request is done.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ...rankset import format_ranks
from .events import FrontendMessage
from .policy import Merge, Policy

Json = dict[str, Any]

#: Rank msg_ids of finished requests remembered (per rank) for late output and for
#: the Output widget's captured ids.
REMEMBER_PER_RANK = 512


@dataclass(eq=False)
class Request:
    """One frontend request fanned out to ``targets``."""

    msg: FrontendMessage
    policy: Policy
    #: the shell queue it waits in ("" = the main shell, else a subshell id); None: unqueued
    queue: str | None = None
    targets: tuple[int, ...] = ()
    rank_msg_ids: dict[int, str] = field(default_factory=dict)
    replies: dict[int, Json] = field(default_factory=dict)
    idle: set[int] = field(default_factory=set)
    dead: dict[int, str] = field(default_factory=dict)
    #: what ended the ranks in ``dead`` (RankDied, KernelRestarting, KernelShutdown)
    dead_ename: str = "RankDied"
    #: the kernel's execution count of this cell (execute requests)
    execution_count: int = 0
    #: aborted by an earlier error: answered "aborted" when its turn comes
    aborted: bool = False
    # -- fault bookkeeping (deadlines are core clock times) --
    idle_probe_at: float | None = None
    #: some ranks went idle without a reply (their handler failed): given up on then
    missing_reply_at: float | None = None
    failure_check_at: float | None = None
    failure_checked: bool = False
    interrupt_check_at: float | None = None
    #: a second interrupt restarts the ranks
    escalation_armed: bool = False
    #: idle probes sent so far
    probes: int = 0
    #: the first rank that failed (its error is the cell's error)
    first_failure: int | None = None
    # -- fail fast (see fail_fast.py) --
    fail_fast_at: float | None = None
    stall_check_at: float | None = None
    stall_backoff: float = 2.0
    fail_fast_done: bool = False
    stacks_why: str = ""
    stacks: dict[int, Json] = field(default_factory=dict)
    stacks_pending: set[int] = field(default_factory=set)
    stacks_deadline: float | None = None
    #: the process group's collectives were ended (when): a new group is made before the
    #: reply
    group_aborted: bool = False
    aborted_at: float | None = None
    reinit_pending: set[int] | None = None
    reinit_errors: dict[int, str] = field(default_factory=dict)

    @property
    def msg_id(self) -> str:
        return str(self.msg.header.get("msg_id", ""))

    @property
    def msg_type(self) -> str:
        return str(self.msg.header.get("msg_type", ""))

    @property
    def header(self) -> Json:
        return self.msg.header

    @property
    def content(self) -> Json:
        return self.msg.content

    @property
    def silent(self) -> bool:
        return bool(self.content.get("silent", False))

    @property
    def store_history(self) -> bool:
        return bool(self.content.get("store_history", not self.silent)) and not self.silent

    @property
    def stop_on_error(self) -> bool:
        return bool(self.content.get("stop_on_error", True)) and not self.silent

    def rank_done(self, rank: int) -> bool:
        return rank in self.dead or (rank in self.replies and rank in self.idle)

    def complete(self) -> bool:
        return all(self.rank_done(r) for r in self.targets)

    def failed_ranks(self) -> list[int]:
        return sorted(r for r in self.targets
                      if r in self.dead or self.replies.get(r, {}).get("status") == "error")

    def running_ranks(self) -> list[int]:
        """Targets that have not replied and did not die."""
        return sorted(r for r in self.targets if r not in self.replies and r not in self.dead)


@dataclass(frozen=True, slots=True)
class FinishedEntry:
    frontend_msg_id: str
    header: Json
    msg_type: str


class FinishedRequests:
    """rank msg_id -> the finished frontend request it served (bounded, oldest out)."""

    def __init__(self, nproc: int = 1) -> None:
        self._size = REMEMBER_PER_RANK * max(1, nproc)
        self._entries: OrderedDict[str, FinishedEntry] = OrderedDict()

    def add(self, req: Request) -> None:
        entry = FinishedEntry(req.msg_id, req.header, req.msg_type)
        for rank_msg_id in req.rank_msg_ids.values():
            self._entries[rank_msg_id] = entry
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def get(self, rank_msg_id: str) -> FinishedEntry | None:
        return self._entries.get(rank_msg_id)

    def __len__(self) -> int:
        return len(self._entries)


# -- merged replies --------------------------------------------------------------
def error_content(ename: str, evalue: str, traceback: list[str] | None = None) -> Json:
    return {"ename": ename, "evalue": evalue,
            "traceback": traceback if traceback is not None else [f"{ename}: {evalue}"]}


def merge_execute_reply(req: Request) -> Json:
    """One execute_reply for all ranks: ``error`` if any rank failed or died."""
    base: Json = {"execution_count": req.execution_count, "user_expressions": {},
                  "payload": []}
    first = req.replies.get(min(req.targets)) if req.targets else None
    if first is not None:
        base["user_expressions"] = first.get("user_expressions", {})
        base["payload"] = first.get("payload", [])
    failed = req.failed_ranks()
    if not failed:
        statuses = {req.replies.get(r, {}).get("status") for r in req.targets}
        if req.targets and statuses == {"aborted"}:
            return {"status": "aborted"}
        return {**base, "status": "ok"}
    # the cause first: the rank that failed first (the others often failed of it)
    rank = req.first_failure if req.first_failure in failed else failed[0]
    reply = req.replies.get(rank)
    if reply is not None and reply.get("status") == "error":
        ename, evalue = str(reply.get("ename", "Error")), str(reply.get("evalue", ""))
        traceback = [str(line) for line in reply.get("traceback", [])]
    else:
        ename, evalue, traceback = req.dead_ename, req.dead.get(rank, ""), []
    where = f"rank {rank}" if len(failed) == 1 else f"ranks {format_ranks(failed)}"
    merged = f"{evalue} (failed on {where} of {len(req.targets)})"
    return {**base, "status": "error", "ename": ename, "evalue": merged,
            # nbclient / papermill show the reply's traceback: it names the ranks too
            "traceback": [*traceback, f"{ename}: {merged}"],
            "nbdist": {"failed_ranks": failed, "first_failed_rank": rank}}


def merge_reply(req: Request) -> Json:
    """The reply of a request the ranks answer (not an execute, not a subshell creation),
    by its policy's merge rule."""
    merge = req.policy.merge
    assert merge in (Merge.COMM_INFO, Merge.ALL_OK, Merge.FIRST), merge
    if merge is Merge.COMM_INFO:
        comms: Json = {}
        for rank in sorted(req.replies):
            comms.update(req.replies[rank].get("comms") or {})
        return {"status": "ok", "comms": comms}
    if merge is Merge.ALL_OK:
        for rank in sorted(req.targets):
            reply = req.replies.get(rank)
            if reply is None:
                return {"status": "error", **error_content(req.dead_ename,
                                                           req.dead.get(rank, ""))}
            if reply.get("status") != "ok":
                return reply
        return {"status": "ok"}
    primary = req.targets[0] if req.targets else None
    reply = req.replies.get(primary) if primary is not None else None
    if reply is None:
        why = req.dead.get(primary, "no rank answered") if primary is not None else "no rank"
        return {"status": "error", **error_content(req.dead_ename, why)}
    return reply
