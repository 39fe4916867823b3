"""IPython extension loaded into every rank kernel: rank magics."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from . import threads


def _memory_mb() -> str:
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    return "?"


@magics_class
class RankMagics(Magics):
    @line_magic
    def dist_status(self, line: str) -> None:
        """One line per rank: rank, pid, host, device, memory, process-group state."""
        ns = self.shell.user_ns
        device = ns.get("device", "cpu")
        dist = ns.get("dist")
        pg = "initialised" if dist is not None and dist.is_initialized() else "not initialised"
        extra = ""
        if str(device).startswith("cuda"):
            torch = sys.modules.get("torch")  # imported by the process-group set-up
            if torch is not None:
                extra = (f", cuda mem {torch.cuda.memory_allocated(device) // 2**20} MiB"
                         f" (reserved {torch.cuda.memory_reserved(device) // 2**20} MiB)")
        print(
            f"rank {os.environ.get('RANK')}/{os.environ.get('WORLD_SIZE')} "
            f"pid {os.getpid()} host {socket.gethostname()} device {device} "
            f"rss {_memory_mb()}{extra} process group {pg}"
        )

    @line_magic
    def rank_output(self, line: str) -> None:
        """Handled by the multiplexer, on the first line(s) of a cell only."""
        raise UsageError(
            "%rank_output is handled by the multi-rank kernel itself: put it on the first "
            "line of a cell (e.g. `%rank_output 0`, `%rank_output all`)")


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(RankMagics)
    threads.install(ipython)
