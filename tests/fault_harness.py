"""Helpers for the fault, fuzz, flood and soak tests: custom kernelspecs, a kernel
under Jupyter's real restarter, timing figures. Reuses kernel_harness for the rest."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.ioloop import AsyncIOLoopKernelManager

from nbdist_provisioner.cli.install import kernel_spec

from kernel_harness import kill_pids, process_tree, wait_gone

#: Figures the issue asks for; each is also printed as "FIGURE ..." (see with pytest -s).
FIGURES: list[str] = []


def figure(text: str) -> None:
    FIGURES.append(text)
    print(f"FIGURE {text}")


def install_spec(prefix: Path, name: str, ranks: int, **config: Any) -> str:
    """A kernelspec for ``ranks`` ranks with more provisioner ``config`` (kernel.json,
    which may override nproc) in the test prefix."""
    spec = kernel_spec(ranks, None, sys.executable, {})
    spec["metadata"]["kernel_provisioner"]["config"].update(config)
    d = prefix / "share" / "jupyter" / "kernels" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "kernel.json").write_text(json.dumps(spec, indent=1))
    return name


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class RestartingKernel:
    """A kernel owned by jupyter_client's AsyncIOLoopKernelManager with autorestart (what
    jupyter_server uses), its event loop in a thread; a blocking client for the test.

    ``restarts`` records the restarter's "restart" callbacks: the moment a frontend
    would show "restarting".
    """

    def __init__(self, kernel_name: str, **start_kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.restarts: list[float] = []
        self.dead: list[float] = []
        self.seen_pids: set[int] = set()
        self.km: AsyncIOLoopKernelManager = self.call(self._start(kernel_name, start_kw))
        self.kc = BlockingKernelClient()
        self.kc.load_connection_info(self.km.get_connection_info())
        # This client knows the kernel by its heartbeat alone; 1 s without a pong (a
        # loaded 2-core machine starting N ranks) would make wait_for_ready call it dead.
        self.kc.hb_channel.time_to_dead = 5.0
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.remember_pids()

    async def _start(self, kernel_name: str, start_kw: dict[str, Any]) -> Any:
        km = AsyncIOLoopKernelManager(kernel_name=kernel_name)
        await km.start_kernel(**start_kw)
        # (as jupyter_server does: callbacks can only be added once the restarter exists)
        km.add_restart_callback(lambda: self.restarts.append(time.monotonic()), "restart")
        km.add_restart_callback(lambda: self.dead.append(time.monotonic()), "dead")
        return km

    def call(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def mux_pid(self) -> int:
        return int(self.km.provisioner.pid)

    def pids(self) -> list[int]:
        return process_tree(self.mux_pid)

    def remember_pids(self) -> list[int]:
        pids = self.pids()
        self.seen_pids.update(pids)
        return pids

    def rank_pids(self) -> dict[int, int]:
        """rank -> pid, asked from the ranks themselves."""
        from kernel_harness import run_cell

        run = run_cell(self.kc, "import os\nprint('PID', rank, os.getpid())")
        pids = {}
        for line in run.stream_text().splitlines():
            rank, pid = line.split()[-2:]
            pids[int(rank)] = int(pid)
        self.seen_pids.update(pids.values())
        return pids

    def wait_restarted(self, old_mux: int, count: int = 1, timeout: float = 60) -> float:
        """Wait for the restarter's ``count``-th restart and a multiplexer other than
        ``old_mux``; return when the restart began (the "restarting" notice)."""
        wait_for(lambda: len(self.restarts) >= count, timeout, "the restarter to restart")
        wait_for(lambda: self._current_mux() not in (None, old_mux), timeout,
                 "a new multiplexer")
        self.remember_pids()
        return self.restarts[count - 1]

    def _current_mux(self) -> int | None:
        provisioner = self.km.provisioner
        return provisioner.pid if provisioner is not None else None

    def shutdown(self) -> list[int]:
        """Shut down, stop the loop; return every pid ever seen that is still running."""
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.remember_pids()
            self.call(self.km.shutdown_kernel(now=False))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        alive = wait_gone(sorted(self.seen_pids))
        if alive:
            kill_pids(alive)
        return alive


def owned_children() -> set[int]:
    """pids of this test process's children (to prove a refused start spawned nothing)."""
    import psutil

    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
