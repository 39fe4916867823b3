"""A real jupyter_server with config/jupyter_server_config.py, driven as a frontend does:
REST for kernelspecs and kernels, the kernel websocket for messages."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest
import websocket

from kernel_harness import kill_pids, per_rank_lines, process_tree, wait_gone

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "jupyter_server_config.py"
#: installed without --nproc: the rank count must come from the server config (4)
NPROC_FROM_CONFIG = "nbdist-test-config-nproc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    log: Path
    spec_dir: Path

    def api(self, method: str, path: str, body: Any = None,
            timeout: float = 120) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://{self.url}{path}", data=data, method=method,
            headers={"Authorization": f"token {self.token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            return err.code, json.loads(raw) if raw else None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def mux_of(self, kernel_id: str) -> int:
        """The multiplexer pid: the server's child whose connection file is this kernel's."""
        for child in psutil.Process(self.proc.pid).children():
            try:
                cmd = " ".join(child.cmdline())
            except psutil.NoSuchProcess:
                continue
            if "nbdist_provisioner.mux" in cmd and f"kernel-{kernel_id}" in cmd:
                return int(child.pid)
        raise AssertionError(f"no multiplexer child of the server for kernel {kernel_id}")


def stop_by_pid(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (jupyter_server's clean stop), then SIGKILL if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(kernel_prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("server")
    dirs = {name: base / name for name in ("root", "runtime", "config", "data", "specs")}
    for d in dirs.values():
        d.mkdir()
    subprocess.run([sys.executable, "-m", "nbdist_provisioner.cli", "install",
                    "--name", NPROC_FROM_CONFIG, "--prefix", str(dirs["specs"]),
                    "--no-init-process-group"], check=True, capture_output=True)
    spec_dir = dirs["specs"] / "share" / "jupyter"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NBDIST_") and k != "PYTHONUNBUFFERED"}
    env.update(
        JUPYTER_PATH=os.pathsep.join([str(spec_dir), str(kernel_prefix / "share" / "jupyter")]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        # only the --config file below: no user, env or system config (nor extensions)
        JUPYTER_NO_CONFIG="1",
    )
    port, token = free_port(), uuid.uuid4().hex
    log = base / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", f"--config={CONFIG}",
             "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
             "--ServerApp.allow_root=True", f"--ServerApp.root_dir={dirs['root']}"],
            env=env, cwd=dirs["root"], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    srv = Server(proc, f"127.0.0.1:{port}", token, log, spec_dir)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"jupyter_server exited {proc.returncode}:\n"
                                     f"{srv.log_tail()}")
            try:
                if srv.api("GET", "/api/status", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"jupyter_server not ready in 60s:\n{srv.log_tail()}")
            time.sleep(0.05)  # poll interval
        yield srv
    finally:
        children = process_tree(proc.pid)[1:]
        stop_by_pid(proc)
        alive = wait_gone(children)
        kill_pids(alive)
        assert not alive, f"processes left after the server stopped: {alive}"


class Channels:
    """The kernel websocket of the server (JSON protocol), as a frontend uses it."""

    def __init__(self, srv: Server, kernel_id: str) -> None:
        self.session = uuid.uuid4().hex
        self.ws = websocket.create_connection(
            f"ws://{srv.url}/api/kernels/{kernel_id}/channels?session_id={self.session}",
            header=[f"Authorization: token {srv.token}"], timeout=30)
        self.seen: list[dict[str, Any]] = []

    def send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "username": "test",
                       "session": self.session, "version": "5.3",
                       "date": datetime.now(timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "content": content,
            "channel": channel, "buffers": []}))
        return msg_id

    def execute(self, code: str, timeout: float = 120) -> tuple[dict[str, Any],
                                                                 list[dict[str, Any]]]:
        """execute_reply and the iopub messages parented to the request (through idle)."""
        msg_id = self.send("execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True})
        reply, iopub, idle = None, [], False
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            self.seen.append(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            assert not idle or msg["channel"] == "shell", f"after idle: {msg}"
            if msg["channel"] == "shell":
                reply = msg
            elif msg["channel"] == "iopub":
                iopub.append(msg)
                idle = (msg["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply/idle for {msg_id}: {iopub}")
        return reply, iopub

    def close(self) -> None:
        self.ws.close()


def stream_lines(iopub: list[dict[str, Any]], name: str = "stdout") -> list[str]:
    """Each rank's lines (identical lines shown once as ``[ranks 0-3]`` are read per rank)."""
    return per_rank_lines("".join(m["content"]["text"] for m in iopub
                                  if m["msg_type"] == "stream" and m["content"]["name"] == name))


def start_kernel(srv: Server, name: str) -> tuple[str, int]:
    """POST /api/kernels; return the kernel id and its multiplexer's pid."""
    status, model = srv.api("POST", "/api/kernels", {"name": name})
    assert status == 201, (status, model, srv.log_tail())
    return model["id"], srv.mux_of(model["id"])


def rank_pids(mux: int) -> list[int]:
    """The multiplexer's descendants (the ranks; they exist once a cell has run)."""
    return [p for p in process_tree(mux) if p != mux]


