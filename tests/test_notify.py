"""sd_notify against a real unix datagram socket."""

from __future__ import annotations

import socket
from pathlib import Path

from cloudpacs.notify import sd_notify


def test_ready_reaches_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        assert sd_notify(path, "READY=1")
        assert server.recv(100) == b"READY=1"


def test_without_systemd_nothing_happens(tmp_path: Path) -> None:
    assert not sd_notify(None, "READY=1")
    assert not sd_notify(str(tmp_path / "missing.sock"), "READY=1")
