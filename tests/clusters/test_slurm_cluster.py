"""The SLURM test cluster itself: placement, allocation life cycle, refusal, pending, stdin."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path

import probe
from slurm_cluster import SlurmCluster, poll


def reports(out: Path) -> list[dict]:
    """The probes' reports, sorted by SLURM_PROCID."""
    return sorted(probe.read_reports(out), key=lambda r: int(r["env"]["SLURM_PROCID"]))


def job_id(stderr: str) -> int:
    match = re.search(r"(?:Granted|Pending) job allocation (\d+)", stderr)
    assert match, stderr
    return int(match.group(1))


def test_srun_places_two_tasks_per_node(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    slurm_clean.run("srun", "-N2", "-n4", *probe.ARGV, "--out", str(tmp_path), check=True)
    got = [(int(r["env"]["SLURM_PROCID"]), int(r["env"]["SLURM_LOCALID"]),
            int(r["env"]["SLURM_NODEID"]), r["env"]["SLURMD_NODENAME"]) for r in reports(tmp_path)]
    assert got == [(0, 0, 0, "n1"), (1, 1, 0, "n1"), (2, 0, 1, "n2"), (3, 1, 1, "n2")]
    env = reports(tmp_path)[0]["env"]
    assert env["SLURM_NTASKS"] == "4"
    assert env["SLURM_STEP_TASKS_PER_NODE"] == "2(x2)"


def test_placement_from_real_srun_environment(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    """Uneven tasks per node (3 + 1): torchrun's variables from what srun really sets."""
    subprocess.run(["srun", "-N2", "-n3", "--distribution=block", *probe.ARGV,
                    "--out", str(tmp_path), "--placement"], env=slurm_clean.env, check=True,
                   timeout=60, stdin=subprocess.DEVNULL)
    got = [r["torchrun"] for r in reports(tmp_path)]
    keys = ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
            "WORLD_SIZE")
    assert [tuple(t[k] for k in keys) for t in got] == [
        ("0", "0", "2", "0", "2", "3"), ("1", "1", "2", "0", "2", "3"),
        ("2", "0", "1", "1", "2", "3")]
    assert {t["TORCHELASTIC_RUN_ID"] for t in got} == {"probe"}


def test_salloc_no_shell_then_step_then_scancel(slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    alloc = slurm_clean.run("salloc", "--no-shell", "-N2", "--ntasks-per-node=2",
                            "-J", "nbdist-test", check=True)
    job = job_id(alloc.stderr)
    assert slurm_clean.jobs() == [f"{job} RUNNING"]
    slurm_clean.run("srun", "--jobid", str(job), "-n4", *probe.ARGV, "--out", str(tmp_path),
                    check=True)
    assert {r["env"]["SLURM_JOB_ID"] for r in reports(tmp_path)} == {str(job)}
    assert [r["env"]["SLURMD_NODENAME"] for r in reports(tmp_path)] == ["n1", "n1", "n2", "n2"]
    slurm_clean.run("scancel", str(job), check=True)
    poll(lambda: not slurm_clean.jobs(), 30, "squeue to empty after scancel")


def test_impossible_request_is_refused_fast(slurm_clean: SlurmCluster) -> None:
    t0 = time.monotonic()
    res = slurm_clean.run("salloc", "--no-shell", "-N3", timeout=30)
    assert res.returncode != 0
    assert time.monotonic() - t0 < 5
    assert "Node count specification invalid" in res.stderr
    cpus = slurm_clean.run("salloc", "--no-shell", "-N1", "-c3", timeout=30)
    assert cpus.returncode != 0
    assert "Requested node configuration is not available" in cpus.stderr
    assert not slurm_clean.jobs()


def test_pending_allocation_is_visible(slurm_clean: SlurmCluster) -> None:
    hold = slurm_clean.run("salloc", "--no-shell", "-N2", "--ntasks-per-node=2", check=True)
    holder = job_id(hold.stderr)
    waiting = subprocess.Popen(["salloc", "--no-shell", "-n1"], env=slurm_clean.env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert waiting.stderr is not None
        first = waiting.stderr.readline()  # salloc says so before it blocks
        pending = job_id(first)
        assert "Pending job allocation" in first
        state = slurm_clean.run("squeue", "-h", "-j", str(pending), "-o", "%T %r").stdout.split()
        assert state == ["PENDING", "Resources"]
        slurm_clean.run("scancel", str(pending), check=True)
        assert waiting.wait(timeout=30) != 0
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        slurm_clean.run("scancel", str(holder))
    poll(lambda: not slurm_clean.jobs(), 30, "squeue to empty")


def test_srun_input_all_feeds_every_task_the_same_bytes(
        slurm_clean: SlurmCluster, tmp_path: Path) -> None:
    data = b"one-time-token \x00\xff binary\n" * 3
    subprocess.run(["srun", "-N2", "-n4", "--input=all", *probe.ARGV, "--out", str(tmp_path),
                    "--stdin"], input=data, env=slurm_clean.env, check=True, timeout=60)
    got = reports(tmp_path)
    assert len(got) == 4
    assert {r["stdin_sha256"] for r in got} == {hashlib.sha256(data).hexdigest()}
