"""`sluice flow`: the answer is the data plane's scheduler pick for the VIP's 5-tuple."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from sluice.cli import main
from sluice.config import Endpoint, parse_config
from sluice.control.flowquery import FlowQueryError, explain_flow, vip_flow
from sluice.control.logs import setup_logging
from sluice.core.flow import FiveTuple
from sluice.core.scheduler import build_scheduler
from sluice.core.udp_session import session_flow

CONFIG = """\
vips:
  - name: web
    listen: 127.0.0.1:8000
    backends: [{address: 127.0.0.1:9001}, {address: 127.0.0.1:9002}, {address: 127.0.0.1:9003, weight: 3}]
  - name: rtp
    protocol: udp
    listen: 127.0.0.1:5004
    udp: {hash: source_ip}
    backends: [{address: 127.0.0.1:6001}, {address: 127.0.0.1:6002}]
  - name: rr
    listen: 127.0.0.1:8001
    scheduler: round_robin
    backends: [{address: 127.0.0.1:9001}]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sluice.yaml"
    path.write_text(CONFIG)
    return path


def test_answer_is_the_schedulers_pick(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_config(yaml.safe_load(CONFIG))
    vip = config.vip("web")
    scheduler = build_scheduler("maglev", vip.backends, vip.maglev_table_size)
    seen = set()
    for port in range(40000, 40060):
        source = Endpoint.parse(f"10.1.2.3:{port}")
        expected = scheduler.pick(FiveTuple(source.ip, vip.listen.ip, port, 8000, 6))
        assert main(["flow", str(config_file), "web", str(source)]) == 0
        out = capsys.readouterr().out
        assert out.split()[0] == str(expected)
        seen.add(out.split()[0])
    assert len(seen) == 3  # the answers depend on the tuple


def test_source_ip_hash_ignores_ports() -> None:
    config = parse_config(yaml.safe_load(CONFIG))
    answers = {
        explain_flow(config, "rtp", Endpoint.parse(f"10.9.9.9:{p}")).split()[0] for p in (5000, 5001, 7000)
    }
    assert len(answers) == 1
    assert vip_flow(config, "rtp", Endpoint.parse("10.9.9.9:5000")).proto == 17


def test_the_flow_is_the_one_the_data_planes_build() -> None:
    """`sluice flow` and the UDP plane build the flow with the same function (`session_flow`)."""
    config = parse_config(yaml.safe_load(CONFIG))
    source, vip = Endpoint.parse("10.9.9.9:5000"), config.vip("rtp").listen
    expected = session_flow(source.ip, source.port, vip.ip, vip.port, source_ip_only=True)
    assert vip_flow(config, "rtp", source) == expected == FiveTuple(source.ip, vip.ip, 0, 0, 17)


@pytest.mark.parametrize(
    ("vip", "source", "message"),
    [
        ("nope", "10.0.0.1:1", "no VIP named 'nope'"),
        ("web", "[::1]:5000", "different IP families"),
        ("rr", "10.0.0.1:1", "only maglev answers offline"),
        ("web", "10.0.0.1", "expected IPv4:port"),
    ],
)
def test_questions_without_an_answer_exit_2(
    config_file: Path, capsys: pytest.CaptureFixture[str], vip: str, source: str, message: str
) -> None:
    assert main(["flow", str(config_file), vip, source]) == 2
    assert message in capsys.readouterr().err


def test_flow_query_error_is_raised_for_unknown_vip() -> None:
    with pytest.raises(FlowQueryError):
        vip_flow(parse_config(yaml.safe_load(CONFIG)), "x", Endpoint.parse("10.0.0.1:1"))


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("json")
        logging.getLogger("sluice.test").warning("vip %s: %d flows", "web", 3)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = capsys.readouterr().err.strip()
    record = json.loads(line)
    assert (
        record["msg"] == "vip web: 3 flows"
        and record["level"] == "warning"
        and record["logger"] == "sluice.test"
    )


SECRET = "8d2f6a0c4e1b3957a2c4e6f8091b3d5f"


def test_a_keyed_vip_is_answered_with_its_key_and_the_key_is_not_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keyed.yaml"
    path.write_text(CONFIG.replace("  - name: rtp", f'    hash_key: "{SECRET}"\n  - name: rtp', 1))
    config = parse_config(yaml.safe_load(path.read_text()))
    vip = config.vip("web")
    assert vip.hash_key is not None
    keyed = build_scheduler("maglev", vip.backends, vip.maglev_table_size, hash_key=vip.hash_key)
    unkeyed = build_scheduler("maglev", vip.backends, vip.maglev_table_size)
    differ = 0
    for port in range(40000, 40040):
        flow = FiveTuple(Endpoint.parse("10.1.2.3:1").ip, vip.listen.ip, port, 8000, 6)
        assert main(["flow", str(path), "web", f"10.1.2.3:{port}"]) == 0
        out = capsys.readouterr().out
        assert out.split()[0] == str(keyed.pick(flow)) and ", keyed," in out
        assert SECRET not in out.lower()
        differ += out.split()[0] != str(unkeyed.pick(flow))
    assert differ > 10  # the key changes the answer (about 2 in 3 with these weights)
