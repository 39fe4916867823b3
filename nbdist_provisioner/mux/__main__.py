"""``python -m nbdist_provisioner.mux -f CONNECTION_FILE``: the kernel process Jupyter starts.

Before anything slow, the process makes sure that nothing outlives it: it
becomes a child subreaper (what ranks start and orphan comes back to it), it
ends when its owner (the Jupyter server, nbclient, a script) dies, from the first
instant (a parent-death signal, then a pidfd), and it starts the rank agent at
once, so the agent's imports overlap its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from .. import proctree
from ..settings import KernelSettings, SettingsError
from .rundir import make_rundir, remove_rundir

#: The multiplexer once its event loop runs (the owner watch then shuts down cleanly).
_running: list[Any] = []


def end_with_owner() -> None:
    """End this kernel when the process that started it (JPY_PARENT_PID) is gone."""
    owner = int(os.environ.get("JPY_PARENT_PID") or 0)
    if not owner:
        return

    def owner_gone(*_: Any) -> None:
        if os.getppid() == owner:
            return  # (the owner's launching thread ended, not the owner)
        if _running:
            mux = _running[0]
            mux.loop.call_soon_threadsafe(mux.owner_gone)
        else:
            os._exit(1)  # nothing started yet; the agent ends with our pipe

    signal.signal(signal.SIGUSR2, owner_gone)
    proctree.set_parent_death_signal(signal.SIGUSR2)
    if os.getppid() != owner or not proctree.watch_process(owner, owner_gone,
                                                           "nbdist-owner-watch"):
        os._exit(1)  # gone before we could watch it


def main(argv: list[str] | None = None) -> int:
    proctree.become_subreaper()
    end_with_owner()
    parser = argparse.ArgumentParser(prog="python -m nbdist_provisioner.mux",
                                     description="nbdist multi-rank kernel (multiplexer)")
    parser.add_argument("-f", "--connection-file", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("NBDIST_LOG_LEVEL", "WARNING").upper(),
        format="[nbdist %(levelname)s %(asctime)s] %(message)s",
    )
    try:
        settings = KernelSettings.from_environ()
    except SettingsError as err:
        print(f"nbdist: bad settings: {err}", file=sys.stderr)
        return 2

    from ..launchers import LauncherError, get_launcher
    from .shell.rank_env import shared_env

    rundir = make_rundir()
    try:
        launcher = get_launcher(settings.launcher)
        env = shared_env(settings, local=launcher.name == "local")
        launcher.prepare(settings, env)
    except LauncherError as err:
        print(f"nbdist: {err}", file=sys.stderr)
        remove_rundir(rundir)
        return 2

    from .shell.runner import Multiplexer

    async def run() -> int:
        mux = Multiplexer(args.connection_file, settings, launcher, rundir, env)
        _running.append(mux)
        return await mux.run()

    try:
        profile_to = os.environ.get("NBDIST_PROFILE")
        if not profile_to:
            return asyncio.run(run())
        # Performance work: NBDIST_PROFILE=out.prof writes cProfile stats at exit.
        import cProfile

        profiler = cProfile.Profile()
        try:
            return profiler.runcall(asyncio.run, run())
        finally:
            profiler.dump_stats(profile_to)
    finally:
        remove_rundir(rundir)


if __name__ == "__main__":
    sys.exit(main())
