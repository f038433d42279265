"""Issue 15.7: under `ip netns exec` (a mount namespace of its own, /sys remounted, no bpffs) sluice
mounts a private bpffs; it says so in one warning line, since its pins vanish with the process."""

from __future__ import annotations

import sys

import pytest

from sluice.lab.netns import Namespace
from tests.support.privileged import needs

pytestmark = pytest.mark.timeout(60)

PROBE = """
import logging, sys
from sluice.dataplane.xdp import loader
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
print("private" if loader.ensure_bpffs() else "shared")
"""


def test_private_bpffs_under_ip_netns_exec_is_one_warning() -> None:
    needs(root=True, commands=("ip", "mount"))
    with Namespace.create("bpffs") as ns:
        proc = ns.run(sys.executable, "-c", PROBE, timeout=30)
    assert proc.stdout.strip() == "private"
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, proc.stderr
    assert "private bpffs" in warnings[0] and "vanish when sluice exits" in warnings[0]
    assert "nsenter --net=/run/netns/<name>" in warnings[0]
