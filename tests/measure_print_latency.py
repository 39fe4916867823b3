"""print -> frontend latency, a 4-rank kernel next to a plain python3 ipykernel.

Not a test (pytest does not collect it): ``python tests/measure_print_latency.py``.
Uses the benchmark's own kernelspecs and workload (``bench.workloads.print_latency``:
each rank prints ``BENCHTS <time.time()>`` every 20 ms; latency = arrival at the
client minus the stamp, for every line), so the figures match ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import workloads  # noqa: E402
from bench.kernels import BASELINE_SPEC, SpecDir, kernel_env, kernel_session  # noqa: E402


async def measure(ranks: int, lines: int, interval: float, repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="nbdist-latency-") as tmp:
        root = Path(tmp)
        specs = SpecDir(root)
        ours = specs.add_ours(ranks, init_process_group=False)
        env = kernel_env(root / "ipython")
        for label, spec in (("python3 ipykernel", BASELINE_SPEC), (f"{ranks} ranks", ours)):
            async with kernel_session(specs, spec, env, start_timeout=120) as ks:
                for i in range(repeats):
                    s = await workloads.print_latency(ks.client, lines=lines,
                                                      interval_s=interval, timeout=120)
                    print(f"{label:>18} run {i + 1}: n={s.n:4d}  p50={s.p50 * 1e3:6.1f} ms  "
                          f"p99={s.p99 * 1e3:6.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--lines", type=int, default=100, help="lines per rank")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between prints")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(measure(args.ranks, args.lines, args.interval, args.repeats))


if __name__ == "__main__":
    main()
