"""`sluice run` startup failures (issue 13): one line naming what failed, exit 2, no traceback, and
what startup had set up released again (listeners, attached XDP programs, pinned maps).

The host checks catch most failures before anything starts; to reach the setup path itself, the
in-process tests run `Server` with an empty preflight (a failure that comes after the checks, as when
another process takes a port between the two)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.dataplane.xdp import loader
from sluice.lab.netns import Namespace
from sluice.server import Server, StartupError
from tests.support.loopback import free_port
from tests.support.privileged import needs

pytestmark = pytest.mark.timeout(120)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def vip(name: str, port: int) -> str:
    return f"  - name: {name}\n    listen: 127.0.0.1:{port}\n    backends: [{{address: 127.0.0.1:9}}]\n"


@pytest.fixture
def held() -> Iterator[int]:
    """A port of 127.0.0.1 another socket listens on for the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def sluice_run(config: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    argv = [*prefix, sys.executable, "-m", "sluice", "run", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_run_with_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, held: int) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text("vips:\n" + vip("web", held))
    proc = sluice_run(config)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"sluice run: cannot start: vips[0].listen: cannot listen on tcp/127.0.0.1:{held}: Address already "
        "in use; another process holds it (to check the config of a running sluice: check --offline)"
    ]


async def test_a_listener_that_fails_after_the_checks_is_named_and_the_others_close(
    tmp_path: Path, held: int
) -> None:
    first = free_port()
    config = tmp_path / "sluice.yaml"
    config.write_text("engine: python\nvips:\n" + vip("a", first) + vip("b", held))
    server = Server(config, preflight=lambda _: [])
    with pytest.raises(StartupError) as info:
        await server.startup()
    assert info.value.errors == [
        f"starting the data planes: vip b: cannot listen on tcp/127.0.0.1:{held}: Address already in use"
    ]
    assert bindable(first)  # vip a's listener is closed again
    assert server.controller is None and server.admin is None


async def test_an_admin_api_that_cannot_listen_is_named_and_the_vips_close(tmp_path: Path, held: int) -> None:
    vip_port = free_port()
    config = tmp_path / "sluice.yaml"
    config.write_text(f"engine: python\nadmin: {{listen: 127.0.0.1:{held}}}\nvips:\n" + vip("a", vip_port))
    with pytest.raises(StartupError) as info:
        await Server(config, preflight=lambda _: []).startup()
    (line,) = info.value.errors
    assert line.startswith(f"admin API on 127.0.0.1:{held}: ") and "Address already in use" in line
    assert bindable(vip_port)


def test_run_with_a_missing_dsr_interface_pins_nothing(tmp_path: Path) -> None:
    instance = f"test-startup-{os.getpid()}"
    config = tmp_path / "sluice.yaml"
    config.write_text(
        f"instance: {instance}\nvips:\n  - name: edge\n    listen: 198.18.100.1:80\n    mode: dsr\n"
        "    dsr: {interface: nosuch-if0}\n    backends: [{address: 198.18.1.11:80}]\n"
    )
    proc = sluice_run(config)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        "sluice run: cannot start: vips[0].dsr.interface: no interface 'nosuch-if0' on this host "
        "(`ip link` lists them)" in proc.stderr.splitlines()
    )
    assert not loader.pin_dir(instance).exists()


STARTUP = """
import asyncio, socket, sys
from pathlib import Path
from sluice.server import Server, StartupError

held = socket.socket()
held.bind(("127.0.0.1", 0))  # the proxy VIP's port, taken: the start fails after the XDP plane is up
held.listen()
path = Path(sys.argv[1])
path.write_text(sys.argv[2].replace("PORT", str(held.getsockname()[1])))

async def main() -> int:
    try:
        await Server(path, preflight=lambda _: []).startup()
    except StartupError as exc:
        print("\\n".join(exc.errors))
        return 2
    return 0

sys.exit(asyncio.run(main()))
"""


@pytest.mark.parametrize(
    ("interface", "expected"),
    [
        ("d0", "starting the data planes: vip web: cannot listen on tcp/127.0.0.1:"),
        ("nosuch-if0", "starting the data planes: interface 'nosuch-if0': "),
    ],
)
def test_a_failed_start_detaches_xdp_and_removes_its_pins(
    tmp_path: Path, interface: str, expected: str
) -> None:
    """A real XDP program on a veth of the test's own namespace (entered with nsenter, so
    the pins go to the host's bpffs, where they would outlive the process)."""
    needs(root=True, commands=("ip", "nsenter", "clang"))
    instance = f"test-startup-{os.getpid()}-{interface}"
    config = textwrap.dedent(
        f"""\
        engine: python
        instance: {instance}
        vips:
          - name: edge
            listen: 198.18.100.1:80
            mode: dsr
            dsr: {{interface: {interface}, attach: generic}}
            backends: [{{address: 198.18.1.11:80}}]
          - name: web
            listen: 127.0.0.1:PORT
            backends: [{{address: 127.0.0.1:9}}]
        """
    )
    loader.remove_pins(instance)
    with Namespace.create(f"start{interface[:2]}") as ns:
        ns.run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        ns.run("ip", "link", "set", "d1", "up")
        ns.run("ip", "link", "set", "d0", "up")
        ns.run(
            "ip",
            "neigh",
            "add",
            "198.18.1.11",
            "lladdr",
            "02:00:00:00:01:11",
            "dev",
            "d0",
            "nud",
            "permanent",
        )
        proc = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{ns.name}",
                sys.executable,
                "-c",
                STARTUP,
                str(tmp_path / "s.yaml"),
                config,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, "PYTHONPATH": SRC},
            check=False,
        )
        link = ns.run("ip", "link", "show", "d0").stdout
    try:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stdout.startswith(expected), proc.stdout + proc.stderr
        assert "xdp" not in link, link
        assert not loader.pin_dir(instance).exists()
    finally:
        loader.remove_pins(instance)
