"""The TCP sockets a process group opened, found and shut down by the rank itself.

Why: gloo closes its connections only when its ``ProcessGroupGloo`` object is
destroyed, and in a notebook something nearly always still holds it (a
``DistributedDataParallel`` model, the traceback of the failed collective in
``sys.last_traceback``, a ``work`` object). ``abort()`` on gloo closes
nothing, so peers blocked on this rank would wait for ``collective_timeout``.
``shutdown(SHUT_RDWR)`` on the group's own sockets ends every pending read
and write at once, here and at the peer, without closing the descriptors
under gloo's feet. The sockets are told apart by when they appeared: those
created while this rank joined a process group, minus the kernel's own
(ZMQ) ports and the TCP store's (its server thread is left alone).
Linux only (``/proc``); elsewhere nothing is found.
"""

from __future__ import annotations

import contextlib
import os
import socket

PROC_TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
#: /proc/net/tcp state of a connected socket; listening ones are left alone (gloo's
#: listener treats a failed accept as fatal and aborts the whole process)
ESTABLISHED = "01"


def _ports_by_inode() -> dict[int, tuple[int, int]]:
    """inode -> (local port, remote port) of every connected TCP socket in this namespace."""
    found: dict[int, tuple[int, int]] = {}
    for table in PROC_TCP_TABLES:
        try:
            with open(table) as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state != ESTABLISHED:
                continue
            found[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
    return found


def _socket_fds() -> dict[int, int]:
    """inode -> one file descriptor of this process for each of its sockets."""
    fds: dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return fds
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("socket:["):
                fds.setdefault(int(target[8:-1]), int(name))
    return fds


def tcp_sockets(exclude_ports: frozenset[int] = frozenset()) -> set[int]:
    """Inodes of this process's connected TCP sockets, except those with an end on
    ``exclude_ports``."""
    ports = _ports_by_inode()
    return {inode for inode in _socket_fds()
            if inode in ports and not exclude_ports.intersection(ports[inode])}


def shutdown_sockets(inodes: set[int]) -> int:
    """Shut down (not close) those of ``inodes`` this process still has; how many."""
    count = 0
    for inode, fd in _socket_fds().items():
        if inode not in inodes:
            continue
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(fd))
            try:
                sock.shutdown(socket.SHUT_RDWR)
                count += 1
            finally:
                sock.close()  # the duplicate only; gloo's descriptor stays valid
    return count
