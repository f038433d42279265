"""sd_notify: one datagram to $NOTIFY_SOCKET (path or abstract), nothing without it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from sluice.control.systemd import notify, reloading_message


def test_notify_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert sock.recv(1024) == b"READY=1"
        assert notify(reloading_message(), {"NOTIFY_SOCKET": str(path)})
        lines = sock.recv(1024).decode().split("\n")
        assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")


def test_notify_abstract_socket() -> None:
    name = f"sluice-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(1024) == b"STOPPING=1"


def test_no_socket_no_message(tmp_path: Path) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "relative"})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")})
