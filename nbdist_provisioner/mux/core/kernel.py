"""KernelCore: the multi-rank kernel's request lifecycle as a pure state machine.

``handle(event, now)`` takes one event (a frontend message, a rank message, a
rank exit, ranks ready or failed, an interrupt, a tick) and returns the effects
to carry out (send to a rank, publish, reply, ask for input, start or stop
ranks, exit); ``next_deadline()`` says when to tick. No sockets, no clock, no
processes: the shell around it does I/O.

The rules, each unit-tested in tests/core/:
- shell requests are served one at a time in arrival order (per subshell), as
  ipykernel does; control requests and comm messages at once;
- a request is answered once, with one busy and one idle around everything
  parented to it; idle comes after every targeted rank replied *and* went idle;
- after an execute error (stop_on_error, not silent) the execute requests
  already queued are aborted, nothing else;
- a rank that dies ends every open request at once, and the kernel brings up a
  new generation of ranks itself (``lifecycle``), so every client keeps working;
- every rank runs a cell under the kernel's execution count.
"""

from __future__ import annotations

from .effects import Effect, StartRanks
from .events import (
    Event,
    FrontendMessage,
    HistoryRead,
    InterruptSignal,
    RankExited,
    RankMessage,
    RanksFailed,
    RanksReady,
    RanksStopped,
    ShutdownSignal,
    Tick,
)
from .fail_fast import FailFast
from .lifecycle import Phase
from .rank_traffic import RankTraffic
from .serving import Serving
from .state import CoreConfig
from .supervision import Supervision

__all__ = ["CoreConfig", "KernelCore"]


class KernelCore(Serving, RankTraffic, Supervision, FailFast):
    """The multi-rank kernel's request lifecycle; see the module docstring."""

    # -- the interface -----------------------------------------------------------------
    def start(self, now: float) -> list[Effect]:
        """Effects to carry out once, when the kernel process starts."""
        self._now = now
        return [StartRanks(self.life.generation)]

    def handle(self, event: Event, now: float) -> list[Effect]:
        self._now = now
        if isinstance(event, RankMessage):
            self._on_rank(event)
        elif isinstance(event, FrontendMessage):
            self._on_frontend(event)
        elif isinstance(event, Tick):
            self._on_tick()
        elif isinstance(event, RanksReady):
            self._on_ready(event)
        elif isinstance(event, RanksFailed):
            self._on_start_failed(event)
        elif isinstance(event, RankExited):
            self._on_rank_exit(event)
        elif isinstance(event, RanksStopped):
            self._on_stopped(event)
        elif isinstance(event, InterruptSignal):
            self._interrupt()
        elif isinstance(event, ShutdownSignal):
            self._shutdown(None, event.reason)
        elif isinstance(event, HistoryRead):
            self._on_history_read(event)
        fx, self._fx = self._fx, []
        return fx

    def next_deadline(self) -> float | None:
        times = [t for req in self.book.open for t in
                 (req.idle_probe_at, req.failure_check_at, req.interrupt_check_at,
                  req.missing_reply_at, req.fail_fast_at, req.stall_check_at,
                  req.stacks_deadline) if t is not None]
        merger = self.out.next_deadline()
        if merger is not None:
            times.append(merger)
        return min(times) if times else None

    @property
    def phase(self) -> Phase:
        return self.life.phase

    @property
    def generation(self) -> int:
        return self.life.generation

