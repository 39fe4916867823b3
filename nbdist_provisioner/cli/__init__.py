"""``nbdist`` (also ``jupyter nbdist``): install kernelspecs, run notebooks."""

from __future__ import annotations

import argparse
import sys

from .install import add_install_parser
from .run import add_run_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nbdist", description="Multi-rank (torch.distributed) Jupyter kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_install_parser(sub)
    add_run_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
