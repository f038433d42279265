"""Backend side of ``forwarding: ipip``: attach the decap XDP program (bpf/sluice_decap.bpf.c).

This kernel build has no ipip/ip6_tunnel module, so backends strip the outer header in XDP and pass
the inner packet up. ``sluice_pass`` (bpf/sluice_pass.bpf.c) is an XDP_PASS stub for the peer of a
veth that an XDP_TX must be delivered through (native veth XDP needs a program on the peer).

An XDP attachment outlives the process that made it, so a one-shot command is enough::

    python -m sluice.dataplane.xdp.decap attach eth0 [--program sluice_pass] [--pin DIR]
    python -m sluice.dataplane.xdp.decap detach eth0
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from sluice.dataplane.xdp import build, loader

SOURCES: Final = {"sluice_decap": "sluice_decap.bpf.c", "sluice_pass": "sluice_pass.bpf.c"}
PROGRAMS: Final = tuple(SOURCES)


def attach(
    ifname: str,
    program: str = "sluice_decap",
    *,
    mode: loader.AttachMode = "native",
    pins: Path | None = None,
    cache_dir: Path | None = None,
) -> loader.AttachMode:
    """Attach `program` to `ifname` (in this process's network namespace); returns the mode used."""
    if program not in PROGRAMS:
        raise ValueError(f"unknown program {program!r}, expected one of {PROGRAMS}")
    path = build.compile_object(SOURCES[program], {}, cache_dir)
    obj = loader.load_object(path, (program,), pins=pins)
    try:
        return loader.attach_xdp(socket.if_nametoindex(ifname), obj.programs[program], mode)
    finally:
        obj.close()  # the attachment keeps the program alive


def detach(ifname: str) -> None:
    ifindex = socket.if_nametoindex(ifname)
    modes: tuple[loader.AttachMode, ...] = ("native", "generic")
    for mode in modes:
        if loader.xdp_attached_id(ifindex, mode):
            loader.detach_xdp(ifindex, mode)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sluice.dataplane.xdp.decap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("attach", "detach"))
    parser.add_argument("ifname")
    parser.add_argument("--program", choices=PROGRAMS, default="sluice_decap")
    parser.add_argument("--mode", choices=("native", "generic"), default="native")
    parser.add_argument("--pin", type=Path, help="pin the decap_stats map in this bpffs directory")
    args = parser.parse_args(argv)
    try:
        if args.action == "attach":
            used = attach(args.ifname, args.program, mode=args.mode, pins=args.pin)
            print(f"{args.program} attached to {args.ifname} ({used})")
        else:
            detach(args.ifname)
    except (OSError, build.ToolchainError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
