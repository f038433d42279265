"""libFuzzer run of the native engine's PROXY parser (tests/fuzz/proxy_header_fuzz.c), then every
input it kept replayed through the C parser and core/proxy_protocol.py, which must agree."""

from __future__ import annotations

from pathlib import Path

from sluice.core.proxy_protocol import build_proxy_header
from tests.dataplane.engine.cbuild import PROXY_HEADER_SOURCES, c_parse, python_parse
from tests.fuzz.libfuzzer import build_fuzzer, run_fuzzer

TARGET = Path(__file__).resolve().parent / "proxy_header_fuzz.c"
RUNS = 1_000_000
MAX_LENGTHS = (16, 28, 52, 106, 107, 108, 300, 536, 700)
"""The max_length values the target checks, replayed here too."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
DICTIONARY = [
    b"PROXY ",
    b"TCP4 ",
    b"TCP6 ",
    b"UNKNOWN",
    b"\r\n",
    b"255.255.255.255",
    b"::ffff:",
    b"65535",
    V2_SIGNATURE,
    b"\x21\x11\x00\x0c",
    b"\x21\x21\x00\x24",
    b"\x03\x00\x04",
    b"\x20\x00\x05",
]
"""Tokens libFuzzer splices into inputs (the signatures and fields it would take long to guess)."""


def dictionary_line(token: bytes) -> str:
    """One libFuzzer dictionary entry: the token in quotes, every byte as a \\xNN escape."""
    return '"' + "".join(f"\\x{b:02x}" for b in token) + '"\n'


def seeds() -> list[bytes]:
    v2_crc = bytearray(build_proxy_header(2, ("10.0.0.1", 1), ("10.0.0.2", 2)))
    v2_crc[14:16] = (12 + 7).to_bytes(2, "big")
    v2_crc += b"\x03\x00\x04\x00\x00\x00\x00"
    return [
        build_proxy_header(1, ("192.0.2.1", 56324), ("198.51.100.7", 443)) + b"GET /",
        build_proxy_header(1, ("2001:db8::1", 1), ("2001:db8::2:0:0:1", 65535)),
        build_proxy_header(1, None, None),
        build_proxy_header(2, ("192.0.2.1", 56324), ("198.51.100.7", 443), "udp"),
        build_proxy_header(2, ("2001:db8::1", 1), ("::", 2)),
        build_proxy_header(2, None, None),
        bytes(v2_crc),
        V2_SIGNATURE + b"\x21\x20\x00\x2b" + bytes(36) + b"\x20\x00\x08" + bytes(5) + b"\x01\x00\x00",
    ]


def test_libfuzzer_proxy_header_parse_then_corpus_agrees_with_python(tmp_path: Path) -> None:
    binary = build_fuzzer(tmp_path, TARGET, PROXY_HEADER_SOURCES)
    dictionary = tmp_path / "proxy.dict"
    dictionary.write_text("".join(dictionary_line(token) for token in DICTIONARY))
    corpus = run_fuzzer(
        binary, tmp_path, seeds(), RUNS, seed=20261201, max_len=720, extra=(f"-dict={dictionary}",)
    )

    inputs = sorted(corpus.iterdir())
    assert len(inputs) > 100, f"the fuzzer kept only {len(inputs)} inputs"
    kinds: set[tuple[str, int]] = set()
    for path in inputs:
        data = path.read_bytes()
        for max_length in MAX_LENGTHS:
            want = python_parse(data, max_length)
            assert c_parse(data, max_length) == want, (path.name, data, max_length)
            kinds.add((want[0], want[2]))
    # the corpus reached every kind of answer (else the replay would prove little)
    assert {("complete", 0), ("complete", 4), ("complete", 6), ("incomplete", 0), ("invalid", 0)} <= kinds
