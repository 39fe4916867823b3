"""The ``mpi`` launcher over two emulated hosts: placement, -x env, stdin, exits, cleanup."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cluster_helpers import TOKEN, alive, reports, run, spec
from mpi_hosts import HOST_VAR, EmulatedHosts
from slurm_cluster import poll

from nbdist_provisioner.launchers import LauncherError
from nbdist_provisioner.launchers.job import JobSpec, LaunchedJob, RankExit
from nbdist_provisioner.launchers.mpi import MpiLauncher, MpiOptions, parse_rank_exits


def launcher(mpi: EmulatedHosts, env: dict[str, str] | None = None) -> MpiLauncher:
    return MpiLauncher(MpiOptions(hosts=mpi.hosts, mca=mpi.mca), env=env)


def test_four_ranks_over_two_hosts(mpi: EmulatedHosts, tmp_path: Path) -> None:
    env = dict(os.environ, NBDIST_NOT_FOR_RANKS="secret")

    async def main() -> list[dict]:
        job = await launcher(mpi, env).launch_job(spec(tmp_path, "--sleep", "120"))
        got = await reports(tmp_path)
        assert job.returncode is None
        await job.terminate()
        return got
    got = run(main())
    assert [(r["torchrun"]["RANK"], r["env"][HOST_VAR], r["torchrun"]["LOCAL_RANK"],
             r["torchrun"]["GROUP_RANK"], r["torchrun"]["LOCAL_WORLD_SIZE"]) for r in got] == [
        ("0", "nodeA", "0", "0", "2"), ("1", "nodeA", "1", "0", "2"),
        ("2", "nodeB", "0", "1", "2"), ("3", "nodeB", "1", "1", "2")]
    assert {r["stdin_sha256"] for r in got} == {hashlib.sha256(TOKEN).hexdigest()}
    assert {r["env"].get("NBDIST_JOB_VAR") for r in got} == {"yes"}  # forwarded with -x
    assert {r["env"].get("NBDIST_NOT_FOR_RANKS") for r in got} == {None}  # not forwarded
    poll(lambda: not alive([r["pid"] for r in got] + [r["ppid"] for r in got]), 30,
         "ranks and orted to exit")


def test_uneven_ranks_fill_hosts_in_order(mpi: EmulatedHosts, tmp_path: Path) -> None:
    async def main() -> list[dict]:
        s = spec(tmp_path, "--sleep", "120")
        job = await launcher(mpi).launch_job(JobSpec(3, s.argv, s.env, s.stdin))
        got = await reports(tmp_path, 3)
        await job.terminate()
        return got
    got = run(main())
    assert [(r["torchrun"]["RANK"], r["env"][HOST_VAR], r["torchrun"]["LOCAL_WORLD_SIZE"])
            for r in got] == [("0", "nodeA", "2"), ("1", "nodeA", "2"), ("2", "nodeB", "1")]


@pytest.mark.parametrize("fail, expected", [
    ("2:7", RankExit(2, 7)),
    ("3:-9", RankExit(3, -9, "nodeB")),
])
def test_rank_exit_is_reported(mpi: EmulatedHosts, tmp_path: Path, fail: str,
                               expected: RankExit) -> None:
    async def main() -> tuple[LaunchedJob, list[RankExit], int]:
        job = await launcher(mpi).launch_job(spec(tmp_path, "--fail", fail, "--sleep", "120"))
        heard: list[RankExit] = []
        job.add_exit_listener(heard.append)
        code = await job.wait()  # mpiexec aborts the job when a process fails
        await job.terminate()
        return job, heard, code
    job, heard, code = run(main())
    assert code != 0
    assert heard == [expected], job.output_tail()


def test_missing_mpiexec_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="needs mpiexec, which is not on PATH"):
        MpiLauncher(MpiOptions(), env={"PATH": str(tmp_path)}).check()


def test_argv_forwards_only_named_environment() -> None:
    launcher = MpiLauncher(MpiOptions(hosts=("a", "b"), tasks_per_node=2, mca={"btl": "tcp"}),
                           env={"PATH": os.environ["PATH"]})
    argv = launcher.mpiexec_argv(JobSpec(4, ("python",), env={"B": "1", "A": "2"}))
    assert argv[argv.index("--host") + 1] == "a:2,b:2"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-x"] == [
        "A", "B", "NBDIST_TASKS_PER_NODE"]
    assert "--stdin" in argv and argv[argv.index("--stdin") + 1] == "all"
    assert argv[-1] == "python"


def test_exit_lines_of_mpiexec() -> None:
    state: dict[str, int] = {}
    lines = ["  Process name: [[4242,1],3]", "  Exit code:    7",
             "mpiexec noticed that process rank 1 with PID 0 on node nodeB exited on signal 9 "
             "(Killed)."]
    assert [parse_rank_exits(line, state) for line in lines] == [
        [], [RankExit(3, 7)], [RankExit(1, -9, "nodeB")]]
