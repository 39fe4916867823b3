"""Start → first reply, 4 ranks with torch.distributed (gloo), per launcher, in one run:
``local`` on this host next to ``slurm`` and ``mpi`` over 2 emulated nodes. Rounds are
interleaved so that the machine's load falls on all alike. ``-s`` prints the figures."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections.abc import Callable, Iterator

import pytest
from cluster_kernels import first_reply, install, shutdown, start
from conftest import COMMON, Site

#: NBDIST_FIGURE_ROUNDS=5 for steadier figures on a busy machine
ROUNDS = int(os.environ.get("NBDIST_FIGURE_ROUNDS", "2"))
Env = Callable[[], contextlib.AbstractContextManager[dict[str, str]]]


@contextlib.contextmanager
def plain(env: dict[str, str]) -> Iterator[dict[str, str]]:
    yield env


def test_start_to_first_reply_per_launcher(kernel_prefix, request: pytest.FixtureRequest,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    import mpi_hosts
    import slurm_cluster

    kernels: dict[str, tuple[str, Env]] = {
        "local": (install(kernel_prefix, "nbdist-figure-local", "local", backend="gloo"),
                  lambda: plain(dict(os.environ)))}
    if not slurm_cluster.missing_binaries():
        cluster = request.getfixturevalue("slurm_clean")
        site = Site("slurm", ("n1", "n2"), dict(cluster.env), {**COMMON, "nodes": 2},
                    kernel_prefix, cluster.jobs, cluster)

        @contextlib.contextmanager
        def allocated() -> Iterator[dict[str, str]]:
            """As in a batchspawner job: the kernel runs inside an allocation of 2 nodes."""
            hold = cluster.run("salloc", "--no-shell", "-N2", "--ntasks-per-node=2",
                               check=True)
            job = hold.stderr.split("Granted job allocation ")[1].split()[0]
            try:
                yield {**site.env, "SLURM_JOB_ID": job, "SLURM_JOB_NUM_NODES": "2"}
            finally:
                cluster.run("scancel", job)
                slurm_cluster.poll(lambda: not cluster.jobs(), 30, "squeue to empty")

        name = site.install("figure")
        kernels["slurm, allocation of its own"] = (name, lambda: plain(site.env))
        kernels["slurm, inside an allocation"] = (name, allocated)
    if not mpi_hosts.missing_binaries():
        hosts = mpi_hosts.EmulatedHosts(tmp_path_factory.mktemp("figure-hosts"))
        name = install(kernel_prefix, "nbdist-figure-mpi", "mpi", **COMMON,
                       mpi_hosts=",".join(hosts.hosts), mpi_mca=hosts.mca)
        kernels["mpi"] = (name, lambda: plain(dict(os.environ)))
    times: dict[str, list[float]] = {label: [] for label in kernels}
    for _ in range(ROUNDS):
        for label, (name, environment) in kernels.items():
            with environment() as env:
                k = start(name, env)
                try:
                    assert first_reply(k).status == "ok"
                    times[label].append(k.ready_after)
                finally:
                    assert shutdown(k) == []
    local = statistics.median(times["local"])
    for label, got in times.items():
        med = statistics.median(got)
        print(f"FIGURE start -> first reply, 4 ranks + init_process_group (gloo), {label}: "
              f"median {med:.2f} s ({med / local:.2f}x local) of "
              f"{', '.join(f'{t:.2f}' for t in got)}", file=sys.stderr)
