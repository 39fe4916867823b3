"""The kernel's private directory: rank connection files and the rendezvous store.

One per kernel process, mode 0700, named after its pid, so a later kernel can
tell a directory whose kernel is gone (killed, crashed) and remove it: nothing
with a secret outlives the kernel for long.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time

from .. import proctree

PREFIX = "nbdist-"
_OURS = re.compile(r"^nbdist-(\d+)-")
#: Directories of the earlier naming (nbdist-ranks-*) are removed once this old.
_LEGACY_AGE = 3600.0


def make_rundir() -> str:
    remove_stale()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")


def remove_rundir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_stale(base: str | None = None) -> list[str]:
    """Remove the private directories of kernels (of this user) that are gone."""
    base = base or tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            if not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                match = _OURS.match(entry.name)
                if match:
                    if proctree.alive(int(match.group(1))):
                        continue
                elif not (entry.name.startswith(f"{PREFIX}ranks-")
                          and time.time() - entry.stat().st_mtime > _LEGACY_AGE):
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    return removed
