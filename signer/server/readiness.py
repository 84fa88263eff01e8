"""Tell systemd (a `Type=notify` unit) that the server is ready, or stopping.

The protocol is one datagram of `KEY=VALUE` lines to the Unix socket named by
$NOTIFY_SOCKET (a leading `@` names an abstract socket). Without the variable,
nothing is sent. Written by hand: it is a dozen lines, and the libraries that
wrap it link libsystemd.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify"]


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1") to the service manager; whether one was told."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            s.sendall("\n".join(lines).encode())
    except OSError:
        return False
    return True
