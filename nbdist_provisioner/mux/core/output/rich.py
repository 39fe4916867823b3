"""Rich output of several ranks: identical outputs once, differing ones as one composite.

Displays (``display_data``) are held with the lines of the cell (``holding``) and
matched by content: a rank's display joins the earliest held display it equals,
whatever that rank displayed before, so ``if rank == 0: display('header')``
followed by ``display('same')`` shows 'same' once. A display no other rank can
join any more goes out with the displays of the same shape (mime types) that the
missing ranks sent meanwhile, as one composite (``composite.render``); if ranks
are still missing it carries a display id of the kernel's, so a late rank's
identical or corresponding display updates it in place instead of appending.

``execute_result`` and ``error`` end a rank's cell and cannot be updated in place,
so they wait (at most ``END_WINDOW``) for every rank: the results become one
``execute_result`` (one ``Out[n]``), the errors one per distinct error.
Outputs that carry their own ``display_id`` are never merged: their ids are
namespaced per rank so ranks cannot update each other's displays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .composite import (
    Member,
    can_compose,
    composable,
    fingerprint,
    label_error,
    label_text,
    mime_shape,
    render,
    with_ranks,
)
from .holding import Held, HoldQueue

#: Seconds results and errors wait for the other ranks' before going out.
END_WINDOW = 1.0
Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RichOut:
    parent: str
    msg_type: str
    content: Json
    metadata: Json = field(default_factory=dict)
    #: the ranks it shows: what is held of them goes out before it
    ranks: tuple[int, ...] = ()


def namespaced_display_id(display_id: str, rank: int) -> str:
    return f"{display_id}@rank{rank}"


@dataclass
class _Display:
    """One rank's display, as held."""

    content: Json
    metadata: Json
    fingerprint: str


@dataclass
class _Group:
    """A display that went out and that ranks still missing from it may join."""

    members: list[Member]
    display_id: str
    shape: frozenset[str]

    def ranks(self) -> set[int]:
        return {r for m in self.members for r in m.ranks}


@dataclass
class _EndOfCell:
    """Results or errors of one request, gathered per rank."""

    by_rank: dict[int, tuple[Json, Json]] = field(default_factory=dict)
    first_at: float | None = None
    done: bool = False


@dataclass
class _RequestRich:
    shown: tuple[int, ...]
    targets: tuple[int, ...]
    finished: set[int] = field(default_factory=set)
    open_groups: list[_Group] = field(default_factory=list)
    results: _EndOfCell = field(default_factory=_EndOfCell)
    errors: _EndOfCell = field(default_factory=_EndOfCell)
    execution_count: int | None = None


