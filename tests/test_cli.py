"""`sluice status|backend|reload|top|token` against a real admin server with a fake controller: how
the CLI finds its daemon (-c, environment, host:port), the token file rules, what the tables show."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sluice.cli import main
from sluice.config import AdminOptions, load_config
from sluice.config.model import DEFAULT_ADMIN_PORT
from sluice.control.api import AdminServer, build_app
from sluice.control.client import parse_api
from tests.support.admin import TOKEN, FakeController, Reloader
from tests.support.loopback import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LONG_V6 = "[2001:db8:1234:5678:9abc:def0:1234:5678]:65535"


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("SLUICE_CONFIG", "SLUICE_API", "SLUICE_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


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
    token.chmod(0o600)
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
    out = capsys.readouterr().out
    assert (
        out.startswith("reloaded (VIPs: web); changes:\n")
        and "  vip dns added (udp/127.0.0.1:5353, 2 backends)" in out
    )
    assert "drain (set at runtime) stays; a restart of sluice undoes it" in out
    assert await cli("reload", "--dry-run", "--api", api, "--token-file", str(token)) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run, nothing applied; a reload would change:\n") and "vip dns added" in out
    assert reloader.dry_runs == 1
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


def write_config(tmp_path: Path, api: str, token: Path | None) -> Path:
    port = api.rsplit(":", 1)[1]
    admin = f"{{listen: 127.0.0.1:{port}" + (f", token_file: {token}}}" if token else "}")
    path = tmp_path / "sluice.yaml"
    path.write_text(
        "vips:\n  - {name: web, listen: 127.0.0.1:8000, backends: [{address: 127.0.0.1:9001}]}\n"
        f"admin: {admin}\n"
    )
    return path


async def test_the_config_names_the_api_and_the_token_file(
    server: tuple[str, Path, FakeController, Reloader],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, token, fake, _ = server
    config = write_config(tmp_path, api, token)
    assert await cli("status", "-c", str(config), "--sample", "0") == 0
    assert "127.0.0.1:9001" in capsys.readouterr().out
    assert await cli("backend", "drain", "web", "127.0.0.1:9001", "-c", str(config)) == 0
    assert fake.states["127.0.0.1:9001"] == "draining"
    monkeypatch.setenv("SLUICE_CONFIG", str(config))  # the environment instead of -c
    assert await cli("backend", "undrain", "web", "127.0.0.1:9001") == 0
    assert fake.states["127.0.0.1:9001"] == "up"
    monkeypatch.delenv("SLUICE_CONFIG")
    host_port = api.removeprefix("http://")  # host:port without a scheme is TCP
    monkeypatch.setenv("SLUICE_API", host_port)
    monkeypatch.setenv("SLUICE_TOKEN_FILE", str(token))
    assert await cli("backend", "maintenance", "web", "127.0.0.1:9002") == 0
    assert fake.states["127.0.0.1:9002"] == "maintenance"
    assert await cli("status", "--api", host_port, "--sample", "0") == 0


async def test_a_config_without_admin_block_or_a_bad_api_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bare.yaml"
    path.write_text("vips:\n  - {name: web, listen: 127.0.0.1:8000, backends: [{address: 127.0.0.1:9001}]}\n")
    assert await cli("status", "-c", str(path)) == 2
    assert f"{path} has no admin: block" in capsys.readouterr().err
    path.write_text("vips: [")
    assert await cli("status", "-c", str(path)) == 2
    assert f"{path}: invalid" in capsys.readouterr().err
    assert await cli("status", "--api", "admin.sock") == 2
    err = capsys.readouterr().err
    assert "expected host:port" in err and "./admin.sock" in err


async def test_a_token_file_others_may_read_is_refused_before_any_request(
    server: tuple[str, Path, FakeController, Reloader], capsys: pytest.CaptureFixture[str]
) -> None:
    api, token, fake, reloader = server
    token.chmod(0o644)
    assert (
        await cli("backend", "drain", "web", "127.0.0.1:9001", "--api", api, "--token-file", str(token)) == 2
    )
    assert f"chmod 600 {token}" in capsys.readouterr().err
    assert await cli("reload", "--api", api, "--token-file", str(token)) == 2
    assert fake.calls == [] and reloader.count == 0


async def test_sluice_token_writes_a_private_file_and_never_overwrites_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "token"
    assert await cli("token", str(path)) == 0
    assert f"wrote a new admin token to {path} (mode 0600)" in capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert await cli("token", str(path)) == 2
    assert "--force" in capsys.readouterr().err and path.read_text() == first
    assert await cli("token", "--force", str(path)) == 0
    assert path.read_text() != first and stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("columns", ["80", "200"])
async def test_status_shows_the_header_since_latency_and_bytes(
    server: tuple[str, Path, FakeController, Reloader],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    columns: str,
) -> None:
    """Also on an 80-column terminal, where the rates and counters give way first."""
    api, _, _, _ = server
    monkeypatch.setenv("COLUMNS", columns)
    assert await cli("status", "--api", api, "--sample", "0") == 0
    out = capsys.readouterr().out
    assert "sluice 9.9.9, up 1h02m, no reload since start" in out
    assert "web  tcp/127.0.0.1:8000" in out
    for column in ("since", "bytes in/out", "last check"):
        assert column in out
    row = next(line for line in out.splitlines() if "127.0.0.1:9001" in line)
    assert "3s" in row and "1/2" in row and "connected 1.0ms" in row


@pytest.mark.parametrize("columns", ["40", "80", "120"])
async def test_status_and_top_never_cut_an_address(
    server: tuple[str, Path, FakeController, Reloader],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    columns: str,
) -> None:
    api, _, fake, _ = server
    fake.states[LONG_V6], fake.weights[LONG_V6] = "up", 1
    monkeypatch.setenv("COLUMNS", columns)
    assert await cli("status", "--api", api, "--sample", "0") == 0
    out = capsys.readouterr().out
    assert LONG_V6 in out and "127.0.0.1:9002" in out and "…" not in out
    assert await cli("top", "--api", api, "--interval", "0.01", "--iterations", "1") == 0
    out = capsys.readouterr().out
    assert LONG_V6 in out and "…" not in out


def test_every_example_has_an_admin_block_and_the_default_port_is_not_prometheus() -> None:
    assert DEFAULT_ADMIN_PORT != 9090 and AdminOptions().listen == f"127.0.0.1:{DEFAULT_ADMIN_PORT}"
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert examples
    for path in examples:
        config = load_config(path)
        assert config.admin is not None, path
    assert load_config(EXAMPLES / "tcp.yaml").admin == AdminOptions()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7667", "http://127.0.0.1:7667"),
        ("[::1]:7667", "http://[::1]:7667"),
        ("lb1.example:7667", "http://lb1.example:7667"),
        ("http://127.0.0.1:7667", "http://127.0.0.1:7667"),
        ("/run/sluice/admin.sock", "/run/sluice/admin.sock"),
        ("./admin.sock", "./admin.sock"),
    ],
)
def test_api_addresses_host_port_is_tcp_and_a_path_is_a_socket(text: str, expected: str) -> None:
    assert parse_api(text) == expected


@pytest.mark.parametrize(
    "text", ["admin.sock", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:", "http://:80", "http://h:x"]
)
def test_api_addresses_that_are_neither_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text).replace("[", r"\[")):
        parse_api(text)
