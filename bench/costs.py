"""What grows with the number of ranks, next to a plain ipykernel measured in the same run.

    python -m bench.costs [--ranks 1,4,32] [--flood-ranks 64] [--out bench/costs.md]

- **start**: ``start_kernel()`` to the first cell's ``execute_reply``, without torch and
  with ``init_process_group`` (gloo), next to a plain ipykernel and a plain ipykernel
  whose first cell is ``import torch`` (what a rank with a process group must do);
- **pass**: a ``pass`` cell: round trip (p50), and the CPU the multiplexer and each rank
  spend on it (from their CPU times around 200 cells), next to the plain kernel's; with
  the floor the machine's core count puts on the round trip;
- **memory**: proportional set size (PSS) per rank with torch imported (ranks forked from
  the agent share its pages), next to a plain kernel's with torch imported;
- **flood**: N ranks × 10k printed lines: every line once, in order; the largest
  message the frontend got, and when the first line arrived.

Every kernel is started through jupyter_client, as a frontend does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from nbdist_provisioner.rankset import parse_rank_set

REPO = Path(__file__).resolve().parent.parent
PLAIN = "costs-plain"


class Specs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ksm = KernelSpecManager(kernel_dirs=[str(root)])
        self.write(PLAIN, {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                    "{connection_file}"],
                           "display_name": "plain", "language": "python"})

    def write(self, name: str, spec: dict[str, Any]) -> str:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "kernel.json").write_text(json.dumps(spec))
        return name

    def ours(self, nproc: int, torch: bool, fork: bool = True, backend: str = "gloo") -> str:
        name = f"costs-{nproc}-{'torch' if torch else 'plain'}-{'fork' if fork else 'exec'}"
        return self.write(name, {
            "argv": [sys.executable, "-m", "nbdist_provisioner.mux", "-f", "{connection_file}"],
            "display_name": name, "language": "python",
            "metadata": {"kernel_provisioner": {"provisioner_name": "nbdist-provisioner",
                                                "config": {"nproc": nproc, "backend": backend,
                                                           "init_process_group": torch,
                                                           "fork_server": fork}}}})


class Kernel:
    """A started kernel and its client; ``close`` leaves no process."""

    def __init__(self, specs: Specs, name: str, first: str = "pass") -> None:
        self.km = KernelManager(kernel_name=name, kernel_spec_manager=specs.ksm)
        started = time.perf_counter()
        self.km.start_kernel(cwd=str(REPO))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=600)
        self.run(first)
        self.start_seconds = time.perf_counter() - started

    def run(self, code: str, on_stream: Any = None) -> dict[str, Any]:
        msg_id = self.kc.execute(code)
        while True:
            msg = self.kc.get_iopub_msg(timeout=600)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and on_stream is not None:
                on_stream(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        while True:
            reply = self.kc.get_shell_msg(timeout=600)
            if reply["parent_header"].get("msg_id") == msg_id:
                return dict(reply["content"])

    def processes(self) -> tuple[psutil.Process, list[psutil.Process]]:
        """(the kernel's process, its rank processes) — for a plain kernel, itself twice."""
        top = psutil.Process(self.km.provisioner.pid)
        ranks = [p for p in top.children(recursive=True)
                 if p.name().startswith("nbdist-rank")  # forked by the agent
                 or "nbdist_provisioner.rank" in " ".join(p.cmdline())]  # started by exec
        return top, ranks or [top]

    def close(self) -> None:
        self.kc.stop_channels()
        pids = [self.km.provisioner.pid, *[p.pid for p in self.processes()[1]]]
        self.km.shutdown_kernel(now=True)
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                psutil.Process(pid).wait(10)


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def pss_mib(proc: psutil.Process) -> float:
    with open(f"/proc/{proc.pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_start(specs: Specs, name: str, first: str = "pass", times: int = 1) -> float:
    best = []
    for _ in range(times):
        k = Kernel(specs, name, first)
        best.append(k.start_seconds)
        k.close()
    return min(best)


def measure_pass(specs: Specs, name: str, cells: int) -> dict[str, float]:
    k = Kernel(specs, name)
    try:
        for _ in range(20):
            k.run("pass")
        top, ranks = k.processes()
        top0, ranks0 = cpu(top), [cpu(r) for r in ranks]
        walls = []
        for _ in range(cells):
            t = time.perf_counter()
            k.run("pass")
            walls.append(time.perf_counter() - t)
        top_ms = (cpu(top) - top0) / cells * 1e3
        rank_ms = statistics.mean(cpu(r) - c for r, c in zip(ranks, ranks0, strict=True))
        rank_ms = rank_ms / cells * 1e3
        n = len(ranks)
        plain = ranks == [top]
        return {"p50_ms": statistics.median(walls) * 1e3,
                "mux_ms": 0.0 if plain else top_ms,
                "mux_ms_per_rank": 0.0 if plain else top_ms / n,
                "rank_ms": rank_ms,
                # every process's CPU for one cell, spread over the machine's cores
                "floor_ms": ((0.0 if plain else top_ms) + rank_ms * n) / (os.cpu_count() or 1)}
    finally:
        k.close()


def measure_pss(specs: Specs, name: str) -> float:
    k = Kernel(specs, name, "import torch")
    try:
        return statistics.mean(pss_mib(r) for r in k.processes()[1])
    finally:
        k.close()


def measure_flood(specs: Specs, name: str, nproc: int, lines: int) -> dict[str, Any]:
    k = Kernel(specs, name)
    try:
        got: dict[int, list[int]] = {r: [] for r in range(nproc)}
        sizes: list[int] = []
        first: list[float] = []
        sent = time.perf_counter()

        def on_stream(msg: dict[str, Any]) -> None:
            text = msg["content"]["text"]
            if not first:
                first.append(time.perf_counter() - sent)
            sizes.append(len(json.dumps(msg["content"]).encode()))
            for line in text.splitlines():
                # "[rank 3] 17", or "[ranks 0-63] 17" for a line several ranks printed
                label, _, value = line.partition("] ")
                if not label.startswith("[rank"):
                    continue  # (not a rank's line: a notice)
                who = label.removeprefix("[ranks ").removeprefix("[rank ")
                for rank in parse_rank_set(who, nproc):
                    got[rank].append(int(value))

        k.run(f"for i in range({lines}):\n    print(i)", on_stream)
        took = time.perf_counter() - sent
        whole = all(v == list(range(lines)) for v in got.values())
        return {"lines": lines, "seconds": took,
                "first_line_s": first[0] if first else float("nan"),
                "largest_message_bytes": float(max(sizes) if sizes else 0),
                "messages": float(len(sizes)), "every_line_once_in_order": float(whole)}
    finally:
        k.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.costs")
    p.add_argument("--ranks", default="1,4,32")
    p.add_argument("--pass-ranks", default="1,4,32")
    p.add_argument("--flood-ranks", type=int, default=64)
    p.add_argument("--flood-lines", type=int, default=10_000)
    p.add_argument("--cells", type=int, default=200)
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    ranks = [int(x) for x in args.ranks.split(",") if x]
    pass_ranks = [int(x) for x in args.pass_ranks.split(",") if x]
    results: dict[str, Any] = {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        specs = Specs(Path(tmp))
        log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
        results["plain_start"] = measure_start(specs, PLAIN, times=3)
        results["plain_torch_start"] = measure_start(specs, PLAIN, "import torch", times=2)
        log("plain", results["plain_start"], results["plain_torch_start"])
        for n in ranks:
            results[f"start_{n}"] = measure_start(specs, specs.ours(n, False))
            results[f"start_{n}_torch"] = measure_start(specs, specs.ours(n, True))
            log("start", n, results[f"start_{n}"], results[f"start_{n}_torch"])
        if 4 in ranks:
            results["start_4_torch_exec"] = measure_start(specs, specs.ours(4, True, fork=False))
        results["pass_plain"] = measure_pass(specs, PLAIN, args.cells)
        for n in pass_ranks:
            results[f"pass_{n}"] = measure_pass(specs, specs.ours(n, False), args.cells)
            log("pass", n, results[f"pass_{n}"])
        results["pss_plain_torch"] = measure_pss(specs, PLAIN)
        results["pss_4_torch"] = measure_pss(specs, specs.ours(4, True))
        results["pss_4_torch_exec"] = measure_pss(specs, specs.ours(4, True, fork=False))
        log("pss", results["pss_plain_torch"], results["pss_4_torch"])
        if args.flood_ranks:
            n = args.flood_ranks
            results[f"flood_{n}"] = measure_flood(specs, specs.ours(n, False), n,
                                                  args.flood_lines)
            results["flood_4"] = measure_flood(specs, specs.ours(4, False), 4, args.flood_lines)
            log("flood", results[f"flood_{n}"], results["flood_4"])
    report = render(results, ranks, pass_ranks, args.flood_ranks)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def render(r: dict[str, Any], ranks: list[int], pass_ranks: list[int], flood: int) -> str:
    plain, torch_start = r["plain_start"], r["plain_torch_start"]
    out = [f"Costs that grow with N ({r['cores']} cores, Python {r['python']}); ratios to a "
           "plain ipykernel measured in the same run.", "",
           "| start → first reply | no torch | ratio | init_process_group | ratio (to plain + "
           "import torch) |", "|---|---|---|---|---|",
           f"| plain ipykernel | {plain:.2f} s | 1.00× | {torch_start:.2f} s | 1.00× |"]
    for n in ranks:
        a, b = r[f"start_{n}"], r[f"start_{n}_torch"]
        out.append(f"| nbdist, {n} ranks | {a:.2f} s | {a / plain:.2f}× | {b:.2f} s | "
                   f"{b / torch_start:.2f}× |")
    if "start_4_torch_exec" in r:
        b = r["start_4_torch_exec"]
        out.append(f"| nbdist, 4 ranks, fork_server off | | | {b:.2f} s | "
                   f"{b / torch_start:.2f}× |")
    pp = r["pass_plain"]
    out += ["", "| `pass` cell | round trip p50 | kernel CPU | multiplexer CPU per rank | "
            "CPU per rank (ratio) | floor (all CPU / cores) |", "|---|---|---|---|---|---|",
            f"| plain ipykernel | {pp['p50_ms']:.2f} ms | {pp['rank_ms']:.2f} ms | | "
            f"{pp['rank_ms']:.2f} ms (1.00×) | {pp['floor_ms']:.2f} ms |"]
    for n in pass_ranks:
        x = r[f"pass_{n}"]
        out.append(f"| nbdist, {n} ranks | {x['p50_ms']:.2f} ms | {x['mux_ms']:.2f} ms "
                   f"(multiplexer) | {x['mux_ms_per_rank']:.3f} ms | {x['rank_ms']:.2f} ms "
                   f"({x['rank_ms'] / pp['rank_ms']:.2f}×) | {x['floor_ms']:.2f} ms |")
    a, b = r["pss_plain_torch"], r["pss_4_torch"]
    out += ["", f"PSS per rank with torch imported: plain ipykernel {a:.0f} MiB; nbdist 4 "
                f"ranks (forked) {b:.0f} MiB ({b / a:.2f}×); fork_server off "
                f"{r['pss_4_torch_exec']:.0f} MiB ({r['pss_4_torch_exec'] / a:.2f}×)."]
    for n in (flood, 4):
        f = r.get(f"flood_{n}")
        if f:
            out.append(f"Flood, {n} ranks × {f['lines']} lines: {f['seconds']:.2f} s, every "
                       f"line once "
                       f"and in order: {bool(f['every_line_once_in_order'])}; "
                       f"{int(f['messages'])} messages, largest "
                       f"{f['largest_message_bytes'] / 1024:.0f} KiB; first line after "
                       f"{f['first_line_s']:.2f} s.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
