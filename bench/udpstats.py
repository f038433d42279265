"""UDP counters of the current network namespace (/proc/net/*) and of a sluice peer (its /metrics).

/proc/net is the reading thread's namespace: inside the flood lab these are the lab's figures.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from pathlib import Path

PROC_NET = Path("/proc/net")


def parse_socket_drops(text: str, ports: set[int]) -> int:
    """Sum of the `drops` column of the sockets bound to one of `ports` (a /proc/net/udp{,6} text)."""
    total = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 13 or ":" not in fields[1]:
            continue
        if int(fields[1].rsplit(":", 1)[1], 16) in ports:
            total += int(fields[-1])
    return total


def socket_drops(ports: Iterable[int]) -> int:
    """Datagrams the kernel dropped at the UDP sockets bound to `ports` (full receive buffer, mostly)."""
    wanted = set(ports)
    total = 0
    for name in ("udp", "udp6"):
        try:
            total += parse_socket_drops((PROC_NET / name).read_text(), wanted)
        except OSError:
            continue
    return total


def parse_snmp_udp(text: str) -> dict[str, int]:
    """The ``Udp:`` counters of a /proc/net/snmp text (InDatagrams, NoPorts, RcvbufErrors, ...)."""
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    return {k: int(v) for k, v in zip(rows[0], rows[1], strict=True)}


def snmp_udp() -> dict[str, int]:
    return parse_snmp_udp((PROC_NET / "snmp").read_text())


def tx_packets(dev: str) -> int:
    """Packets `dev` sent (/proc/net/dev, the current namespace's devices)."""
    for line in (PROC_NET / "dev").read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == dev:
            return int(rest.split()[9])
    raise KeyError(f"no device {dev} in /proc/net/dev")


_SAMPLE = re.compile(r"^(sluice_\w+?)(?:_total)?\{([^}]*)\}\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text: str, vip: str) -> dict[str, float]:
    """The counters of VIP `vip` in a Prometheus text: ``dropped.<reason>``, ``refused.<reason>``,
    ``closed.<reason>``, ``evictions``, ``flows`` (the per-backend series are left out)."""
    out: dict[str, float] = {}
    names = {
        "sluice_vip_dropped": "dropped",
        "sluice_vip_refused_flows": "refused",
        "sluice_vip_closed_flows": "closed",
        "sluice_vip_session_evictions": "evictions",
        "sluice_vip_flows": "flows",
    }
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group(1) not in names:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        if labels.get("vip") != vip or "backend" in labels:
            continue
        key = names[m.group(1)] + (f".{labels['reason']}" if "reason" in labels else "")
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def scrape(path: Path, timeout: float = 5.0) -> str:
    """GET /metrics from an admin API on the Unix socket `path` (HTTP/1.0: the server closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: sluice\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise RuntimeError(f"/metrics on {path}: {head[:80]!r}")
    return body.decode()


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """after - before per key, keys of either side (a counter absent before was 0)."""
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in sorted(set(after) | set(before))}
