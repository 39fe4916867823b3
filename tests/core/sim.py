"""A world around the request core, in memory: a frontend, and ranks that answer the way
ipykernel does, message by message, with the test choosing the order of delivery.

Nothing here imports zmq or starts a process: the core is driven exactly as the shell
drives it, with events, and what it does is read back from its effects.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nbdist_provisioner.mux.core import CoreConfig, KernelCore
from nbdist_provisioner.mux.core.effects import (
    AskInput,
    Effect,
    Exit,
    Log,
    Publish,
    Reply,
    SendToRank,
    StartRanks,
    StopRanks,
)
from nbdist_provisioner.mux.core.events import (
    FrontendMessage,
    InterruptSignal,
    RankExited,
    RankInfo,
    RankMessage,
    RanksFailed,
    RanksReady,
    RanksStopped,
    ShutdownSignal,
    Tick,
)

Json = dict[str, Any]
PORTS = (("shell", 5001), ("iopub", 5002), ("stdin", 5003), ("control", 5004), ("hb", 5005))


@dataclass
class Plan:
    """How the ranks answer one execute request."""

    failing: frozenset[int] = frozenset()
    #: text each rank prints (stdout) before replying
    prints: str = ""
    #: ranks that never answer by themselves (a collective waiting for a failed rank)
    hanging: frozenset[int] = frozenset()
    #: where the hanging ranks are: in a torch.distributed collective (an abort of the
    #: process group makes it raise), or in code of their own
    in_collective: bool = True
    #: ranks whose new process group cannot be made
    reinit_fails: frozenset[int] = frozenset()


@dataclass
class SimRank:
    rank: int
    generation: int
    #: messages waiting to be delivered, per channel (each channel keeps its order)
    queues: dict[str, deque[RankMessage]] = field(default_factory=dict)
    #: what this rank received, in order
    received: list[SendToRank] = field(default_factory=list)
    alive: bool = True
    count: int = 0
    #: the execute this rank hangs in, and the plan it runs under
    hanging: SendToRank | None = None
    hanging_plan: Plan | None = None


class Sim:
    def __init__(self, nproc: int = 2, ready: bool = True,
                 rank_kernel_info: Json | None = None, **config: Any) -> None:
        self.rank_kernel_info = rank_kernel_info or {}
        self.core = KernelCore(CoreConfig(nproc=nproc, ports=PORTS, **config), id_prefix="t")
        self.nproc = nproc
        self.now = 0.0
        self.log: list[Effect] = []
        self.ranks: dict[int, SimRank] = {}
        self.plans: dict[str, Plan] = {}
        self.auto = True  # ranks answer at once (tests of ordering set it False)
        self._ids = itertools.count(1)
        self.sent_requests: list[FrontendMessage] = []
        self.started: list[int] = []
        self.stopped: list[int] = []
        self.exited: int | None = None
        self._apply(self.core.start(self.now))
        if ready:
            self.ready()

    # -- driving -------------------------------------------------------------------
    def _apply(self, effects: list[Effect]) -> None:
        for e in effects:
            self.log.append(e)
            if isinstance(e, StartRanks):
                self.started.append(e.generation)
            elif isinstance(e, StopRanks):
                self.stopped.append(e.generation)
                for r in self.ranks.values():
                    if r.generation == e.generation:
                        r.alive = False
                        r.queues.clear()
            elif isinstance(e, Exit):
                self.exited = e.status
            elif isinstance(e, SendToRank):
                self._rank_receives(e)

    def feed(self, event: Any) -> list[Effect]:
        before = len(self.log)
        self._apply(self.core.handle(event, self.now))
        if self.auto:
            self.deliver_all()
        return self.log[before:]

    def ready(self, generation: int | None = None) -> None:
        gen = generation if generation is not None else self.core.generation
        self.ranks = {r: SimRank(r, gen) for r in range(self.nproc)}
        infos = {r: RankInfo(host="node", local_rank=r, pid=100 + r,
                             kernel_info={"language_info": {"name": "python"},
                                          **self.rank_kernel_info})
                 for r in range(self.nproc)}
        self.feed(RanksReady(gen, infos))

    def frontend(self, msg_type: str, content: Json | None = None, channel: str = "shell",
                 metadata: Json | None = None, header: Json | None = None,
                 parent: Json | None = None, plan: Plan | None = None) -> str:
        msg_id = f"f{next(self._ids)}"
        hdr = {"msg_id": msg_id, "msg_type": msg_type, "session": "s", "username": "u",
               "version": "5.5", **(header or {})}
        msg = FrontendMessage(channel, (b"client",), hdr, content if content is not None
                              else {}, metadata or {}, (), parent or {})
        self.sent_requests.append(msg)
        if plan is not None:
            self.plans[msg_id] = plan
        self.feed(msg)
        return msg_id

    def execute(self, code: str = "pass", plan: Plan | None = None, **content: Any) -> str:
        return self.frontend("execute_request", {"code": code, "silent": False,
                                                 "store_history": True, **content},
                             plan=plan or Plan())

    def tick(self, seconds: float) -> list[Effect]:
        self.now += seconds
        return self.feed(Tick())

    def interrupt(self) -> list[Effect]:
        return self.feed(InterruptSignal())

    def kill(self, rank: int, how: str = "", tail: str = "") -> list[Effect]:
        r = self.ranks[rank]
        r.alive = False
        r.queues.clear()
        return self.feed(RankExited(r.generation, rank, how or f"rank {rank} (pid {100 + rank}) "
                                    "was killed by signal SIGKILL", tail))

    def start_failed(self, error: str = "rank 1 could not import zmq") -> list[Effect]:
        return self.feed(RanksFailed(self.core.generation, error))

    def stopped_ranks(self, generation: int) -> list[Effect]:
        return self.feed(RanksStopped(generation))

    def shutdown_signal(self) -> list[Effect]:
        return self.feed(ShutdownSignal("SIGTERM"))

    # -- the ranks, as ipykernel answers ---------------------------------------------------
    def _rank_receives(self, e: SendToRank) -> None:
        r = self.ranks.get(e.rank)
        if r is None or not r.alive or r.generation != e.generation:
            return
        r.received.append(e)
        parent = {"msg_id": e.msg_id, "msg_type": e.msg_type, **e.header_extra}
        if e.channel == "stdin":
            return
        if e.msg_type == "execute_request":
            plan = self._plan_for(e)
            if e.rank in plan.hanging:
                self._emit(r, "iopub", "status", {"execution_state": "busy"}, parent)
                r.hanging, r.hanging_plan = e, plan
                return
            count = e.metadata.get("nbdist_execution_count", r.count + 1)
            self._emit(r, "iopub", "status", {"execution_state": "busy"}, parent)
            if plan.prints:
                self._emit(r, "iopub", "stream", {"name": "stdout", "text": plan.prints}, parent)
            if e.rank in plan.failing:
                err = {"ename": "ValueError", "evalue": "bad",
                       "traceback": [f"Cell In[{count}]", "ValueError: bad"]}
                self._emit(r, "iopub", "error", err, parent)
                self._emit(r, "shell", "execute_reply",
                           {"status": "error", "execution_count": count, **err}, parent)
            else:
                self._emit(r, "shell", "execute_reply",
                           {"status": "ok", "execution_count": count, "user_expressions": {},
                            "payload": []}, parent)
            self._emit(r, "iopub", "status", {"execution_state": "idle"}, parent)
            return
        channel = "control" if e.channel == "control" else "shell"
        self._emit(r, "iopub", "status", {"execution_state": "busy"}, parent)
        if e.msg_type == "nbdist_pg_abort_request":
            self._abort_collective(r)
        reply = self._reply_content(e)
        if reply is not None:
            self._emit(r, channel, e.msg_type.replace("_request", "_reply"), reply, parent)
        self._emit(r, "iopub", "status", {"execution_state": "idle"}, parent)

    def _abort_collective(self, r: SimRank) -> None:
        """The process group's collectives end: a rank waiting in one raises."""
        if r.hanging is None or r.hanging_plan is None or not r.hanging_plan.in_collective:
            return
        e, r.hanging = r.hanging, None
        parent = {"msg_id": e.msg_id, "msg_type": e.msg_type}
        err = {"ename": "RuntimeError", "evalue": "Connection closed by peer",
               "traceback": ["RuntimeError: Connection closed by peer"]}
        self._emit(r, "iopub", "error", err, parent)
        self._emit(r, "shell", "execute_reply", {"status": "error", "execution_count": 1,
                                                 **err}, parent)
        self._emit(r, "iopub", "status", {"execution_state": "idle"}, parent)

    def _reply_content(self, e: SendToRank) -> Json | None:
        t = e.msg_type
        r = self.ranks[e.rank]
        if t == "nbdist_stack_request":
            plan = r.hanging_plan if r.hanging is not None else None
            inside = plan is not None and plan.in_collective
            return {"status": "ok", "rank": e.rank, "busy": r.hanging is not None,
                    "in_collective": inside, "collective": "all_reduce" if inside else None,
                    "where": ("dist.all_reduce(t) at line 4 of In[1]" if inside
                              else "train() at line 2 of In[1]")}
        if t == "nbdist_pg_abort_request":
            return {"status": "ok", "rank": e.rank, "aborted": True}
        if t == "nbdist_pg_reinit_request":
            fails = any(e.rank in p.reinit_fails for p in self.plans.values())
            if fails:
                return {"status": "error", "rank": e.rank, "ename": "DistStoreError",
                        "evalue": "timed out"}
            return {"status": "ok", "rank": e.rank, "generation": e.content["generation"]}
        if t.startswith("comm_") and not t.endswith("_request"):
            return None
        if t == "comm_info_request":
            return {"status": "ok", "comms": {f"c{e.rank}": {"target_name": "t"}}}
        if t == "create_subshell_request":
            return {"status": "ok", "subshell_id": f"sub-{e.rank}-{e.msg_id}"}
        if t == "complete_request":
            return {"status": "ok", "matches": [f"from{e.rank}"], "cursor_start": 0,
                    "cursor_end": 0, "metadata": {}}
        return {"status": "ok"}

    def _plan_for(self, e: SendToRank) -> Plan:
        for req_id, plan in self.plans.items():
            if self._frontend_of(e.msg_id) == req_id:
                return plan
        return Plan()

    def _frontend_of(self, rank_msg_id: str) -> str | None:
        return self.core._frontend_id(rank_msg_id)

    def _emit(self, r: SimRank, channel: str, msg_type: str, content: Json, parent: Json,
              metadata: Json | None = None) -> None:
        header = {"msg_id": f"r{r.rank}-{next(self._ids)}", "msg_type": msg_type}
        r.queues.setdefault(channel, deque()).append(RankMessage(
            r.generation, r.rank, channel, header, parent, content, metadata or {}))

    def rank_says(self, rank: int, channel: str, msg_type: str, content: Json,
                  parent_msg_id: str, metadata: Json | None = None,
                  buffers: tuple[Any, ...] = ()) -> list[Effect]:
        """Deliver one message of a rank now (outputs, comm messages, prompts)."""
        r = self.ranks[rank]
        header = {"msg_id": f"r{rank}-{next(self._ids)}", "msg_type": msg_type}
        return self.feed(RankMessage(r.generation, rank, channel, header,
                                     {"msg_id": parent_msg_id}, content, metadata or {},
                                     buffers))

    def pending(self) -> list[tuple[int, str]]:
        return [(r.rank, ch) for r in self.ranks.values() if r.alive
                for ch, q in r.queues.items() if q]

    def deliver(self, rank: int, channel: str) -> None:
        msg = self.ranks[rank].queues[channel].popleft()
        self._apply(self.core.handle(msg, self.now))

    def deliver_all(self) -> None:
        while True:
            pending = self.pending()
            if not pending:
                return
            for rank, channel in pending:
                self.deliver(rank, channel)

    # -- what the frontend saw ------------------------------------------------------------
    def iopub(self, msg_id: str) -> list[Publish]:
        return [e for e in self.log if isinstance(e, Publish)
                and e.parent.get("msg_id") == msg_id]

    def replies(self, msg_id: str | None = None) -> list[Reply]:
        return [e for e in self.log if isinstance(e, Reply)
                and (msg_id is None or e.parent.get("msg_id") == msg_id)]

    def reply(self, msg_id: str) -> Json:
        (reply,) = self.replies(msg_id)
        return reply.content

    def statuses(self, msg_id: str) -> list[str]:
        return [e.content["execution_state"] for e in self.iopub(msg_id)
                if e.msg_type == "status"]

    def outputs(self, msg_id: str, msg_type: str | None = None) -> list[Publish]:
        return [e for e in self.iopub(msg_id) if e.msg_type != "status"
                and (msg_type is None or e.msg_type == msg_type)]

    def stream(self, msg_id: str, name: str = "stdout") -> str:
        return "".join(e.content["text"] for e in self.outputs(msg_id, "stream")
                       if e.content["name"] == name)

    def sent(self, msg_type: str | None = None, rank: int | None = None) -> list[SendToRank]:
        return [e for e in self.log if isinstance(e, SendToRank)
                and (msg_type is None or e.msg_type == msg_type)
                and (rank is None or e.rank == rank)]

    def prompts(self) -> list[AskInput]:
        return [e for e in self.log if isinstance(e, AskInput)]

    def logs(self, level: str | None = None) -> list[str]:
        return [e.text for e in self.log if isinstance(e, Log)
                and (level is None or e.level == level)]
