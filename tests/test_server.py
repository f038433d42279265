"""`sluice run` as a process (sd_notify, admin API and metrics, SIGHUP / API reload, graceful stop), and
the `Server` lifecycle in-process where a failure has to be injected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from sluice.config import Config, load_config
from sluice.server import Server
from tests.support.loopback import Backend, Backends, Held, free_port, probe

TOKEN = "server-test-token-0123456789"


@dataclass
class Sluice:
    proc: asyncio.subprocess.Process
    notify: socket.socket
    config: Path
    vip_port: int
    admin_port: int

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def rewrite(self, backends: list[Backend], **top: Any) -> None:
        write_config(self.config, self.vip_port, self.admin_port, backends, **top)

    async def message(self, timeout_s: float = 10.0) -> str:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.notify, 4096), timeout_s)
        return data.decode()

    async def expect(self, prefix: str, most: int = 8) -> None:
        """Read notifications until one starts with `prefix` (at most `most`)."""
        seen = []
        for _ in range(most):
            seen.append(await self.message())
            if seen[-1].startswith(prefix):
                return
        raise AssertionError(f"no {prefix} in {seen}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


def write_config(path: Path, vip_port: int, admin_port: int, backends: list[Backend], **top: Any) -> None:
    data: dict[str, Any] = {
        "vips": [
            {
                "name": "web",
                "listen": f"127.0.0.1:{vip_port}",
                "backends": [{"address": b.address} for b in backends],
                "health": {"type": "tcp", "interval": "200ms", "timeout": "200ms"},
            }
        ],
        "admin": {"listen": f"127.0.0.1:{admin_port}", "token_file": str(path.parent / "token")},
    }
    data.update(top)
    path.write_text(yaml.safe_dump(data))


@contextlib.asynccontextmanager
async def sluice(
    tmp_path: Path, backends: list[Backend], nofile: int | None = None, **top: Any
) -> AsyncIterator[Sluice]:
    """`sluice run` on a fresh config; `nofile` sets RLIMIT_NOFILE (soft and hard) of the process."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "token").chmod(0o600)
    config = tmp_path / "sluice.yaml"
    vip_port, admin_port = free_port(), free_port()
    write_config(config, vip_port, admin_port, backends, **top)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    argv = [sys.executable, "-m", "sluice", "run", str(config)]
    if nofile is not None:
        limit = f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))"
        argv = [sys.executable, "-c", f"{limit}; os.execv(sys.executable, sys.argv[1:])", *argv]
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stderr=asyncio.subprocess.PIPE)
    s = Sluice(proc, notify, config, vip_port, admin_port)
    try:
        assert await s.message() == "READY=1"
        yield s
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()


async def get(s: Sluice, path: str) -> Any:
    async with ClientSession() as session, session.get(s.api + path) as r:
        assert r.status == 200
        return await r.json() if r.content_type == "application/json" else await r.text()


