"""A VIP's ``hash_key`` is a secret: a running `sluice run` (logging at DEBUG) serves the keyed VIP,
answers the API, the status page, the metrics, `sluice status`, `sluice check` and `sluice flow`,
refuses a reload with a mistyped key and applies one with a new key, and none of what it writes or
answers holds the key, in any of the forms a program could print it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import yaml
from aiohttp import ClientSession

from sluice.core.flow import HashKey
from tests.support.loopback import Backends, free_port, probe

TOKEN = "hash-key-secret-test-token-0123"
SECRET = "7e3a91c05bd24f68a0c1e2d3f4b5a697"
ROTATED = "19af3c5e7b90d2e4f6a8c0b1d3e5f7a9"
MISTYPED = SECRET[:-1]  # 31 digits: nearly the secret, refused
# a debug-level run: what an operator chasing a problem would turn on


def forms(hex_key: str) -> list[str]:
    """Every way the key could be printed: hex either case, Python bytes, the SipHash words."""
    if len(hex_key) != 32:
        return [hex_key.lower(), hex_key.upper()]
    key = HashKey.from_hex(hex_key)
    return [
        hex_key.lower(),
        hex_key.upper(),
        repr(key.secret)[2:-1],
        str(key.k0),
        str(key.k1),
        f"{key.k0:x}",
        f"{key.k1:x}",
    ]


def write_config(path: Path, vip_port: int, admin_port: int, backends: list[str], key: str) -> None:
    data: dict[str, Any] = {
        "vips": [
            {
                "name": "web",
                "listen": f"127.0.0.1:{vip_port}",
                "hash_key": key,
                "backends": [{"address": b} for b in backends],
            }
        ],
        "admin": {"listen": f"127.0.0.1:{admin_port}", "token_file": str(path.parent / "token")},
    }
    path.write_text(yaml.safe_dump(data))


async def cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sluice",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode()


async def test_the_hash_key_appears_in_no_output(tmp_path: Path, backends: Backends) -> None:
    b0, b1, b2 = [await backends.add() for _ in range(3)]
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "token").chmod(0o600)
    config = tmp_path / "sluice.yaml"
    vip_port, admin_port = free_port(), free_port()
    addresses = [b.address for b in (b0, b1, b2)]
    write_config(config, vip_port, admin_port, addresses, SECRET)
    api = f"http://127.0.0.1:{admin_port}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    loop = asyncio.get_running_loop()

    async def notification() -> str:
        return (await asyncio.wait_for(loop.sock_recv(notify, 4096), 10)).decode()

    log_file = (tmp_path / "sluice.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sluice",
        "run",
        "--log-level",
        "debug",
        str(config),
        env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
        stdout=log_file,  # a file, not a pipe nobody reads while the test runs: debug logs can fill one
        stderr=asyncio.subprocess.STDOUT,
    )
    seen: list[str] = []
    try:
        assert await notification() == "READY=1"
        assert {await probe(vip_port) for _ in range(12)} <= {"b0", "b1", "b2"}
        async with ClientSession() as session:
            for path in ("/api/v1/vips", "/api/v1/vips/web", "/api/v1/vips/web/backends", "/metrics", "/"):
                async with session.get(api + path) as r:
                    assert r.status == 200, path
                    seen.append(await r.text())
            seen.append(await cli("status", "--api", api))
            seen.append(await cli("status", "--json", "--api", api))
            seen.append(await cli("check", str(config)))
            seen.append(await cli("flow", str(config), "web", "192.0.2.1:4000"))

            # a mistyped key is refused (API and SIGHUP) without being repeated
            write_config(config, vip_port, admin_port, addresses, MISTYPED)
            seen.append(await cli("check", str(config)))
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with session.post(api + "/api/v1/reload", headers=headers) as r:
                assert r.status == 400
                body = await r.text()
                assert "hash_key" in body
                seen.append(body)
            proc.send_signal(signal.SIGHUP)
            assert (await notification()).startswith("RELOADING=1")
            assert await notification() == "READY=1"

            # a new key applies
            write_config(config, vip_port, admin_port, addresses, ROTATED)
            async with session.post(api + "/api/v1/reload", headers=headers) as r:
                assert r.status == 200
                seen.append(await r.text())
            assert await probe(vip_port) in {"b0", "b1", "b2"}
            async with session.get(api + "/api/v1/vips/web") as r:
                seen.append(await r.text())
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        notify.close()
        log_file.close()
    logs = (tmp_path / "sluice.log").read_text()
    assert "hash_key" in logs and "rejected" in logs and "reloaded" in logs  # the reloads were logged
    seen.append(logs)
    for text in seen:
        for secret in (SECRET, ROTATED, MISTYPED):
            for form in forms(secret):
                assert form not in text, (form, text[:2000])
