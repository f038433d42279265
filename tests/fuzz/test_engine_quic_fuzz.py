"""libFuzzer run of the native engine's QUIC server-ID reader (tests/fuzz/quic_fuzz.c), then every
input it kept replayed through engine/quic.c and core/quic.py, which must agree for every width."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from sluice.core.quic import MAX_SERVER_ID_BITS, build_short_header_cid, read_server_id
from tests.dataplane.engine.test_quic_c import c_server_id
from tests.fuzz.test_engine_proxy_header_fuzz import build_fuzzer

TARGET = Path(__file__).resolve().parent / "quic_fuzz.c"
RUNS = 300_000


def test_libfuzzer_quic_server_id_then_corpus_agrees_with_python(tmp_path: Path) -> None:
    binary = build_fuzzer(tmp_path, TARGET, ("quic.c",))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = [b"", b"\xc0" + bytes(20), b"\x40" + build_short_header_cid(5, 16, b"\x01\x02\x03\x04")]
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    run = subprocess.run(
        [
            str(binary),
            f"-runs={RUNS}",
            "-seed=20261202",
            "-max_len=64",
            f"-artifact_prefix={artifacts}/",
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

    answers: set[str] = set()
    for path in sorted(corpus.iterdir()):
        data = path.read_bytes()
        for bits in range(1, MAX_SERVER_ID_BITS + 1):
            want = read_server_id(data, bits)
            assert c_server_id(data, bits) == want, (path.name, data.hex(), bits)
            answers.add("long" if want < 0 else "fallback" if want == 0 else "routed")
    assert answers == {"long", "fallback", "routed"}  # the corpus reached every kind of answer
