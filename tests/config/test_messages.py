"""Errors in the user's words (config/messages.py), durations as people write them, and the JSON Schema
of ``sluice schema`` (issue 13)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from sluice.cli import main
from sluice.config import ConfigError, parse_config_text, parse_duration

VIP = "vips:\n  - name: web\n    listen: 127.0.0.1:8000\n    backends: [{address: 127.0.0.1:9001}]\n"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    return info.value.errors


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("    timeouts: 5\n", "vips[0].timeouts: expected a mapping (key: value lines), got 5"),
        ("    backends: 5\n", "vips[0].backends: expected a list, got 5"),
        ("    max_connections: many\n", "vips[0].max_connections: expected a whole number, got 'many'"),
        ("    max_connections: 0\n", "vips[0].max_connections: must be at least 1, got 0"),
        ("    fail_open: maybe\n", "vips[0].fail_open: expected true or false, got 'maybe'"),
        ("    protocol: tpc\n", "vips[0].protocol: expected tcp or udp, got 'tpc'; did you mean `tcp`?"),
        ("    mode: dsrr\n", "vips[0].mode: expected proxy or dsr, got 'dsrr'; did you mean `dsr`?"),
        ("    timeout: {idle: 5s}\n", "vips[0].timeout: unknown key; did you mean `timeouts`?"),
        ("    health: {intervall: 2s}\n", "vips[0].health.intervall: unknown key; did you mean `interval`?"),
        (
            "    health: {path: no-slash}\n",
            "vips[0].health.path: expected a path starting with / and without",
        ),
        ("    health: {query_type: 'A A'}\n", "vips[0].health.query_type: expected a DNS record type like A"),
        (
            "    accept_proxy_protocol: {from: [nonsense]}\n",
            "vips[0].accept_proxy_protocol.from[0]: expected a prefix like 10.0.0.0/8 or 2001:db8::/32, "
            "got 'nonsense'",
        ),
        (
            "    accept_proxy_protocol: {from: [10.0.0.1/8]}\n",
            "vips[0].accept_proxy_protocol.from[0]: 10.0.0.1/8 has host bits set; the prefix is 10.0.0.0/8",
        ),
        (
            "    accept_proxy_protocol: {from: []}\n",
            "vips[0].accept_proxy_protocol.from: needs at least 1 item, got 0",
        ),
        (
            "    drain_timeout: 8d\n",
            "vips[0].drain_timeout: expected a duration like 3s, 250ms, 5m, 1h or 1m30s, got '8d'",
        ),
    ],
)
def test_messages_say_what_was_expected_and_echo_the_value(extra: str, expected: str) -> None:
    errors = errors_of(VIP + extra)
    assert any(line.startswith(expected) for line in errors), errors


@pytest.mark.parametrize(
    "text",
    [
        VIP + "    timeouts: 5\n    udp: 3\n    passive: [1]\n",
        VIP.replace("name: web", "name: 'bad name'")
        + "    dsr: {interface: eth0, next_hop_mac: zz}\n    mode: dsr\n",
        "instance: 'a b'\n" + VIP + "    accept_proxy_protocol: {from: [x, 10.0.0.0/8]}\n",
        "vips: 5\n",
    ],
)
def test_no_class_names_regexes_or_pydantic_phrases(text: str) -> None:
    for line in errors_of(text):
        for word in ("Timeouts", "UdpOptions", "PassiveEjection", "DsrOptions", "instance of", "valid tuple"):
            assert word not in line, line
        assert "Input should" not in line and "Value error" not in line and "pattern" not in line, line
        assert not re.search(r"\^|\{0,62\}|\[0-9A-Fa-f\]|lax-or-strict|function-", line), line


def test_an_unknown_key_without_a_near_miss_lists_the_known_ones() -> None:
    (line,) = errors_of(VIP + "    colour: blue\n")
    assert line.startswith("vips[0].colour: unknown key (known keys: name, protocol, listen, mode,")
    (line,) = errors_of("vipz: []\n" + VIP)
    assert line == "vipz: unknown key; did you mean `vips`?"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("3s", 3.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h2m", 3720.0),
        ("1h2m3s", 3723.0),
        ("2s500ms", 2.5),
        ("1m 30s", 90.0),
        ("168h", 604800.0),
        (90, 90.0),
    ],
)
def test_durations_accept_hours_and_compounds(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["169h", "10081m", "1h1h", "30s1m", "1x", "h", "", "1.5.2s", "2d"])
def test_durations_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(text)


def test_a_compound_duration_in_a_file() -> None:
    config = parse_config_text(VIP + "    drain_timeout: 1h30m\n    timeouts: {idle: 2m30s}\n")
    assert config.vips[0].drain_timeout == 5400.0 and config.vips[0].idle_timeout_s == 150.0


def _properties(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, schema) of a property anywhere in the document."""
    found = []
    if isinstance(node, dict):
        for name, prop in node.get("properties", {}).items():
            found.append((f"{path}.{name}", prop))
        for key, value in node.items():
            found += _properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _properties(value, f"{path}[{i}]")
    return found


def test_schema_describes_every_property(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    properties = _properties(schema)
    assert len(properties) > 60
    missing = [path for path, prop in properties if not prop.get("description")]
    assert missing == []
    vip = schema["$defs"]["Vip"]["properties"]
    assert vip["max_connections"]["description"].startswith("Per VIP; beyond it new connections")
    assert vip["name"]["pattern"] == "^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,62})$"
    duration = re.compile(schema["$defs"]["Vip"]["properties"]["drain_timeout"]["pattern"])
    assert all(duration.fullmatch(t) for t in ("1m30s", "1h", "250ms")) and not duration.fullmatch("8d")


def test_addresses_of_the_announce_block_echo_the_value() -> None:
    text = "announce: {asn: 65000, router_id: nope, peers: [{address: 'x.y', asn: 65001}]}\n" + VIP
    errors = errors_of(text)
    assert "announce.router_id: expected an IPv4 address like 192.0.2.1, got 'nope'" in errors
    assert (
        "announce.peers[0].address: expected an IP address like 192.0.2.1 or 2001:db8::1, got 'x.y'" in errors
    )
    assert "vips[0].dsr.interface: must be at least 1 character, got ''" in errors_of(
        VIP + "    mode: dsr\n    dsr: {interface: ''}\n"
    )
