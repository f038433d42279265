"""Run inside a fresh network namespace by test_metrics_latency.py: two VIPs on the proxy plane of
`engine`, one before a backend whose first SYN of every connection is dropped (nftables, so the
kernel retransmits it after its 1 s initial RTO), one before a plain backend; a few flows each; the
metrics exposition on stdout. Usage: python -m tests.netns.metrics_latency_scenario ENGINE FLOWS"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from prometheus_client import generate_latest

from sluice.config import parse_config
from sluice.control.controller import Controller
from sluice.control.metrics import build_registry
from sluice.server import metrics_sources
from tests.support.loopback import Backends, free_port, probe

DROP_FIRST_SYN = """
table inet sluice_test {{
  set seen {{ type inet_service; flags timeout; timeout 30s; }}
  chain out {{
    type filter hook output priority 0;
    tcp dport {port} tcp flags & (syn | ack) == syn tcp sport != @seen add @seen {{ tcp sport }} drop
  }}
}}
"""


async def main(engine: str, flows: int) -> str:
    async with Backends() as backends:
        slow, fast = await backends.add("slow"), await backends.add("fast")
        subprocess.run(["nft", "-f", "-"], input=DROP_FIRST_SYN.format(port=slow.port), text=True, check=True)
        ports = {"slow": free_port(), "fast": free_port()}
        vips = [
            {
                "name": name,
                "listen": f"127.0.0.1:{ports[name]}",
                "timeouts": {"connect": "5s"},
                "passive": "off",
                "backends": [{"address": backend.address}],
            }
            for name, backend in (("slow", slow), ("fast", fast))
        ]
        controller = Controller(parse_config({"engine": engine, "vips": vips}))
        await controller.start()
        try:
            for name in ("slow", "fast"):
                for _ in range(flows):
                    assert await probe(ports[name]) == name
            return generate_latest(build_registry(metrics_sources(controller), process=False)).decode()
        finally:
            await controller.close()


if __name__ == "__main__":
    sys.stdout.write(asyncio.run(main(sys.argv[1], int(sys.argv[2]))))
