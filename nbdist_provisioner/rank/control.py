"""Control-channel requests of a rank kernel, for the multiplexer's fail-fast.

ipykernel serves the control channel on a thread of its own, so these are
answered while the main thread is stuck in a collective: that is the point.

``nbdist_stack_request`` {} → ``nbdist_stack_reply``
    {"status": "ok", "rank", "pid", "busy", "execution_count", "in_collective",
     "collective", "where", "frames": [{"filename", "lineno", "name", "line", "cell"}],
     "text"}
``nbdist_pg_abort_request`` {"reason": str} → ``nbdist_pg_abort_reply``
    {"status": "ok", "rank", "aborted", "seconds", "state"}
``nbdist_pg_reinit_request`` {"generation": int > 0} → ``nbdist_pg_reinit_reply``
    {"status": "ok", "rank", "generation", "backend", "seconds"}, sent once every
    rank joined; the control channel stays free meanwhile.
``nbdist_pg_status_request`` {} → ``nbdist_pg_status_reply``
    {"status": "ok", "rank", "state", "backend", "generation", "detail", "text"}

A failed request answers {"status": "error", "rank", "ename", "evalue"}.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import distributed

#: frames of these functions say nothing about where a collective was called
WRAPPER_NAMES = {"wrapper", "_fn", "inner"}


class CellTracker:
    """Whether the main thread runs a cell, and which (IPython's pre/post_run_cell)."""

    def __init__(self) -> None:
        self.execution_count: int | None = None

    def pre_run_cell(self, info: Any) -> None:
        shell = getattr(info, "shell", None) or _shell()
        self.execution_count = getattr(shell, "execution_count", None)

    def post_run_cell(self, result: Any) -> None:
        self.execution_count = None


def _shell() -> Any:
    from IPython import get_ipython

    return get_ipython()


def _is_torch_distributed(filename: str) -> bool:
    return "/torch/distributed/" in filename.replace(os.sep, "/")


def describe_frames(frame: FrameType | None, cell_name: Callable[[str], str | None]
                    ) -> dict[str, Any]:
    """The stack of one thread, outermost first, and the collective it waits in, if any."""
    import linecache

    frames: list[dict[str, Any]] = []
    while frame is not None:
        code = frame.f_code
        lineno = frame.f_lineno or 0  # None while a frame is between two lines
        frames.append({
            "filename": code.co_filename, "lineno": lineno, "name": code.co_name,
            "line": linecache.getline(code.co_filename, lineno).strip() if lineno else "",
            "cell": cell_name(code.co_filename),
        })
        frame = frame.f_back
    frames.reverse()
    # the kernel's own machinery above the outermost cell frame says nothing to the user
    first_cell = next((i for i, f in enumerate(frames) if f["cell"]), 0)
    frames = frames[first_cell:]
    # waiting in a collective: the innermost Python frame is torch.distributed's
    in_collective = bool(frames) and _is_torch_distributed(frames[-1]["filename"])
    collective = None
    if in_collective:
        collective = next((f["name"] for f in frames if _is_torch_distributed(f["filename"])
                           and f["name"] not in WRAPPER_NAMES), frames[-1]["name"])
    user = next((f for f in reversed(frames) if f["cell"]), None)
    if user is not None:
        where = f"{user['line'] or user['name']} at line {user['lineno']} of {user['cell']}"
    elif frames:
        last = frames[-1]
        where = f"{last['name']} at {last['filename']}:{last['lineno']}"
    else:
        where = ""
    text = "".join(
        f'  File "{f["cell"] or f["filename"]}", line {f["lineno"]}, in {f["name"]}\n'
        + (f"    {f['line']}\n" if f["line"] else "") for f in frames)
    return {"in_collective": in_collective, "collective": collective, "where": where,
            "frames": frames, "text": text}


class ControlHandlers:
    """The rank's own control requests, added to ``kernel.control_handlers``."""

    def __init__(self, kernel: Any, shell: Any, cells: CellTracker) -> None:
        self.kernel = kernel
        self.shell = shell
        self.cells = cells
        self.rank = int(os.environ.get("RANK", "0"))

    def install(self) -> None:
        handlers = {
            "nbdist_stack_request": self.stack_request,
            "nbdist_pg_abort_request": self.pg_abort_request,
            "nbdist_pg_reinit_request": self.pg_reinit_request,
            "nbdist_pg_status_request": self.pg_status_request,
        }
        self.kernel.control_handlers.update(handlers)

    def _reply(self, stream: Any, ident: Any, parent: dict[str, Any], msg_type: str,
               content: dict[str, Any]) -> None:
        content = {"status": "ok", "rank": self.rank, **content}
        self.kernel.session.send(stream, msg_type, content, parent, ident=ident)

    def _error(self, err: BaseException) -> dict[str, Any]:
        return {"status": "error", "ename": type(err).__name__, "evalue": str(err)}

    def _cell_name(self, filename: str) -> str | None:
        try:
            named = self.shell.compile.format_code_name(filename)
        except Exception:
            return None
        return named[1] if named else None  # "In[5]"

    def stack(self) -> dict[str, Any]:
        frame = sys._current_frames().get(threading.main_thread().ident or -1)
        busy = self.cells.execution_count is not None
        described = describe_frames(frame if busy else None, self._cell_name)
        return {"pid": os.getpid(), "busy": busy,
                "execution_count": self.cells.execution_count, **described}

    async def stack_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        try:
            content = self.stack()
        except Exception as err:
            content = self._error(err)
        self._reply(stream, ident, parent, "nbdist_stack_reply", content)

    async def pg_abort_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        reason = str(parent["content"].get("reason") or "aborted by the multiplexer")
        try:
            content = distributed.keeper().abort(reason)
        except Exception as err:
            content = self._error(err)
        self._reply(stream, ident, parent, "nbdist_pg_abort_reply", content)

    async def pg_status_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        try:
            keeper = distributed.keeper()
            text = keeper.describe()
            record = keeper.record
            content = {"state": record.state, "backend": record.backend,
                       "generation": record.generation, "detail": record.detail,
                       "text": text}
        except Exception as err:
            content = self._error(err)
        self._reply(stream, ident, parent, "nbdist_pg_status_reply", content)

    async def pg_reinit_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        """Join a new world in a thread; reply from the control loop once it is done."""
        loop = asyncio.get_running_loop()
        generation = parent["content"].get("generation")

        def rendezvous() -> None:
            try:
                if not isinstance(generation, int) or isinstance(generation, bool):
                    raise ValueError(f"generation must be an integer, got {generation!r}")
                content = distributed.keeper().reinit(generation)
            except Exception as err:
                content = self._error(err)
            loop.call_soon_threadsafe(
                self._reply, stream, ident, parent, "nbdist_pg_reinit_reply", content)

        threading.Thread(target=rendezvous, name="nbdist-rendezvous", daemon=True).start()
