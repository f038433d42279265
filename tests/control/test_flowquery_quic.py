"""`sluice flow --quic-cid`: the backend a QUIC connection ID's server ID names, or the hash fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sluice.cli import main
from sluice.config import Config, Endpoint, parse_config
from sluice.control.flowquery import FlowQueryError, explain_flow, explain_quic_cid
from sluice.core.quic import build_short_header_cid

CONFIG = """\
vips:
  - name: h3
    protocol: udp
    listen: 127.0.0.1:4433
    quic: {server_id_bits: 8}
    backends:
      - {address: 127.0.0.1:7001, server_id: 5}
      - {address: 127.0.0.1:7002, server_id: 6, weight: 0}
      - {address: 127.0.0.1:7003, server_id: 7}
  - name: plain
    protocol: udp
    listen: 127.0.0.1:4434
    backends: [{address: 127.0.0.1:7001}]
"""
SRC = Endpoint.parse("10.0.0.7:40000")


def cid(server_id: int) -> str:
    return build_short_header_cid(server_id, 8, b"\xab").hex()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sluice.yaml"
    path.write_text(CONFIG)
    return path


def test_a_known_server_id_names_its_backend(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flow", str(config_file), "h3", "--quic-cid", cid(7)]) == 0
    assert capsys.readouterr().out == "127.0.0.1:7003  (vip h3, QUIC server id 7 of 8 bits)\n"
    config = parse_config_file(config_file)
    assert explain_quic_cid(config, "h3", "0x" + cid(5), None).startswith("127.0.0.1:7001  ")


def parse_config_file(path: Path) -> Config:
    return parse_config(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    ("hexcid", "why"),
    [
        (cid(9), "server id 9 is no backend"),
        (cid(6), "server id 6 is a backend with weight 0"),
        ("80" + "00" * 7, "it carries no server id"),
        ("4001", "it carries no server id"),
    ],
)
def test_fallback_is_the_hash_of_the_source(hexcid: str, why: str) -> None:
    config = parse_config(yaml.safe_load(CONFIG))
    answer = explain_quic_cid(config, "h3", hexcid, SRC)
    assert answer.startswith(f"{explain_flow(config, 'h3', SRC)}  [QUIC fallback: {why}")
    with pytest.raises(FlowQueryError, match=r"falls back to the hash.*give SRC_IP:SRC_PORT"):
        explain_quic_cid(config, "h3", hexcid, None)


def test_bad_questions(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flow", str(config_file), "plain", "--quic-cid", cid(5)]) == 2
    assert "has no quic block" in capsys.readouterr().err
    assert main(["flow", str(config_file), "h3", "--quic-cid", "xyz"]) == 2
    assert "not hex digits" in capsys.readouterr().err
    assert main(["flow", str(config_file), "h3"]) == 2
    assert "give SRC_IP:SRC_PORT" in capsys.readouterr().err
