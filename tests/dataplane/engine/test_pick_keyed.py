"""pick.c's keyed flow hash (``hash_key:`` VIPs) against the shared keyed vectors and core/flow.py,
and `sched_flow_hash`, the one function the engine's TCP and UDP paths hash a new flow with."""

from __future__ import annotations

import ctypes
import json
import random
from ipaddress import ip_address
from pathlib import Path

from sluice.core.flow import FiveTuple, HashKey, flow_hash

from .cbuild import FLOW_KEY_LEN, SCHED_KINDS, SchedTable, engine_c
from .test_pick import c_flow_key

KEYED = Path(__file__).resolve().parents[2] / "vectors" / "flow_hash_keyed.json"


class FlowHashKey(ctypes.Structure):
    """struct flow_hash_key of pick.h."""

    _fields_ = (("k0", ctypes.c_uint64), ("k1", ctypes.c_uint64))


class KeyedSchedTable(SchedTable):
    """struct sched_table of pick.h with its trailing hash key fields."""

    _fields_ = (("keyed", ctypes.c_uint32), ("hash_key", FlowHashKey))


def _lib() -> ctypes.CDLL:
    lib = engine_c()
    u8p = ctypes.POINTER(ctypes.c_uint8)
    lib.flow_hash_keyed.argtypes = [ctypes.POINTER(FlowHashKey), u8p]
    lib.flow_hash_keyed.restype = ctypes.c_uint32
    lib.sched_flow_hash.argtypes = [ctypes.POINTER(KeyedSchedTable), u8p]
    lib.sched_flow_hash.restype = ctypes.c_uint32
    return lib


def _key_buffer(flow: FiveTuple) -> ctypes.Array[ctypes.c_uint8]:
    return (ctypes.c_uint8 * FLOW_KEY_LEN).from_buffer_copy(c_flow_key(flow))


def c_keyed_hash(flow: FiveTuple, key: HashKey) -> int:
    return int(_lib().flow_hash_keyed(ctypes.byref(FlowHashKey(key.k0, key.k1)), _key_buffer(flow)))


def test_c_keyed_hash_equals_python_on_every_keyed_vector() -> None:
    vectors = json.loads(KEYED.read_text())["vectors"]
    assert len(vectors) > 1000
    wrong = []
    for v in vectors:
        flow = FiveTuple(
            ip_address(v["src_ip"]), ip_address(v["dst_ip"]), v["src_port"], v["dst_port"], v["proto"]
        )
        key = HashKey.from_hex(v["hash_key"])
        if c_flow_key(flow).hex() != v["key_hex"] or c_keyed_hash(flow, key) != v["hash"]:
            wrong.append(v)
    assert not wrong, wrong[:3]


def test_sched_flow_hash_is_keyed_only_for_a_keyed_table() -> None:
    rng = random.Random(11)
    key = HashKey(rng.randbytes(16))
    table = KeyedSchedTable(kind=SCHED_KINDS["maglev"], n=0)
    for _ in range(300):
        flow = FiveTuple(
            ip_address(rng.getrandbits(32)), ip_address(rng.getrandbits(32)), rng.randrange(65536), 443, 6
        )
        table.keyed = 0
        table.hash_key = FlowHashKey(key.k0, key.k1)  # a key that is not switched on is not used
        assert _lib().sched_flow_hash(ctypes.byref(table), _key_buffer(flow)) == flow_hash(flow)
        table.keyed = 1
        assert _lib().sched_flow_hash(ctypes.byref(table), _key_buffer(flow)) == flow_hash(flow, key)
