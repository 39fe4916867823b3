"""Shared by the launcher tests: run a coroutine, a probe job, its reports, liveness by pid."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import probe
import psutil

from nbdist_provisioner.launchers.job import JobSpec

T = TypeVar("T")
TOKEN = b"one-time-token-\x00\xff-" + os.urandom(16) + b"\n"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))


def spec(out: Path, *extra: str, timeout: float = 60) -> JobSpec:
    return JobSpec(nproc=4, argv=(*probe.ARGV, "--out", str(out), "--stdin", "--placement",
                                  *extra),
                   env={"NBDIST_JOB_VAR": "yes"}, stdin=TOKEN, start_timeout=timeout,
                   name=f"nbdist-test-{os.getpid()}")


async def reports(out: Path, n: int = 4) -> list[dict]:
    deadline = time.monotonic() + 60
    while len(probe.read_reports(out)) < n:
        assert time.monotonic() < deadline, "ranks did not report"
        await asyncio.sleep(0.05)
    return sorted(probe.read_reports(out), key=lambda r: int(r["torchrun"]["RANK"]))


def alive(pids: list[int]) -> list[int]:
    """The pids that still run (zombies waiting for a parent do not count)."""
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


