"""The rules across keys (config/rules.py) and duplicate YAML keys, as `sluice check --offline` prints
them: every problem of a file at once, each with its path (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.cli import main
from sluice.config import ConfigError, load_config, parse_config_text


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """`sluice check --offline` of `text`: the exit code and the error lines (without the heading)."""
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    code = main(["check", "--offline", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if code == 0:
        assert err == "" and "ok" in out
    return code, [line.strip() for line in err.splitlines()[1:]]


TCP = "  - name: web\n    listen: 127.0.0.1:8000\n    backends: [{address: 127.0.0.1:9001}]\n"
UDP = "  - name: dns\n    protocol: udp\n    listen: 127.0.0.1:5353\n    backends: [{address: 127.0.0.1:9053}]\n"
DSR = (
    "  - name: edge\n    listen: 198.18.100.1:80\n    mode: dsr\n    dsr: {interface: eth0}\n"
    "    backends: [{address: 198.18.1.11:80}]\n"
)


def test_udp_options_on_a_tcp_vip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, errors = check(tmp_path, "vips:\n" + TCP + "    udp: {max_sessions: 5}\n", capsys)
    assert (code, errors) == (2, ["vips[0].udp: only for protocol: udp (this VIP is tcp)"])


def test_tcp_only_keys_on_a_udp_vip_are_reported_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = (
        "    max_connections: 5\n    accept_proxy_protocol: {from: [10.0.0.0/8]}\n"
        "    health: {type: http}\n    proxy_protocol: v1\n"
    )
    code, errors = check(tmp_path, "vips:\n" + UDP + extra, capsys)
    assert code == 2
    assert errors == [
        "vips[0].max_connections: only for tcp VIPs (a udp VIP is bounded by udp.max_sessions)",
        "vips[0].accept_proxy_protocol: only for tcp VIPs (PROXY headers arrive on TCP connections)",
        "vips[0].health.type: http checks need a TCP backend; a udp VIP takes udp, dns, tcp or none",
        "vips[0].proxy_protocol: v1 has no UDP form; use v2 for udp VIPs",
    ]


def test_protocol_keys_are_reported_beside_the_models_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "vips:\n" + UDP + "    max_connections: 5\n    drain_timeout: soon\n"
    code, errors = check(tmp_path, text, capsys)
    assert code == 2 and len(errors) == 2, errors
    assert errors[0].startswith("vips[0].drain_timeout: expected a duration like 3s")
    assert errors[1].startswith("vips[0].max_connections: only for tcp VIPs")


def test_a_dumped_config_with_every_default_is_valid() -> None:
    """A config written back from the model repeats `udp:` and `max_connections` defaults: no error."""
    import yaml

    config = parse_config_text("vips:\n" + TCP + UDP)
    dumped = yaml.safe_dump(config.model_dump(mode="json", exclude_none=True))
    assert parse_config_text(dumped) == config


def test_dsr_backend_on_another_port_and_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "vips:\n" + DSR.replace(
        "[{address: 198.18.1.11:80}]", "[{address: 198.18.1.11:8080}, {address: '[2001:db8::1]:80'}]"
    )
    code, errors = check(tmp_path, text, capsys)
    assert code == 2
    assert errors == [
        "vips[0].backends[0].address: 198.18.1.11:8080: a dsr backend must listen on the VIP's port 80 "
        "(DSR forwards packets unchanged: it cannot remap ports)",
        "vips[0].backends[1].address: [2001:db8::1]:80: l2 forwarding needs backends of the VIP's "
        "address family",
    ]


def test_dsr_rules_of_a_valid_vip_are_reported_beside_an_invalid_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "vips:\n" + DSR.replace("198.18.1.11:80", "198.18.1.11:81") + TCP.replace("web", "bad name")
    code, errors = check(tmp_path, text, capsys)
    assert code == 2 and len(errors) == 2, errors
    assert errors[0].startswith("vips[1].name: expected a name of letters, digits")
    assert errors[1].startswith("vips[0].backends[0].address: 198.18.1.11:81: a dsr backend must listen")


def test_admin_on_a_vip_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, errors = check(tmp_path, "admin: {listen: 127.0.0.1:8000}\nvips:\n" + TCP, capsys)
    assert (code, errors) == (
        2,
        ["admin.listen: 127.0.0.1:8000 is also where vips[0] (web) listens (127.0.0.1:8000)"],
    )
    code, errors = check(tmp_path, "admin: {listen: 0.0.0.0:8000}\nvips:\n" + TCP, capsys)
    assert code == 2 and errors[0].startswith("admin.listen: 0.0.0.0:8000 is also where vips[0]")
    assert check(tmp_path, "admin: {listen: 127.0.0.1:8001}\nvips:\n" + TCP, capsys)[0] == 0


def test_a_wildcard_vip_overlaps_one_on_the_same_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wild = TCP.replace("web", "all").replace("127.0.0.1:8000", "0.0.0.0:8000")
    code, errors = check(tmp_path, "vips:\n" + TCP + wild, capsys)
    assert (code, errors) == (2, ["vips[1].listen: 0.0.0.0:8000 overlaps vips[0] (web) on 127.0.0.1:8000"])
    udp_same_port = UDP.replace("5353", "8000")
    assert check(tmp_path, "vips:\n" + TCP + udp_same_port, capsys)[0] == 0  # tcp and udp do not clash


def test_one_attach_mode_per_interface(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = (
        DSR.replace("edge", "edge2")
        .replace(":80", ":81")
        .replace("{interface: eth0}", "{interface: eth0, attach: native}")
    )
    code, errors = check(tmp_path, "vips:\n" + DSR + other, capsys)
    assert code == 2
    assert errors == [
        "vips[1].dsr.attach: native differs from vips[0] (edge), auto, on the same interface eth0 "
        "(one XDP program, one mode)"
    ]


def test_a_key_given_twice_names_line_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "vips:\n" + TCP + "    listen: 127.0.0.1:8001\n    timeouts: {idle: 5s, idle: 6s}\n"
    code, errors = check(tmp_path, text, capsys)
    path = tmp_path / "sluice.yaml"
    assert code == 2
    assert errors == [
        f"{path}: line 5: key `listen` given twice (first on line 3)",
        f"{path}: line 6: key `idle` given twice (first on line 6)",
    ]


def test_a_merge_key_may_be_overridden() -> None:
    text = "vips:\n  - &web\n    " + TCP[4:] + "  - <<: *web\n    name: web2\n    listen: 127.0.0.1:8001\n"
    config = parse_config_text(text)
    assert [(v.name, str(v.listen)) for v in config.vips] == [
        ("web", "127.0.0.1:8000"),
        ("web2", "127.0.0.1:8001"),
    ]


def test_load_config_raises_every_error(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(
        "vips:\n" + UDP + "    max_connections: 5\n    max_connections: 6\n    udp: {max_sessions: 0}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.errors) == 3, info.value.errors
