"""OpenMPI over two emulated hosts: placement, -x environment, stdin, cleanup."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import probe
from cluster_helpers import alive
from mpi_hosts import HOST_VAR, EmulatedHosts
from slurm_cluster import poll


def by_rank(out: Path) -> list[dict]:
    return sorted(probe.read_reports(out), key=lambda r: int(r["env"]["OMPI_COMM_WORLD_RANK"]))


def test_four_ranks_over_two_hosts(mpi: EmulatedHosts, tmp_path: Path) -> None:
    env = dict(os.environ, NBDIST_FORWARDED="yes", NBDIST_NOT_FORWARDED="no")
    subprocess.run([*mpi.mpiexec_argv(2), "-x", "NBDIST_FORWARDED",
                    *probe.ARGV, "--out", str(tmp_path)],
                   env=env, check=True, timeout=60, stdin=subprocess.DEVNULL)
    got = by_rank(tmp_path)
    keys = ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_NODE_RANK", HOST_VAR)
    assert [tuple(r["env"][k] for k in keys) for r in got] == [
        ("0", "4", "0", "2", "0", "nodeA"), ("1", "4", "1", "2", "1", "nodeA"),
        ("2", "4", "0", "2", "0", "nodeB"), ("3", "4", "1", "2", "1", "nodeB")]
    assert {r["env"].get("NBDIST_FORWARDED") for r in got} == {"yes"}
    # -x is what carries it: mpiexec does not hand its environment to remote daemons.
    assert {r["env"].get("NBDIST_NOT_FORWARDED") for r in got} == {None}
    assert sorted(line.split()[0] for line in mpi.agent_calls()) == ["nodeA", "nodeB"]


def test_placement_from_real_mpiexec_environment(mpi: EmulatedHosts, tmp_path: Path) -> None:
    """3 + 1 processes over two hosts, the plan forwarded with -x: torchrun's variables."""
    env = dict(os.environ, NBDIST_TASKS_PER_NODE="3,1")
    subprocess.run([*mpi.mpiexec_argv(3, np=4), "--map-by", "slot", "-x", "NBDIST_TASKS_PER_NODE",
                    *probe.ARGV, "--out", str(tmp_path), "--placement"],
                   env=env, check=True, timeout=60, stdin=subprocess.DEVNULL)
    got = [(r["env"][HOST_VAR], r["torchrun"]) for r in by_rank(tmp_path)]
    keys = ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE")
    assert [(h, *(t[k] for k in keys)) for h, t in got] == [
        ("nodeA", "0", "0", "3", "0", "2"), ("nodeA", "1", "1", "3", "0", "2"),
        ("nodeA", "2", "2", "3", "0", "2"), ("nodeB", "3", "0", "1", "1", "2")]


def test_stdin_to_all_ranks_or_to_rank_0_only(mpi: EmulatedHosts, tmp_path: Path) -> None:
    data = b"one-time-token \x00\xff\n"
    # (not "--stdin none": the launcher never uses it, and Open MPI 4 once hung there
    # in CI with every rank reading stdin)
    for mode in ("all", "default"):
        out = tmp_path / mode
        out.mkdir()
        extra = [] if mode == "default" else ["--stdin", mode]
        subprocess.run([*mpi.mpiexec_argv(2), *extra, *probe.ARGV, "--out", str(out),
                        "--stdin"], input=data, check=True, timeout=60)
        lengths = [r["stdin_len"] for r in by_rank(out)]
        want = {"all": [len(data)] * 4, "default": [len(data), 0, 0, 0]}
        assert lengths == want[mode], mode
        if mode == "all":
            assert {r["stdin_sha256"] for r in by_rank(out)} == {hashlib.sha256(data).hexdigest()}


def test_killing_mpiexec_process_group_leaves_nothing(mpi: EmulatedHosts, tmp_path: Path) -> None:
    proc = subprocess.Popen([*mpi.mpiexec_argv(2), *probe.ARGV, "--out", str(tmp_path),
                             "--sleep", "120"], stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        poll(lambda: len(probe.read_reports(tmp_path)) == 4, 60, "4 ranks to report")
        ranks = probe.read_reports(tmp_path)
        # orted runs --daemonize: each rank's parent is a daemon outside mpiexec's group.
        daemons = sorted({r["ppid"] for r in ranks})
        pids = [r["pid"] for r in ranks] + daemons
        assert len(daemons) == 2
        assert all(os.getpgid(d) != proc.pid for d in daemons)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        poll(lambda: not alive(pids), 30, f"ranks and orted {pids} to exit")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
