"""Launchers start rank processes; pick one by name (``local`` is built in).

Third-party launchers register a ``Launcher`` subclass in the entry-point
group ``nbdist_provisioner.launchers``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import Launcher, LauncherError, RankProcess, RankSpec
from .local import LocalLauncher

ENTRY_POINT_GROUP = "nbdist_provisioner.launchers"
_BUILTIN: dict[str, type[Launcher]] = {LocalLauncher.name: LocalLauncher}


def available_launchers() -> list[str]:
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_launcher(name: str) -> Launcher:
    """Instantiate the launcher called ``name`` and check it can work here."""
    cls = _BUILTIN.get(name)
    if cls is None:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not matches:
            raise LauncherError(
                f"unknown launcher {name!r}; available: {', '.join(available_launchers())}"
            )
        cls = matches[0].load()
    launcher = cls()
    launcher.check()
    return launcher


__all__ = [
    "ENTRY_POINT_GROUP",
    "Launcher",
    "LauncherError",
    "LocalLauncher",
    "RankProcess",
    "RankSpec",
    "available_launchers",
    "get_launcher",
]
