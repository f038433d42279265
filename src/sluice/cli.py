"""The `sluice` command. The only place that turns errors into exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 invalid input (config, arguments).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sluice import __version__
from sluice.config import ConfigError, Endpoint, config_json_schema, load_config

if TYPE_CHECKING:
    from sluice.control.client import ApiClient

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def _print_invalid(path: str, errors: list[str]) -> None:
    print(f"{path}: invalid ({len(errors)} error{'s' if len(errors) > 1 else ''})", file=sys.stderr)
    for line in errors:
        print(f"  {line}", file=sys.stderr)


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_invalid(args.config, exc.errors)
        return EXIT_INVALID
    if not args.offline:
        from sluice.control.preflight import host_errors

        if errors := host_errors(config):
            _print_invalid(args.config, errors)
            return EXIT_INVALID
    names = ", ".join(v.name for v in config.vips)
    offline = " (offline: the host was not checked)" if args.offline else ""
    print(f"{args.config}: ok, {len(config.vips)} VIP(s): {names}{offline}")
    return EXIT_OK


def _cmd_schema(_: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2))
    return EXIT_OK


def _cmd_flow(args: argparse.Namespace) -> int:
    from sluice.control.flowquery import FlowQueryError, explain_flow, explain_quic_cid

    try:
        config = load_config(args.config)
        source = Endpoint.parse(args.source) if args.source is not None else None
        if args.quic_cid is not None:
            answer = explain_quic_cid(config, args.vip, args.quic_cid, source)
        elif source is None:
            raise FlowQueryError("give SRC_IP:SRC_PORT (or --quic-cid HEX for a QUIC VIP)")
        else:
            answer = explain_flow(config, args.vip, source)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_INVALID
    except (ValueError, FlowQueryError) as exc:
        print(f"sluice flow: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(answer)
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from sluice.control.logs import setup_logging
    from sluice.server import StartupError, run

    setup_logging(args.log_format, args.log_level)
    try:
        run(Path(args.config))
    except ConfigError as exc:
        _print_invalid(args.config, exc.errors)
        return EXIT_INVALID
    except StartupError as exc:
        for line in exc.errors:
            print(f"sluice run: cannot start: {line}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"sluice run: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from sluice.demo import run_demo

    try:
        return EXIT_OK if run_demo(connections=args.connections, live=not args.no_live) else EXIT_FAILURE
    except OSError as exc:
        print(f"sluice demo: {exc}", file=sys.stderr)
        return EXIT_FAILURE


class _ApiArgsError(Exception):
    pass


API_ENV: Final = ("SLUICE_CONFIG", "SLUICE_API", "SLUICE_TOKEN_FILE")
"""Environment variables the API commands read when -c, --api or --token-file is not given."""


def _api_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The API address and token file of an API command: each from its option, else its environment
    variable, else the admin block of the config (-c / SLUICE_CONFIG), else the default address and
    no token file."""
    from sluice.control.client import DEFAULT_API

    api = args.api or os.environ.get("SLUICE_API") or None
    token_file = args.token_file or os.environ.get("SLUICE_TOKEN_FILE") or None
    config_path = args.config or os.environ.get("SLUICE_CONFIG") or None
    if config_path is not None and (api is None or token_file is None):
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            raise _ApiArgsError(f"{config_path}: invalid\n  " + "\n  ".join(exc.errors)) from None
        if config.admin is None:
            raise _ApiArgsError(
                f"{config_path} has no admin: block, so sluice runs no admin API for it; add one, "
                "e.g. admin: {listen: 127.0.0.1:7667, token_file: /etc/sluice/token}, and restart sluice"
            )
        api = api or config.admin.listen
        token_file = token_file or config.admin.token_file
    return api or DEFAULT_API, token_file


def _api_client(args: argparse.Namespace, *, changes: bool) -> ApiClient:
    """A client for the daemon `_api_target` finds; `changes`: with the token (refused when its file
    is shared with group or others), else without (reads need none)."""
    from sluice.control.client import ApiClient, read_token_file

    api, token_file = _api_target(args)
    token = None
    if changes:
        try:
            token = read_token_file(token_file)
        except (OSError, IndexError) as exc:
            raise _ApiArgsError(f"token file: {exc}") from None
    try:
        return ApiClient(api, token)
    except ValueError as exc:
        raise _ApiArgsError(f"--api {exc}") from None


def _api_command(
    func: Callable[[argparse.Namespace, ApiClient], int], *, changes: bool = False
) -> Callable[[argparse.Namespace], int]:
    """Wraps an API subcommand: API errors -> message and exit code (4xx invalid, else failure)."""

    def run(args: argparse.Namespace) -> int:
        from sluice.control.client import ApiError

        try:
            return func(args, _api_client(args, changes=changes))
        except _ApiArgsError as exc:
            print(f"sluice {args.command}: {exc}", file=sys.stderr)
            return EXIT_INVALID
        except ApiError as exc:
            print(f"sluice {args.command}: {exc.message}", file=sys.stderr)
            return EXIT_INVALID if 400 <= exc.status < 500 else EXIT_FAILURE

    return run