async def post(s: Sluice, path: str, token: str | None = TOKEN, **kw: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with ClientSession() as session, session.post(s.api + path, headers=headers, **kw) as r:
        return r.status, await r.json()


def samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[json.dumps(sample.labels, sort_keys=True)] = sample.value
    return out


async def test_run_serves_reloads_and_reports(tmp_path: Path, backends: Backends) -> None:
    b0, b1, b2 = [await backends.add() for _ in range(3)]
    async with sluice(tmp_path, [b0, b1]) as s:
        assert {await probe(s.vip_port) for _ in range(20)} <= {"b0", "b1"}
        metrics = await get(s, "/metrics")
        flows = samples(metrics, "sluice_backend_flows_total")
        assert sum(flows.values()) == 20
        await asyncio.gather(*(probe(s.vip_port) for _ in range(10)))
        assert sum(samples(await get(s, "/metrics"), "sluice_backend_flows_total").values()) == 30
        assert samples(await get(s, "/metrics"), "sluice_backend_up") == {
            json.dumps({"backend": b.address, "vip": "web"}, sort_keys=True): 1.0 for b in (b0, b1)
        }

        # changes need the token
        status, body = await post(s, f"/api/v1/vips/web/backends/{b0.address}/drain", token=None)
        assert status == 401 and "token" in body["error"]

        # an invalid file (SIGHUP and API) keeps the running config and keeps serving
        good = s.config.read_text()
        s.config.write_text(good.replace(b0.address, "not-an-address"))
        s.signal(signal.SIGHUP)
        assert (await s.message()).startswith("RELOADING=1")
        assert await s.message() == "READY=1"
        status, body = await post(s, "/api/v1/reload")
        assert status == 400 and body["errors"][0].startswith("vips[0].backends[0].address")
        await s.message()
        await s.message()
        assert len((await get(s, "/api/v1/vips/web"))["backends"]) == 2
        assert await probe(s.vip_port) in {"b0", "b1"}

        # a dry run tells the difference and applies nothing; then the change applies
        s.rewrite([b0, b1, b2])
        status, dry = await post(s, "/api/v1/reload?dry_run=true")
        added = f"vip web: backend {b2.address} added (weight 1)"
        assert status == 200 and dry["applied"] is False and dry["lines"][0] == added
        assert len((await get(s, "/api/v1/vips/web"))["backends"]) == 2
        status, body = await post(s, "/api/v1/reload")
        assert status == 200 and body["ok"] is True and body["applied"] is True and body["vips"] == ["web"]
        assert body["lines"] == dry["lines"] and body["lines"][0] == added
        assert (
            body["lines"][1].startswith("vip web: maglev ")
            and "slots move to another backend" in body["lines"][1]
        )
        vip = await get(s, "/api/v1/vips/web")
        assert [b["address"] for b in vip["backends"]] == [b0.address, b1.address, b2.address]
        reloads = samples(await get(s, "/metrics"), "sluice_reload_total")
        assert reloads == {'{"result": "invalid"}': 2.0, '{"result": "ok"}': 1.0}
        info = await get(s, "/api/v1/server")
        assert info["last_reload_result"] == "ok" and info["reloads"] == {"invalid": 2, "ok": 1}

        s.signal(signal.SIGTERM)
        await s.expect("STOPPING=1")
        assert await asyncio.wait_for(s.proc.wait(), 10) == 0
        assert s.proc.stderr is not None
        log = (await s.proc.stderr.read()).decode().splitlines()
        rejected = [line for line in log if "rejected, keeping the running config" in line]
        assert len(rejected) == 2  # one line each: the SIGHUP and the API reload
        assert all("vips[0].backends[0].address" in line for line in rejected)
        assert any(line.endswith(f"reload: {added}") for line in log)


async def test_idle_admin_connections_cannot_starve_the_data_plane(
    tmp_path: Path, backends: Backends
) -> None:
    """With 256 descriptors, 400 idle admin connections: the admin API serves at most its cap and
    keeps descriptors for the data plane, which goes on taking new flows (issue 12.5)."""
    b0 = await backends.add()
    async with sluice(tmp_path, [b0], nofile=256) as s:
        held: list[asyncio.StreamWriter] = []
        try:
            for _ in range(400):
                with contextlib.suppress(OSError, TimeoutError):  # a full accept backlog drops SYNs
                    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", s.admin_port), 3)
                    held.append(writer)
            assert len(held) > 300
            for _ in range(10):
                assert await probe(s.vip_port) == "b0"
        finally:
            for writer in held:
                writer.close()
        s.signal(signal.SIGTERM)
        await s.expect("STOPPING=1")
        assert await asyncio.wait_for(s.proc.wait(), 10) == 0


async def test_graceful_stop_lets_flows_finish_and_second_signal_exits(
    tmp_path: Path, backends: Backends
) -> None:
    b0 = await backends.add()
    async with sluice(tmp_path, [b0], shutdown_timeout="20s") as s:
        held = await Held.open(s.vip_port)
        s.signal(signal.SIGTERM)
        assert await s.message() == "STOPPING=1"
        await asyncio.sleep(0.2)
        assert await held.ping()  # the established flow continues
        with pytest.raises(OSError):
            await probe(s.vip_port)  # no new flows
        assert s.proc.returncode is None
        held.close()
        assert await asyncio.wait_for(s.proc.wait(), 5) == 0  # done as soon as the last flow ended

    second = tmp_path / "second"
    second.mkdir()
    async with sluice(second, [b0], shutdown_timeout="20s") as s:
        held = await Held.open(s.vip_port)
        s.signal(signal.SIGTERM)
        assert await s.message() == "STOPPING=1"
        s.signal(signal.SIGTERM)
        assert await asyncio.wait_for(s.proc.wait(), 3) == 0
        assert not await held.ping()
        held.close()


class Notifications:
    """The sd_notify datagrams an in-process Server sends (NOTIFY_SOCKET points here)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    async def next(self, timeout_s: float = 10.0) -> str:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 4096), timeout_s)
        return data.decode().split("\n")[0]


@pytest.fixture
def notifications(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Notifications]:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    n = Notifications(tmp_path / "notify")
    try:
        yield n
    finally:
        n.sock.close()


def plain_config(path: Path, backends: list[Backend], port: int | None = None) -> Path:
    """One TCP VIP on `port` (default: kernel-chosen), no admin API."""
    path.write_text(
        yaml.safe_dump(
            {
                "vips": [
                    {
                        "name": "web",
                        "listen": f"127.0.0.1:{port or free_port()}",
                        "backends": [{"address": b.address} for b in backends],
                    }
                ]
            }
        )
    )
    return path


async def test_a_failing_reload_does_not_end_the_reload_task(
    tmp_path: Path, backends: Backends, notifications: Notifications, monkeypatch: pytest.MonkeyPatch
) -> None:
    b0, b1 = await backends.add(), await backends.add()
    path = plain_config(tmp_path / "sluice.yaml", [b0])
    async with in_process(path, notifications) as server:
        assert server.controller is not None
        controller = server.controller
        real_load = server.load
        failures = ["an error no handler names"]

        def load_failing_once(config_path: Path) -> Config:
            if failures:
                raise RuntimeError(failures.pop())
            return real_load(config_path)

        monkeypatch.setattr(server, "load", load_failing_once)
        signal.raise_signal(signal.SIGHUP)
        assert await notifications.next() == "RELOADING=1"
        assert await notifications.next() == "READY=1"
        assert not failures

        plain_config(path, [b0, b1])
        signal.raise_signal(signal.SIGHUP)  # the reload task still listens
        assert await notifications.next() == "RELOADING=1"
        assert await notifications.next() == "READY=1"
        assert controller.reloads["ok"] == 1
        assert [str(b.address) for b in controller.config.vip("web").backends] == [b0.address, b1.address]


@contextlib.asynccontextmanager
async def in_process(path: Path, notifications: Notifications, **kw: Any) -> AsyncIterator[Server]:
    """An in-process Server on `path`, READY; stopped with SIGTERM at the end."""
    server = Server(path, **kw)
    serving = asyncio.create_task(server.serve())
    try:
        assert await notifications.next() == "READY=1"
        yield server
        signal.raise_signal(signal.SIGTERM)
        assert await notifications.next() == "STOPPING=1"
        await asyncio.wait_for(serving, 10)
    finally:
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving


async def sighup(notifications: Notifications) -> None:
    signal.raise_signal(signal.SIGHUP)
    assert await notifications.next() == "RELOADING=1"
    assert await notifications.next() == "READY=1"


def _replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    ("breaks", "expected"),
    [
        (lambda p: p.write_bytes(p.read_bytes().replace(b"web", b"w\xe9b")), "is not UTF-8 (byte 0xe9"),
        (lambda p: p.write_text(p.read_text() + "shutdown_timeout: " + "9" * 5000 + "\n"), "invalid YAML"),
        (
            lambda p: p.write_text(
                p.read_text().replace("name: web", "name: web\n  maglev_table_size: 10000000000000061")
            ),
            "must be at most 1000003",
        ),
        (
            lambda p: p.write_text(p.read_text() + "shutdown_timeout: .nan\n"),
            "shutdown_timeout: a duration must be a finite",
        ),
        (_replace_with_directory, "cannot read"),
    ],
)
async def test_a_bad_file_is_one_logged_error_and_the_next_good_reload_applies(
    tmp_path: Path,
    backends: Backends,
    notifications: Notifications,
    caplog: pytest.LogCaptureFixture,
    breaks: Any,
    expected: str,
) -> None:
    b0, b1 = await backends.add(), await backends.add()
    path = plain_config(tmp_path / "sluice.yaml", [b0])
    async with in_process(path, notifications) as server:
        assert server.controller is not None
        breaks(path)
        caplog.clear()
        await sighup(notifications)
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert str(path) in errors[0].getMessage() and expected in errors[0].getMessage()
        assert errors[0].exc_info is None  # a message, not a traceback
        assert server.controller.reloads["invalid"] == 1

        if path.is_dir():
            path.rmdir()
        plain_config(path, [b0, b1], server.controller.config.vip("web").listen.port)
        await sighup(notifications)  # the reload task still listens, and applies the good file
        assert [str(b.address) for b in server.controller.config.vip("web").backends] == [
            b0.address,
            b1.address,
        ]
        assert server.controller.reloads["ok"] == 1


async def test_a_reload_reads_and_validates_off_the_event_loop(
    tmp_path: Path, backends: Backends, notifications: Notifications
) -> None:
    """While a reload's parse runs (here: blocked until the test releases it), the event loop keeps
    serving: the test's own coroutine runs, and a flow through the VIP is served."""
    b0, b1 = await backends.add(), await backends.add()
    path = plain_config(tmp_path / "sluice.yaml", [b0])
    release, loading = threading.Event(), threading.Event()
    released_while_loading: list[bool] = []

    def load(config_path: Path) -> Config:
        if loading.is_set():  # the reload (startup loads first, on the loop, before serving)
            released_while_loading.append(release.wait(timeout=10))
        loading.set()
        return load_config(config_path)

    async with in_process(path, notifications, load=load) as server:
        assert server.controller is not None
        port = server.controller.config.vip("web").listen.port
        plain_config(path, [b0, b1], port)
        signal.raise_signal(signal.SIGHUP)
        assert await notifications.next() == "RELOADING=1"
        assert await probe(port) == "b0"  # traffic flows while the new file is being validated
        release.set()
        assert await notifications.next() == "READY=1"
        assert released_while_loading == [True]
        assert len(server.controller.config.vip("web").backends) == 2
