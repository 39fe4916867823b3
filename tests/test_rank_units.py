"""Rank-side pieces on their own, in this process: stacks, error origins, sockets."""

from __future__ import annotations

import socket
import sys
import threading

import pytest

from nbdist_provisioner.rank import nested, sockets
from nbdist_provisioner.rank.control import describe_frames
from nbdist_provisioner.rank.process_group import raised_in_torch_distributed


def test_stack_names_the_cell_line_and_the_collective() -> None:
    """A frame compiled as a cell, calling into torch.distributed (barrier without a group)."""
    import torch.distributed as dist

    cell_file = "/tmp/ipykernel_1/cell42.py"
    code = compile("def wait():\n    return sys._getframe()\n\nframe = wait()\n", cell_file, "exec")
    scope: dict[str, object] = {"sys": sys}
    exec(code, scope)
    described = describe_frames(scope["frame"],  # type: ignore[arg-type]
                                lambda f: "In[7]" if f == cell_file else None)
    assert not described["in_collective"]
    assert described["where"] == "wait at line 2 of In[7]"
    assert described["frames"][0]["cell"] == "In[7]"  # kernel machinery above is cut

    try:
        dist.barrier()
    except (ValueError, RuntimeError) as err:
        tb = err.__traceback__
        assert raised_in_torch_distributed(err)
    while tb.tb_next is not None:
        tb = tb.tb_next
    inner = describe_frames(tb.tb_frame, lambda f: None)
    assert inner["in_collective"] and inner["collective"] == "barrier", inner["frames"][-3:]


def test_errors_of_user_code_are_not_blamed_on_the_group() -> None:
    with pytest.raises(ZeroDivisionError) as info:
        _ = 1 / 0
    assert not raised_in_torch_distributed(info.value)


def test_only_sockets_opened_by_the_group_are_shut_down() -> None:
    """Sockets are told apart by inode; a shut down socket reads EOF at both ends."""
    server = socket.create_server(("127.0.0.1", 0))
    kept_client = socket.create_connection(server.getsockname())
    kept_peer, _ = server.accept()
    before = sockets.tcp_sockets()
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    opened = sockets.tcp_sockets() - before
    try:
        assert len(opened) == 2  # both ends live in this process
        assert sockets.shutdown_sockets(opened) == 2
        assert peer.recv(1) == b"" and client.recv(1) == b""
        kept_client.sendall(b"x")
        assert kept_peer.recv(1) == b"x"
        port = server.getsockname()[1]
        assert not sockets.tcp_sockets(frozenset({port})) & opened
    finally:
        for s in (server, kept_client, kept_peer, client, peer):
            s.close()


def test_nested_world_guard_spots_launchers_only() -> None:
    assert nested.launcher_in_stack(sys._getframe()) is None
    seen: list[str | None] = []
    code = compile("def start_processes():\n    seen.append(find(sys._getframe()))\n",
                   "/x/torch/multiprocessing/spawn.py", "exec")
    scope: dict[str, object] = {"sys": sys, "seen": seen, "find": nested.launcher_in_stack}
    exec(code, scope)
    thread = threading.Thread(target=scope["start_processes"])  # type: ignore[arg-type]
    thread.start()
    thread.join()
    assert seen == ["multiprocessing/spawn.py:start_processes"]
    assert "train() rather than notebook_launcher" in nested.message(seen[0] or "")
