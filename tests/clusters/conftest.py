"""Fixtures for real schedulers on this host: a SLURM cluster and emulated MPI hosts, and
multi-rank kernels on them.

Tests here skip only when the binaries are missing (``python3 dev.py test`` installs
them with apt).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cluster_kernels
import mpi_hosts
import pytest
import slurm_cluster


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def slurm() -> Iterator[slurm_cluster.SlurmCluster]:
    """munged + slurmctld + slurmd n1, n2 (2 CPUs each) for the whole session."""
    missing = slurm_cluster.missing_binaries()
    if missing:
        pytest.skip(f"SLURM not installed (missing {', '.join(missing)})")
    cluster = slurm_cluster.SlurmCluster()
    # `timeout`/CI send SIGTERM: turn it into an exception so the cluster is stopped.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def slurm_clean(slurm: slurm_cluster.SlurmCluster) -> Iterator[slurm_cluster.SlurmCluster]:
    """The session cluster, checked to hold no job before and after the test.

    Finished jobs linger as COMPLETING for a moment, so "no job" is polled for.
    """
    slurm.cancel_all()
    yield slurm
    try:
        slurm_cluster.poll(lambda: not slurm.jobs(), 30, "squeue to empty by itself")
    except slurm_cluster.ClusterError:
        left = slurm.jobs()
        slurm.cancel_all()
        pytest.fail(f"jobs left in squeue: {left}")


@pytest.fixture
def mpi(tmp_path: Path) -> mpi_hosts.EmulatedHosts:
    """Two emulated hosts (nodeA, nodeB) for mpiexec."""
    missing = mpi_hosts.missing_binaries()
    if missing:
        pytest.skip(f"OpenMPI not installed (missing {', '.join(missing)})")
    return mpi_hosts.EmulatedHosts(tmp_path)


@dataclass
class Site:
    """One scheduler with two nodes, as the multi-rank kernel's settings see it."""

    launcher: str
    nodes: tuple[str, str]
    env: dict[str, str]
    settings: dict[str, Any]
    prefix: Path
    jobs: Callable[[], list[str]] = field(default=lambda: [])
    slurm: slurm_cluster.SlurmCluster | None = None

    def install(self, variant: str, nproc: int = 4, **settings: Any) -> str:
        """A kernelspec for this site; ``settings`` over the site's."""
        return cluster_kernels.install(self.prefix, f"nbdist-{self.launcher}-{variant}",
                                       self.launcher, nproc, **{**self.settings, **settings})


#: What every multi-node test kernel shares: loopback, gloo, short heartbeats, each rank's
#: lines labelled with its host and kept apart (merge_window 0: the tests read the labels
#: of identical lines, which would otherwise come once as "[ranks 0-3]").
COMMON = {"cluster_address": "127.0.0.1", "backend": "gloo", "start_timeout": 90,
          "heartbeat_timeout": 4, "stream_prefix": "[{host}:{rank}] ", "merge_window": 0}


@pytest.fixture(params=["slurm", "mpi"])
def site(request: pytest.FixtureRequest, kernel_prefix: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Site:
    """Each launcher on its scheduler, 4 ranks over 2 nodes."""
    if request.param == "slurm":
        cluster = request.getfixturevalue("slurm_clean")
        return Site("slurm", ("n1", "n2"), dict(cluster.env), {**COMMON, "nodes": 2},
                    kernel_prefix, cluster.jobs, cluster)
    hosts: mpi_hosts.EmulatedHosts = request.getfixturevalue("mpi")
    import os

    return Site("mpi", ("nodeA", "nodeB"), dict(os.environ),
                {**COMMON, "mpi_hosts": ",".join(hosts.hosts), "mpi_mca": hosts.mca},
                kernel_prefix)


@pytest.fixture
def kernels() -> Iterator[Any]:
    """Factory of multi-rank kernels, shut down and checked by pid after the test."""
    yield from cluster_kernels.kernels()
