"""Clients straight to each rank's own kernel, for the rank-side control requests.

These tests speak to the ranks the way the multiplexer's RankLink does, with each
rank's ports and key, asked from the rank itself (its connection file is removed
as soon as its kernel runs: it holds the key).
"""

from __future__ import annotations

import json
import queue
import time
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient

from kernel_harness import run_cell

FIND_CONNECTION_INFO = (
    "import json as _json\n"
    "from ipykernel.kernelapp import IPKernelApp as _App\n"
    "_a = _App.instance()\n"
    "print('CONNECTION', rank, _json.dumps({'ip': _a.ip, 'transport': _a.transport,\n"
    "    'key': _a.session.key.decode(), 'signature_scheme': _a.session.signature_scheme,\n"
    "    **{f'{c}_port': getattr(_a, f'{c}_port')\n"
    "       for c in ('shell', 'iopub', 'stdin', 'control', 'hb')}}))\n"
    "del _App, _a, _json"
)


def rank_clients(kc: Any) -> dict[int, BlockingKernelClient]:
    """rank -> a started client of that rank's kernel (its connection info asked from it)."""
    run = run_cell(kc, FIND_CONNECTION_INFO)
    assert run.status == "ok", run.reply
    clients = {}
    for line in run.stream_text().splitlines():
        rank, info = line.partition("CONNECTION ")[2].split(" ", 1)
        client = BlockingKernelClient()
        client.load_connection_info(json.loads(info))
        client.start_channels()
        clients[int(rank)] = client
    return clients


def close_all(clients: dict[int, BlockingKernelClient]) -> None:
    for client in clients.values():
        client.stop_channels()


def control_request(client: BlockingKernelClient, msg_type: str,
                    content: dict[str, Any] | None = None) -> str:
    msg = client.session.msg(msg_type, content or {})
    client.control_channel.send(msg)
    return str(msg["header"]["msg_id"])


def control_reply(client: BlockingKernelClient, msg_id: str, timeout: float = 120
                  ) -> dict[str, Any]:
    """The reply to ``msg_id`` on the control channel (others are dropped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            reply = client.get_control_msg(timeout=left)
        except queue.Empty:
            break
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply
    raise TimeoutError(f"no control reply to {msg_id} within {timeout}s")


def ask(client: BlockingKernelClient, msg_type: str, content: dict[str, Any] | None = None,
        timeout: float = 120) -> dict[str, Any]:
    """Send a control request and return its reply's content."""
    return control_reply(client, control_request(client, msg_type, content), timeout)["content"]
