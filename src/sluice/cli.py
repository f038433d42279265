"""The `sluice` command. The only place that turns errors into exit codes.

Exit codes: 0 ok, 1 runtime failure, 2 invalid input (config, arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sluice import __version__
from sluice.config import ConfigError, Endpoint, config_json_schema, load_config

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(
            f"{args.config}: invalid ({len(exc.errors)} error{'s' if len(exc.errors) > 1 else ''})",
            file=sys.stderr,
        )
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.config}: ok, {len(config.vips)} VIP(s): " + ", ".join(v.name for v in config.vips))
    return EXIT_OK


def _cmd_schema(_: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2))
    return EXIT_OK


def _cmd_flow(args: argparse.Namespace) -> int:
    from sluice.control.flowquery import FlowQueryError, explain_flow

    try:
        config = load_config(args.config)
        source = Endpoint.parse(args.source)
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
    from sluice.server import run, setup_logging

    setup_logging(args.log_format)
    try:
        run(Path(args.config))
    except ConfigError as exc:
        print(f"{args.config}: invalid", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="sluice: a Layer 4 load balancer")
    parser.add_argument("--version", action="version", version=f"sluice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the load balancer in the foreground")
    p.add_argument("config")
    p.add_argument("--log-format", choices=("plain", "json"), default="plain")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="validate a config file (exit 0 valid, 2 invalid)")
    p.add_argument("config")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("schema", help="print the JSON Schema of the config")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("flow", help="which backend a flow goes to")
    p.add_argument("config")
    p.add_argument("vip", help="VIP name")
    p.add_argument(
        "source", metavar="SRC_IP:SRC_PORT", help="client address, e.g. 10.0.0.7:40000 or [::1]:5000"
    )
    p.set_defaults(func=_cmd_flow)

    p = sub.add_parser("demo", help="run a self-contained demo: 3 backends, a TCP and a UDP VIP, live table")
    p.add_argument("--connections", type=int, default=3000, help="TCP connections to drive (default 3000)")
    p.add_argument("--no-live", action="store_true", help="no live table, only the summary")
    p.set_defaults(func=_cmd_demo)
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
