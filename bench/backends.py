"""Backends, pinned to the generator core: nginx HTTP `return 200`, iperf3 -s, TCP/UDP echo, DNS-shaped answers."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench import peers, proc


def _start(cmd: list[str], port: int, proto: str, tmp: Path, name: str) -> subprocess.Popen[bytes]:
    log = tmp / f"{name}.log"
    p = proc.spawn(cmd, proc.cores()[1], log)
    proc.wait_listening(p, port, proto, log, name)
    return p


def http(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """nginx, 1 worker, a fixed 200 on every request; keep-alive without a request limit."""
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / f"http-{d}").mkdir(exist_ok=True)
    cfg = tmp / "nginx-http.conf"
    cfg.write_text(
        peers.nginx_base(tmp, "nginx-http")
        + f"""http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 100000000;
    keepalive_timeout 350s;
    client_body_temp_path {tmp}/http-client_body;
    proxy_temp_path {tmp}/http-proxy;
    fastcgi_temp_path {tmp}/http-fastcgi;
    uwsgi_temp_path {tmp}/http-uwsgi;
    scgi_temp_path {tmp}/http-scgi;
    server {{
        listen {proc.HOST}:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""
    )
    return _start(peers.nginx_cmd(cfg, tmp), port, "tcp", tmp, "nginx-http")


def iperf3(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """One-off iperf3 server (-1): a fresh one per round, so a failed test never wedges the next."""
    return _start(["iperf3", "-s", "-1", "-B", proc.HOST, "-p", str(port)], port, "tcp", tmp, "iperf3-s")


def echo(tmp: Path, port: int, proto: str) -> subprocess.Popen[bytes]:
    return _start(proc.python_module("bench.echo", proto, str(port)), port, proto, tmp, f"echo-{proto}")


def dns(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """A UDP server answering bench/dnsmsg.py queries with a DNS response (one A record)."""
    return _start(proc.python_module("bench.echo", "dns", str(port)), port, "udp", tmp, "echo-dns")
