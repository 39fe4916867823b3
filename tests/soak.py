"""Soak run (not collected by pytest): many cells on N ranks, each printing markers.

    .venv/bin/python tests/soak.py --cells 1000 --nproc 4

Checks that every marker line arrives once, in order per rank, in its own cell, and
prints the multiplexer's RSS before and after (it must stay flat); exit status 1 on
any lost, duplicated or misattributed line, or on a process left behind.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--lines", type=int, default=5, help="marker lines per rank per cell")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as prefix:
        subprocess.run([sys.executable, "-m", "nbdist_provisioner.cli", "install", "--name",
                        "nbdist-soak", "--nproc", str(args.nproc), "--no-init-process-group",
                        "--prefix", prefix], check=True, capture_output=True)
        os.environ["JUPYTER_PATH"] = str(Path(prefix) / "share" / "jupyter")
        return soak(args)


def soak(args: argparse.Namespace) -> int:
    import psutil
    from jupyter_client.manager import KernelManager

    from kernel_harness import process_tree, run_cell, wait_gone

    km = KernelManager(kernel_name="nbdist-soak")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    mux = psutil.Process(km.provisioner.pid)
    pids = process_tree(mux.pid)
    errors: list[str] = []
    try:
        run_cell(kc, "import sys")
        before = mux.memory_info().rss
        started = time.monotonic()
        for cell in range(args.cells):
            run = run_cell(kc, f"for i in range({args.lines}):\n"
                               f"    print(f'soak {cell} {{rank}} {{i}}')", timeout=120)
            got = run.stream_text().splitlines()
            if run.status != "ok":
                errors.append(f"cell {cell}: {run.reply['content'].get('evalue')}")
            for r in range(args.nproc):
                want = [f"[rank {r}] soak {cell} {r} {i}" for i in range(args.lines)]
                mine = [line for line in got if line.startswith(f"[rank {r}] ")]
                if mine != want:
                    errors.append(f"cell {cell} rank {r}: got {mine}")
            if len(got) != args.nproc * args.lines:
                errors.append(f"cell {cell}: {len(got)} lines: {got}")
            if (cell + 1) % 100 == 0:
                print(f"{cell + 1} cells, {time.monotonic() - started:.1f}s, mux RSS "
                      f"{mux.memory_info().rss >> 20} MB", flush=True)
        took = time.monotonic() - started
        after = mux.memory_info().rss
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    left = wait_gone(pids)
    print(f"{args.cells} cells x {args.nproc} ranks x {args.lines} lines in {took:.1f}s "
          f"({took / args.cells * 1000:.1f} ms/cell); mux RSS before {before / 2**20:.1f} MB, "
          f"after {after / 2**20:.1f} MB; bad cells: {len(errors)}; processes left: {left}")
    for error in errors[:20]:
        print("  " + error)
    return 1 if errors or left else 0


if __name__ == "__main__":
    sys.exit(main())
