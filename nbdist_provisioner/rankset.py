"""Sets of ranks as users write them: ``0``, ``0,2``, ``1-3``, ``all``."""

from __future__ import annotations


class RankSetError(ValueError):
    """A rank spec that does not parse or names ranks outside the world."""


def parse_rank_set(spec: str, world_size: int) -> tuple[int, ...]:
    """Return the sorted ranks named by ``spec`` (``"0,2"``, ``"1-3"``, ``"all"``).

    Raises RankSetError naming the offending part, so magics and settings can
    show the user exactly what was wrong.
    """
    text = spec.strip()
    if text in ("all", "*"):
        return tuple(range(world_size))
    if not text:
        raise RankSetError("empty rank list: use e.g. 0 or 0,2 or 1-3 or all")
    ranks: set[int] = set()
    for part in text.replace(" ", "").split(","):
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise RankSetError(
                f"bad rank {part!r} in {spec!r}: use e.g. 0 or 0,2 or 1-3 or all"
            ) from None
        if lo > hi:
            raise RankSetError(f"bad rank range {part!r}: start is after end")
        if lo < 0 or hi >= world_size:
            raise RankSetError(
                f"rank {part!r} is outside this kernel's ranks 0-{world_size - 1}"
            )
        ranks.update(range(lo, hi + 1))
    return tuple(sorted(ranks))


def format_ranks(ranks: tuple[int, ...] | list[int]) -> str:
    """Compact human form: ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    items = sorted(ranks)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)
