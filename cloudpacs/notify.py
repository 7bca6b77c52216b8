"""systemd readiness notification (sd_notify) for Type=notify units.

The protocol is one datagram to the socket named in $NOTIFY_SOCKET (see sd_notify(3)); the
variable is read in cli.main() and passed in, like every other piece of environment.
"""

from __future__ import annotations

import socket


def sd_notify(notify_socket: str | None, state: str) -> bool:
    """Send e.g. "READY=1" or "STOPPING=1"; False when not run by systemd."""
    if not notify_socket:
        return False
    address = "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True
