"""`sluice status|backend|reload|top` against a real admin server with a fake controller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluice.cli import main
from sluice.config import AdminOptions
from sluice.control.api import AdminServer, build_app
from tests.support.admin import TOKEN, FakeController, Reloader
from tests.support.loopback import free_port


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Path, FakeController, Reloader]]:
    fake, reloader = FakeController(), Reloader()
    admin = AdminServer(
        AdminOptions(listen=f"127.0.0.1:{free_port()}"),
        lambda unix: build_app(fake, token=TOKEN, over_unix=unix, reload=reloader),
    )
    await admin.start()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    try:
        yield f"http://127.0.0.1:{admin.port}", token, fake, reloader
    finally:
        await admin.close()


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_status_table(
    server: tuple[str, Path, FakeController, Reloader], capsys: pytest.CaptureFixture[str]
) -> None:
    api, _, _, _ = server
    assert await cli("status", "--api", api, "--sample", "0.05") == 0
    out = capsys.readouterr().out
    assert "127.0.0.1:9001" in out and "web" in out and "up" in out


async def test_backend_commands_need_the_token(
    server: tuple[str, Path, FakeController, Reloader], capsys: pytest.CaptureFixture[str]
) -> None:
    api, token, fake, _ = server
    assert await cli("backend", "drain", "web", "127.0.0.1:9001", "--api", api) == 2
    assert "bearer token" in capsys.readouterr().err
    assert (
        await cli("backend", "drain", "web", "127.0.0.1:9001", "--api", api, "--token-file", str(token)) == 0
    )
    assert "draining" in capsys.readouterr().out
    assert (
        await cli("backend", "weight", "web", "127.0.0.1:9002", "4", "--api", api, "--token-file", str(token))
        == 0
    )
    assert fake.weights["127.0.0.1:9002"] == 4
    assert (
        await cli("backend", "weight", "web", "127.0.0.1:9002", "--api", api, "--token-file", str(token)) == 2
    )
    assert (
        await cli("backend", "undrain", "web", "127.0.0.1:7", "--api", api, "--token-file", str(token)) == 2
    )
    assert "no backend" in capsys.readouterr().err


async def test_reload_reports_errors(
    server: tuple[str, Path, FakeController, Reloader], capsys: pytest.CaptureFixture[str]
) -> None:
    api, token, _, reloader = server
    assert await cli("reload", "--api", api, "--token-file", str(token)) == 0
    reloader.valid = False
    assert await cli("reload", "--api", api, "--token-file", str(token)) == 2
    assert "vips[0].listen" in capsys.readouterr().err


async def test_top_runs_bounded_and_unreachable_api_fails(
    server: tuple[str, Path, FakeController, Reloader], capsys: pytest.CaptureFixture[str]
) -> None:
    api, _, _, _ = server
    assert await cli("top", "--api", api, "--interval", "0.05", "--iterations", "2") == 0
    assert "127.0.0.1:9002" in capsys.readouterr().out
    assert await cli("status", "--api", f"http://127.0.0.1:{free_port()}", "--sample", "0") == 1
    assert "cannot reach" in capsys.readouterr().err
