"""Fixtures: real kernelspecs in a temp prefix, real kernels, orphan checks by pid."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from kernel_harness import kill_pids, process_tree, wait_gone

REPO = Path(__file__).resolve().parent.parent

#: kernelspec name -> nbdist install arguments
SPECS = {
    "nbdist-test-1": ["--nproc", "1", "--no-init-process-group"],
    "nbdist-test-2": ["--nproc", "2", "--no-init-process-group"],
    "nbdist-test-4": ["--nproc", "4", "--no-init-process-group"],
    "nbdist-test-4-torch": ["--nproc", "4"],
    # a hold window wide enough for the ranks' timing on a loaded 2-core machine, for tests
    # of what is matched within it (the default 0.1 s is for interactive use)
    "nbdist-test-4-window": ["--nproc", "4", "--no-init-process-group",
                             "--setting", "merge_window=1"],
}


@pytest.fixture(scope="session", autouse=True)
def kernel_prefix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Install test kernelspecs with the real CLI and make Jupyter find them."""
    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    for name, args in SPECS.items():
        subprocess.run([sys.executable, "-m", "nbdist_provisioner.cli", "install",
                        "--name", name, "--prefix", str(prefix), *args], check=True,
                       capture_output=True)
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    yield prefix
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


class RunningKernel:
    """A started multi-rank kernel with its client and every pid it created."""

    def __init__(self, km: KernelManager, kc: Any) -> None:
        self.km = km
        self.kc = kc

    @property
    def mux_pid(self) -> int:
        return int(self.km.provisioner.pid)

    @property
    def agent_pid(self) -> int:
        """The rank agent: the multiplexer's one child (it forks the ranks)."""
        import psutil

        (agent,) = psutil.Process(self.mux_pid).children()
        return int(agent.pid)

    def pids(self) -> list[int]:
        return process_tree(self.mux_pid)


@pytest.fixture
def start_kernel() -> Iterator[Any]:
    """Factory: start_kernel("nbdist-test-4") -> RunningKernel; all shut down and checked after."""
    yield from _kernel_factory()


@pytest.fixture(scope="module")
def start_module_kernel() -> Iterator[Any]:
    """Like start_kernel, for kernels shared by the tests of one module (fewer starts)."""
    yield from _kernel_factory()


def _kernel_factory() -> Iterator[Any]:
    started: list[tuple[RunningKernel, list[int]]] = []

    def start(name: str = "nbdist-test-4", **kw: Any) -> RunningKernel:
        km = KernelManager(kernel_name=name)
        km.start_kernel(**kw)
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        rk = RunningKernel(km, kc)
        entry = (rk, rk.pids())
        started.append(entry)
        return rk

    yield start
    leftovers: list[int] = []
    for rk, pids in started:
        all_pids = set(pids) | set(rk.pids() if rk.km.has_kernel else [])
        rk.kc.stop_channels()
        if rk.km.has_kernel:
            rk.km.shutdown_kernel(now=False)
        alive = wait_gone(sorted(all_pids))
        if alive:
            kill_pids(alive)
            leftovers.extend(alive)
    assert not leftovers, f"processes left behind after shutdown: {leftovers}"
