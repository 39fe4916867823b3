"""Rich output merging: identical outputs from several ranks shown once.

The k-th rich output of each rank in a request lands in slot k. A slot is
resolved once every rank still producing output has filled it (or finished,
or a deadline passed): identical outputs go out once, unaltered, with
``metadata["nbdist"]["ranks"]``; differing ones go out per rank, labelled.
Outputs that carry a ``display_id`` are never merged: their ids are
namespaced per rank so ranks cannot update each other's displays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ....rankset import format_ranks

#: Seconds a slot waits for slower ranks before going out labelled per rank.
SLOT_DEADLINE = 1.0
_KINDS = {"execute_result": "result", "display_data": "display", "error": "error"}


@dataclass(frozen=True, slots=True)
class RichOut:
    parent: str
    msg_type: str
    content: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)


def namespaced_display_id(display_id: str, rank: int) -> str:
    return f"{display_id}@rank{rank}"


def _label_text(content: dict[str, Any], label: str) -> dict[str, Any]:
    data = content.get("data")
    if not isinstance(data, dict) or "text/plain" not in data:
        return content
    data = dict(data)
    data["text/plain"] = label + str(data["text/plain"])
    return {**content, "data": data}


def _with_ranks(content: dict[str, Any], ranks: list[int]) -> dict[str, Any]:
    metadata = dict(content.get("metadata") or {})
    info: dict[str, Any] = {"ranks": ranks}
    if len(ranks) == 1:
        info["rank"] = ranks[0]
    metadata["nbdist"] = info
    return {**content, "metadata": metadata}


def label_for(ranks: list[int]) -> str:
    return f"[rank {ranks[0]}] " if len(ranks) == 1 else f"[ranks {format_ranks(ranks)}] "


def label_error(content: dict[str, Any], ranks: list[int]) -> dict[str, Any]:
    """Put the rank label on top of the traceback; ename/evalue stay machine-readable."""
    tb = list(content.get("traceback") or [])
    return {**content, "traceback": [label_for(ranks).strip(), *tb]}


@dataclass
class _Slot:
    first_seen: float
    by_rank: dict[int, tuple[str, dict[str, Any], dict[str, Any]]] = field(
        default_factory=dict)


@dataclass
class _RequestRich:
    ranks: tuple[int, ...]
    finished: set[int] = field(default_factory=set)
    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    slots: dict[tuple[str, int], _Slot] = field(default_factory=dict)
    resolved: set[tuple[str, int]] = field(default_factory=set)


class RichMerger:
    """Merges execute_result / display_data / error across ranks, per request."""

    def __init__(self, deadline: float = SLOT_DEADLINE) -> None:
        self._deadline = deadline
        self._requests: dict[str, _RequestRich] = {}
        self._out: list[RichOut] = []

    def start(self, parent: str, ranks: tuple[int, ...]) -> None:
        """A request began on ``ranks`` (the ranks whose output is shown)."""
        self._requests[parent] = _RequestRich(ranks=tuple(ranks))

    def feed(self, rank: int, msg_type: str, content: dict[str, Any], parent: str,
             now: float, metadata: dict[str, Any] | None = None) -> list[RichOut]:
        req = self._requests.get(parent)
        transient = content.get("transient") or {}
        if (msg_type == "update_display_data" or "display_id" in transient or req is None
                or rank not in req.ranks):
            # Never merged: labelled per rank, display ids kept apart.
            self._emit_single(parent, msg_type, content, rank, metadata or {})
            return self._take()
        kind = _KINDS[msg_type]
        index = req.counts.get((kind, rank), 0)
        req.counts[(kind, rank)] = index + 1
        key = (kind, index)
        if key in req.resolved:
            self._emit_single(parent, msg_type, content, rank, metadata or {})
            return self._take()
        slot = req.slots.get(key)
        if slot is None:
            slot = req.slots[key] = _Slot(first_seen=now)
        slot.by_rank[rank] = (msg_type, content, metadata or {})
        self._try_resolve(parent, req, now)
        return self._take()

    def rank_finished(self, parent: str, rank: int, now: float) -> list[RichOut]:
        """``rank`` will send no more output for ``parent``."""
        req = self._requests.get(parent)
        if req is not None:
            req.finished.add(rank)
            self._try_resolve(parent, req, now)
        return self._take()

    def tick(self, now: float) -> list[RichOut]:
        for parent, req in self._requests.items():
            self._try_resolve(parent, req, now)
        return self._take()

    def next_deadline(self) -> float | None:
        # (slots resolve in the order they were opened: only each request's first counts)
        times = [next(iter(r.slots.values())).first_seen + self._deadline
                 for r in self._requests.values() if r.slots]
        return min(times) if times else None

    def finish(self, parent: str) -> list[RichOut]:
        """The request is done: everything held goes out now."""
        req = self._requests.pop(parent, None)
        if req is not None:
            for key in list(req.slots):
                self._resolve(parent, req, key)
        return self._take()

    # -- internals ----------------------------------------------------------
    def _take(self) -> list[RichOut]:
        out, self._out = self._out, []
        return out

    def _try_resolve(self, parent: str, req: _RequestRich, now: float) -> None:
        for key in list(req.slots):  # in the order they were opened
            slot = req.slots[key]
            waiting = [r for r in req.ranks if r not in slot.by_rank and r not in req.finished]
            if waiting and now - slot.first_seen < self._deadline:
                break  # keep slot order: later slots wait behind this one
            self._resolve(parent, req, key)

    def _resolve(self, parent: str, req: _RequestRich, key: tuple[str, int]) -> None:
        slot = req.slots.pop(key)
        req.resolved.add(key)
        groups: dict[str, list[int]] = {}
        first: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
        for rank in sorted(slot.by_rank):
            msg_type, content, metadata = slot.by_rank[rank]
            fingerprint = json.dumps([msg_type, content], sort_keys=True, default=str)
            groups.setdefault(fingerprint, []).append(rank)
            first.setdefault(fingerprint, (msg_type, content, metadata))
        whole = len(groups) == 1 and len(slot.by_rank) == len(req.ranks)
        for fingerprint, ranks in groups.items():
            msg_type, content, metadata = first[fingerprint]
            content = _with_ranks(content, ranks)
            if not whole:
                content = label_error(content, ranks) if msg_type == "error" else _label_text(
                    content, label_for(ranks))
            self._out.append(RichOut(parent, msg_type, content, metadata))

    def _emit_single(self, parent: str, msg_type: str, content: dict[str, Any], rank: int,
                     metadata: dict[str, Any]) -> None:
        transient = dict(content.get("transient") or {})
        if "display_id" in transient:
            transient["display_id"] = namespaced_display_id(str(transient["display_id"]), rank)
            content = {**content, "transient": transient}
        content = _with_ranks(content, [rank])
        if msg_type == "error":
            content = label_error(content, [rank])
        else:
            content = _label_text(content, label_for([rank]))
        self._out.append(RichOut(parent, msg_type, content, metadata))
