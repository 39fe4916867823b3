"""The kernel's phase, the generations of its ranks, and when to stop replacing them.

Ranks come in generations: the first start is generation 1, and every time a
rank dies (or a wedged cell is escalated) the kernel replaces all of them with
the next generation, so any client keeps a working kernel without a restarter.
A rank that keeps dying right after each start would make that a loop: after
``MAX_QUICK_DEATHS`` deaths within ``QUICK_DEATH_WINDOW`` seconds the kernel
stops trying and every request fails with the cause.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

MAX_QUICK_DEATHS = 3
QUICK_DEATH_WINDOW = 60.0


class Phase(Enum):
    STARTING = "starting"  # ranks of the current generation are starting: requests wait
    READY = "ready"  # ranks serve requests
    FAILED = "failed"  # ranks cannot run: requests fail with ``failure``
    STOPPING = "stopping"  # the kernel is shutting down: requests fail


class RankLifecycle:
    """Phase and generation; pure (``now`` is passed in)."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.generation = 1
        self.failure: str | None = None
        self._deaths: deque[float] = deque()

    def ready(self, generation: int) -> bool:
        """Ranks of ``generation`` are up; False if they are not the current ones."""
        if generation != self.generation or self.phase is not Phase.STARTING:
            return False
        self.phase = Phase.READY
        return True

    def start_failed(self, generation: int, error: str) -> bool:
        if generation != self.generation or self.phase is not Phase.STARTING:
            return False
        self.phase = Phase.FAILED
        self.failure = error
        return True

    def replace(self, now: float, why: str) -> bool:
        """The current ranks are lost; True: start the next generation. False: they died
        too often too quickly, and the kernel is FAILED with the reason."""
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > QUICK_DEATH_WINDOW:
            self._deaths.popleft()
        if len(self._deaths) >= MAX_QUICK_DEATHS:
            self.phase = Phase.FAILED
            self.failure = (f"ranks were lost {len(self._deaths)} times within "
                            f"{QUICK_DEATH_WINDOW:g}s, the last time because {why}; the "
                            f"kernel stopped starting new ranks. Restart the kernel to try "
                            f"again.")
            return False
        self.generation += 1
        self.phase = Phase.STARTING
        return True

    def stopping(self) -> None:
        self.phase = Phase.STOPPING
