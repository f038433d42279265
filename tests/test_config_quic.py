"""The ``quic`` block of a UDP VIP and its backends' ``server_id``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.config import ConfigError, Endpoint, load_config

BASE = """\
vips:
  - name: q
    protocol: udp
    listen: 127.0.0.1:4433
    quic: {{server_id_bits: {bits}}}
    backends:
      - address: 127.0.0.1:9001{id1}
      - address: 127.0.0.1:9002{id2}
"""


def load(tmp_path: Path, bits: int = 8, id1: str = "", id2: str = "", extra: str = "") -> object:
    path = tmp_path / "sluice.yaml"
    path.write_text(BASE.format(bits=bits, id1=id1, id2=id2) + extra)
    return load_config(path)


def test_ids_from_config_order(tmp_path: Path) -> None:
    vip = load(tmp_path).vips[0]  # type: ignore[attr-defined]
    assert vip.quic.server_id_bits == 8
    assert vip.server_ids == ((1, Endpoint.parse("127.0.0.1:9001")), (2, Endpoint.parse("127.0.0.1:9002")))
    assert vip.quic_routing.backends == dict(vip.server_ids)


def test_quic_routing_leaves_out_backends_without_weight(tmp_path: Path) -> None:
    vip = load(tmp_path, id2="\n        weight: 0").vips[0]  # type: ignore[attr-defined]
    assert vip.quic_routing.backends == {1: Endpoint.parse("127.0.0.1:9001")}


def test_explicit_ids(tmp_path: Path) -> None:
    vip = load(tmp_path, 16, "\n        server_id: 700", "\n        server_id: 65535").vips[0]  # type: ignore[attr-defined]
    assert [i for i, _ in vip.server_ids] == [700, 65535]


def test_no_quic_block_no_ids(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(BASE.replace("    quic: {{server_id_bits: {bits}}}\n", "").format(id1="", id2=""))
    assert load_config(path).vips[0].server_ids == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 0}, r"quic\.server_id_bits: must be at least 1, got 0"),
        ({"bits": 31}, r"quic\.server_id_bits: must be at most 30, got 31"),
        (
            {"bits": 4, "id1": "\n        server_id: 16", "id2": "\n        server_id: 1"},
            "server_id 16 does not fit",
        ),
        (
            {"id1": "\n        server_id: 5", "id2": "\n        server_id: 5"},
            "server_id 5 is given to more than one",
        ),
        ({"id1": "\n        server_id: 5"}, "set server_id on every backend or on none"),
        (
            {"id1": "\n        server_id: 0", "id2": "\n        server_id: 1"},
            r"backends\[0\]\.server_id: must be at least 1, got 0",
        ),
        ({"bits": 1, "extra": "      - address: 127.0.0.1:9003\n"}, "server_id 2 does not fit"),
    ],
)
def test_bad_quic_config(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_quic_needs_udp(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(BASE.format(bits=8, id1="", id2="").replace("protocol: udp", "protocol: tcp"))
    with pytest.raises(ConfigError, match=r"vips\[0\]\.quic: only for protocol: udp \(this VIP is tcp\)"):
        load_config(path)


def test_server_id_needs_quic(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    text = BASE.replace("    quic: {{server_id_bits: {bits}}}\n", "").format(
        id1="\n        server_id: 1", id2=""
    )
    path.write_text(text)
    with pytest.raises(
        ConfigError, match="server_id is only valid on the backends of a VIP with a quic block"
    ):
        load_config(path)
