"""What a valid config needs from this host, checked before anything starts: the admin token file
(readable, private, long enough), the dsr interfaces (they exist), the privileges XDP needs, the
commands DSR health checks need (``ip``, and ``tc`` for ipip), every flow log file (it can be
appended to), and every listen address (a socket of the same kind binds to it now). ``sluice check`` runs these
unless ``--offline``; ``sluice run`` runs them before it sets anything up.

Each error is one ``path: message`` line, like a config error. Nothing here keeps a socket open.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

from sluice.config import Config, Endpoint, native_engine_built
from sluice.control.token import TokenError, read_token

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39

_HINTS = {
    errno.EADDRINUSE: "another process holds it (to check the config of a running sluice: check --offline)",
    errno.EADDRNOTAVAIL: "no interface of this host has that address",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE",
}


def host_errors(config: Config) -> list[str]:
    """Every problem of running `config` on this host, or []."""
    return (
        _token_errors(config)
        + _dsr_errors(config)
        + _check_tool_errors(config)
        + _access_log_errors(config)
        + _listen_errors(config)
    )


def _token_errors(config: Config) -> list[str]:
    if config.admin is None or config.admin.token_file is None:
        return []
    try:
        read_token(config.admin.token_file)
    except TokenError as exc:
        return [f"admin.token_file: {exc}"]
    return []


def _effective_capabilities() -> int:
    """The process's effective capability bits; all set when /proc does not say (run will tell)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return -1
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return -1


def _dsr_errors(config: Config) -> list[str]:
    dsr = [(i, v) for i, v in enumerate(config.vips) if v.dsr is not None]
    errors = []
    for i, vip in dsr:
        assert vip.dsr is not None
        try:
            socket.if_nametoindex(vip.dsr.interface)
        except OSError:
            errors.append(
                f"vips[{i}].dsr.interface: no interface {vip.dsr.interface!r} on this host "
                "(`ip link` lists them)"
            )
    caps = _effective_capabilities() if dsr else 0
    bpf = 1 << CAP_BPF | 1 << CAP_SYS_ADMIN
    if dsr and not (caps >> CAP_NET_ADMIN & 1 and caps & bpf):
        errors.append(
            f"vips[{dsr[0][0]}].mode: dsr loads an XDP program: run as root (or with CAP_BPF and CAP_NET_ADMIN)"
        )
    return errors


def _check_tool_errors(config: Config) -> list[str]:
    """DSR checks through the VIP install policy routes with `ip`, and for ipip a tc program."""
    if not any(v.mode == "dsr" for v in config.vips):
        return []
    from sluice.dataplane.xdp.checkpath import steered  # only for dsr configs: check stays light

    errors = []
    for i, vip in enumerate(config.vips):
        if not steered(vip):
            continue
        assert vip.dsr is not None
        needed = ("ip", "tc") if vip.dsr.forwarding == "ipip" else ("ip",)
        missing = [tool for tool in needed if shutil.which(tool) is None]
        if missing:
            errors.append(
                f"vips[{i}].health: checks through the VIP need {' and '.join(missing)} "
                "(Debian: apt-get install iproute2)"
            )
    return errors


def _access_log_errors(config: Config) -> list[str]:
    """A flow log file must be appendable: the file if it exists, else its directory (nothing is created)."""
    errors = []
    for i, vip in enumerate(config.vips):
        if vip.access_log is None or vip.access_log.path == "stderr":
            continue
        path = Path(vip.access_log.path)
        if path.exists():
            ok = path.is_file() and os.access(path, os.W_OK)
            why = "is not a file sluice may append to"
        else:
            ok = path.parent.is_dir() and os.access(path.parent, os.W_OK | os.X_OK)
            why = f"cannot be created (the directory {path.parent} is missing or not writable)"
        if not ok:
            errors.append(f"vips[{i}].access_log.path: {path} {why}")
    return errors


def _bind_error(endpoint: Endpoint, kind: socket.SocketKind, reuse_port: bool) -> str | None:
    """Why a socket like the listener's cannot bind to `endpoint` now, or None."""
    family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((endpoint.host, endpoint.port))
        except OSError as exc:
            hint = _HINTS.get(exc.errno or 0)
            return f"{exc.strerror or exc}" + (f"; {hint}" if hint else "")
    return None


def _listen_errors(config: Config) -> list[str]:
    native = config.engine == "native" or (config.engine is None and native_engine_built())
    errors = []
    for i, vip in enumerate(config.vips):
        kind = socket.SOCK_STREAM if vip.protocol == "tcp" else socket.SOCK_DGRAM
        # the native engine's workers share the address (SO_REUSEPORT); the python engine's do not
        if vip.mode == "proxy" and (why := _bind_error(vip.listen, kind, native)) is not None:
            errors.append(f"vips[{i}].listen: cannot listen on {vip.protocol}/{vip.listen}: {why}")
    admin = config.admin
    if admin is not None and admin.endpoint is not None:
        if (why := _bind_error(admin.endpoint, socket.SOCK_STREAM, False)) is not None:
            errors.append(f"admin.listen: cannot listen on {admin.endpoint}: {why}")
    elif admin is not None and admin.unix_path is not None:
        parent = Path(admin.unix_path).parent
        if not parent.is_dir():
            errors.append(f"admin.listen: {admin.unix_path}: the directory {parent} does not exist")
        elif not os.access(parent, os.W_OK | os.X_OK):
            errors.append(f"admin.listen: {admin.unix_path}: cannot create a socket in {parent}")
    return errors
