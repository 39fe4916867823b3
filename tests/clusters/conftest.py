"""Fixtures for real schedulers on this host: a SLURM cluster and emulated MPI hosts.

Tests here skip only when the binaries are missing (``python3 dev.py test`` installs
them with apt).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

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
