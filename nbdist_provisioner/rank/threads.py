"""Output of threads belongs to the cell that started them.

ipykernel sends what a thread prints under the *latest* request of the kernel, so
a background thread started in one cell prints into whatever cell runs later.
ipykernel keeps a per-thread parent (a ContextVar on stdout, stderr, the display
hook and the display publisher); this module sets it in every thread started while
a cell runs, to that cell. The multiplexer then knows the output's true cell: while
that cell runs it lands there, afterwards it is never put into another cell.

Pool workers (``concurrent.futures``, ``multiprocessing.pool.ThreadPool``) run work
of whichever cell submits it, so they keep ipykernel's behaviour (the latest cell).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any

_installed = False


def _pool_targets() -> tuple[Any, ...]:
    import concurrent.futures.thread as cf_thread
    import multiprocessing.pool as mp_pool

    return (cf_thread._worker, mp_pool.worker)


def _targets(shell: Any) -> list[Any]:
    """Objects that route output by a per-thread parent header."""
    objs = [sys.stdout, sys.stderr, getattr(shell, "displayhook", None),
            getattr(shell, "display_pub", None)]
    return [o for o in objs if hasattr(o, "set_thread_parent") and hasattr(o, "parent_header")]


def install(shell: Any) -> None:
    """Make threads started during a cell keep that cell as their output's parent."""
    global _installed
    if _installed:
        return
    _installed = True
    pool_targets = _pool_targets()
    original_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if getattr(self, "_target", None) not in pool_targets:
            targets = _targets(shell)
            parents = [(t, t.parent_header) for t in targets]
            if parents and parents[0][1]:
                run = self.run

                def run_with_parent() -> None:
                    for target, parent in parents:
                        target.set_thread_parent(parent)
                    run()

                # (a Thread subclass with __slots__ is left as it is)
                with contextlib.suppress(AttributeError):
                    self.run = run_with_parent  # type: ignore[method-assign]
        original_start(self)

    threading.Thread.start = start  # type: ignore[method-assign]
