"""``python -m bench``: run the benchmark and write the markdown report.

Examples::

    python -m bench --quick                     # ranks 1,2,4; < 10 min on 2 cores
    python -m bench --quick --ranks 1,4 --no-peers
    python -m bench                             # ranks 1..32, start measured 3×
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from bench import peers
from bench.report import render
from bench.runner import BenchConfig, Runner, progress

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=_int_list, default=None,
                   help="rank counts for the multi-rank kernel (default 1,2,4 with --quick, "
                        "else 1,2,4,8,16,32)")
    p.add_argument("--quick", action="store_true",
                   help="small rank list, one start per subject, 570 s budget for the whole run")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results.md",
                   help="where to write the markdown report (default bench/results.md)")
    p.add_argument("--peers", type=lambda s: [x for x in s.split(",") if x],
                   default=list(peers.PEERS), help="comma list of peers (default: all)")
    p.add_argument("--no-peers", dest="peers", action="store_const", const=[],
                   help="skip ipyparallel and nbdistributed")
    p.add_argument("--peer-ranks", type=int, default=4, help="workers per peer (default 4)")
    p.add_argument("--budget", type=float, default=None,
                   help="override the whole run's time budget, seconds")
    args = p.parse_args(argv)
    unknown = set(args.peers) - set(peers.PEERS)
    if unknown:
        p.error(f"unknown peers: {', '.join(sorted(unknown))}")
    return args


def _int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, e.g. 1,2,4")
    return values


def environment(cfg: BenchConfig) -> dict[str, str]:
    """What the numbers were measured on (goes at the top of the report)."""
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nbdist_provisioner"],
                               cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        rev = (rev or "unknown") + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs, {mem:.0f} GiB, {platform.platform()}",
        "python": platform.python_version(),
        "versions": ", ".join(f"{d} {version(d)}" for d in (
            "jupyter_client", "ipykernel", "pyzmq", "torch", "ipyparallel", "nbdistributed")),
        "nbdist_provisioner": rev,
        "workloads": (f"`pass` ×{cfg.rtt_count} (≤{cfg.rtt_max_s:.0f} s) after {cfg.rtt_warmup} "
                      f"warm-up; {cfg.lat_lines} timestamped lines every "
                      f"{cfg.lat_interval_s * 1000:.0f} ms; {cfg.stream_lines} lines per rank; "
                      f"RSS around {cfg.rss_lines} lines over {cfg.rss_ranks} ranks; "
                      f"peers with {cfg.peer_ranks} workers"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = BenchConfig.for_mode(args.quick, args.ranks, args.peers)
    cfg.peer_ranks = args.peer_ranks
    if args.budget is not None:
        cfg.budget_s = args.budget
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nbdist-bench-") as tmp:
        workdir = Path(tmp)
        # Private IPython/Jupyter state for every subject, children included.
        os.environ["IPYTHONDIR"] = str(workdir / "ipython")
        os.environ["JUPYTER_RUNTIME_DIR"] = str(workdir / "runtime")
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        report = asyncio.run(Runner(cfg, workdir, env).run())
    wall = time.perf_counter() - t0
    report.meta = {
        "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "wall time": f"{wall:.0f} s",
        **environment(cfg),
    }
    text = render(report)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    progress(f"done in {wall:.0f} s; report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
