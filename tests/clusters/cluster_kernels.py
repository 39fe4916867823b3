"""Multi-rank kernels on the test schedulers: kernelspecs, starts, what runs where.

Ranks on the emulated nodes are not descendants of the multiplexer (SLURM's slurmstepd
or Open MPI's orted start the node links), so the processes of a kernel are found by
asking the ranks (``PROBE``): each prints its pid, its agent's and its node link's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

from kernel_harness import CellRun, kill_pids, run_cell, wait_gone

#: One JSON line per rank: where it runs and the processes it hangs from.
PROBE = """\
import json as _j, os as _o, socket as _s, psutil as _p
_agent = _p.Process(_o.getppid())
print(_j.dumps({"pid": _o.getpid(), "agent": _agent.pid, "link": _agent.ppid(),
                "hostname": _s.gethostname(),
                "env": {k: v for k, v in _o.environ.items()
                        if k.startswith(("SLURM", "OMPI_", "PMIX", "RANK", "LOCAL_", "GROUP_",
                                         "WORLD_", "ROLE_", "MASTER_", "TORCHELASTIC",
                                         "GLOO_"))}}))
"""


def install(prefix: Path, name: str, launcher: str, nproc: int = 4,
            **settings: Any) -> str:
    """A kernelspec made by the real ``nbdist install``; returns its name."""
    args = [sys.executable, "-m", "nbdist_provisioner.cli", "install", "--name", name,
            "--prefix", str(prefix), "--nproc", str(nproc), "--launcher", launcher]
    for key, value in settings.items():
        text = json.dumps(value) if isinstance(value, dict) else str(value)
        args += ["--setting", f"{key}={text}"]
    subprocess.run(args, check=True, capture_output=True, text=True)
    return name


@dataclass
class ClusterKernel:
    km: KernelManager
    kc: Any
    started: float
    ready_after: float = 0.0
    seen: set[int] = field(default_factory=set)

    def cell(self, code: str, timeout: float = 120, **kw: Any) -> CellRun:
        return run_cell(self.kc, code, timeout=timeout, **kw)

    def ranks(self) -> list[dict[str, Any]]:
        """Every rank's probe, by rank; their pids are remembered for the cleanup check."""
        run = self.cell(PROBE)
        assert run.status == "ok", run.reply["content"]
        found = []
        for line in run.stream_text().splitlines():
            found.append(json.loads(line.split("] ", 1)[1]))
        found.sort(key=lambda r: int(r["env"]["RANK"]))
        for r in found:
            self.seen.update((r["pid"], r["agent"], r["link"]))
        return found

    def pids(self) -> set[int]:
        return {self.mux_pid, *self.seen}

    @property
    def mux_pid(self) -> int:
        return int(self.km.provisioner.pid)  # type: ignore[union-attr]


def start(name: str, env: Mapping[str, str] | None = None, timeout: float = 120,
          **kw: Any) -> ClusterKernel:
    """Start the kernel and wait for its first reply (the ranks are up then)."""
    t0 = time.monotonic()
    km = KernelManager(kernel_name=name, **kw)
    km.start_kernel(env=dict(env if env is not None else os.environ))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=timeout)
    return ClusterKernel(km, kc, t0)


def first_reply(k: ClusterKernel, timeout: float = 120) -> CellRun:
    run = k.cell("pass", timeout=timeout)
    k.ready_after = time.monotonic() - k.started
    return run


def shutdown(k: ClusterKernel) -> list[int]:
    """Shut the kernel down; the pids still running 30 s later (killed, then reported)."""
    pids = sorted(k.pids())
    k.kc.stop_channels()
    if k.km.has_kernel:
        k.km.shutdown_kernel(now=False)
    left = wait_gone(pids, timeout=30)
    if left:
        kill_pids(left)
    return left


def kernels() -> Iterator[Any]:
    """Factory fixture body: kernels shut down (and checked by pid) after the test."""
    started: list[ClusterKernel] = []

    def factory(name: str, env: Mapping[str, str] | None = None, **kw: Any) -> ClusterKernel:
        k = start(name, env, **kw)
        started.append(k)
        return k

    yield factory
    leftovers = []
    for k in started:
        leftovers += shutdown(k)
    assert not leftovers, f"processes left behind after shutdown: {leftovers}"
