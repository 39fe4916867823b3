"""The kernel's phase, the generations of its ranks, and when to stop replacing them.

Ranks come in generations: the first start is generation 1, and every time a
rank dies (or a wedged cell is escalated) the kernel replaces all of them with
the next generation, so any client keeps a working kernel without a restarter.
A rank that keeps dying right after each start would make that a loop: after
``MAX_QUICK_DEATHS`` generations in a row that died within ``QUICK_DEATH_WINDOW``
seconds of becoming ready, the kernel stops trying and every request fails with
the cause. Ranks the user gave up on (a second interrupt) do not count.
"""

from __future__ import annotations

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
        self._ready_at = 0.0
        #: generations in a row that died soon after they became ready
        self._quick_deaths = 0

    def ready(self, generation: int, now: float = 0.0) -> bool:
        """Ranks of ``generation`` are up; False if they are not the current ones."""
        if generation != self.generation or self.phase is not Phase.STARTING:
            return False
        self.phase = Phase.READY
        self._ready_at = now
        return True

    def start_failed(self, generation: int, error: str) -> bool:
        if generation != self.generation or self.phase is not Phase.STARTING:
            return False
        self.phase = Phase.FAILED
        self.failure = error
        return True

    def replace(self, now: float, why: str, death: bool = True) -> bool:
        """The current ranks are lost (``death``: one of them died); True: start the next
        generation. False: they died too often, right after starting, and the kernel is
        FAILED with the reason."""
        if death and now - self._ready_at <= QUICK_DEATH_WINDOW:
            self._quick_deaths += 1
        else:
            self._quick_deaths = 0
        if self._quick_deaths >= MAX_QUICK_DEATHS:
            self.phase = Phase.FAILED
            self.failure = (f"ranks died {self._quick_deaths} times in a row within "
                            f"{QUICK_DEATH_WINDOW:g}s of starting, the last time because "
                            f"{why}; the kernel stopped starting new ranks. Restart the "
                            f"kernel to try again.")
            return False
        self.generation += 1
        self.phase = Phase.STARTING
        return True

    def stopping(self) -> None:
        self.phase = Phase.STOPPING
