"""Magics the multiplexer reads itself, on the first lines of a cell.

``%%rank 0`` / ``0,2`` / ``1-3`` runs the rest of the cell on those ranks only.

``%rank_output 0`` / ``0,2`` / ``1-3`` / ``all`` chooses whose output is shown from
now on, like ``torchrun --local-ranks-filter`` (errors of every rank stay visible);
``%rank_output`` alone tells the current choice.

``%debug_rank 2`` chooses the rank JupyterLab's debugger debugs (the primary rank
unless the ``debug_rank`` setting says otherwise); ``%debug_rank`` alone tells it.

These magics go on the first line(s) of a cell; the rest of the cell, if any, runs
on the ranks as usual. A rank that meets one further down a cell fails with a hint
(see ``rank/extension.py``).

Pure: parsing and wording only; the request core applies the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...rankset import RankSetError, format_ranks, parse_rank_set

_RANK_MAGIC = re.compile(r"\A[ \t]*%%rank(?:[ \t]+(?P<spec>[^\n]*))?(?:\n|\Z)")
_LINE = re.compile(r"[ \t]*%(?P<magic>rank_output|debug_rank)(?:[ \t]+(?P<spec>[^\n]*?))?"
                   r"[ \t]*(?:\n|\Z)")


@dataclass(frozen=True)
class MuxMagics:
    """What the leading multiplexer magics of a cell asked for."""

    #: The cell without those lines: what the ranks run (may be empty).
    code: str
    #: Ranks whose output is shown from now on; None when unchanged.
    shown: tuple[int, ...] | None = None
    #: True when the cell had at least one multiplexer magic.
    used: bool = False
    #: The rank to debug from now on; None when unchanged.
    debug: int | None = None
    #: The magics the cell named, in order (what to confirm).
    named: tuple[str, ...] = ()


def split_mux_magics(code: str, world_size: int) -> MuxMagics:
    """Take the leading ``%rank_output`` lines off ``code``.

    Raises RankSetError for a bad rank list, so the cell fails saying what was wrong.
    """
    shown: tuple[int, ...] | None = None
    debug: int | None = None
    named: list[str] = []
    pos = 0
    while True:
        match = _LINE.match(code, pos)
        if match is None or match.end() == pos:
            break
        magic = match.group("magic")
        named.append(magic)
        spec = (match.group("spec") or "").strip()
        if spec and magic == "rank_output":
            shown = parse_rank_set(spec, world_size)
        elif spec:
            ranks = parse_rank_set(spec, world_size)
            if len(ranks) != 1:
                raise RankSetError(f"%debug_rank takes one rank, got {spec!r}")
            debug = ranks[0]
        pos = match.end()
    if not named:
        return MuxMagics(code)
    return MuxMagics(code[pos:], shown, True, debug, tuple(named))


def describe_shown(shown: set[int] | tuple[int, ...]) -> str:
    """The confirmation a ``%rank_output`` cell prints."""
    ranks = sorted(shown)
    if not ranks:
        raise RankSetError("no ranks to show")
    what = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {format_ranks(ranks)}"
    return f"[nbdist] showing output of {what} (errors of every rank are always shown)\n"


def split_rank_magic(code: str, world_size: int) -> tuple[tuple[int, ...] | None, str]:
    """``%%rank 0,2`` on the first line: (ranks, the rest of the cell); else (None, code).

    Raises RankSetError for a bad spec, so the cell fails with a clear message.
    """
    match = _RANK_MAGIC.match(code)
    if not match:
        return None, code
    spec = (match.group("spec") or "").strip()
    if not spec:
        raise RankSetError("%%rank needs ranks, e.g. %%rank 0 or %%rank 0,2 or %%rank 1-3")
    return parse_rank_set(spec, world_size), code[match.end():]
