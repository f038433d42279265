"""ProxyPlane picks the engine from the config: native for TCP when built (or asked), python otherwise."""

from __future__ import annotations

import socket

import pytest

from sluice.config import parse_config
from sluice.dataplane import engine
from sluice.dataplane.engine import NativeTcpListener
from sluice.dataplane.proxy.plane import EngineUnavailable, ProxyPlane, resolve_engine
from sluice.dataplane.proxy.tcp import TcpListener
from sluice.dataplane.proxy.udp import UdpListener
from tests.dataplane.engine.lbproc import require_engine
from tests.support.loopback import free_port


def test_resolve_engine_follows_the_config_and_the_extension() -> None:
    assert resolve_engine(None, native_available=True) == "native"
    assert resolve_engine(None, native_available=False) == "python"
    assert resolve_engine("python", native_available=True) == "python"
    assert resolve_engine("native", native_available=True) == "native"
    with pytest.raises(EngineUnavailable, match="not built"):
        resolve_engine("native", native_available=False)


def _config(**top: object) -> dict[str, object]:
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    vips = [
        {"name": "web", "listen": f"127.0.0.1:{tcp}", "backends": [{"address": "127.0.0.1:9"}]},
        {
            "name": "dns",
            "protocol": "udp",
            "listen": f"127.0.0.1:{udp}",
            "backends": [{"address": "127.0.0.1:9"}],
        },
    ]
    return {**top, "vips": vips}


@pytest.mark.parametrize(
    ("top", "tcp_kind"),
    [
        ({}, NativeTcpListener),
        ({"engine": "native", "workers": 2}, NativeTcpListener),
        ({"engine": "python"}, TcpListener),
    ],
)
async def test_tcp_vips_run_on_the_chosen_engine_udp_on_python(
    top: dict[str, object], tcp_kind: type
) -> None:
    require_engine()
    plane = ProxyPlane()
    await plane.apply(parse_config(_config(**top)))
    try:
        listeners = {name: listener for name, (_, listener) in plane._listeners.items()}
        assert isinstance(listeners["web"], tcp_kind)
        assert isinstance(listeners["dns"], UdpListener)
        assert plane.engine == ("python" if tcp_kind is TcpListener else "native")
        if "workers" in top:
            assert isinstance(listeners["web"], NativeTcpListener)
            assert listeners["web"].workers == top["workers"]
    finally:
        await plane.close()


def test_the_extension_is_importable_here() -> None:
    require_engine()
    assert engine.AVAILABLE
