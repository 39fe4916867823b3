"""IPython extension loaded into every rank kernel: rank magics."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from . import control, distributed, nested, process_group, threads


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
        pg = (distributed.keeper().describe() if "torch" in sys.modules
              else "not initialised (torch not imported)")
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
    def dist_init(self, line: str) -> None:
        """Initialise the default process group again, on every rank (run it as a cell).

        After ``dist.destroy_process_group()`` or ``accelerator.end_training()``: the
        same world (ranks, backend, device), so frameworks' cached state stays valid.
        """
        if line.strip():
            raise UsageError("%dist_init takes no arguments")
        print(f"process group {distributed.keeper().init_again()}: "
              f"{distributed.keeper().describe()}")

    @line_magic
    def rank_output(self, line: str) -> None:
        """Handled by the multiplexer, on the first line(s) of a cell only."""
        raise UsageError(
            "%rank_output is handled by the multi-rank kernel itself: put it on the first "
            "line of a cell (e.g. `%rank_output 0`, `%rank_output all`)")

    @line_magic
    def debug_rank(self, line: str) -> None:
        """Handled by the multiplexer, on the first line(s) of a cell only."""
        raise UsageError(
            "%debug_rank is handled by the multi-rank kernel itself: put it on the first "
            "line of a cell (e.g. `%debug_rank 1`)")


class ProcessGroupWatch:
    """After each cell: remember a failed collective; say once that the group was destroyed."""

    def __init__(self) -> None:
        self.was_initialised = False

    def pre_run_cell(self, info: Any) -> None:
        dist = sys.modules.get("torch.distributed")
        self.was_initialised = bool(dist is not None and dist.is_initialized())

    def post_run_cell(self, result: Any) -> None:
        dist = sys.modules.get("torch.distributed")
        if dist is None:
            return
        keeper = distributed.keeper()
        if result.error_in_exec is not None:
            keeper.note_cell_error(result.error_in_exec)
        # an abort (the multiplexer's fail-fast) is not the user's doing: it says so itself
        if (self.was_initialised and not dist.is_initialized()
                and keeper.observe().state == process_group.DESTROYED):
            print("[nbdist] this cell destroyed the process group; run %dist_init (on every "
                  "rank) to initialise it again", file=sys.stderr)


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(RankMagics)
    threads.install(ipython)
    cells = control.CellTracker()
    watch = ProcessGroupWatch()
    for hook in (cells, watch):
        ipython.events.register("pre_run_cell", hook.pre_run_cell)
        ipython.events.register("post_run_cell", hook.post_run_cell)
    kernel = getattr(ipython, "kernel", None)
    if kernel is not None:
        control.ControlHandlers(kernel, ipython, cells).install()
    nested.install()
