"""What a config needs from the host (control/preflight.py), as `sluice check` reports it; ``--offline``
skips it (issue 13)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.cli import main
from sluice.config import parse_config_text
from sluice.control.preflight import host_errors
from tests.support.loopback import free_port

TOKEN = "preflight-test-token-0123456789"


@pytest.fixture
def held() -> Iterator[int]:
    """A port of 127.0.0.1 another socket listens on (without SO_REUSEPORT) for the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def token_file(tmp_path: Path, text: str = TOKEN + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def config_text(vip_port: int, *, admin: str = "", dsr: str = "") -> str:
    text = (
        f"vips:\n  - name: web\n    listen: 127.0.0.1:{vip_port}\n    backends: [{{address: 127.0.0.1:9}}]\n"
    )
    if dsr:
        text += (
            f"  - name: edge\n    listen: 198.18.100.1:80\n    mode: dsr\n    dsr: {{interface: {dsr}}}\n"
            "    backends: [{address: 198.18.1.11:80}]\n"
        )
    return (f"admin: {admin}\n" if admin else "") + text


def check(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *flags: str
) -> tuple[int, list[str]]:
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    code = main(["check", *flags, str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, [line.strip() for line in err.splitlines()[1:]] if code else [out.strip()]


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        (None, 0o600, "cannot read the token file: No such file or directory"),
        ("short\n", 0o600, "the token must be at least 16 characters"),
        (TOKEN + "\n", 0o644, "is accessible by group or others (mode 0644)"),
    ],
)
def test_a_token_file_run_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, mode: int, expected: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        token_file(tmp_path, content, mode)
    admin = f"{{listen: 127.0.0.1:{free_port()}, token_file: {path}}}"
    code, errors = check(tmp_path, config_text(free_port(), admin=admin), capsys)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"admin.token_file: {path}: ") and expected in errors[0]
    code, lines = check(tmp_path, config_text(free_port(), admin=admin), capsys, "--offline")
    assert code == 0 and "(offline: the host was not checked)" in lines[0]


def test_a_listen_address_in_use_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], held: int
) -> None:
    code, errors = check(tmp_path, config_text(held), capsys)
    assert code == 2
    assert errors == [
        f"vips[0].listen: cannot listen on tcp/127.0.0.1:{held}: Address already in use; another process "
        "holds it (to check the config of a running sluice: check --offline)"
    ]


def test_every_host_problem_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str], held: int) -> None:
    admin = f"{{listen: 127.0.0.1:{held}, token_file: {tmp_path / 'missing'}}}"
    code, errors = check(tmp_path, config_text(free_port(), admin=admin, dsr="nosuch-if0"), capsys)
    assert code == 2
    assert errors[0].startswith("admin.token_file: ")
    assert errors[1] == "vips[1].dsr.interface: no interface 'nosuch-if0' on this host (`ip link` lists them)"
    assert errors[-1].startswith(f"admin.listen: cannot listen on 127.0.0.1:{held}: Address already in use")


def test_an_address_of_no_interface(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = config_text(free_port()).replace("listen: 127.0.0.1:", "listen: 192.0.2.1:")
    code, errors = check(tmp_path, text, capsys)
    assert code == 2 and len(errors) == 1
    assert (
        "cannot listen on tcp/192.0.2.1:" in errors[0]
        and "no interface of this host has that address" in errors[0]
    )


def test_a_udp_listen_address_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        text = config_text(port).replace("    listen:", "    protocol: udp\n    listen:", 1)
        code, errors = check(tmp_path, text, capsys)
    assert code == 2 and errors[0].startswith(f"vips[0].listen: cannot listen on udp/127.0.0.1:{port}: ")


def test_a_unix_admin_socket_in_a_missing_directory(tmp_path: Path) -> None:
    config = parse_config_text(config_text(free_port(), admin=f"{{listen: {tmp_path}/no/such/admin.sock}}"))
    assert host_errors(config) == [
        f"admin.listen: {tmp_path}/no/such/admin.sock: the directory {tmp_path}/no/such does not exist"
    ]


def test_a_good_host_passes_and_nothing_stays_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vip_port, admin_port = free_port(), free_port()
    admin = f"{{listen: 127.0.0.1:{admin_port}, token_file: {token_file(tmp_path)}}}"
    code, lines = check(tmp_path, config_text(vip_port, admin=admin), capsys)
    assert code == 0 and lines == [f"{tmp_path / 'sluice.yaml'}: ok, 1 VIP(s): web"]
    for port in (vip_port, admin_port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # the check's sockets are closed


def test_dsr_without_the_privileges_xdp_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.control import preflight

    monkeypatch.setattr(preflight, "_effective_capabilities", lambda: 1 << preflight.CAP_NET_ADMIN)
    config = parse_config_text(config_text(free_port(), dsr="lo"))
    assert host_errors(config) == [
        "vips[1].mode: dsr loads an XDP program: run as root (or with CAP_BPF and CAP_NET_ADMIN)"
    ]
    monkeypatch.setattr(
        preflight, "_effective_capabilities", lambda: 1 << preflight.CAP_NET_ADMIN | 1 << preflight.CAP_BPF
    )
    assert host_errors(config) == []


def _flow_log_config(path: str) -> str:
    return (
        f"vips:\n  - name: web\n    listen: 127.0.0.1:{free_port()}\n    backends: [{{address: 127.0.0.1:9}}]\n"
        f"    access_log: {{path: {path}}}\n"
    )


def test_a_flow_log_file_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "a-dir").mkdir()
    missing = tmp_path / "no" / "such" / "flows.log"
    assert host_errors(parse_config_text(_flow_log_config(str(missing)))) == [
        f"vips[0].access_log.path: {missing} cannot be created "
        f"(the directory {missing.parent} is missing or not writable)"
    ]
    assert host_errors(parse_config_text(_flow_log_config(str(tmp_path / "a-dir")))) == [
        f"vips[0].access_log.path: {tmp_path / 'a-dir'} is not a file sluice may append to"
    ]
    # a new file in a writable directory, or an existing file: fine, and check creates nothing
    assert host_errors(parse_config_text(_flow_log_config(str(tmp_path / "flows.log")))) == []
    assert not (tmp_path / "flows.log").exists()
    (tmp_path / "old.log").write_text("")
    assert host_errors(parse_config_text(_flow_log_config(str(tmp_path / "old.log")))) == []


@pytest.mark.parametrize(("forwarding", "missing"), [("l2", "ip"), ("ipip", "ip and tc")])
def test_dsr_checks_without_ip_or_tc(monkeypatch: pytest.MonkeyPatch, forwarding: str, missing: str) -> None:
    outer = ", outer_source: 198.18.0.1/32, next_hop_mac: '02:00:00:00:00:01'" if forwarding == "ipip" else ""
    text = (
        "vips:\n  - name: edge\n    listen: 198.18.100.1:80\n    mode: dsr\n"
        f"    dsr: {{interface: lo, forwarding: {forwarding}{outer}}}\n"
        "    backends: [{address: 198.18.1.11:80}]\n    health: {type: tcp}\n"
    )
    config = parse_config_text(text)
    monkeypatch.setattr("sluice.control.preflight._effective_capabilities", lambda: -1)
    monkeypatch.setattr("shutil.which", lambda tool: None)
    assert host_errors(config) == [
        f"vips[0].health: checks through the VIP need {missing} (Debian: apt-get install iproute2)"
    ]
    monkeypatch.setattr("shutil.which", lambda tool: f"/usr/sbin/{tool}")
    assert host_errors(config) == []
