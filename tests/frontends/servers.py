"""Real Jupyter servers for the frontend tests: start on 127.0.0.1, poll until ready, stop
by process group, and talk REST to them. No fixed sleeps: readiness is an API answer."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernel_harness import kill_pids, process_tree, wait_gone


def require(path: Path, what: str) -> None:
    """Skip where the set-up could not install ``path``; under CI that is a failure."""
    if not path.exists():
        message = f"{path} missing: run `python3 dev.py test` to install {what}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


#: poll interval while waiting for a server or a kernel state (not a readiness sleep)
POLL = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without NBDIST_* settings (a test's server starts clean)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NBDIST_", "JUPYTER", "PYTHONUNBUFFERED"))}
    env.update(extra)
    return env


def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw) if raw else None
        except ValueError:
            return err.code, raw.decode(errors="replace")


def wait_for(what: str, check: Callable[[], Any], timeout: float,
             alive: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (with the log
    tail) if the deadline passes or the process ``alive`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"{what}: process exited {alive.returncode}\n{tail(log)}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            got = check()
            if got:
                return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n{tail(log)}")
        time.sleep(POLL)


def keep_log(log: Path, name: str) -> None:
    """Copy a server's log into test-artifacts/ (ignored), to read after a failed run."""
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    if log.exists():
        shutil.copy(log, artifacts / name)


def tail(log: Path | None, size: int = 4000) -> str:
    return "" if log is None or not log.exists() else log.read_text(errors="replace")[-size:]


def start_process(argv: list[str], env: dict[str, str], cwd: Path,
                  log: Path) -> subprocess.Popen[bytes]:
    """Start a server in a session (process group) of its own, output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True)


def stop_process_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                       grace: float = 20) -> list[int]:
    """Signal the server's process group, then SIGKILL what of its tree is left.

    Returns the pids (of the tree as it was before the stop) that needed the SIGKILL.
    """
    tree = process_tree(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    alive = wait_gone(tree, timeout=15)
    kill_pids(alive)
    return alive


@dataclass
class JupyterServer:
    """A running jupyter_server-based app (JupyterLab) with its token."""

    proc: subprocess.Popen[bytes]
    base_url: str
    token: str
    root: Path
    log: Path
    kernel_pids: dict[str, list[int]] = field(default_factory=dict)

    def api(self, method: str, path: str, body: Any = None,
            timeout: float = 120) -> tuple[int, Any]:
        return http_json(method, f"{self.base_url}{path}", body,
                    {"Authorization": f"token {self.token}"}, timeout)

    def log_tail(self) -> str:
        return tail(self.log)

    def kernel_tree(self, kernel_id: str) -> list[int]:
        """The multiplexer of ``kernel_id`` (a child of the server) and its descendants."""
        for child in psutil.Process(self.proc.pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if f"kernel-{kernel_id}" in " ".join(child.cmdline()):
                    return process_tree(child.pid)
        return []

    def wait_kernel_idle(self, kernel_id: str, timeout: float = 180) -> None:
        """Until the server reports the kernel idle (it answered kernel_info: ranks are up)."""
        def idle() -> bool:
            status, model = self.api("GET", f"/api/kernels/{kernel_id}")
            assert status == 200, (status, model)
            return model["execution_state"] == "idle"
        wait_for(f"kernel {kernel_id} idle", idle, timeout, self.proc, self.log)

    def shutdown_session_of(self, path: str) -> list[int]:
        """DELETE the session of notebook ``path``; return the kernel's pids still alive
        15 s later (they are killed then, so the test can report them)."""
        status, sessions = self.api("GET", "/api/sessions")
        assert status == 200, sessions
        left: list[int] = []
        for sess in sessions:
            if sess["path"] != path:
                continue
            pids = self.kernel_tree(sess["kernel"]["id"])
            status, body = self.api("DELETE", f"/api/sessions/{sess['id']}")
            assert status == 204, (status, body, self.log_tail())
            alive = wait_gone(pids)
            kill_pids(alive)
            left += alive
        return left
