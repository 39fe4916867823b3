"""Starts that cannot work fail with a message that says what to fix, and leave nothing:
a missing srun/mpiexec, an allocation SLURM refuses or leaves pending past
``start_timeout``, a node that cannot reach the multiplexer."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from cluster_kernels import ClusterKernel, first_reply, start
from conftest import Site

from nbdist_provisioner.provisioner import ProvisionerConfigError

#: node_python for the unreachable-node test: the second node runs in a network namespace
#: of its own (only its own loopback), as a node behind a firewall that drops everything.
ISOLATING_PYTHON = """#!/bin/sh
case "${{SLURMD_NODENAME:-$(hostname)}}" in
  n2|nodeB) exec unshare --net /bin/sh -c 'ip link set lo up && exec "$0" "$@"' {python} "$@";;
esac
exec {python} "$@"
"""


def start_error(k: ClusterKernel) -> str:
    """The first cell's error: what the user reads when the ranks cannot start."""
    run = first_reply(k)
    assert run.status == "error", run.reply["content"]
    return str(run.reply["content"]["evalue"])


def test_missing_scheduler_binary_fails_the_start(site: Site, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    name = site.install("basic")
    monkeypatch.setenv("PATH", str(tmp_path))
    tool = "srun" if site.launcher == "slurm" else "mpiexec"
    with pytest.raises(ProvisionerConfigError, match=f"needs {tool}, which is not on PATH"):
        start(name, {**site.env, "PATH": str(tmp_path)})


def test_node_that_cannot_reach_the_multiplexer(site: Site, kernels, tmp_path: Path) -> None:
    wrapper = tmp_path / "python"
    wrapper.write_text(ISOLATING_PYTHON.format(python=sys.executable))
    wrapper.chmod(0o755)
    t0 = time.monotonic()
    k = kernels(site.install("unreachable", node_python=str(wrapper), start_timeout=10),
                site.env)
    error = start_error(k)
    assert f"nbdist node 1 ({site.nodes[1]}): cannot reach the multiplexer at tcp://127.0.0.1:" \
        in error, error
    assert "no answer within 8s" in error and "cluster_address" in error
    assert time.monotonic() - t0 < 60


def test_refused_allocation(site: Site, kernels) -> None:
    if site.slurm is None:
        pytest.skip("mpiexec has no allocation")
    k = kernels(site.install("three-nodes", nproc=3, nodes=3), site.env)
    error = start_error(k)
    assert "SLURM refused the allocation" in error and "Node count specification invalid" \
        in error, error
    assert site.jobs() == []


def test_allocation_pending_past_start_timeout(site: Site, kernels) -> None:
    if site.slurm is None:
        pytest.skip("mpiexec has no allocation")
    hold = site.slurm.run("salloc", "--no-shell", "-N2", "--ntasks-per-node=2", check=True)
    holder = hold.stderr.split("Granted job allocation ")[1].split()[0]
    try:
        k = kernels(site.install("pending", start_timeout=3), site.env)
        error = start_error(k)
        assert "still pending after 3s (reason: Resources); it was cancelled" in error, error
        assert site.jobs() == [f"{holder} RUNNING"]
    finally:
        site.slurm.run("scancel", holder)
