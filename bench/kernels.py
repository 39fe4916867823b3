"""Start kernels through jupyter_client exactly like a frontend does.

The baseline (plain ipykernel) and the multi-rank kernel are both ordinary
kernelspecs written into a private kernels directory and started with
``AsyncKernelManager`` + its client, so the only difference between the
figures is the kernel itself. ``KernelSession`` measures "start to first
``execute_reply``" while starting, and always shuts the kernel down and reaps
every process it left behind (by pid, see ``procs``).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path
from typing import IO, Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from bench import procs

#: Name of our provisioner's entry point (group ``jupyter_client.kernel_provisioners``).
PROVISIONER_NAME = "nbdist-provisioner"
BASELINE_SPEC = "bench-ipykernel"
#: The repository root; kernels start there so ``-m nbdist_provisioner.mux``
#: benchmarks the working tree even when an older copy is installed.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Called for every stream message of a cell: (stream name, text, arrival time.time()).
StreamCallback = Callable[[str, str, float], None]


class CellFailed(RuntimeError):
    """A cell finished with ``status != ok`` (or timed out)."""


def our_spec_name(nproc: int, init_process_group: bool) -> str:
    """Kernelspec name for one multi-rank configuration."""
    return f"bench-nbdist-n{nproc}-{'init' if init_process_group else 'noinit'}"


class SpecDir:
    """A private kernels directory holding the specs this run needs."""

    def __init__(self, root: Path) -> None:
        self.root = root / "kernels"
        self.root.mkdir(parents=True, exist_ok=True)
        self.manager = KernelSpecManager(kernel_dirs=[str(self.root)])
        self._write(BASELINE_SPEC, {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (bench baseline)",
            "language": "python",
            "interrupt_mode": "signal",
            "metadata": {"debugger": False},
        })

    def add_ours(self, nproc: int, init_process_group: bool) -> str:
        """Write the multi-rank spec for ``nproc`` ranks; return its name."""
        name = our_spec_name(nproc, init_process_group)
        self._write(name, {
            "argv": [sys.executable, "-m", "nbdist_provisioner.mux", "-f", "{connection_file}"],
            "display_name": f"Python 3 ({nproc} ranks, bench)",
            "language": "python",
            "interrupt_mode": "signal",
            "metadata": {"kernel_provisioner": {
                "provisioner_name": PROVISIONER_NAME,
                "config": {"nproc": nproc, "init_process_group": init_process_group},
            }},
        })
        return name

    def _write(self, name: str, spec: dict[str, Any]) -> None:
        path = self.root / name
        path.mkdir(exist_ok=True)
        (path / "kernel.json").write_text(json.dumps(spec, indent=1))


def ours_unavailable_reason() -> str | None:
    """Why the multi-rank kernel cannot start here, or None if it can.

    Checked up front so that every "ours" row fails with one clear reason
    instead of a jupyter_client traceback per configuration.
    """
    if util.find_spec("nbdist_provisioner") is None:
        return "package nbdist_provisioner is not importable"
    try:
        if util.find_spec("nbdist_provisioner.mux") is None:
            return "module nbdist_provisioner.mux does not exist"
    except ImportError as exc:
        return f"nbdist_provisioner.mux: {exc}"
    eps = metadata.entry_points(group="jupyter_client.kernel_provisioners")
    if PROVISIONER_NAME not in {ep.name for ep in eps}:
        return (f"provisioner entry point {PROVISIONER_NAME!r} is not registered "
                "(install the package: pip install -e .)")
    return None


def kernel_env(ipython_dir: Path) -> dict[str, str]:
    """Environment for kernels: this venv first on PATH, a private IPYTHONDIR.

    PATH matters for nbdistributed, whose workers are started as plain
    ``python``; the private IPYTHONDIR keeps user startup files and profiles
    out of the measurements.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["IPYTHONDIR"] = str(ipython_dir)
    return env


@dataclass
class CellRun:
    """Timings of one executed cell (``time.perf_counter`` seconds)."""

    sent: float
    replied: float
    idle: float
    reply: dict[str, Any]
    stdout: list[str] = field(default_factory=list)

    @property
    def reply_s(self) -> float:
        """Request sent → ``execute_reply`` received."""
        return self.replied - self.sent

    @property
    def idle_s(self) -> float:
        """Request sent → ``status: idle`` received (cell done for a frontend)."""
        return self.idle - self.sent


