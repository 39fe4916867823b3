"""Addresses on a cluster: where the multiplexer listens, and what a node is reached at.

Node names often do not resolve from other nodes (or resolve to a management network),
so nothing here trusts a name that another host gave us. The multiplexer listens on an
address it was told (an IP, a host name it resolves itself, or an interface name such
as ``ib0``), and each node reports the address it *reaches the multiplexer from*: the
source address its routing table picks for that destination. That address is routable
back from the multiplexer's host, and within a cluster it is the node's address on the
network the job uses, so it is also what rank 0's store and the ranks' kernels bind.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct

_SIOCGIFADDR = 0x8915


class AddressError(ValueError):
    """An address, host or interface that cannot be used; the message says which."""


def interface_address(name: str) -> str | None:
    """The IPv4 address of network interface ``name`` (Linux), or None if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR,
                                 struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def interface_of(address: str) -> str | None:
    """The name of the interface that holds ``address`` (``lo`` for 127.0.0.1), if any."""
    with contextlib.suppress(OSError):
        for _, name in socket.if_nameindex():
            if interface_address(name) == address:
                return name
    if ipaddress.ip_address(address).is_loopback:
        return "lo"
    return None


def resolve_listen_address(spec: str) -> str:
    """Where to listen for ``spec``: an IPv4 address as is, an interface's address, or
    what a host name resolves to here; empty: this host's name."""
    spec = spec.strip()
    if spec:
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv4Address(spec))
        found = interface_address(spec)
        if found:
            return found
    host = spec or socket.gethostname()
    try:
        return socket.gethostbyname(host)
    except OSError as err:
        raise AddressError(
            f"cluster_address {spec!r} is neither an IPv4 address, an interface of this host "
            f"nor a name that resolves here ({err})" if spec else
            f"this host's name {host!r} does not resolve ({err}): set cluster_address to "
            "the address or interface the nodes reach this host at") from None


def source_address_toward(host: str, port: int = 9) -> str:
    """The local address this host uses to reach ``host`` (no packet is sent: a UDP
    socket's connect only asks the routing table)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])


def parse_port_range(spec: str) -> tuple[int, int] | None:
    """``"40000-40100"`` -> (40000, 40100); ``"40000"`` -> (40000, 40000); empty -> None."""
    if not spec.strip():
        return None
    first, _, last = spec.partition("-")
    lo, hi = int(first), int(last or first)
    if not 1 <= lo <= hi <= 65535:
        raise AddressError(f"bad port range {spec!r}")
    return lo, hi
