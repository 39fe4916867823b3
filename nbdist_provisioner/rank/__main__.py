"""``python -m nbdist_provisioner.rank``: one rank, started by exec (the fork server off).

The rank's record (its key included) arrives as one JSON line on stdin, never in
argv or the environment, which other users can read (``ps``, ``/proc``).
"""

from __future__ import annotations

import sys

from .config import RankConfig


def main() -> None:
    line = sys.stdin.readline()
    if not line.strip():
        raise SystemExit("nbdist rank: no rank record on stdin: ranks are started by the "
                         "nbdist multiplexer, not by hand")
    from .kernel_main import run

    run(RankConfig.from_json(line))


if __name__ == "__main__":
    main()
