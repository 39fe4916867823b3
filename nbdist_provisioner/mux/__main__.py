"""``python -m nbdist_provisioner.mux -f CONNECTION_FILE``: the kernel process Jupyter starts."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from ..settings import KernelSettings, SettingsError


def main(argv: list[str] | None = None) -> int:
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

    from .shell.runner import Multiplexer

    async def run() -> int:
        mux = Multiplexer(args.connection_file, settings)
        return await mux.run()

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


if __name__ == "__main__":
    sys.exit(main())
