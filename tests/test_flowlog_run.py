"""`sluice run` with a VIP's flow log, on both engines: the lines in the file, the drops counted in
the API's VIP status and in the metrics, and sluice's own log in JSON at the level asked for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from sluice.dataplane import engine as native
from tests.support.loopback import Backends, free_port, probe

FLOWS = 12


@pytest.fixture(params=["python", "native"])
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "native" and not native.AVAILABLE:
        pytest.skip("needs the native engine extension")
    return name


async def api_get(port: int, path: str) -> Any:
    async with ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as r:
        assert r.status == 200
        return await r.json() if r.content_type == "application/json" else await r.text()


async def test_run_writes_the_flow_log_and_counts_its_drops(
    engine: str, tmp_path: Path, backends: Backends
) -> None:
    b0 = await backends.add()
    flows = tmp_path / "flows.log"
    vip_port, admin_port = free_port(), free_port()
    config = tmp_path / "sluice.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "engine": engine,
                "workers": 1,
                "vips": [
                    {
                        "name": "web",
                        "listen": f"127.0.0.1:{vip_port}",
                        "backends": [{"address": b0.address}],
                        "access_log": {"format": "json", "path": str(flows), "rate": 1},
                    }
                ],
                "admin": {"listen": f"127.0.0.1:{admin_port}"},
            }
        )
    )
    async with running(tmp_path, config, "info") as proc:
        for _ in range(FLOWS):
            assert await probe(vip_port) == "b0"
        async with asyncio.timeout(20):
            while True:
                vip = await api_get(admin_port, "/api/v1/vips/web")
                lines = flows.read_text().splitlines() if flows.exists() else []
                if sum(vip["closed"].values()) == FLOWS and len(lines) + vip["access_log_dropped"] == FLOWS:
                    break
                await asyncio.sleep(0.05)
        assert vip["access_log_dropped"] >= 1  # 12 flows in less than 11 s at 1 line/s
        metrics = await api_get(admin_port, "/metrics")
        [dropped] = [
            s.value
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
            if s.name == "sluice_vip_access_log_dropped_total"
        ]
        assert dropped == vip["access_log_dropped"]
        for line in lines:
            record = json.loads(line)
            assert (record["vip"], record["backend"], record["reason"]) == ("web", b0.address, "done")
            assert record["bytes_to_backend"] == 4  # probe: "ping"
    logged = await json_log(proc)
    [listening] = [e for e in logged if e["msg"].startswith("vip web: listening")]
    assert listening["vip"] == "web" and listening["level"] == "info"
    assert datetime.fromisoformat(listening["ts"]).tzinfo is not None


async def test_run_log_level_warning_leaves_out_info(tmp_path: Path, backends: Backends) -> None:
    b0 = await backends.add()
    config = tmp_path / "sluice.yaml"
    vip = {"name": "web", "listen": f"127.0.0.1:{free_port()}", "backends": [{"address": b0.address}]}
    config.write_text(yaml.safe_dump({"engine": "python", "vips": [vip]}))
    async with running(tmp_path, config, "warning") as proc:
        pass
    logged = await json_log(proc)
    assert all(entry["level"] in ("warning", "error") for entry in logged), logged
    assert not [e for e in logged if e["msg"].startswith("vip web: listening")]


@contextlib.asynccontextmanager
async def running(tmp_path: Path, config: Path, level: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`sluice run config` until it is READY; after the block, SIGTERM, and it must exit 0."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    proc = await start(config, notify, level)
    try:
        await ready(notify)
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()


async def start(config: Path, notify: socket.socket, level: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "NOTIFY_SOCKET": notify.getsockname()}
    argv = [sys.executable, "-m", "sluice", "run", str(config), "--log-format", "json", "--log-level", level]
    return await asyncio.create_subprocess_exec(*argv, env=env, stderr=asyncio.subprocess.PIPE)


async def ready(notify: socket.socket) -> None:
    notify.setblocking(False)
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(notify, 4096), 20) == b"READY=1"


async def json_log(proc: asyncio.subprocess.Process) -> list[dict[str, Any]]:
    assert proc.stderr is not None
    return [json.loads(line) for line in (await proc.stderr.read()).decode().splitlines()]
