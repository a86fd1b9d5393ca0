"""Network isolation: the kernel cuts the network where it allows it; an audit-hook guard always runs.

autarky promises that no byte leaves the building, and two layers keep that promise:

- `isolate()` moves the process into a fresh network namespace whose only interface is loopback
  (unshare(CLONE_NEWNET) where the process may, else CLONE_NEWUSER|CLONE_NEWNET). The kernel then has
  no route to another machine whoever asks: native code, C-level sockets, child processes, packet
  sockets, a proxy on the host's loopback. A namespace holds the calling thread only, so it is entered
  before any thread starts; the CLI does it at start for every verb but `serve`.
- `install()` adds a Python audit hook (PEP 578) that refuses connections and name lookups for
  anything but loopback, and packet, raw and other non-IP sockets. It is all there is where the kernel
  refuses a namespace, and inside one it still turns a failed connect into a clear error naming the
  host. An audit hook cannot be removed, and this one keeps no switch: nothing turns it off.
  Workers inherit it: `install()` sets AUTARKY_OFFLINE=1, and importing `autarky` in a spawned worker
  turns it on there; a forked worker is a copy of its parent, hook included.

`network_mode()` says which protection holds, and every manifest records it.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
import sys
from pathlib import Path

from autarky.console import UserError

ENV_FLAG = "AUTARKY_OFFLINE"
HF_OFFLINE_FLAGS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}
ADDRESSED_EVENTS = {"socket.connect", "socket.sendto", "socket.sendmsg"}
NAME_EVENTS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}
IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
# Unix sockets and netlink (the kernel's own configuration channel) never leave the machine.
ALLOWED_FAMILIES = {*IP_FAMILIES, socket.AF_UNIX, getattr(socket, "AF_NETLINK", socket.AF_UNIX)}
REFUSED_TYPES = {socket.SOCK_RAW, getattr(socket, "SOCK_PACKET", 10)}
TYPE_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)

NAMESPACE, AUDIT_HOOK, NONE = "namespace", "audit-hook", "none"
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH22x"  # struct ifreq: the interface name, then a union whose first member is the flags

_hooked = False


class NetworkRefused(UserError, ConnectionRefusedError):
    """Raised instead of opening a connection to, or looking up, another machine."""


def is_local(host: str) -> bool:
    host = host.strip("[]").split("%")[0]
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _host_of(value) -> str | None:
    if isinstance(value, tuple) and value:
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) else None


def _refuse_family(family: int, kind: int = 0) -> None:
    """Packet, raw, VSOCK and other non-IP sockets reach the network without an address we can check."""
    if family == -1:  # a socket adopting a descriptor: its family is checked when it is used
        return
    kind &= ~TYPE_FLAGS
    if family in ALLOWED_FAMILIES and kind not in REFUSED_TYPES:
        return
    raise NetworkRefused(
        f"autarky is offline: the network guard refuses {_name(socket.AddressFamily, family)} "
        f"{_name(socket.SocketKind, kind)} sockets (only IP to loopback, Unix and netlink are allowed)"
    )


def _name(enum: type, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def _audit(event: str, args: tuple) -> None:
    if not event.startswith("socket."):
        return
    if event == "socket.__new__":
        _refuse_family(args[1], args[2])
    elif event == "socket.bind":  # a bound packet socket sends without an address; binding any IP is fine
        _refuse_family(getattr(args[0], "family", -1), getattr(args[0], "type", 0))
    elif event in ADDRESSED_EVENTS:
        sock, address = args[0], args[1]
        family = getattr(sock, "family", None)
        _refuse_family(family, getattr(sock, "type", 0))
        host = _host_of(address) if family in IP_FAMILIES else None
        if host is not None and not is_local(host):
            raise NetworkRefused(
                f"autarky is offline: a connection to {host} was refused by the network guard "
                "(only loopback addresses are allowed)"
            )
    elif event in NAME_EVENTS:
        host = _host_of(args[0]) if args else None
        if host is not None and not is_local(host):
            raise NetworkRefused(
                f"autarky is offline: refused to resolve {host} (the network guard allows loopback only)"
            )


def install() -> None:
    """Turn the guard on for this process and the processes it starts (idempotent, and for good)."""
    global _hooked
    os.environ.update(HF_OFFLINE_FLAGS)
    os.environ[ENV_FLAG] = "1"
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True


def installed() -> bool:
    return _hooked


def network_mode() -> str:
    """The protection in force: "namespace" (the kernel sees loopback only), "audit-hook" or "none".

    Measured, not remembered: a worker in an inherited namespace says "namespace" too.
    """
    if _interfaces() == {"lo"}:
        return NAMESPACE
    return AUDIT_HOOK if installed() else NONE


def _interfaces() -> set[str] | None:
    try:
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return None
    return {line.split(":")[0].strip() for line in lines}


def isolate() -> str | None:
    """Cut this process and all it starts off from every network but loopback, for good.

    Returns None once the process is in a loopback-only namespace, else why it cannot be.
    """
    if network_mode() == NAMESPACE:
        return None
    if sys.platform != "linux":
        return f"network namespaces are a Linux feature, and this is {sys.platform}"
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        return f"{threads} threads are already running, and a namespace would hold only one of them"
    refused = _enter_namespace()
    if refused is None:
        try:
            _bring_up_loopback()
        except OSError as e:
            raise UserError(
                f"in a fresh network namespace, but `lo` would not come up ({e}); run with --no-isolate"
            ) from e
    return refused


def _enter_namespace() -> str | None:
    """unshare(2) a network namespace: directly where allowed (root), else inside a new user namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) == 0:
        return None
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return f"the kernel refused a network namespace ({os.strerror(ctypes.get_errno())})"
    # In the new user namespace this process is nobody until its own ids map to themselves.
    try:
        for name, line in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            Path("/proc/self", name).write_text(line)
    except OSError as e:
        raise UserError(f"in a new user namespace but could not map ids ({e}); run with --no-isolate") from e
    return None


def _bring_up_loopback() -> None:
    """A fresh namespace's `lo` is down; workers, Ray and torch.distributed talk over it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        name, flags = struct.unpack(IFREQ, fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0)))
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, name, flags | IFF_UP))
