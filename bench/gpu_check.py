"""The NCCL path on a machine with a GPU: ``python -m bench.gpu_check``.

One GPU per rank is what ``backend=auto`` needs for nccl; on a machine with one GPU
that is one rank (two ranks on one GPU fall back to gloo, which is checked too).
Checks, through jupyter_client like a frontend: the ranks are forked from an agent
that imported torch without touching CUDA (the fork server with CUDA), the rank
initialises CUDA and NCCL, ``device`` is ``cuda:LOCAL_RANK``, an ``all_reduce`` on a
CUDA tensor, ``%dist_status`` with CUDA memory; and the start time next to a plain
ipykernel that imports torch and initialises CUDA.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.costs import PLAIN, Kernel, Specs


def main() -> int:
    import torch

    gpus = torch.cuda.device_count()
    print(f"torch {torch.__version__}, {gpus} GPU(s): "
          f"{[torch.cuda.get_device_name(i) for i in range(gpus)]}", flush=True)
    if not gpus:
        print("GPU CHECK skipped: no GPU", flush=True)
        return 1
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        specs = Specs(Path(tmp))
        started = time.perf_counter()
        plain = Kernel(specs, PLAIN, "import torch\ntorch.zeros(1, device='cuda')")
        plain.close()
        plain_s = time.perf_counter() - started
        for nproc in sorted({1, gpus}):
            name = specs.ours(nproc, True, backend="auto")
            k = Kernel(specs, name)
            try:
                run = k.kc.execute_interactive(
                    "import os, torch\n"
                    "t = torch.ones(2, device=device) * (rank + 1)\n"
                    "dist.all_reduce(t)\n"
                    "print('RESULT', rank, dist.get_backend(), device, t.tolist(), "
                    "torch.cuda.is_initialized())\n"
                    "%dist_status", timeout=300, output_hook=lambda m: print(
                        m["content"].get("text", "") or m["content"].get("evalue", ""),
                        end="", flush=True))
                status = run["content"]["status"]
                print(f"nccl, {nproc} rank(s): cell {status}; start "
                      f"{k.start_seconds:.2f}s (plain ipykernel + import torch + CUDA: "
                      f"{plain_s:.2f}s)", flush=True)
                ok = ok and status == "ok"
            finally:
                k.close()
        # two ranks on one GPU: auto falls back to gloo
        if gpus == 1:
            k = Kernel(specs, specs.ours(2, True, backend="auto"))
            try:
                run = k.kc.execute_interactive(
                    "print('BACKEND', rank, dist.get_backend(), device)", timeout=300,
                    output_hook=lambda m: print(m["content"].get("text", ""), end=""))
                ok = ok and run["content"]["status"] == "ok"
            finally:
                k.close()
    print("GPU CHECK", "OK" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
