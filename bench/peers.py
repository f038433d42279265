"""The load balancers compared (and "direct": no LB at all), each pinned to the LB core.

Every peer proxies one VIP on 127.0.0.1 to one backend, with the same limits and timeouts:
connect 3 s, idle 350 s (TCP), 120 s (UDP); UDP request/response ends a session after one reply.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import proc
from sluice.config.vip import UdpOptions

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def _max_conn() -> int:
    """Same connection cap for every peer, within the fd hard limit (a proxied flow holds 2 fds, + splice pipes)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 100000 if hard == resource.RLIM_INFINITY else max(1000, min(100000, (hard - 1000) // 3))


MAX_CONN = _max_conn()
UDP_RCVBUF = UdpOptions().listen_receive_buffer
"""sluice's own listen receive buffer when ``udp.receive_buffer`` is unset (sized from its
max_queue_delay): the DNS scenarios give every peer this one (NGINX ``rcvbuf=``), the same job."""


@dataclass
class Running:
    """A started peer: where clients connect, and the process tree whose CPU is the LB's cost."""

    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    admin: Path | None = None  # sluice's admin API (Unix socket), when started with admin=True

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self) -> None:
        proc.stop(self.proc)


@dataclass(frozen=True)
class Job:
    """What a peer must do: listen on `port` and forward `proto` to the backend."""

    proto: str  # "tcp" | "udp"
    port: int
    backend_port: int
    tmp: Path
    udp_responses: int | None = None  # 1 = request/response (DNS-like), None = long-lived flow
    udp_rcvbuf: int | None = None  # bytes of the listen socket's receive buffer; None = the peer's default
    admin: Path | None = None  # sluice: its admin API on this Unix socket (for /metrics); None = none


def _haproxy_cfg(job: Job, tuned: bool) -> str:
    tune = "    tune.bufsize 131072\n    tune.maxrewrite 1024\n" if tuned else ""
    splice = "    option splice-auto\n" if tuned else ""
    return f"""global
    nbthread 1
    maxconn {MAX_CONN}
    pidfile {job.tmp}/haproxy.pid
{tune}
defaults
    mode tcp
    maxconn {MAX_CONN}
    timeout connect 3s
    timeout client 350s
    timeout server 350s
{splice}
frontend vip
    bind {proc.HOST}:{job.port}
    default_backend pool

backend pool
    server b1 {proc.HOST}:{job.backend_port}
"""


def _start_haproxy(job: Job, tuned: bool) -> subprocess.Popen[bytes]:
    name = "haproxy-splice" if tuned else "haproxy"
    cfg = job.tmp / f"{name}.cfg"
    cfg.write_text(_haproxy_cfg(job, tuned))
    # -db: foreground, no daemon, no master-worker: a single process is the whole LB.
    return _launch(["haproxy", "-db", "-f", str(cfg)], job, name)


def nginx_base(tmp: Path, name: str) -> str:
    return f"""daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {2 * MAX_CONN + 500};
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections {MAX_CONN}; }}
"""


def nginx_cmd(cfg: Path, tmp: Path) -> list[str]:
    return ["nginx", "-p", str(tmp), "-e", str(tmp / "nginx.startup.log"), "-c", str(cfg)]


def _start_nginx(job: Job) -> subprocess.Popen[bytes]:
    if job.proto == "tcp":
        server = f"""    server {{
        listen {proc.HOST}:{job.port} backlog=4096;
        proxy_pass {proc.HOST}:{job.backend_port};
        proxy_connect_timeout 3s;
        proxy_timeout 350s;
    }}"""
    else:
        responses = f"        proxy_responses {job.udp_responses};\n" if job.udp_responses else ""
        rcvbuf = f" rcvbuf={job.udp_rcvbuf}" if job.udp_rcvbuf else ""
        server = f"""    server {{
        listen {proc.HOST}:{job.port} udp{rcvbuf};
        proxy_pass {proc.HOST}:{job.backend_port};
        proxy_timeout 120s;
{responses}    }}"""
    cfg = job.tmp / "nginx-stream.conf"
    cfg.write_text(
        f"load_module {NGINX_STREAM_MODULE};\n"
        + nginx_base(job.tmp, "nginx-stream")
        + f"stream {{\n{server}\n}}\n"
    )
    return _launch(nginx_cmd(cfg, job.tmp), job, "nginx")


def sluice_bin() -> str:
    return str(Path(sys.executable).parent / "sluice")


def sluice_yaml(job: Job, engine: str = "native") -> str:
    """The bench VIP; `engine` native runs with one worker thread, like the other peers' one worker."""
    idle = "350s" if job.proto == "tcp" else "120s"
    udp_opts = [f"responses: {job.udp_responses}"] if job.udp_responses else []
    udp_opts += [f"receive_buffer: {job.udp_rcvbuf}"] if job.udp_rcvbuf else []
    udp = f"    udp: {{{', '.join(udp_opts)}}}\n" if job.proto == "udp" and udp_opts else ""
    admin = f"admin: {{listen: {job.admin}}}\n" if job.admin else ""
    limit = f"    max_connections: {MAX_CONN}\n" if job.proto == "tcp" else ""  # UDP: udp.max_sessions
    return f"""{admin}engine: {engine}
workers: 1
vips:
  - name: bench
    protocol: {job.proto}
    listen: {proc.HOST}:{job.port}
    scheduler: maglev
    backends:
      - address: {proc.HOST}:{job.backend_port}
    timeouts: {{connect: 3s, idle: {idle}}}
{limit}{udp}"""


def _start_sluice(job: Job, engine: str) -> subprocess.Popen[bytes]:
    cfg = job.tmp / f"sluice-{engine}.yaml"
    cfg.write_text(sluice_yaml(job, engine))
    return _launch([sluice_bin(), "run", str(cfg)], job, f"sluice-{engine}")


def _launch(cmd: list[str], job: Job, name: str) -> subprocess.Popen[bytes]:
    log = job.tmp / f"{name}.log"
    p = proc.spawn(cmd, proc.cores()[0], log)
    proc.wait_listening(p, job.port, job.proto, log, name)
    return p


Starter = Callable[[Job], subprocess.Popen[bytes] | None]

STARTERS: dict[str, Starter] = {
    "haproxy": lambda job: _start_haproxy(job, tuned=False),
    "haproxy-splice": lambda job: _start_haproxy(job, tuned=True),
    "nginx": _start_nginx,
    "sluice": lambda job: _start_sluice(job, "native"),
    "sluice-python": lambda job: _start_sluice(job, "python"),
    "direct": lambda job: None,
}

LABELS = {
    "haproxy": "HAProxy 2.6 (mode tcp, nbthread 1, defaults)",
    "haproxy-splice": "HAProxy 2.6 tuned (splice-auto, bufsize 128k)",
    "nginx": "NGINX stream (1 worker)",
    "sluice": "sluice, native engine (workers: 1)",
    "sluice-python": "sluice, python engine",
    "direct": "direct (no LB)",
}

TCP_PEERS = ("haproxy", "haproxy-splice", "nginx", "sluice", "sluice-python", "direct")
UDP_PEERS = ("nginx", "sluice", "sluice-python", "direct")


def start(
    name: str,
    proto: str,
    backend_port: int,
    tmp: Path,
    udp_responses: int | None = None,
    *,
    udp_rcvbuf: int | None = None,
    admin: bool = False,
) -> Running:
    """Start peer `name`; "direct" starts nothing and points clients straight at the backend.
    `admin`: a sluice peer also serves its admin API on a Unix socket in `tmp` (Running.admin)."""
    if name == "direct":
        return Running(name, backend_port)
    sock = tmp / f"{name}.admin.sock" if admin and name.startswith("sluice") else None
    job = Job(proto, proc.free_port(), backend_port, tmp, udp_responses, udp_rcvbuf, sock)
    return Running(name, job.port, STARTERS[name](job), sock)
