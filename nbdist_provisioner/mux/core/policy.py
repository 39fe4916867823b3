"""One table: how each frontend request type is served.

Which ranks a request goes to, how their replies become one reply, and
whether it waits its turn on the shell channel. Everything the request core
decides per ``msg_type`` is read from here, so supporting a new request is
one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Route(Enum):
    MUX = "mux"  # answered by the multiplexer itself
    ALL = "all"  # every rank (an execute: the ranks its %%rank names)
    PRIMARY = "primary"  # the primary rank (completion, inspection, history)
    DEBUG = "debug"  # the rank being debugged
    COMM = "comm"  # the ranks the comm belongs to


class Merge(Enum):
    EXECUTE = "execute"  # one execute_reply: error if any rank failed
    FIRST = "first"  # the first target's reply, as it is
    COMM_INFO = "comm_info"  # the union of the ranks' comms
    ALL_OK = "all_ok"  # ok if every rank said ok, else the first error
    SUBSHELL = "subshell"  # every rank made a subshell: one id for all of them
    NONE = "none"  # no reply (comm messages)


@dataclass(frozen=True, slots=True)
class Policy:
    route: Route
    merge: Merge
    #: On shell, waits its turn behind earlier requests (ipykernel handles shell
    #: requests one at a time; comm messages are dispatched at once).
    ordered: bool = True
    #: Served on the control channel only (as ipykernel does).
    control_only: bool = False


_MUX = Policy(Route.MUX, Merge.NONE)
_PRIMARY = Policy(Route.PRIMARY, Merge.FIRST)

POLICIES: dict[str, Policy] = {
    "execute_request": Policy(Route.ALL, Merge.EXECUTE),
    "kernel_info_request": _MUX,
    "connect_request": _MUX,
    "shutdown_request": _MUX,
    "interrupt_request": _MUX,
    "list_subshell_request": Policy(Route.MUX, Merge.NONE, control_only=True),
    "complete_request": _PRIMARY,
    "inspect_request": _PRIMARY,
    "is_complete_request": _PRIMARY,
    "history_request": _PRIMARY,
    "comm_info_request": Policy(Route.ALL, Merge.COMM_INFO),
    "comm_open": Policy(Route.ALL, Merge.NONE, ordered=False),
    "comm_msg": Policy(Route.COMM, Merge.NONE, ordered=False),
    "comm_close": Policy(Route.COMM, Merge.NONE, ordered=False),
    "create_subshell_request": Policy(Route.ALL, Merge.SUBSHELL, control_only=True),
    "delete_subshell_request": Policy(Route.ALL, Merge.ALL_OK, control_only=True),
    "debug_request": Policy(Route.DEBUG, Merge.FIRST),
}

#: Rank iopub messages that are outputs of a request (merged, labelled, bounded).
OUTPUT_TYPES = frozenset({"stream", "display_data", "update_display_data", "execute_result",
                          "error", "clear_output"})
#: Rank iopub messages passed to the frontend as they are (re-parented).
PASSED_TYPES = frozenset({"comm_open", "comm_msg", "comm_close", "debug_event"})
#: Still forwarded after their request is idle: they carry no new cell output.
LATE_TYPES = frozenset({"comm_open", "comm_msg", "comm_close", "update_display_data",
                        "debug_event"})


#: Content fields a request must carry, with their types: a rank kernel whose handler
#: meets a malformed request logs the exception and sends no reply at all.
_REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "execute_request": {"code": str},
    "complete_request": {"code": str, "cursor_pos": int},
    "inspect_request": {"code": str, "cursor_pos": int},
    "is_complete_request": {"code": str},
    "history_request": {"hist_access_type": str},
    "comm_open": {"comm_id": str, "target_name": str},
    "comm_msg": {"comm_id": str},
    "comm_close": {"comm_id": str},
    "delete_subshell_request": {"subshell_id": str},
}
_HISTORY_FIELDS = frozenset({"output", "raw", "hist_access_type", "session", "start", "stop",
                             "n", "pattern", "unique"})


def bad_content(msg_type: str, content: dict[str, object]) -> str | None:
    """Why a request's content cannot be served, or None when it can."""
    for name, kind in _REQUIRED.get(msg_type, {}).items():
        value = content.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{msg_type} needs {name!r} of type {getattr(kind, '__name__', kind)}"
    if msg_type == "history_request":
        unknown = sorted(set(content) - _HISTORY_FIELDS)
        if unknown:
            return f"history_request has unknown fields {unknown}"
    return None


def policy_for(msg_type: str) -> Policy | None:
    return POLICIES.get(msg_type)


def reply_type(msg_type: str) -> str:
    return msg_type.removesuffix("_request") + "_reply"
