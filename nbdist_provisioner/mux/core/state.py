"""The request core's state, and the small helpers every part of it uses.

``KernelCore`` (kernel.py) is made of three parts over this state: ``Serving``
(frontend requests: queues, dispatch, replies), ``RankTraffic`` (rank messages
and stdin) and ``Supervision`` (ranks up and down, interrupts, shutdown,
timers). Each part calls the others only through the methods declared here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ...rankset import format_ranks
from .book import RequestBook
from .debugging import Debugging
from .effects import Effect, Log, Publish, Reply, SendToRank
from .events import FrontendMessage, RankInfo, RankMessage
from .inputs import InputRouter, PendingInput
from .lifecycle import RankLifecycle
from .output_router import OutputRouter
from .policy import reply_type
from .request import Request
from .subshells import SubshellMap

Json = dict[str, Any]


@dataclass(frozen=True)
class CoreConfig:
    """What the core needs of the kernel's settings."""

    nproc: int
    primary_rank: int = 0
    stream_prefix: str = "[rank {rank}] "
    output_ranks: tuple[int, ...] | None = None
    #: seconds output is held to show what several ranks print identically once
    merge_window: float = 0.1
    #: the rank the debugger debugs; -1: the primary rank
    debug_rank: int = -1
    collective_timeout: float = 300.0
    #: end collectives that cannot complete and make the process group again
    fail_fast: bool = True
    #: the frontend's ports, for connect_request
    ports: tuple[tuple[str, int], ...] = ()


class CoreState:
    """Everything the core knows; pure data plus effect helpers."""

    def __init__(self, config: CoreConfig, id_prefix: str = "nbdist") -> None:
        self.config = config
        self.ranks = tuple(range(config.nproc))
        self.life = RankLifecycle()
        self.book = RequestBook(config.nproc)
        self.prefixes = {r: self._prefix(r, r, "") for r in self.ranks}
        shown = set(config.output_ranks) if config.output_ranks is not None else set(self.ranks)
        self.out = OutputRouter(self.prefixes, shown, config.merge_window, self._group_prefix)
        self.inputs = InputRouter()
        self.debugging = Debugging(config.debug_rank if config.debug_rank >= 0
                                   else config.primary_rank)
        self.subshells = SubshellMap()
        self.execution_count = 0
        #: process groups made again by fail-fast (each gets a generation never used before)
        self.group_generation = 0
        self.rank_infos: dict[int, RankInfo] = {}
        self._queues: dict[str, deque[Request]] = {"": deque()}
        self._active: dict[str, Request | None] = {"": None}
        #: served requests waiting for ranks to be ready
        self._waiting: list[Request] = []
        #: history requests answered from the database while the ranks start
        self._history_reads: dict[str, Request] = {}
        self._notes: list[str] = []
        self._shutdowns: list[Request] = []
        self._id_prefix = id_prefix
        self._ids = 0
        self._pumping = False
        self._now = 0.0
        self._fx: list[Effect] = []

    # -- provided by the parts (kernel.py composes them) -----------------------------------
    def _finish(self, req: Request) -> None:
        raise NotImplementedError

    def _fail(self, req: Request, ename: str, evalue: str,
              traceback: list[str] | None = None) -> None:
        raise NotImplementedError

    def _dispatch(self, req: Request) -> None:
        raise NotImplementedError

    def _start_execute(self, req: Request) -> None:
        raise NotImplementedError

    def _unavailable(self) -> tuple[str, str]:
        raise NotImplementedError

    def _show_input(self, item: PendingInput | None) -> None:
        raise NotImplementedError

    def _on_input_reply(self, m: FrontendMessage) -> None:
        raise NotImplementedError

    def _interrupt(self) -> None:
        raise NotImplementedError

    def _shutdown(self, req: Request | None, why: str) -> None:
        raise NotImplementedError

    def _drop_subshell(self, subshell_id: str, why: str) -> None:
        raise NotImplementedError

    def _replace_ranks_for(self, why: str) -> None:
        raise NotImplementedError

    def _rank_replied(self, req: Request, rank: int, content: Json) -> None:
        raise NotImplementedError

    def _on_internal_reply(self, purpose: str, req: Request | None, rank: int,
                           content: Json) -> None:
        raise NotImplementedError

    def _hold_for_new_group(self, req: Request) -> bool:
        raise NotImplementedError

    def _interrupted_cell(self, req: Request) -> None:
        raise NotImplementedError

    def _fail_fast_ticks(self, req: Request) -> None:
        raise NotImplementedError

    # -- small helpers ------------------------------------------------------------------
    def _frontend_id(self, rank_msg_id: str) -> str | None:
        entry = self.book.live(rank_msg_id)
        if entry is not None:
            return entry[0].msg_id
        finished = self.book.finished_entry(rank_msg_id)
        return finished.frontend_msg_id if finished else None

    def _group_prefix(self, ranks: list[int]) -> str:
        """The label of a line several ranks printed identically: ``[ranks 0-3] `` for the
        default template, the template with the ranks for another, nothing when off."""
        template = self.config.stream_prefix
        if not template:
            return ""
        spec = format_ranks(ranks)
        if "rank {rank}" in template:
            template = template.replace("rank {rank}", "ranks {rank}")
        hosts = {self.rank_infos[r].host for r in ranks if r in self.rank_infos}
        return template.format(rank=spec, local_rank=spec, world_size=self.config.nproc,
                               host=hosts.pop() if len(hosts) == 1 else "*")

    def _prefix(self, rank: int, local_rank: int, host: str) -> str:
        return self.config.stream_prefix.format(rank=rank, local_rank=local_rank,
                                                host=host or "localhost",
                                                world_size=self.config.nproc)

    def _new_id(self) -> str:
        self._ids += 1
        return f"{self._id_prefix}_{self._ids}"

    def _status(self, state: str, parent: Json) -> None:
        self._fx.append(Publish("status", {"execution_state": state}, parent))

    def _publish(self, msg_type: str, content: Json, req: Request) -> None:
        self._fx.append(Publish(msg_type, content, req.header))

    def _notice(self, req: Request, text: str) -> None:
        """An nbdist message for the user, on stderr of the cell ``req``."""
        self._publish("stream", {"name": "stderr", "text": text}, req)

    def _reply(self, req: Request, content: Json, metadata: Json | None = None) -> None:
        self._fx.append(Reply(req.msg.channel, req.msg.idents, reply_type(req.msg_type),
                              content, req.header, metadata or {}))

    def _log(self, level: str, text: str) -> None:
        self._fx.append(Log(level, text))

    def _after_rank_output(self, m: RankMessage) -> None:
        """After a rank's iopub message went its way: Output widget states the ranks must
        learn, and a word in the cell when the debugged rank stops at a breakpoint."""
        if (m.header.get("msg_type") == "debug_event" and m.content.get("event") == "stopped"
                and m.rank == self.debugging.rank):
            for req in self.book.open:
                if req.msg_type == "execute_request" and m.rank in req.targets:
                    self._notice(req, self.debugging.stopped_notice(
                        m.content.get("body") or {}, len(req.targets)))
        self._sync_widgets()

    def _sync_widgets(self) -> None:
        """Output widget states the ranks must learn (what their widgets captured, as a
        frontend would sync it back): sent as comm messages nobody waits on."""
        for sync in self.out.to_ranks:
            msg_id = self._new_id()
            self.book.internal(msg_id, "output widget state")
            self._fx.append(SendToRank(self.life.generation, sync.rank, "shell", "comm_msg",
                                       msg_id, sync.content, sync.metadata))
        self.out.to_ranks.clear()

