"""Build and run a libFuzzer target over engine C files (tests/fuzz/*_fuzz.c)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.dataplane.engine.cbuild import ENGINE_DIR
from tests.support.privileged import REQUIRE_PRIVILEGED, needs


def build_fuzzer(tmp_path: Path, target: Path, sources: tuple[str, ...]) -> Path:
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


def run_fuzzer(
    binary: Path,
    tmp_path: Path,
    seeds: Sequence[bytes],
    runs: int,
    *,
    seed: int,
    max_len: int,
    extra: Sequence[str] = (),
) -> Path:
    """`runs` inputs from `seeds`; asserts it ended clean (no crash, no artifact, every run done) and
    returns the corpus directory libFuzzer grew, for replaying against the Python twin."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, data in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(data)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    run = subprocess.run(
        [
            str(binary),
            f"-runs={runs}",
            f"-seed={seed}",
            f"-max_len={max_len}",
            *extra,
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
    assert done and int(done.group(1)) >= runs, log
    return corpus