def test_kernelspecs_are_listed(server):
    status, specs = server.api("GET", "/api/kernelspecs")
    assert status == 200
    for name, nproc in [("nbdist-test-4", 4), ("nbdist-test-2", 2), (NPROC_FROM_CONFIG, None)]:
        spec = specs["kernelspecs"][name]["spec"]
        prov = spec["metadata"]["kernel_provisioner"]
        assert prov["provisioner_name"] == "nbdist-provisioner"
        assert prov["config"].get("nproc") == nproc
        assert spec["argv"][1:4] == ["-m", "nbdist_provisioner.mux", "-f"]
        assert spec["language"] == "python"
    # the config's MultiRankKernelSpecManager names the unsized spec with the config's count
    assert specs["kernelspecs"][NPROC_FROM_CONFIG]["spec"]["display_name"] == (
        "Python 3 (multi-rank, 4 ranks)")
    assert specs["kernelspecs"]["nbdist-test-2"]["spec"]["display_name"] == (
        "Python 3 (multi-rank, 2 ranks)")


def test_execute_restart_delete_over_rest_and_websocket(server):
    kernel_id, mux = start_kernel(server, "nbdist-test-4")
    started = [mux]
    ch = Channels(server, kernel_id)
    try:
        reply, iopub = ch.execute(
            "import os\nmarker = 1\n"
            "print(os.environ.get('PYTHONUNBUFFERED'), os.environ['RANK'], flush=True)\n"
            "world_size * 10")
        ranks = rank_pids(mux)
        assert len(ranks) >= 4, ranks
        started += ranks
        msg_id = reply["parent_header"]["msg_id"]
        assert reply["msg_type"] == "execute_reply"
        assert reply["content"]["status"] == "ok", reply["content"]
        assert all(m["parent_header"]["msg_id"] == msg_id for m in iopub)
        types = [m["msg_type"] for m in iopub]
        assert types[:2] == ["status", "execute_input"], types
        assert iopub[0]["content"]["execution_state"] == "busy"
        assert types[-2:] == ["execute_result", "status"], types
        assert set(types[2:-2]) == {"stream"}, types
        assert [m["content"]["execution_state"] for m in iopub
                if m["msg_type"] == "status"] == ["busy", "idle"]
        # c.MultiRankProvisioner.env of the config file reached every rank (the server's
        # own environment has no PYTHONUNBUFFERED)
        assert sorted(stream_lines(iopub)) == [f"[rank {r}] 1 {r}" for r in range(4)]
        result = iopub[-2]["content"]
        assert result["data"]["text/plain"] == "40"
        assert result["metadata"]["nbdist"]["ranks"] == [0, 1, 2, 3]
        assert result["execution_count"] == reply["content"]["execution_count"]

        status, model = server.api("POST", f"/api/kernels/{kernel_id}/restart")
        assert status == 200, (model, server.log_tail())
        assert wait_gone(started) == [], "old ranks survived the restart"
        new_mux = server.mux_of(kernel_id)
        started.append(new_mux)
        # the same websocket serves the restarted kernel, with fresh state
        reply, iopub = ch.execute("print('marker' in dir(), rank)")
        new_ranks = rank_pids(new_mux)
        assert len(new_ranks) >= 4 and not set(new_ranks) & set(started)
        started += new_ranks
        assert reply["content"]["status"] == "ok", reply["content"]
        assert sorted(stream_lines(iopub)) == [f"[rank {r}] False {r}" for r in range(4)]
    finally:
        ch.close()
        status, _ = server.api("DELETE", f"/api/kernels/{kernel_id}")
        alive = wait_gone(started)
        kill_pids(alive)
    assert status == 204
    assert alive == [], f"left running after DELETE: {alive}"
    assert kernel_id not in [k["id"] for k in server.api("GET", "/api/kernels")[1]]


def test_config_file_nproc_applies_to_a_spec_without_nproc(server):
    kernel_id, mux = start_kernel(server, NPROC_FROM_CONFIG)
    ch = Channels(server, kernel_id)
    ranks: list[int] = []
    try:
        reply, iopub = ch.execute("import os\nprint(world_size, os.environ['WORLD_SIZE'])")
        ranks = rank_pids(mux)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert sorted(stream_lines(iopub)) == [f"[rank {r}] 4 4" for r in range(4)]
    finally:
        ch.close()
        status, _ = server.api("DELETE", f"/api/kernels/{kernel_id}")
        alive = wait_gone([mux, *ranks])
        kill_pids(alive)
    assert status == 204 and alive == []


@pytest.mark.parametrize("config, named", [
    ({"nproc": -1}, "nproc"),
    ({"nproc": 4, "backend": "mpi"}, "backend"),
    ({"nproc": 4, "nprocs": 4}, "nprocs"),
])
def test_bad_kernel_json_config_fails_the_start_naming_the_setting(server, config, named):
    name = f"nbdist-bad-{uuid.uuid4().hex[:8]}"
    spec_path = server.spec_dir / "kernels" / name
    src = server.spec_dir / "kernels" / NPROC_FROM_CONFIG / "kernel.json"
    spec = json.loads(src.read_text())
    spec["metadata"]["kernel_provisioner"]["config"] = config
    spec_path.mkdir()
    (spec_path / "kernel.json").write_text(json.dumps(spec))
    before = set(process_tree(server.proc.pid))
    status, body = server.api("POST", "/api/kernels", {"name": name})
    assert status == 500, body
    assert named in body["message"] and "nbdist-provisioner" in body["message"], body
    assert server.api("GET", "/api/kernels")[1] == []
    assert set(process_tree(server.proc.pid)) <= before
