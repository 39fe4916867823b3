"""The ``slurm`` launcher on the real test cluster: allocate, step, stdin, exits, release."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import pytest
from cluster_helpers import TOKEN, alive, reports, run, spec
from slurm_cluster import SlurmCluster, poll

from nbdist_provisioner.launchers import LauncherError, available_launchers, get_launcher
from nbdist_provisioner.launchers.job import JobSpec, LaunchedJob, RankExit
from nbdist_provisioner.launchers.slurm import SlurmLauncher, SlurmOptions, SrunStep


def check_ranks(got: list[dict]) -> None:
    assert [(r["torchrun"]["RANK"], r["env"]["SLURMD_NODENAME"], r["torchrun"]["LOCAL_RANK"],
             r["torchrun"]["GROUP_RANK"]) for r in got] == [
        ("0", "n1", "0", "0"), ("1", "n1", "1", "0"), ("2", "n2", "0", "1"),
        ("3", "n2", "1", "1")]
    assert {r["stdin_sha256"] for r in got} == {hashlib.sha256(TOKEN).hexdigest()}


def test_own_allocation_step_and_release(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    async def main() -> None:
        launcher = SlurmLauncher(SlurmOptions(nodes=2, time="5"), env=slurm_clean.env)
        assert not launcher.inside_allocation
        job = await launcher.launch_job(spec(tmp_path, "--sleep", "120"))
        got = await reports(tmp_path)
        check_ranks(got)
        assert {r["env"]["SLURM_JOB_ID"] for r in got} == {job.job_id}
        assert slurm_clean.jobs() == [f"{job.job_id} RUNNING"]
        assert job.returncode is None
        await job.terminate()
        poll(lambda: not slurm_clean.jobs(), 30, "our allocation to go")
        poll(lambda: not alive([r["pid"] for r in got]), 30, "ranks to exit")
    run(main())


def test_step_inside_an_existing_allocation(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    alloc = slurm_clean.run("salloc", "--no-shell", "-N2", "--ntasks-per-node=2", check=True)
    job_id = alloc.stderr.split("Granted job allocation ")[1].split()[0]
    env = {**slurm_clean.env, "SLURM_JOB_ID": job_id}

    async def main() -> None:
        launcher = SlurmLauncher(SlurmOptions(), env=env)
        assert launcher.inside_allocation
        job = await launcher.launch_job(spec(tmp_path, "--sleep", "120"))
        got = await reports(tmp_path)
        check_ranks(got)
        assert isinstance(job, SrunStep)
        assert len(await job.step_ids()) == 1
        await job.terminate()
        assert await job.step_ids() == []
        poll(lambda: not alive([r["pid"] for r in got]), 30, "ranks to exit")
    try:
        run(main())
        assert slurm_clean.jobs() == [f"{job_id} RUNNING"]  # not ours to release
    finally:
        slurm_clean.run("scancel", job_id)


def test_rank_exit_is_reported_and_ends_the_step(slurm_clean: SlurmCluster,
                                                 tmp_path: Path) -> None:
    async def main() -> tuple[LaunchedJob, list[RankExit], int]:
        launcher = SlurmLauncher(SlurmOptions(nodes=2), env=slurm_clean.env)
        job = await launcher.launch_job(spec(tmp_path, "--fail", "3:7", "--sleep", "120"))
        heard: list[RankExit] = []
        job.add_exit_listener(heard.append)
        code = await job.wait()  # --kill-on-bad-exit: one rank's failure ends the step
        await job.terminate()
        return job, heard, code
    job, heard, code = run(main())
    assert code != 0
    assert heard[0] == RankExit(3, 7, "n2")
    assert job.rank_exits[3] == RankExit(3, 7, "n2")
    assert heard[0].describe() == "rank 3 on n2 exited with code 7"
    poll(lambda: not slurm_clean.jobs(), 30, "allocation released")


def test_sigkilled_srun_leaves_no_step(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    """srun itself dies (SIGKILL): terminate() still ends the step and the allocation."""
    async def main() -> list[dict]:
        launcher = SlurmLauncher(SlurmOptions(nodes=2), env=slurm_clean.env)
        job = await launcher.launch_job(spec(tmp_path, "--sleep", "120"))
        got = await reports(tmp_path)
        assert isinstance(job, SrunStep)
        job.signal_group(signal.SIGKILL)
        await job.wait()
        await job.terminate()
        return got
    got = run(main())
    poll(lambda: not alive([r["pid"] for r in got]), 30, "ranks to exit")
    poll(lambda: not slurm_clean.jobs(), 30, "allocation released")


def test_refused_allocation_fails_fast(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    t0 = time.monotonic()
    launcher = SlurmLauncher(SlurmOptions(nodes=3, tasks_per_node=1), env=slurm_clean.env)
    with pytest.raises(LauncherError, match="SLURM refused the allocation") as err:
        run(launcher.launch_job(JobSpec(3, ("true",))))
    assert "Node count specification invalid" in str(err.value)
    assert time.monotonic() - t0 < 10
    gpus = SlurmLauncher(SlurmOptions(gpus_per_node=1), env=slurm_clean.env)
    with pytest.raises(LauncherError, match="SLURM refused the allocation") as err:
        run(gpus.launch_job(JobSpec(1, ("true",))))
    assert "Invalid generic resource (gres) specification" in str(err.value)


def test_allocation_pending_past_timeout(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    hold = slurm_clean.run("salloc", "--no-shell", "-N2", "--ntasks-per-node=2", check=True)
    holder = hold.stderr.split("Granted job allocation ")[1].split()[0]
    try:
        launcher = SlurmLauncher(SlurmOptions(nodes=1), env=slurm_clean.env)
        t0 = time.monotonic()
        with pytest.raises(LauncherError, match=r"still pending after 2s \(reason: Resources\)"):
            run(launcher.launch_job(JobSpec(1, ("true",), start_timeout=2)))
        assert time.monotonic() - t0 < 10
        assert slurm_clean.jobs() == [f"{holder} RUNNING"]  # ours was cancelled
    finally:
        slurm_clean.run("scancel", holder)


def test_missing_srun_says_what_to_install(tmp_path: Path) -> None:
    launcher = SlurmLauncher(SlurmOptions(), env={"PATH": str(tmp_path)})
    with pytest.raises(LauncherError, match="needs srun, which is not on PATH"):
        launcher.check()


@pytest.mark.parametrize("options, nproc, message", [
    (SlurmOptions(nodes=2, tasks_per_node=3), 4, "is not the 4 ranks"),
    (SlurmOptions(nodes=5), 4, "does not fit 4 ranks"),
])
def test_inconsistent_layout_is_refused(options: SlurmOptions, nproc: int,
                                        message: str) -> None:
    with pytest.raises(LauncherError, match=message):
        options.salloc_argv(nproc, "x")


def test_found_by_name_and_refuses_the_per_rank_contract(slurm: SlurmCluster) -> None:
    """Registered in the entry-point group; until the multiplexer speaks the job-step
    contract, the per-rank ``launch`` says so instead of doing something half-right."""
    assert {"local", "mpi", "slurm"} <= set(available_launchers())
    launcher = get_launcher("slurm")
    assert isinstance(launcher, SlurmLauncher)
    with pytest.raises(LauncherError, match="job-step contract"):
        run(launcher.launch([]))