class RichMerger:
    """Merges display_data / execute_result / error across ranks, per request."""

    def __init__(self, end_window: float = END_WINDOW) -> None:
        self._end_window = end_window
        self._requests: dict[str, _RequestRich] = {}
        self._ids = 0

    def start(self, parent: str, shown: tuple[int, ...], targets: tuple[int, ...]) -> None:
        self._requests[parent] = _RequestRich(shown=tuple(shown), targets=tuple(targets))

    def known(self, parent: str) -> bool:
        return parent in self._requests

    # -- displays ---------------------------------------------------------------------
    def holds(self, parent: str, rank: int, msg_type: str, content: Json) -> bool:
        """Is this output held with the lines (a display several ranks may send)?"""
        req = self._requests.get(parent)
        transient = content.get("transient") or {}
        return (msg_type == "display_data" and req is not None and rank in req.shown
                and len(req.shown) > 1 and "display_id" not in transient)

    def display_key(self, content: Json, metadata: Json) -> tuple[str, _Display]:
        fp = fingerprint("display_data", content)
        return fp, _Display(content, metadata, fp)

    def join_shown(self, parent: str, rank: int, key: str) -> list[RichOut]:
        """``rank``'s display equals one that went out without it: update that one."""
        req = self._requests.get(parent)
        if req is None:
            return []
        for group in req.open_groups:
            if rank in group.ranks():
                continue
            for member in group.members:
                if fingerprint("display_data", member.content) == key:
                    member.ranks.append(rank)
                    return self._redraw(parent, req, group)
        return []

    def release(self, parent: str, item: Held, queue: HoldQueue) -> list[RichOut]:
        """A held display goes out: with the corresponding displays of the missing ranks
        (one composite), into an earlier composite it belongs to, or on its own."""
        req = self._requests.get(parent)
        members = [self._member(item)]
        if req is None:
            return self._alone(parent, members, (), item)
        key = fingerprint("display_data", members[0].content)
        for group in req.open_groups:  # ranks that sent the same as one that went out
            same = next((m for m in group.members
                         if fingerprint("display_data", m.content) == key), None)
            if same is not None and not group.ranks() & set(item.ranks):
                same.ranks.extend(item.ranks)
                return self._redraw(parent, req, group)
        shape = mime_shape(members[0].content)
        if can_compose(members[0].content):
            def wanted(other: Held, have: set[int]) -> bool:
                first = next(iter(other.payloads.values()))
                return (other.lane == ("display",) and mime_shape(first.content) == shape
                        and can_compose(first.content)
                        and set(other.ranks) <= set(req.shown) - have)
            members += [self._member(other) for other in queue.take_later(item, wanted)]
            ranks = {r for m in members for r in m.ranks}
            earlier = next((g for g in req.open_groups
                            if g.shape == shape and not g.ranks() & ranks), None)
            if earlier is not None:  # the ranks missing from an earlier composite
                earlier.members.extend(members)
                return self._redraw(parent, req, earlier)
        return self._alone(parent, members, req.shown, item)

    # -- results and errors -------------------------------------------------------------
    def end_output(self, parent: str, rank: int, msg_type: str, content: Json,
                   metadata: Json, now: float) -> list[RichOut]:
        """An execute_result or error of ``rank``: gathered until every rank sent one (or
        finished), at most END_WINDOW."""
        req = self._requests.get(parent)
        if req is None or (msg_type == "execute_result" and rank not in req.shown):
            return [self._single(parent, msg_type, content, metadata, rank)]
        end = req.results if msg_type == "execute_result" else req.errors
        if msg_type == "execute_result":
            req.execution_count = content.get("execution_count")
        if end.done or rank in end.by_rank:
            # late (after its group went out), or a second one of the same rank
            if msg_type == "execute_result":  # one Out[n] per cell: the rest are displays
                content = {k: v for k, v in content.items() if k != "execution_count"}
                return [self._captioned(parent, "display_data", content, rank)]
            return [self._single(parent, msg_type, content, metadata, rank)]
        end.by_rank[rank] = (content, metadata)
        if end.first_at is None:
            end.first_at = now
        return self._resolve(parent, req, now)

    def rank_finished(self, parent: str, rank: int, now: float) -> list[RichOut]:
        req = self._requests.get(parent)
        if req is None:
            return []
        req.finished.add(rank)
        return self._resolve(parent, req, now)

    def tick(self, now: float) -> list[RichOut]:
        out: list[RichOut] = []
        for parent, req in self._requests.items():
            out += self._resolve(parent, req, now)
        return out

    def next_deadline(self) -> float | None:
        times = [end.first_at + self._end_window for req in self._requests.values()
                 for end in (req.results, req.errors)
                 if end.first_at is not None and not end.done]
        return min(times) if times else None

    def finish(self, parent: str) -> list[RichOut]:
        req = self._requests.pop(parent, None)
        if req is None:
            return []
        return self._end(parent, req, req.results, "execute_result") + self._end(
            parent, req, req.errors, "error")

    # -- internals ------------------------------------------------------------------
    def _member(self, item: Held) -> Member:
        first: _Display = item.payloads[item.ranks[0]]
        return Member(list(item.ranks), first.content, first.metadata)

    def _alone(self, parent: str, members: list[Member], shown: tuple[int, ...],
               item: Held) -> list[RichOut]:
        """Out as a new output: one composite (open for missing ranks), or, where the
        outputs cannot be composed, each on its own with its label in text/plain."""
        ranks = tuple(sorted(r for m in members for r in m.ranks))
        if len(members) == 1 and set(ranks) >= set(shown):
            m = members[0]
            return [RichOut(parent, "display_data", with_ranks(m.content, m.ranks), m.metadata,
                            ranks)]
        if not composable(members):
            return [RichOut(parent, "display_data", label_text(m.content, sorted(m.ranks)),
                            m.metadata, tuple(m.ranks)) for m in members]
        req = self._requests.get(parent)
        content = render(members, shown)
        if req is not None and set(shown) - set(ranks):
            self._ids += 1
            group = _Group(members, f"nbdist-ranks-{parent}-{self._ids}",
                           mime_shape(members[0].content))
            req.open_groups.append(group)
            content = {**content, "transient": {"display_id": group.display_id}}
        # (one rank's own message metadata passes through, as for unmerged output)
        return [RichOut(parent, "display_data", content,
                        members[0].metadata if len(members) == 1 else {}, ranks)]

    def _redraw(self, parent: str, req: _RequestRich, group: _Group) -> list[RichOut]:
        content = render(group.members, req.shown)
        if group.ranks() >= set(req.shown):
            req.open_groups.remove(group)
        metadata = group.members[0].metadata if len(group.members) == 1 else {}
        return [RichOut(parent, "update_display_data",
                        {"data": content["data"], "metadata": content["metadata"],
                         "transient": {"display_id": group.display_id}}, metadata, ())]

    def _resolve(self, parent: str, req: _RequestRich, now: float) -> list[RichOut]:
        out: list[RichOut] = []
        for end, msg_type, ranks in ((req.results, "execute_result", req.shown),
                                     (req.errors, "error", req.targets)):
            if end.done or end.first_at is None:
                continue
            waiting = [r for r in ranks if r not in end.by_rank and r not in req.finished]
            if waiting and now < end.first_at + self._end_window:
                continue
            out += self._end(parent, req, end, msg_type)
        return out

    def _end(self, parent: str, req: _RequestRich, end: _EndOfCell,
             msg_type: str) -> list[RichOut]:
        if end.done or not end.by_rank:
            return []
        end.done = True
        groups: dict[str, Member] = {}
        for rank in sorted(end.by_rank):
            content, metadata = end.by_rank[rank]
            fp = fingerprint(msg_type, content)
            if fp in groups:
                groups[fp].ranks.append(rank)
            else:
                groups[fp] = Member([rank], content, metadata)
        members = list(groups.values())
        ranks = tuple(sorted(end.by_rank))
        everyone = req.shown if msg_type == "execute_result" else req.targets
        if msg_type == "error":
            whole = len(members) == 1 and set(ranks) >= set(everyone)
            return [RichOut(parent, "error", with_ranks(m.content, m.ranks) if whole
                            else label_error(m.content, m.ranks), m.metadata, tuple(m.ranks))
                    for m in members]
        if len(members) == 1 and set(ranks) >= set(everyone):
            m = members[0]
            return [RichOut(parent, msg_type, with_ranks(m.content, m.ranks), m.metadata,
                            ranks)]
        if not composable(members):
            first = [RichOut(parent, msg_type, label_text(members[0].content,
                                                          members[0].ranks),
                             members[0].metadata, tuple(members[0].ranks))]
            return first + [self._captioned(parent, "display_data", {
                k: v for k, v in m.content.items() if k != "execution_count"}, m.ranks[0],
                m.ranks) for m in members[1:]]
        content = render(members, everyone)
        content["execution_count"] = members[0].content.get("execution_count",
                                                            req.execution_count)
        return [RichOut(parent, msg_type, content, {}, ranks)]

    def _captioned(self, parent: str, msg_type: str, content: Json, rank: int,
                   ranks: list[int] | None = None) -> RichOut:
        members = [Member(ranks or [rank], content)]
        if composable(members):
            return RichOut(parent, msg_type, render(members, ()), {}, tuple(ranks or [rank]))
        return RichOut(parent, msg_type, label_text(content, ranks or [rank]), {},
                       tuple(ranks or [rank]))

    def _single(self, parent: str, msg_type: str, content: Json, metadata: Json,
                rank: int) -> RichOut:
        """One rank's output on its own: display ids namespaced, labelled."""
        transient = dict(content.get("transient") or {})
        if "display_id" in transient:
            transient["display_id"] = namespaced_display_id(str(transient["display_id"]), rank)
            content = {**content, "transient": transient}
        if msg_type == "error":
            return RichOut(parent, msg_type, label_error(content, [rank]), metadata, (rank,))
        return RichOut(parent, msg_type, label_text(content, [rank]), metadata, (rank,))

    def single(self, parent: str, msg_type: str, content: Json, metadata: Json,
               rank: int) -> RichOut:
        """A rank's output that is never merged (its own display id, an update)."""
        return self._single(parent, msg_type, content, metadata, rank)
