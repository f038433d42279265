"""ProxyPlane picks the engine from the config: native for TCP and UDP when built (or asked), python otherwise."""

from __future__ import annotations

import socket

import pytest

from sluice.config import parse_config
from sluice.dataplane import engine
from sluice.dataplane.engine import NativeTcpListener, NativeUdpListener
from sluice.dataplane.proxy.plane import EngineUnavailable, ProxyPlane, describe_engine, resolve_engine
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
    ("top", "tcp_kind", "udp_kind"),
    [
        ({}, NativeTcpListener, NativeUdpListener),
        ({"engine": "native", "workers": 2}, NativeTcpListener, NativeUdpListener),
        ({"engine": "python"}, TcpListener, UdpListener),
    ],
)
async def test_tcp_and_udp_vips_run_on_the_chosen_engine(
    top: dict[str, object], tcp_kind: type, udp_kind: type
) -> None:
    require_engine()
    plane = ProxyPlane()
    config = parse_config(_config(**top))
    await plane.apply(config)
    try:
        listeners = {name: listener for name, (_, listener) in plane._listeners.items()}
        assert isinstance(listeners["web"], tcp_kind)
        assert isinstance(listeners["dns"], udp_kind)
        assert plane.engine == ("python" if tcp_kind is TcpListener else "native")
        if "workers" in top:
            assert isinstance(listeners["web"], NativeTcpListener)
            assert isinstance(listeners["dns"], NativeUdpListener)
            assert listeners["web"].workers == listeners["dns"].workers == top["workers"]
        if plane.engine == "native":
            assert describe_engine(config).startswith("TCP and UDP on the native engine (")
        else:
            assert describe_engine(config) == "TCP and UDP on the python engine"
    finally:
        await plane.close()


def test_the_extension_is_importable_here() -> None:
    require_engine()
    assert engine.AVAILABLE