def _header(client: ApiClient) -> str:
    from sluice.control.client import status_header

    return status_header(client.server_info(), time.time())


def _cmd_status(args: argparse.Namespace, client: ApiClient) -> int:
    from rich.console import Console

    from sluice.control.client import status_view, widen_to_fit

    before = client.vips() if args.sample > 0 else None
    if before is not None:
        time.sleep(args.sample)
    vips = client.vips()
    if args.json:
        print(json.dumps({"server": client.server_info(), "vips": vips}, indent=1))
    else:
        console = Console()
        view = status_view(vips, before, args.sample, header=_header(client), width=console.width)
        widen_to_fit(console, view)
        console.print(view)
    return EXIT_OK


def _cmd_backend(args: argparse.Namespace, client: ApiClient) -> int:
    if args.action == "weight" and args.weight is None:
        print(
            "sluice backend weight: give the weight, e.g. sluice backend weight web 10.0.0.1:80 5",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if args.action != "weight" and args.weight is not None:
        print(f"sluice backend {args.action}: takes no weight", file=sys.stderr)
        return EXIT_INVALID
    try:
        address = str(Endpoint.parse(args.address))
    except ValueError as exc:
        print(f"sluice backend: {exc}", file=sys.stderr)
        return EXIT_INVALID
    result = client.backend_action(args.vip, address, args.action, args.weight)
    print(f"{args.vip} {address}: {result.get('state', '?')}, weight {result.get('weight', '?')}")
    print("  (runtime state: a reload keeps it, a restart of sluice undoes it)")
    return EXIT_OK


def _cmd_reload(args: argparse.Namespace, client: ApiClient) -> int:
    result = client.reload(dry_run=args.dry_run)
    lines: list[str] = result.get("lines", [])
    if args.dry_run:
        print("dry run, nothing applied; a reload would " + ("change:" if lines else "change nothing"))
    else:
        print(
            f"reloaded (VIPs: {', '.join(result.get('vips', []))}); " + ("changes:" if lines else "no change")
        )
    for line in lines:
        print(f"  {line}")
    for line in result.get("runtime", []):
        print(f"  {line}")
    return EXIT_OK


def _cmd_top(args: argparse.Namespace, client: ApiClient) -> int:
    from rich.console import Console
    from rich.live import Live

    from sluice.control.client import status_view, widen_to_fit

    console = Console()
    terminal = console.width
    before = client.vips()
    stamp = time.monotonic()
    view = status_view(before, header=_header(client), width=terminal)
    widen_to_fit(console, view)
    with Live(view, console=console, refresh_per_second=4, screen=False) as live:
        for _ in range(args.iterations) if args.iterations else itertools.count():
            time.sleep(args.interval)
            vips = client.vips()
            now = time.monotonic()
            view = status_view(vips, before, now - stamp, header=_header(client), width=terminal)
            widen_to_fit(console, view)
            live.update(view)
            before, stamp = vips, now
    return EXIT_OK


def _cmd_token(args: argparse.Namespace) -> int:
    from sluice.control.token import TokenError, TokenExists, write_token

    try:
        write_token(args.path, force=args.force)
    except TokenExists as exc:
        print(f"sluice token: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except TokenError as exc:
        print(f"sluice token: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote a new admin token to {args.path} (mode 0600)")
    print(f"  config: admin: {{listen: ..., token_file: {args.path}}}  (read at start: restart sluice)")
    return EXIT_OK


def _cmd_lab(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from sluice.lab import anycast
    from sluice.lab.netns import LabError

    if os.geteuid() != 0:
        print("sluice lab: needs root (network namespaces, XDP, BGP)", file=sys.stderr)
        return EXIT_FAILURE
    workdir = Path(args.workdir)
    try:
        if args.action == "up":
            lab = anycast.lab_up(workdir)
            print(f"anycast lab up: VIP {anycast.VIP} announced by {', '.join(n.name for n in lab.nodes)}")
            print(f"  router next hops: {', '.join(sorted(lab.next_hops()))}")
            print(f"  try: ip netns exec {anycast.CLI_PREFIX}client curl -s http://{anycast.VIP}/")
            print(f"  node APIs: sluice status --api {lab.nodes[0].api_socket}  (logs in {workdir})")
        elif args.action == "down":
            removed = anycast.lab_down(workdir)
            print(f"anycast lab down: removed {len(removed)} item(s)")
        else:
            status = anycast.lab_status(workdir)
            if args.json:
                print(json.dumps(status, indent=1))
            elif not status["up"]:
                print("anycast lab: down")
            else:
                print(f"anycast lab: up, VIP {status['vip']}")
                for name, proc in status.get("processes", {}).items():
                    print(f"  {name:<12} pid {proc['pid']:<8} {'running' if proc['alive'] else 'GONE'}")
                print(f"  router: {status['router_route'] or 'no route to the VIP'}")
                print("  " + status["router_bgp"].replace("\n", "\n  "))
            return EXIT_OK if status["up"] else EXIT_FAILURE
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        print(f"sluice lab {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _add_api_options(p: argparse.ArgumentParser) -> None:
    from sluice.control.client import DEFAULT_API

    p.add_argument(
        "-c",
        "--config",
        help="the daemon's config file: --api and --token-file come from its admin block (env SLUICE_CONFIG)",
    )
    p.add_argument(
        "--api",
        help="admin API: host:port, http://host:port, or a Unix socket path with a / "
        f"(env SLUICE_API; default: the config's admin.listen, else {DEFAULT_API})",
    )
    p.add_argument(
        "--token-file",
        help="file holding the admin bearer token, mode 0600; needed for changes over TCP "
        "(env SLUICE_TOKEN_FILE; default: the config's admin.token_file)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="sluice: a Layer 4 load balancer")
    parser.add_argument("--version", action="version", version=f"sluice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the load balancer in the foreground")
    p.add_argument("config")
    p.add_argument("--log-format", choices=("plain", "json"), default="plain", help="sluice's own log")
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="least severe logged",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "check", help="validate a config file and what it needs from this host (exit 0 valid, 2 invalid)"
    )
    p.add_argument("config")
    p.add_argument(
        "--offline",
        action="store_true",
        help="the file only: skip the host checks (token file, interfaces, privileges, listen addresses)",
    )
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("schema", help="print the JSON Schema of the config")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("flow", help="which backend a flow goes to")
    p.add_argument("config")
    p.add_argument("vip", help="VIP name")
    p.add_argument(
        "source",
        metavar="SRC_IP:SRC_PORT",
        nargs="?",
        help="client address, e.g. 10.0.0.7:40000 or [::1]:5000",
    )
    p.add_argument(
        "--quic-cid",
        metavar="HEX",
        help="QUIC VIP: the destination connection ID of a short-header packet (where its server ID goes)",
    )
    p.set_defaults(func=_cmd_flow)

    p = sub.add_parser("demo", help="run a self-contained demo: 3 backends, a TCP and a UDP VIP, live table")
    p.add_argument("--connections", type=int, default=3000, help="TCP connections to drive (default 3000)")
    p.add_argument("--no-live", action="store_true", help="no live table, only the summary")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("status", help="VIPs, backends, health state, active flows and rates (admin API)")
    _add_api_options(p)
    p.add_argument(
        "--sample",
        type=float,
        default=0.5,
        help="seconds between the two reads rates come from (0: no rates)",
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    p.set_defaults(func=_api_command(_cmd_status))

    p = sub.add_parser("backend", help="drain, undrain, maintenance or re-weight one backend (admin API)")
    p.add_argument("action", choices=("drain", "undrain", "maintenance", "weight"))
    p.add_argument("vip", help="VIP name")
    p.add_argument("address", metavar="ADDR", help="backend address, e.g. 10.0.0.1:80")
    p.add_argument("weight", nargs="?", type=int, help="weight: 0..65535")
    _add_api_options(p)
    p.set_defaults(func=_api_command(_cmd_backend, changes=True))

    p = sub.add_parser(
        "reload", help="have the daemon re-read its config file and apply the difference (admin API)"
    )
    _add_api_options(p)
    p.add_argument("--dry-run", action="store_true", help="print what the reload would change; apply nothing")
    p.set_defaults(func=_api_command(_cmd_reload, changes=True))

    p = sub.add_parser("top", help="live view, refreshed every second (admin API)")
    _add_api_options(p)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--iterations", type=int, default=0, help="stop after N refreshes (0: until Ctrl-C)")
    p.set_defaults(func=_api_command(_cmd_top))

    p = sub.add_parser("token", help="write a fresh random admin token to a new file (mode 0600)")
    p.add_argument("path", metavar="PATH", help="the token file to create, e.g. /etc/sluice/token")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p.set_defaults(func=_cmd_token)

    p = sub.add_parser("lab", help="network-namespace lab: up, down or status (root)")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--topology", choices=("anycast",), default="anycast", help="which lab (default anycast)")
    p.add_argument("--workdir", default="/run/sluice-lab/anycast", help="configs, logs and state of the lab")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.set_defaults(func=_cmd_lab)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
