"""Keyed flow hash (``hash_key:``): the shared keyed vectors, the secret never shown, and what it is
for: a client that knows the unkeyed hash can pick ports that all land on one backend; with a key
the same flows spread, and every node holding the key places them alike."""

from __future__ import annotations

import importlib.util
import json
import struct
from collections import Counter
from ipaddress import ip_address
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sluice.core.endpoint import Endpoint
from sluice.core.flow import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    FiveTuple,
    HashKey,
    flow_hash,
    keyed_flow_hash,
)
from sluice.core.scheduler import build_scheduler, maglev_slots_changed
from sluice.core.siphash import siphash13

VECTORS_DIR = Path(__file__).resolve().parents[1] / "vectors"
KEYED = VECTORS_DIR / "flow_hash_keyed.json"
SECRET = "5f1e0c9a3b7d24e6a8c0f2b4d6e8a1c3"
BACKENDS = [(Endpoint.parse(f"10.0.0.{i}:80"), 1) for i in range(1, 5)]
M = 1009


def load_keyed() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(KEYED.read_text())["vectors"]
    return vectors


def as_tuple(v: dict[str, Any]) -> FiveTuple:
    return FiveTuple(
        ip_address(v["src_ip"]), ip_address(v["dst_ip"]), v["src_port"], v["dst_port"], v["proto"]
    )


def test_every_keyed_vector_matches_core_flow() -> None:
    vectors = load_keyed()
    assert len(vectors) >= 1000
    wrong = []
    for v in vectors:
        t, key = as_tuple(v), HashKey.from_hex(v["hash_key"])
        hashes = {flow_hash(t, key), keyed_flow_hash(t, key)}
        if t.key().hex() != v["key_hex"] or hashes != {v["hash"]}:
            wrong.append(v)
    assert not wrong, wrong[:3]


def test_every_keyed_vector_is_siphash13_of_its_key_with_k0_k1_little_endian() -> None:
    for v in load_keyed():
        k0, k1 = struct.unpack("<QQ", bytes.fromhex(v["hash_key"]))
        assert siphash13(k0, k1, bytes.fromhex(v["key_hex"])) & 0xFFFFFFFF == v["hash"], v


def test_keyed_vectors_cover_keys_families_protocols_and_edge_ports() -> None:
    vectors = load_keyed()
    tuples = [as_tuple(v) for v in vectors]
    assert len({v["hash_key"] for v in vectors}) >= 3
    assert {t.src_ip.version for t in tuples} == {4, 6}
    assert {t.proto for t in tuples} == {IPPROTO_TCP, IPPROTO_UDP}
    assert {0, 1, 65535} <= {t.src_port for t in tuples} | {t.dst_port for t in tuples}
    replayable = [t for t in tuples if t.src_port and t.dst_port]  # what the XDP test replays
    assert len(replayable) >= 1000
    # a keyed vector is not its unkeyed hash (the key is really used)
    assert sum(v["hash"] != flow_hash(as_tuple(v)) for v in vectors) > 0.99 * len(vectors)


def test_the_keyed_script_regenerates_the_file_exactly() -> None:
    spec = importlib.util.spec_from_file_location(
        "make_keyed_flow_hash_vectors", VECTORS_DIR / "make_keyed_flow_hash_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == KEYED.read_text()


def test_no_key_is_the_unkeyed_hash() -> None:
    t = FiveTuple.of(("192.0.2.1", 40000), ("198.18.0.10", 443), IPPROTO_TCP)
    assert flow_hash(t, None) == flow_hash(t)


# ------------------------------------------------------------------------------- the secret itself


def test_a_hash_key_never_shows_its_bytes() -> None:
    key = HashKey.from_hex(SECRET)
    for text in (repr(key), str(key), f"{key}", repr([key]), repr({"hash_key": key})):
        assert SECRET not in text.lower() and "\\x" not in text, text
    assert key == HashKey.from_hex(SECRET.upper())
    assert key != HashKey.from_hex(SECRET[:-1] + "4")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SECRET[:-2], "expected 32 hex digits"),
        (SECRET + "00", "expected 32 hex digits"),
        (SECRET[:-1] + "g", "expected 32 hex digits"),
        ("", "expected 32 hex digits"),
        ("0" * 32, "zeros is no secret"),
    ],
    ids=["short", "long", "not-hex", "empty", "zeros"],
)
def test_a_bad_hash_key_is_refused_without_repeating_it(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        HashKey.from_hex(text)
    assert not text or text not in str(err.value)


# ---------------------------------------------------------------------------------- what it is for


def _chosen_flows(target_index: int, count: int) -> list[FiveTuple]:
    """What an attacker who knows the unkeyed hash does: try source ports offline and keep those
    whose flow lands on the target backend of an unkeyed VIP."""
    unkeyed = build_scheduler("maglev", BACKENDS, M)
    target = BACKENDS[target_index][0]
    flows = []
    for port in range(1024, 65536):
        flow = FiveTuple.of(("203.0.113.7", port), ("198.18.0.10", 443), IPPROTO_TCP)
        if unkeyed.pick(flow) == target:
            flows.append(flow)
            if len(flows) == count:
                return flows
    raise AssertionError("the search found too few ports")


def test_chosen_ports_pile_up_unkeyed_and_spread_with_a_key() -> None:
    flows = _chosen_flows(0, 400)
    unkeyed = build_scheduler("maglev", BACKENDS, M)
    keyed = build_scheduler("maglev", BACKENDS, M, hash_key=HashKey.from_hex(SECRET))
    assert Counter(unkeyed.pick(f) for f in flows) == {BACKENDS[0][0]: 400}
    spread = Counter(keyed.pick(f) for f in flows)
    assert set(spread) == {a for a, _ in BACKENDS}
    assert max(spread.values()) < 0.4 * len(flows), spread  # about a quarter each


def test_keyed_nodes_with_the_same_key_agree_and_differ_from_unkeyed() -> None:
    flows = [FiveTuple.of((f"192.0.2.{i % 250 + 1}", 1024 + i), ("198.18.0.10", 443), 6) for i in range(2000)]
    node_a = build_scheduler("maglev", BACKENDS, M, hash_key=HashKey.from_hex(SECRET))
    node_b = build_scheduler("maglev", list(BACKENDS), M, hash_key=HashKey(bytes.fromhex(SECRET)))
    other_key = build_scheduler("maglev", BACKENDS, M, hash_key=HashKey.from_hex("01" * 16))
    unkeyed = build_scheduler("maglev", BACKENDS, M)
    a = [node_a.pick(f) for f in flows]
    assert a == [node_b.pick(f) for f in flows]
    # four equal backends: a different placement agrees on about a quarter of the flows
    assert sum(x != y for x, y in zip(a, [unkeyed.pick(f) for f in flows], strict=True)) > 0.6 * len(flows)
    assert sum(x != y for x, y in zip(a, [other_key.pick(f) for f in flows], strict=True)) > 0.6 * len(flows)


def test_a_changed_key_counts_as_every_slot_changed() -> None:
    unkeyed = build_scheduler("maglev", BACKENDS, M)
    keyed = build_scheduler("maglev", BACKENDS, M, hash_key=HashKey.from_hex(SECRET))
    same = build_scheduler("maglev", BACKENDS, M, hash_key=HashKey.from_hex(SECRET))
    assert maglev_slots_changed(unkeyed, keyed) == M
    assert maglev_slots_changed(keyed, same) == 0
