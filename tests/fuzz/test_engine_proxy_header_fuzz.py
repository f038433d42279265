"""libFuzzer run of the native engine's PROXY parser (tests/fuzz/proxy_header_fuzz.c), then every
input it kept replayed through the C parser and core/proxy_protocol.py, which must agree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from sluice.core.proxy_protocol import build_proxy_header
from tests.dataplane.engine.cbuild import ENGINE_DIR, PROXY_HEADER_SOURCES, c_parse, python_parse
from tests.support.privileged import REQUIRE_PRIVILEGED, needs

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


def build_fuzzer(
    tmp_path: Path, target: Path = TARGET, sources: tuple[str, ...] = PROXY_HEADER_SOURCES
) -> Path:
    """`target` (a libFuzzer entry point) and the engine's `sources`, with ASan+UBSan, -Werror."""
    needs(commands=("clang",))
    binary = tmp_path / target.stem
    cmd = [
        "clang",
        "-g",
        "-O1",
        "-fsanitize=fuzzer,address,undefined",
        "-fno-sanitize-recover=all",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-std=c11",
        f"-I{ENGINE_DIR}",
        str(target),
        *(str(ENGINE_DIR / name) for name in sources),
        "-o",
        str(binary),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 and "libclang_rt" in done.stderr:
        reason = "needs clang's libFuzzer/sanitizer runtime (Debian: libclang-rt-14-dev)"
        if REQUIRE_PRIVILEGED:
            pytest.fail(f"{reason} (SLUICE_REQUIRE_PRIVILEGED=1 forbids skipping)")
        pytest.skip(reason)
    assert done.returncode == 0, done.stderr
    return binary


def test_libfuzzer_proxy_header_parse_then_corpus_agrees_with_python(tmp_path: Path) -> None:
    binary = build_fuzzer(tmp_path)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    dictionary = tmp_path / "proxy.dict"
    dictionary.write_text("".join(dictionary_line(token) for token in DICTIONARY))
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    run = subprocess.run(
        [
            str(binary),
            f"-runs={RUNS}",
            "-seed=20261201",
            "-max_len=720",
            f"-dict={dictionary}",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    log = run.stderr[-4000:]
    assert run.returncode == 0, log
    assert not list(artifacts.iterdir()), log
    done = re.search(r"Done (\d+) runs", run.stderr)
    assert done and int(done.group(1)) >= RUNS, log

    inputs = sorted(corpus.iterdir())
    assert len(inputs) > 100, f"the fuzzer kept only {len(inputs)} inputs:\n{log}"
    kinds: set[tuple[str, int]] = set()
    for path in inputs:
        data = path.read_bytes()
        for max_length in MAX_LENGTHS:
            want = python_parse(data, max_length)
            assert c_parse(data, max_length) == want, (path.name, data, max_length)
            kinds.add((want[0], want[2]))
    # the corpus reached every kind of answer (else the replay would prove little)
    assert {("complete", 0), ("complete", 4), ("complete", 6), ("incomplete", 0), ("invalid", 0)} <= kinds
