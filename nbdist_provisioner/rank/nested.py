"""Refuse, at once and in plain words, to start a second distributed world in a rank.

Every rank already is one process of a launched job: it has the torchrun
environment (``RANK``, ``MASTER_PORT``, ``TORCHELASTIC_RUN_ID`` …) and rank 0
owns the store on ``MASTER_PORT``. A notebook launcher run in a cell
(``accelerate.notebook_launcher``, Lightning's ``ddp_notebook``/``ddp_spawn``,
``torch.multiprocessing.spawn``) starts N more processes *per rank*, which
inherit that environment: they bind ports the outer world holds (EADDRINUSE
on 29500 or ``MASTER_PORT``), join the outer store, or, forked, reuse the
parent's process-group connections, and wait there until a timeout.

Where it is caught: a Python audit hook (``sys.addaudithook``, no library is
changed) sees process creation (``os.fork``) and temporary files
(``tempfile.mkstemp``/``mkdtemp``: torch's spawn makes an error file per
process before starting it, torchelastic a log directory before its agent
binds a port), and raises when the Python stack shows one of the launchers
below. DataLoader workers and other subprocesses are not affected.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any

#: (path fragment, function name or None for any) of frames that launch a world
LAUNCHER_FRAMES = (
    ("/torch/multiprocessing/spawn.py", "start_processes"),
    ("/torch/distributed/elastic/agent/", None),
    ("/torch/distributed/launcher/", None),
)
#: audit events those launchers raise before their first process or port (all rare)
WATCHED_EVENTS = {"os.fork", "os.forkpty", "tempfile.mkstemp", "tempfile.mkdtemp"}


class NestedWorldError(RuntimeError):
    """A launcher tried to start a distributed world inside a rank of one."""


def launcher_in_stack(frame: FrameType | None) -> str | None:
    """``file:function`` of the outermost launcher frame on the stack, if any."""
    found = None
    while frame is not None:
        filename = frame.f_code.co_filename.replace(os.sep, "/")
        for fragment, name in LAUNCHER_FRAMES:
            if fragment in filename and (name is None or frame.f_code.co_name == name):
                found = f"{filename.rsplit('/torch/', 1)[-1]}:{frame.f_code.co_name}"
        frame = frame.f_back
    return found


def message(launcher: str) -> str:
    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    return (
        f"nbdist: not starting a distributed world inside rank {rank} of this {world}-rank "
        f"kernel ({launcher}). Every rank already is one process of a running world, as "
        "under torchrun, so notebook_launcher(...), Trainer(strategy='ddp_notebook' or "
        "'ddp_spawn') and mp.spawn(...) would start processes per rank that collide with it "
        "(ports, store, process group). Call the training function directly on every rank "
        "instead: train() rather than notebook_launcher(train, ...); Lightning: "
        f"Trainer(strategy='ddp', devices={world}); Fabric(strategy='ddp').")


class _Guard:
    def __init__(self) -> None:
        self.busy = False

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in WATCHED_EVENTS or self.busy:
            return
        self.busy = True  # stack walking raises audit events of its own
        try:
            launcher = launcher_in_stack(sys._getframe(1))
        finally:
            self.busy = False
        if launcher is not None:
            raise NestedWorldError(message(launcher))


_installed = False


def install() -> None:
    """Add the audit hook to this rank process (once; audit hooks cannot be removed)."""
    global _installed
    if not _installed:
        sys.addaudithook(_Guard())
        _installed = True
