"""libFuzzer run of the native engine's QUIC server-ID reader (tests/fuzz/quic_fuzz.c), then every
input it kept replayed through engine/quic.c and core/quic.py, which must agree for every width."""

from __future__ import annotations

from pathlib import Path

from sluice.core.quic import MAX_SERVER_ID_BITS, build_short_header_cid, read_server_id
from tests.dataplane.engine.test_quic_c import c_server_id
from tests.fuzz.libfuzzer import build_fuzzer, run_fuzzer

TARGET = Path(__file__).resolve().parent / "quic_fuzz.c"
RUNS = 300_000


def test_libfuzzer_quic_server_id_then_corpus_agrees_with_python(tmp_path: Path) -> None:
    binary = build_fuzzer(tmp_path, TARGET, ("quic.c",))
    seeds = [b"", b"\xc0" + bytes(20), b"\x40" + build_short_header_cid(5, 16, b"\x01\x02\x03\x04")]
    corpus = run_fuzzer(binary, tmp_path, seeds, RUNS, seed=20261202, max_len=64)

    answers: set[str] = set()
    for path in sorted(corpus.iterdir()):
        data = path.read_bytes()
        for bits in range(1, MAX_SERVER_ID_BITS + 1):
            want = read_server_id(data, bits)
            assert c_server_id(data, bits) == want, (path.name, data.hex(), bits)
            answers.add("long" if want < 0 else "fallback" if want == 0 else "routed")
    assert answers == {"long", "fallback", "routed"}  # the corpus reached every kind of answer
