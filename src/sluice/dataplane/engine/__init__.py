"""The native engine: a C extension (`_engine`: epoll workers, the TCP full proxy) and its adapter.

`AVAILABLE` says whether the extension imported; without it the python engine (dataplane/proxy/)
serves every VIP.
"""

from __future__ import annotations

from sluice.dataplane.engine.listener import AVAILABLE, NativeTcpListener
from sluice.dataplane.engine.udp_listener import NativeUdpListener

__all__ = ["AVAILABLE", "NativeTcpListener", "NativeUdpListener"]
