"""A backend whose connects take over a second lands in the connect-latency buckets above 1 s, on both
engines. The delay is the kernel's: in a namespace of this test, nftables drops the first SYN of each
connection to that backend and TCP retransmits it after its initial RTO (1 s, a lower bound, so the
bucket check holds however loaded the machine is). Root only: needs ip and nft."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.lab.netns import Namespace
from tests.support.privileged import needs

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]
FLOWS = 3


@pytest.mark.parametrize("engine", ["python", "native"])
def test_a_delayed_backend_shows_in_the_connect_latency_buckets_above_one_second(engine: str) -> None:
    needs(root=True, commands=("ip", "nft"))
    with Namespace.create(f"metrics-{engine}") as ns:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        scenario = [sys.executable, "-m", "tests.netns.metrics_latency_scenario", engine, str(FLOWS)]
        text = ns.run("env", f"PYTHONPATH={path}", *scenario, timeout=60).stdout
    buckets = {
        (s.labels["vip"], s.labels.get("le")): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "sluice_backend_connect_latency_seconds"
        for s in family.samples
        if s.name.endswith("_bucket")
    }
    assert buckets[("slow", "+Inf")] == FLOWS
    assert buckets[("slow", "0.5")] == 0  # every connect waited for the retransmitted SYN
    assert buckets[("fast", "+Inf")] == FLOWS
