"""The rendezvous store of a multi-node world, served by a child of node 0's agent.

torchrun's agent hosts the ``TCPStore`` its workers meet in
(``TORCHELASTIC_USE_AGENT_STORE=True``: every rank is a client). The node agent does the
same, so ``MASTER_PORT`` is never "a free port, closed, handed on, hopefully still free":
the agent binds a listening socket on the node's address (never every interface), knows
its port at once, and forks this child, which serves the store on that very socket
(``master_listen_fd``). Clients that connect before the store runs wait in the socket's
backlog. Forked from the agent, the child has torch imported already (with
``init_process_group``); it lives for one generation of ranks and ends with them.
"""

from __future__ import annotations

import os
import signal
import socket
from datetime import timedelta

#: The store's listening socket's file descriptor in the child.
STORE_FD = 3


def bind_listener(host: str) -> socket.socket:
    """A socket listening on ``host`` (the node's address) at a port the kernel picked."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def serve(host: str, port: int, world_size: int, timeout_s: float) -> None:
    """Serve the store on the inherited listening socket until killed."""
    import torch.distributed as dist

    store = dist.TCPStore(host, port, world_size, True, timedelta(seconds=timeout_s),
                          wait_for_workers=False, master_listen_fd=STORE_FD)
    print(f"nbdist: store on {host}:{store.port} for {world_size} ranks", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    os._exit(0)