async def run_cell(
    kc: AsyncKernelClient,
    code: str,
    *,
    timeout: float,
    on_stream: StreamCallback | None = None,
    keep_stdout: bool = False,
) -> CellRun:
    """Execute ``code`` and wait for both its ``execute_reply`` and its idle.

    Stream messages for this request go to ``on_stream`` as they arrive (with
    the arrival wall-clock time) and, if ``keep_stdout``, are kept in the
    result. Raises ``CellFailed`` on an error reply and ``TimeoutError`` when
    reply or idle do not arrive within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sent = time.perf_counter()
    msg_id = kc.execute(code, store_history=False)
    result = CellRun(sent=sent, replied=0.0, idle=0.0, reply={})

    def remaining() -> float:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"cell did not finish within {timeout:.0f} s")
        return left

    async def wait_reply() -> None:
        while True:
            try:
                msg = await kc.get_shell_msg(timeout=remaining())
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                result.replied = time.perf_counter()
                result.reply = msg["content"]
                return

    async def wait_idle() -> None:
        while True:
            try:
                msg = await kc.get_iopub_msg(timeout=remaining())
            except queue.Empty:
                continue
            arrived = time.time()
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            content = msg["content"]
            if kind == "stream":
                if on_stream is not None:
                    on_stream(content["name"], content["text"], arrived)
                if keep_stdout and content["name"] == "stdout":
                    result.stdout.append(content["text"])
            elif kind == "status" and content["execution_state"] == "idle":
                result.idle = time.perf_counter()
                return

    await asyncio.gather(wait_reply(), wait_idle())
    if result.reply.get("status") != "ok":
        raise CellFailed(_describe_error(result.reply))
    return result


def _describe_error(reply: dict[str, Any]) -> str:
    status = reply.get("status", "?")
    if status == "error":
        return f"cell error: {reply.get('ename', '')}: {reply.get('evalue', '')}".strip()
    return f"cell status {status!r}"


class KernelSession:
    """One started kernel with a ready client; created by ``kernel_session``."""

    def __init__(self, km: AsyncKernelManager, log_path: Path | None = None) -> None:
        self.km = km
        #: The kernel's stdout+stderr go here: keeps the report readable and
        #: lets a failure quote what the kernel said.
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self.kc: AsyncKernelClient | None = None
        #: start_kernel() call → first ``pass`` execute_reply, seconds.
        self.start_s: float = float("nan")
        #: Processes still alive after shutdown (killed by the harness).
        self.leaked: int = 0
        self._tree: list[Any] = []

    @property
    def pid(self) -> int | None:
        """Pid of the process the KernelManager started (our multiplexer)."""
        prov = self.km.provisioner
        pid = getattr(prov, "pid", None) if prov is not None else None
        if pid is None and prov is not None and getattr(prov, "process", None) is not None:
            pid = prov.process.pid
        return pid

    @property
    def client(self) -> AsyncKernelClient:
        """The ready client (only valid inside ``kernel_session``)."""
        assert self.kc is not None, "kernel not started"
        return self.kc

    def remember_processes(self) -> None:
        """Record the kernel's process tree now, for reaping after shutdown."""
        self._tree = procs.merge_snapshots(self._tree, procs.snapshot_tree(self.pid))

    async def start(self, env: dict[str, str], timeout: float) -> None:
        """Start, connect, wait for readiness and run a first ``pass``."""
        t0 = time.perf_counter()
        extra: dict[str, Any] = {}
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
            extra = {"stdout": self._log, "stderr": self._log}
        await self.km.start_kernel(env=env, cwd=str(REPO_ROOT), **extra)
        self.remember_processes()
        self.kc = self.km.client()
        self.kc.start_channels()
        left = timeout - (time.perf_counter() - t0)
        await self.kc.wait_for_ready(timeout=max(left, 1.0))
        left = timeout - (time.perf_counter() - t0)
        await run_cell(self.kc, "pass", timeout=max(left, 1.0))
        self.start_s = time.perf_counter() - t0
        self.remember_processes()

    async def close(self) -> None:
        """Shut down politely, then by force, then reap leftover processes."""
        self.remember_processes()
        if self.kc is not None:
            self.kc.stop_channels()
        try:
            if self.km.has_kernel:
                await asyncio.wait_for(self.km.shutdown_kernel(now=False), 20)
        except Exception:  # any failure falls back to force
            try:
                if self.km.has_kernel:
                    await asyncio.wait_for(self.km.shutdown_kernel(now=True), 10)
            except Exception:
                pass
        self.leaked = await asyncio.to_thread(procs.reap, self._tree)
        if self._log is not None:
            self._log.close()

    def log_tail(self, lines: int = 4) -> str:
        """Last lines of the kernel's output, for failure messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " / ".join(line.strip() for line in text[-lines:])


class KernelStartFailed(RuntimeError):
    """The kernel did not answer a first ``pass``; carries the kernel's last words."""


@asynccontextmanager
async def kernel_session(
    specs: SpecDir, name: str, env: dict[str, str], start_timeout: float,
    log_path: Path | None = None,
) -> AsyncIterator[KernelSession]:
    """Start kernelspec ``name`` (timing the start) and always clean it up.

    A failed start raises ``KernelStartFailed`` naming the cause and the tail
    of the kernel's output (when ``log_path`` is given).
    """
    km = AsyncKernelManager(kernel_name=name, kernel_spec_manager=specs.manager)
    session = KernelSession(km, log_path)
    try:
        try:
            await asyncio.wait_for(session.start(env, start_timeout), start_timeout)
        except Exception as exc:  # re-raised with context
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                cause = f"no first reply within {start_timeout:.0f} s"
            else:
                cause = f"{type(exc).__name__}: {exc}"
            tail = session.log_tail()
            if tail:
                cause += f" — kernel output: {tail}"
            raise KernelStartFailed(cause) from exc
        yield session
    finally:
        await session.close()
