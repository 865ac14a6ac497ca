"""sd_notify without libsystemd: readiness and status as one datagram to $NOTIFY_SOCKET.

Rules kept here: standard library only, so any program (the appliance, the
fill agent, steering) can tell systemd it is ready without importing the
others; a missing or dead socket is not an error (the program may run
outside systemd).
"""

from __future__ import annotations

import os
import socket


def notify_systemd(message: str) -> None:
    """Send `message` (e.g. ``READY=1``) to systemd's notify socket, if there is one."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError:
        pass
