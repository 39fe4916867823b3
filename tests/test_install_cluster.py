"""`nbdist install --launcher` and `--setting NAME=VALUE`: a kernelspec per kind of job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def install(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "nbdist"), "install", "--prefix", str(prefix), *args],
                          capture_output=True, text=True, timeout=60)


def test_launcher_and_settings_go_into_the_kernelspec(tmp_path: Path) -> None:
    done = install(tmp_path, "--name", "gpu-2x4", "--nproc", "8", "--launcher", "slurm",
                   "--setting", "nodes=2", "--setting", "slurm_partition=gpu",
                   "--setting", "heartbeat_timeout=20",
                   "--setting", 'mpi_mca={"btl_tcp_if_include": "ib0"}')
    assert done.returncode == 0, done.stderr
    spec = json.loads((tmp_path / "share/jupyter/kernels/gpu-2x4/kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["config"] == {
        "launcher": "slurm", "nodes": 2, "slurm_partition": "gpu", "heartbeat_timeout": 20.0,
        "mpi_mca": {"btl_tcp_if_include": "ib0"}, "nproc": 8}
    assert spec["metadata"]["supported_encryption"] == ["curve"]


def test_bad_settings_are_refused_naming_them(tmp_path: Path) -> None:
    done = install(tmp_path, "--nproc", "4", "--setting", "nodes=9")
    assert done.returncode == 2 and "nodes=9 leaves nodes without a rank" in done.stderr
    done = install(tmp_path, "--setting", "nodez=2")
    assert done.returncode == 2 and "NAME one of nproc, launcher" in done.stderr
    done = install(tmp_path, "--setting", "cluster_ports=9-1")
    assert done.returncode == 2 and "cluster_ports must be a port range" in done.stderr
