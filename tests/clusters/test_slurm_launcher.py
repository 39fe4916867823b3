"""The ``slurm`` launcher's steps on the real test cluster: allocate, step, stdin, task
exits, release (with probe tasks; whole kernels are in test_cluster_kernels)."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import pytest
from cluster_helpers import TOKEN, alive, reports, run, spec
from slurm_cluster import SlurmCluster, poll

from nbdist_provisioner.launchers import LauncherError, available_launchers, get_launcher
from nbdist_provisioner.launchers.job import LaunchedJob, RankExit
from nbdist_provisioner.launchers.nodes import split_ranks
from nbdist_provisioner.launchers.slurm import SlurmLauncher, SrunStep
from nbdist_provisioner.settings import KernelSettings


def launcher(env: dict[str, str], nproc: int = 4, **settings: object) -> SlurmLauncher:
    slurm = SlurmLauncher(env=env)
    slurm.prepare(KernelSettings(nproc=nproc, launcher="slurm", **settings), env)  # type: ignore[arg-type]
    return slurm


def check_ranks(got: list[dict]) -> None:
    assert [(r["torchrun"]["RANK"], r["env"]["SLURMD_NODENAME"], r["torchrun"]["LOCAL_RANK"],
             r["torchrun"]["GROUP_RANK"]) for r in got] == [
        ("0", "n1", "0", "0"), ("1", "n1", "1", "0"), ("2", "n2", "0", "1"),
        ("3", "n2", "1", "1")]
    assert {r["stdin_sha256"] for r in got} == {hashlib.sha256(TOKEN).hexdigest()}


def test_own_allocation_step_and_release(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    async def main() -> None:
        slurm = launcher(slurm_clean.env, nodes=2, slurm_time="5")
        assert not slurm.inside_allocation
        await slurm.allocate()
        assert slurm.allocation is not None
        job = await slurm.launch_job(spec(tmp_path, "--sleep", "120"), nodes=2)
        got = await reports(tmp_path)
        check_ranks(got)
        assert {r["env"]["SLURM_JOB_ID"] for r in got} == {job.job_id}
        assert slurm_clean.jobs() == [f"{job.job_id} RUNNING"]
        assert job.returncode is None
        await job.terminate()
        await slurm.release()
        poll(lambda: not slurm_clean.jobs(), 30, "our allocation to go")
        poll(lambda: not alive([r["pid"] for r in got]), 30, "ranks to exit")
    run(main())


def test_step_inside_an_existing_allocation(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    alloc = slurm_clean.run("salloc", "--no-shell", "-N2", "--ntasks-per-node=2", check=True)
    job_id = alloc.stderr.split("Granted job allocation ")[1].split()[0]
    env = {**slurm_clean.env, "SLURM_JOB_ID": job_id, "SLURM_JOB_NUM_NODES": "2"}

    async def main() -> None:
        slurm = launcher(env)
        assert slurm.inside_allocation and slurm.node_count() == 2
        await slurm.allocate()  # (nothing to do)
        job = await slurm.launch_job(spec(tmp_path, "--sleep", "120"), nodes=2)
        assert "--overlap" in slurm.srun_argv(spec(tmp_path), 2)
        got = await reports(tmp_path)
        check_ranks(got)
        assert isinstance(job, SrunStep)
        assert len(await job.step_ids()) == 1
        await job.terminate()
        assert await job.step_ids() == []
        await slurm.release()
        poll(lambda: not alive([r["pid"] for r in got]), 30, "ranks to exit")
    try:
        run(main())
        assert slurm_clean.jobs() == [f"{job_id} RUNNING"]  # not ours to release
    finally:
        slurm_clean.run("scancel", job_id)


def test_task_exit_is_reported_and_ends_the_step(slurm_clean: SlurmCluster,
                                                 tmp_path: Path) -> None:
    async def main() -> tuple[LaunchedJob, list[RankExit], int]:
        slurm = launcher(slurm_clean.env, nodes=2)
        await slurm.allocate()
        job = await slurm.launch_job(spec(tmp_path, "--fail", "3:7", "--sleep", "120"), 2)
        heard: list[RankExit] = []
        job.add_exit_listener(heard.append)
        code = await job.wait()  # --kill-on-bad-exit: one task's failure ends the step
        await job.terminate()
        await slurm.release()
        return job, heard, code
    job, heard, code = run(main())
    assert code != 0
    assert heard[0] == RankExit(3, 7, "n2")
    assert job.rank_exits[3] == RankExit(3, 7, "n2")
    assert heard[0].describe() == "rank 3 on n2 exited with code 7"
    poll(lambda: not slurm_clean.jobs(), 30, "allocation released")


def test_sigkilled_srun_leaves_no_step(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    """srun itself dies (SIGKILL): terminate() still ends the step (scancel)."""
    async def main() -> list[dict]:
        slurm = launcher(slurm_clean.env, nodes=2)
        await slurm.allocate()
        job = await slurm.launch_job(spec(tmp_path, "--sleep", "120"), 2)
        got = await reports(tmp_path)
        assert isinstance(job, SrunStep)
        job.signal_group(signal.SIGKILL)
        await job.wait()
        await job.terminate()
        await slurm.release()
        return got
    got = run(main())
    poll(lambda: not alive([r["pid"] for r in got]), 30, "ranks to exit")
    poll(lambda: not slurm_clean.jobs(), 30, "allocation released")


def test_refused_allocation_fails_fast(slurm_clean: SlurmCluster) -> None:
    t0 = time.monotonic()
    slurm = launcher(slurm_clean.env, nproc=3, nodes=3)
    with pytest.raises(LauncherError, match="SLURM refused the allocation") as err:
        run(slurm.allocate())
    assert "Node count specification invalid" in str(err.value)
    assert time.monotonic() - t0 < 10
    gpus = launcher(slurm_clean.env, nproc=1, gpus_per_node=1)
    with pytest.raises(LauncherError, match="SLURM refused the allocation") as err:
        run(gpus.allocate())
    assert "Invalid generic resource (gres) specification" in str(err.value)


def test_allocation_pending_past_timeout(slurm_clean: SlurmCluster) -> None:
    hold = slurm_clean.run("salloc", "--no-shell", "-N2", "--ntasks-per-node=2", check=True)
    holder = hold.stderr.split("Granted job allocation ")[1].split()[0]
    try:
        slurm = launcher(slurm_clean.env, nproc=1, start_timeout=2)
        t0 = time.monotonic()
        with pytest.raises(LauncherError, match=r"still pending after 2s \(reason: Resources\)"):
            run(slurm.allocate())
        assert time.monotonic() - t0 < 10
        assert slurm_clean.jobs() == [f"{holder} RUNNING"]  # ours was cancelled
    finally:
        slurm_clean.run("scancel", holder)


def test_salloc_asks_for_what_the_settings_say() -> None:
    slurm = launcher({"PATH": "/usr/bin"}, nproc=5, nodes=2, slurm_partition="gpu",
                     slurm_time="1:00:00", gpus_per_node=4, slurm_account="proj",
                     salloc_args="--qos=debug --constraint='a100 80g'")
    argv = slurm.salloc_argv()
    assert argv[argv.index("--nodes") + 1] == "2"
    assert argv[argv.index("--ntasks-per-node") + 1] == "3"  # ranks 0-2 on node 0, 3-4 on 1
    for flag, value in (("--partition", "gpu"), ("--time", "1:00:00"),
                        ("--gpus-per-node", "4"), ("--account", "proj")):
        assert argv[argv.index(flag) + 1] == value
    assert argv[-2:] == ["--qos=debug", "--constraint=a100 80g"]


def test_missing_srun_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="needs srun, which is not on PATH"):
        SlurmLauncher(env={"PATH": str(tmp_path)}).check()


def test_ranks_are_split_over_nodes_as_evenly_as_can_be() -> None:
    assert split_ranks(4, 2) == [2, 2]
    assert split_ranks(5, 2) == [3, 2]
    assert split_ranks(4, 3) == [2, 1, 1]
    with pytest.raises(LauncherError, match="cannot fill 5 nodes"):
        split_ranks(4, 5)


def test_found_by_name(slurm: SlurmCluster) -> None:
    """Registered in the entry-point group, like a plug-in would be."""
    assert {"local", "mpi", "slurm"} <= set(available_launchers())
    assert isinstance(get_launcher("slurm"), SlurmLauncher)
