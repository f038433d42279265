"""What a test needs beyond a normal user (root, commands).

`needs(...)` marks what a test requires (root, a command on PATH, network namespaces). Without it the
test skips with the reason; with SLUICE_REQUIRE_PRIVILEGED=1 (set by .ci/run) it fails instead, so
CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_PRIVILEGED = os.environ.get("SLUICE_REQUIRE_PRIVILEGED") == "1"


def needs(*, root: bool = False, commands: tuple[str, ...] = ()) -> None:
    """Call at the top of a test (or fixture): skip, or fail under SLUICE_REQUIRE_PRIVILEGED=1."""
    missing = []
    if root and os.geteuid() != 0:
        missing.append("root")
    missing += [f"command {c!r}" for c in commands if shutil.which(c) is None]
    if not missing:
        return
    reason = "needs " + ", ".join(missing)
    if REQUIRE_PRIVILEGED:
        pytest.fail(f"{reason} (SLUICE_REQUIRE_PRIVILEGED=1 forbids skipping)")
    pytest.skip(reason)
