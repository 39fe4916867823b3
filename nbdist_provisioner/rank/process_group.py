"""The rank's default process group over its life: health, abort, re-rendezvous.

One ``ProcessGroupKeeper`` per rank process. The main thread (cells, magics)
and the control thread (the multiplexer's fail-fast requests) both use it,
so its record is behind a lock; the torch calls themselves are made
outside it where they may block (a rendezvous waits for every rank).

Why these choices:

- **Abort, not destroy.** ``destroy_process_group`` on gloo waits for the
  work in flight, i.e. forever in a rank stuck in a collective;
  ``_abort_process_group`` closes the connections at once (gloo pairs, NCCL
  communicators via ``ncclCommAbort``), so every peer blocked on this rank
  gets an error instead of waiting ``collective_timeout``.
- **A new store for every re-rendezvous**, in a file under the kernel's
  private (0700) run directory: nothing is bound, so no port can be taken or
  stolen between choosing and using it, and nothing of the aborted world
  (keys, half-finished waits) can leak into the new one. The generation
  number comes from the caller (the multiplexer), so all ranks agree on it.
- **The truth about health**: an error raised inside torch.distributed in a
  cell, an abort, or a process group that user code destroyed are all
  remembered and shown by ``%dist_status``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from . import sockets

#: states of the default process group as this rank knows it
NOT_INITIALISED = "not initialised"
HEALTHY = "healthy"
BROKEN = "broken"
ABORTED = "aborted"
DESTROYED = "destroyed"


def error_text(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def raised_in_torch_distributed(err: BaseException) -> bool:
    """True if the innermost frame of ``err`` is torch.distributed code (a failed collective)."""
    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    filename = last.tb_frame.f_code.co_filename.replace(os.sep, "/")
    return "/torch/distributed/" in filename


@dataclass
class GroupRecord:
    state: str = NOT_INITIALISED
    backend: str | None = None
    #: 0 for the start-up rendezvous, then the generation of each re-rendezvous
    generation: int = 0
    #: why the group is not healthy (the error, the abort reason)
    detail: str = ""
    history: list[str] = field(default_factory=list)


class ProcessGroupKeeper:
    """Initialise, abort and re-initialise this rank's default process group."""

    def __init__(self, backend: str, device: Any, timeout_s: float, rendezvous_dir: str) -> None:
        self.backend = backend
        self.device = device
        self.timeout_s = timeout_s
        self.rendezvous_dir = rendezvous_dir
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.record = GroupRecord()
        self._lock = threading.Lock()
        self._dist_init_count = 0
        #: failed rendezvous in the agent's store (their names are not reused)
        self._failed_tries = 0
        #: the kernel's own ports, never touched (set once the kernel bound them)
        self.kernel_ports: frozenset[int] = frozenset()
        #: inodes of the sockets our process groups opened (gloo pairs, NCCL bootstrap)
        self._group_sockets: set[int] = set()

    def _excluded_ports(self) -> frozenset[int]:
        store_port = {int(os.environ["MASTER_PORT"])} if os.environ.get(
            "MASTER_PORT", "").isdigit() else set()
        return self.kernel_ports | store_port

    def track(self, join: Callable[[], None]) -> None:
        """Run ``join`` (an init_process_group) and remember the sockets it opened."""
        before = sockets.tcp_sockets(self._excluded_ports())
        try:
            join()
        finally:
            opened = sockets.tcp_sockets(self._excluded_ports()) - before
            with self._lock:
                self._group_sockets |= opened

    # -- what happened ---------------------------------------------------------------
    def _set(self, state: str, detail: str = "", **changes: Any) -> None:
        with self._lock:
            self.record.state = state
            self.record.detail = detail
            for name, value in changes.items():
                setattr(self.record, name, value)
            self.record.history.append(f"{time.strftime('%H:%M:%S')} {state} {detail}".strip())
            del self.record.history[:-20]

    def started(self, backend: str) -> None:
        self._set(HEALTHY, backend=backend, generation=0)

    def note_cell_error(self, err: BaseException) -> None:
        """A cell raised inside torch.distributed: the group's connections are suspect."""
        if self.record.state == HEALTHY and raised_in_torch_distributed(err):
            self._set(BROKEN, f"a collective failed: {error_text(err)[:500]}")

    def observe(self) -> GroupRecord:
        """The record, corrected by what torch says (user code may have destroyed the group)."""
        import torch.distributed as dist

        initialised = dist.is_available() and dist.is_initialized()
        if self.record.state in (HEALTHY, BROKEN) and not initialised:
            self._set(DESTROYED, "destroyed by code in a cell (run %dist_init to initialise again)")
        elif self.record.state in (NOT_INITIALISED, DESTROYED, ABORTED) and initialised:
            # a framework or the user initialised it themselves
            self._set(HEALTHY, "initialised by code in a cell", backend=dist.get_backend())
        return self.record

    def describe(self) -> str:
        record = self.observe()
        text = record.state
        if record.backend and record.state in (HEALTHY, BROKEN):
            text += f" ({record.backend}, generation {record.generation})"
        if record.detail:
            text += f": {record.detail}"
        return text

    # -- abort ------------------------------------------------------------------------
    def abort(self, reason: str) -> dict[str, Any]:
        """Close every connection of every process group of this rank, now.

        Safe from another thread while the main thread waits in a collective:
        that collective (and every peer's that needs this rank) raises.
        """
        import torch.distributed as dist
        from torch.distributed.distributed_c10d import _abort_process_group

        started = time.monotonic()
        initialised = dist.is_initialized()
        if initialised:
            _abort_process_group()  # NCCL: ncclCommAbort; gloo: only drops torch's references
        # also without a default group: a destroyed group that something still holds
        # (a DDP model) keeps its connections until they are shut down
        with self._lock:
            owned, self._group_sockets = self._group_sockets, set()
        closed = sockets.shutdown_sockets(owned)
        if initialised or self.record.state != NOT_INITIALISED:
            self._set(ABORTED, reason)
        return {"aborted": initialised, "sockets": closed,
                "seconds": round(time.monotonic() - started, 6), "state": self.record.state}

    # -- (re-)rendezvous --------------------------------------------------------------
    def _init_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"backend": self.backend,
                                  "timeout": timedelta(seconds=self.timeout_s)}
        if self.backend == "nccl":
            kwargs["device_id"] = self.device
        return kwargs

    def _join(self, path: str) -> None:
        """Every rank meets in a fresh store named after ``path``; raises after the
        collective timeout. On one host: the file store at ``path``. Across hosts (the
        node agent serves the world's store, ``TORCHELASTIC_USE_AGENT_STORE``): that
        store, under a prefix of that name, since no directory is shared."""
        import torch.distributed as dist

        if dist.is_initialized():
            self.abort(f"replaced by {os.path.basename(path)}")
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        if agent_store:
            store: Any = dist.PrefixStore(f"nbdist/{os.path.basename(path)}", dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.world_size,
                False, timedelta(seconds=self.timeout_s)))
        elif not self.rendezvous_dir or not os.path.isdir(self.rendezvous_dir):
            raise RuntimeError("this rank has no private rendezvous directory")
        else:
            store = dist.FileStore(path, self.world_size)
        try:
            self.track(lambda: dist.init_process_group(
                store=store, rank=self.rank, world_size=self.world_size, **self._init_kwargs()))
        except Exception as err:
            self._set(ABORTED, f"rendezvous {os.path.basename(path)} failed: {error_text(err)}")
            if self.rank == 0 and not agent_store:  # a later try starts from an empty store
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if agent_store:  # (a store's keys cannot be removed: the next try is a new name)
                self._failed_tries += 1
            raise

    def reinit(self, generation: int) -> dict[str, Any]:
        """Abort what is left of the old group, then join generation ``generation``.

        Every rank must call this with the same ``generation`` (> 0, never reused
        in one kernel start, chosen by the multiplexer); it returns once all ranks
        joined, or raises after the collective timeout.
        """
        if generation <= 0:
            raise ValueError(f"generation must be a positive integer, got {generation!r}")
        started = time.monotonic()
        self._join(os.path.join(self.rendezvous_dir, f"pg-{generation}.store"))
        self._set(HEALTHY, backend=self.backend, generation=generation)
        return {"generation": generation, "backend": self.backend,
                "seconds": round(time.monotonic() - started, 6)}

    def init_again(self) -> str:
        """``%dist_init``, run by every rank in one cell: join a new world.

        Each rank counts its own successful ``%dist_init`` calls, so all ranks
        name the same fresh store without talking to each other; a failed try
        is not counted. The old MASTER_PORT is not reused: a store of the
        destroyed group may still hold it (anything that kept a reference).
        """
        import torch.distributed as dist

        if dist.is_initialized():
            return "already initialised; nothing done"
        count = self._dist_init_count + 1
        retry = f"-retry-{self._failed_tries}" if self._failed_tries else ""
        self._join(os.path.join(self.rendezvous_dir, f"dist-init-{count}{retry}.store"))
        self._dist_init_count = count
        self._set(HEALTHY, f"initialised again by %dist_init #{count}", backend=self.backend,
                  generation=self.record.generation)
        return "initialised"


#: this rank's keeper, set once torch.distributed was set up (None without torch)
KEEPER: ProcessGroupKeeper | None = None
