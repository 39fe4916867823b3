"""The frontend side of jupyter_client's ``transport_encryption`` (CurveZMQ), and a local
kernel that listens on loopback only (its process group included)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import zmq
from jupyter_client.manager import KernelManager
from zmq.utils.monitor import recv_monitor_message

from kernel_harness import run_cell


def handshake_event(port: int, curve_server_key: bytes | None) -> int:
    """What a client that dials ``port`` meets: a ZMQ handshake event (or 0: nothing)."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        if curve_server_key is not None:
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
                curve_server_key, public, secret)
        monitor = sock.get_monitor_socket()
        sock.connect(f"tcp://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if monitor.poll(500):
                event = int(recv_monitor_message(monitor)["event"])
                if event & (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                            | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_DISCONNECTED):
                    return event
        return 0
    finally:
        ctx.destroy(linger=0)


def test_transport_encryption_required_starts_a_curve_kernel(kernel_prefix) -> None:
    km = KernelManager(kernel_name="nbdist-test-2", transport_encryption="required")
    km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        conn = json.loads(Path(km.connection_file).read_text())
        assert conn["curve_publickey"] and conn["curve_secretkey"]
        run = run_cell(kc, "print(rank)")
        assert run.status == "ok"
        assert sorted(run.stream_text().splitlines()) == ["[rank 0] 0", "[rank 1] 1"]
        # every port is a CURVE server: a plain client cannot even finish its handshake,
        # a CURVE client that pins the kernel's key can
        for name in ("shell", "control", "stdin", "hb"):
            port = int(conn[f"{name}_port"])
            assert handshake_event(port, None) != zmq.EVENT_HANDSHAKE_SUCCEEDED, name
            assert handshake_event(port, conn["curve_publickey"].encode()) == \
                zmq.EVENT_HANDSHAKE_SUCCEEDED, name
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def test_local_kernel_listens_on_loopback_only(start_kernel) -> None:
    """The local launcher's ranks meet in a file store (no TCP store) and keep gloo on
    loopback: no rank process listens on any other interface."""
    k = start_kernel("nbdist-test-4-torch")
    run = run_cell(k.kc, "import torch\nt = torch.ones(1)\ndist.all_reduce(t)\n"
                         "import os\nprint(os.getpid(), int(t.item()))")
    assert run.status == "ok", run.reply["content"]
    pids = [int(line.split("] ", 1)[1].split()[0]) for line in run.stream_text().splitlines()]
    assert len(pids) == 4
    listening = [(pid, c.laddr) for pid in pids
                 for c in psutil.Process(pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening  # the kernels' ports, gloo's
    assert {addr.ip for _, addr in listening} == {"127.0.0.1"}, listening
