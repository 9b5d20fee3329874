"""The rendezvous port of a job: a free one for single-node launches, and a check that rank 0 can host it.

torch's TCPStore listens on IPv6 with IPv4 mapped in (dual stack) where the host has IPv6, so a port is only free
when it is free in both families: a probe that binds IPv4 alone misses another job's store.
"""
from __future__ import annotations

import socket
from collections.abc import Mapping

from megamythos.errors import UserError


def _families() -> list[socket.AddressFamily]:
    return [socket.AF_INET6, socket.AF_INET] if socket.has_ipv6 else [socket.AF_INET]


def free_port() -> int:
    """A TCP port nobody listens on now, in IPv4 or IPv6 (the kernel's choice)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET) as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        if port_free(port):
            return port
    raise OSError("no free TCP port found")


def port_free(port: int) -> bool:
    """Whether no socket listens on ``port`` in any address family this host has."""
    for family in _families():
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(("", port))
            except OSError as err:
                if family == socket.AF_INET6 and err.errno == 99:  # EADDRNOTAVAIL: IPv6 disabled on this host
                    continue
                return False
    return True


def env_master_port(env: Mapping[str, str]) -> int | None:
    """``MASTER_PORT`` of ``env`` (None when unset or empty); a value that is no port number 1-65535 (left over from
    another job, or mistyped) raises :class:`UserError` naming it, not a traceback of ``int()`` or of DeepSpeed."""
    text = env.get("MASTER_PORT", "")
    if not text:
        return None
    if not (text.isdigit() and 1 <= int(text) <= 65535):
        raise UserError(f"MASTER_PORT={text!r} is no port number (1-65535): unset it (a single-node launch picks a "
                        "free port) or set the rendezvous port of the job")
    return int(text)


def check_master_port(port: int) -> None:
    """Rank 0 hosts the rendezvous on ``port``: refuse one that another program listens on (else: a traceback
    after the DeepSpeed start-up, or a wait on someone else's store)."""
    if not port_free(port):
        raise UserError(f"--master-port {port} is in use by another program; pass another port to the launcher "
                        "(deepspeed --master_port P, or bash launchers/pretrain.sh, which picks a free one)")
