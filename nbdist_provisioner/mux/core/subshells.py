"""Kernel subshells (protocol 5.5): one id for the frontend, one per rank behind it.

Each rank kernel makes its own subshell with its own id; the frontend sees one
id, and shell requests that name it go to every rank under that rank's id.
"""

from __future__ import annotations


class SubshellMap:
    def __init__(self) -> None:
        self._ranks: dict[str, dict[int, str]] = {}

    def add(self, subshell_id: str, rank_ids: dict[int, str]) -> None:
        self._ranks[subshell_id] = dict(rank_ids)

    def rank_id(self, subshell_id: str, rank: int) -> str | None:
        return self._ranks.get(subshell_id, {}).get(rank)

    def known(self, subshell_id: str) -> bool:
        return subshell_id in self._ranks

    def remove(self, subshell_id: str) -> None:
        self._ranks.pop(subshell_id, None)

    def ids(self) -> list[str]:
        return list(self._ranks)

    def clear(self) -> None:
        """The ranks were replaced: their subshells are gone."""
        self._ranks.clear()
