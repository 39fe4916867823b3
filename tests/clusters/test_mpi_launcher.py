"""The ``mpi`` launcher's steps over two emulated hosts: placement, -x env, stdin, exits,
cleanup (with probe tasks; whole kernels are in test_cluster_kernels)."""

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
from nbdist_provisioner.launchers.mpi import MpiLauncher, parse_rank_exits
from nbdist_provisioner.settings import KernelSettings


def launcher(mpi: EmulatedHosts | None, environ: dict[str, str] | None = None,
             nproc: int = 4, **settings: object) -> MpiLauncher:
    environ = dict(os.environ if environ is None else environ)
    launcher = MpiLauncher(env=environ)
    if mpi is not None:
        settings = {"mpi_hosts": ",".join(mpi.hosts), "mpi_mca": mpi.mca, **settings}
    launcher.prepare(KernelSettings(nproc=nproc, launcher="mpi", **settings),  # type: ignore[arg-type]
                     environ)
    return launcher


def test_four_tasks_over_two_hosts(mpi: EmulatedHosts, tmp_path: Path) -> None:
    env = dict(os.environ, NBDIST_NOT_FOR_RANKS="secret")

    async def main() -> list[dict]:
        job = await launcher(mpi, env).launch_job(spec(tmp_path, "--sleep", "120"), [2, 2])
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


def test_uneven_tasks_fill_hosts_in_order(mpi: EmulatedHosts, tmp_path: Path) -> None:
    async def main() -> list[dict]:
        s = spec(tmp_path, "--sleep", "120")
        job = await launcher(mpi, nproc=3).launch_job(
            JobSpec(3, s.argv, {**s.env, "NBDIST_TASKS_PER_NODE": "2,1"}, s.stdin), [2, 1])
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
def test_task_exit_is_reported(mpi: EmulatedHosts, tmp_path: Path, fail: str,
                               expected: RankExit) -> None:
    async def main() -> tuple[LaunchedJob, list[RankExit], int]:
        job = await launcher(mpi).launch_job(spec(tmp_path, "--fail", fail, "--sleep", "120"),
                                             [2, 2])
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
        MpiLauncher(env={"PATH": str(tmp_path)}).check()


def test_more_nodes_than_hosts_is_refused() -> None:
    with pytest.raises(LauncherError, match="nodes=3 but mpi_hosts names 2 host"):
        launcher(None, mpi_hosts="a,b", nodes=3)


def test_argv_forwards_only_named_environment() -> None:
    mpi = launcher(None, {"PATH": os.environ["PATH"], "PYTHONPATH": "/x", "SECRET": "1"},
                   nproc=2, mpi_hosts="a,b", mpi_mca={"btl": "tcp"}, env={"C": "3"})
    argv = mpi.mpiexec_argv(JobSpec(2, ("python",), env={"B": "1", "A": "2"}), [1, 1])
    assert argv[argv.index("--host") + 1] == "a:1,b:1"
    assert argv[argv.index("--map-by") + 1] == "ppr:1:node"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-x"] == ["A", "B", "C",
                                                                    "PYTHONPATH"]
    assert "--stdin" in argv and argv[argv.index("--stdin") + 1] == "all"
    assert argv[argv.index("--mca") + 1: argv.index("--mca") + 3] == ["btl", "tcp"]
    assert argv[-1] == "python"


def test_exit_lines_of_mpiexec() -> None:
    state: dict[str, int] = {}
    lines = ["  Process name: [[4242,1],3]", "  Exit code:    7",
             "mpiexec noticed that process rank 1 with PID 0 on node nodeB exited on signal 9 "
             "(Killed)."]
    assert [parse_rank_exits(line, state) for line in lines] == [
        [], [RankExit(3, 7)], [RankExit(1, -9, "nodeB")]]
