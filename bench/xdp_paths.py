"""The XDP program's cost per path, BPF_PROG_TEST_RUN one frame per run (part of ``--scenario xdp``).

Programs, each loaded outside any interface with 1 VIP per (forwarding, protocol), 3 backends each
and a 65,537-slot Maglev ring: sluice, the program of the working tree (bpf/sluice_xdp.bpf.c); before,
the program as of commit fb2c44b (BASELINE_COMMIT; its sources taken with git show into a temp dir, compiled with
the same flags), what the per-packet targets are held against; reflector, bench/xdp_reflector.bpf.c
``reflect`` (MAC rewrite by sport % 3, IPv4/UDP only, so only the UDP column), the bare XDP_TX
program; and the floor, bpf/sluice_pass.bpf.c (returns XDP_PASS): what a run costs with no program
work, the kernel's two clock reads around the run included. A row shows its ns per packet minus the
floor's on the same path in the same round; the floor column is the floor's own figure (UDP frame).

Paths, for l2 and ipip: a TCP SYN (same 5-tuple every run: Maglev, entry rewritten), established TCP
(an ACK of a flow opened by a SYN: the connection-table hit), UDP of an existing flow (a hit), the SYN
of a new 5-tuple every run (a new entry each time: the table fills, then LRU evicts), and a packet to
no VIP (XDP_PASS).

Method: repeat=1 runs, one per frame (loader.test_run_each): BPF_PROG_TEST_RUN with repeat > 1 reuses
one buffer, so from the second run an ipip program sees its own encapsulated output and passes it (the
old "XDP prog ns/pkt" of ipip timed the pass path). Per round and path, CALLS runs per program in
CHUNKS slices, the programs interleaved slice by slice in rotating order, so the machine's load hits
them alike; a figure is the mean of the kernel's per-run durations over the middle 90 %. Every slice
checks that each run took the path: every verdict is the expected one (XDP_TX, or XDP_PASS for no
VIP and the floor) and, for the sluice programs, the path's counter (ct_hits, new_flows or
pass_not_vip) grew by exactly one per run.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import proc, rounds
from bench.rawgen import ip_checksum
from bench.rounds import Metric, Row, Scenario, Target

BASELINE_COMMIT = "fb2c44b334e3b17b2e60cdc1b5a274fca874ad1b"
"""The last commit of bpf/ before the connection table became one shared LRU table with the flow hash
in its entries and a coarse clock: 'today's program' of issue 14."""
BPF_PATH = "src/sluice/dataplane/xdp/bpf"
REFLECTOR_C = Path(__file__).with_name("xdp_reflector.bpf.c")

CALLS = 20_000
QUICK_CALLS = 4_000
CHUNKS = 20  # slices per path, the programs interleaved
TRIM = 0.05  # each side
M = 65537
LB_MAC = "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:aa"
NEXT_HOP_MAC = "02:00:00:00:ff:fe"
CLIENT = "198.18.0.10"
NOT_A_VIP = "198.18.100.9"
TCP_SYN, TCP_ACK = 0x02, 0x10

# (forwarding, protocol) -> (vip index, address, port); each VIP has its own 3 backends
VIPS = {
    ("l2", "tcp"): (0, "198.18.100.1", 80),
    ("l2", "udp"): (1, "198.18.100.1", 53),
    ("ipip", "tcp"): (2, "198.18.100.2", 80),
    ("ipip", "udp"): (3, "198.18.100.2", 53),
}
DEFINES = {"MAX_VIPS": 4, "MAX_BACKENDS": 16, "MAGLEV_SIZE": M, "CT_SIZE": 65536}
PATHS = ("syn", "est", "udp", "new")
PROGRAMS = ("sluice", "before", "reflector")
LABELS = {
    "sluice": "sluice XDP (this tree)",
    "before": f"sluice XDP before (commit {BASELINE_COMMIT[:7]})",
    "reflector": "bare XDP_TX reflector (UDP only)",
}
PATH_LABELS = {
    "syn": "TCP SYN",
    "est": "established TCP (conntrack hit)",
    "udp": "UDP, existing flow",
    "new": "SYN of a new 5-tuple",
}


def metric_key(fwd: str, path: str) -> str:
    return f"{fwd}_{path}_ns"


class XdpPaths(Scenario):
    name = "xdp_paths"
    title = "XDP program per path: ns per packet, BPF_PROG_TEST_RUN one run per frame"
    description = (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ").strip()
    peer_names = PROGRAMS
    reference = "before"
    row_label = "program"
    layout = None
    metrics = (
        *(
            Metric(metric_key(f, p), f"{f} {PATH_LABELS[p]} ns", "lower")
            for f in ("l2", "ipip")
            for p in PATHS
        ),
        Metric("not_vip_ns", "not a VIP (XDP_PASS) ns", "lower"),
        Metric("floor_ns", "floor ns (empty program, subtracted)", "lower", ratio=False),
        Metric("l2_new_flows_per_s", "l2 new flows/s per core", "higher", ratio=False),
        Metric("ipip_new_flows_per_s", "ipip new flows/s per core", "higher", ratio=False),
    )
    targets = (
        *(
            Target(
                f"{f} conntrack hit (established TCP) costs <= 0.7x before",
                "sluice",
                metric_key(f, "est"),
                "<=",
                0.7,
            )
            for f in ("l2", "ipip")
        ),
        *(
            Target(f"{f} {PATH_LABELS[p]} costs no more than before", "sluice", metric_key(f, p), "<=", 1.0)
            for f in ("l2", "ipip")
            for p in ("syn", "udp", "new")
        ),
        Target("not a VIP costs no more than before", "sluice", "not_vip_ns", "<=", 1.0),
    )

    def __init__(self, quick: bool) -> None:
        super().__init__(quick)
        self.calls = QUICK_CALLS if quick else CALLS

    def params(self) -> dict[str, Any]:
        return {"calls_per_path": self.calls, "trim_each_side": TRIM, "maglev_size": M, "backends": 3}

    def derive(self, rows: list[Row]) -> None:
        """New flows per second of one core, from the new-SYN path."""
        for r in rows:
            for fwd in ("l2", "ipip"):
                ns = r.get(metric_key(fwd, "new"))
                r[f"{fwd}_new_flows_per_s"] = 1e9 / ns if ns and ns > 0 else None


def net_of_floor(raw: dict[str, float], floor: dict[str, float]) -> Row:
    """A program's row: each path's ns minus the floor's on the same path, the raw figures kept."""
    return {
        "raw": raw,
        "floor": floor,
        "floor_ns": floor.get(metric_key("l2", "udp")),
        **{k: v - floor[k] for k, v in raw.items() if k in floor},
    }


# ---------------------------------------------------------------- frames


def frame(proto: str, src: str, dst: str, sport: int, dport: int, flags: int = 0) -> bytes:
    """Ethernet + IPv4 + TCP (flags, no options) or UDP (18 B payload): 60 or 54 B."""
    if proto == "tcp":
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
        number = 6
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + 18, 0) + b"\x42" * 18
        number = 17
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        0,
        0,
        64,
        number,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    return bytes.fromhex(LB_MAC.replace(":", "") + CLIENT_MAC.replace(":", "")) + b"\x08\x00" + ip + l4


def new_flow_frames(fwd: str, count: int, salt: int) -> list[bytes]:
    """`count` SYNs, each of its own 5-tuple (client 198.18.<salt>.x : sport)."""
    _index, addr, port = VIPS[(fwd, "tcp")]
    out = []
    for i in range(count):
        src = f"198.18.{8 + salt % 200}.{1 + (i // 50000) % 250}"
        out.append(frame("tcp", src, addr, 1024 + i % 50000, port, TCP_SYN))
    return out


# ---------------------------------------------------------------- timing with a check


@dataclass(frozen=True)
class PathTiming:
    """One path of one program: per-run durations (kernel's), and what the counters said."""

    mean_ns: float  # trimmed mean
    median_ns: float
    runs: int
    counted: int  # growth of the counter that proves the path (== runs)
    durations_ns: tuple[int, ...] = field(default=(), repr=False)


def trimmed_mean(values: list[int], trim: float = TRIM) -> float:
    v = sorted(values)
    cut = int(len(v) * trim)
    kept = v[cut : len(v) - cut] or v
    return sum(kept) / len(kept)


def time_path(
    prog_fd: int, frames: list[bytes], *, verdict: int, counter: Callable[[], int] | None = None
) -> PathTiming:
    """Run the program once per frame; every run must return `verdict` and, with `counter`, the
    counter must grow by exactly one per run (so every run took the path being timed)."""
    from sluice.dataplane.xdp import loader

    before = counter() if counter is not None else 0
    result = loader.test_run_each(prog_fd, frames)
    counted = (counter() - before) if counter is not None else len(frames)
    wrong = [v for v in result.verdicts if v != verdict]
    if wrong:
        raise RuntimeError(f"{len(wrong)} of {len(frames)} runs returned {wrong[0]}, expected {verdict}")
    if counted != len(frames):
        raise RuntimeError(f"the path's counter grew by {counted} over {len(frames)} runs")
    d = sorted(result.durations_ns)
    return PathTiming(trimmed_mean(d), float(d[len(d) // 2]), len(d), counted, tuple(d))


def net_of_empty(prog_fd: int, floor_fd: int, frames: list[bytes], *, verdict: int) -> tuple[float, float]:
    """(ns per run of the program minus the empty program's, the empty program's), the two timed in
    interleaved slices of `frames`; every program run must return `verdict`, every empty one XDP_PASS."""
    from sluice.dataplane.xdp.loader import XDP_PASS

    mine: list[int] = []
    empty: list[int] = []
    per_chunk = max(1, len(frames) // CHUNKS)
    for c in range(0, len(frames), per_chunk):
        part = frames[c : c + per_chunk]
        mine += time_path(prog_fd, part, verdict=verdict).durations_ns
        empty += time_path(floor_fd, part, verdict=XDP_PASS).durations_ns
    floor = trimmed_mean(empty)
    return trimmed_mean(mine) - floor, floor


# ---------------------------------------------------------------- programs


def _clang(source: Path, out: Path, defines: dict[str, int | str], include: Path | None = None) -> Path:
    from sluice.dataplane.xdp import build

    cmd = ["clang", *build.clang_flags(defines), *([f"-I{include}"] if include else []), "-c", str(source)]
    r = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, timeout=120, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"clang failed on {source.name}: {r.stderr.strip()[-1500:]}")
    return out


def baseline_sources(into: Path, commit: str = BASELINE_COMMIT) -> Path:
    """bpf/ as of `commit`, written into `into` (git show of every file)."""
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{commit}:{BPF_PATH}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=proc.REPO,
        timeout=30,
    ).stdout.split()
    into.mkdir(parents=True, exist_ok=True)
    for name in names:
        text = subprocess.run(
            ["git", "show", f"{commit}:{BPF_PATH}/{name}"],
            capture_output=True,
            check=True,
            cwd=proc.REPO,
            timeout=30,
        ).stdout
        (into / name).write_bytes(text)
    return into


def _mac_bytes(mac: str) -> str:
    return ",".join(f"0x{b}" for b in mac.split(":"))


def compile_programs(workdir: Path) -> dict[str, Path]:
    from sluice.dataplane.xdp import build

    defines: dict[str, int | str] = dict(DEFINES)
    old = baseline_sources(workdir / "before")
    macs: dict[str, int | str] = {"LB_MAC": _mac_bytes(LB_MAC)} | {
        f"B{i}_MAC": _mac_bytes(f"02:00:00:00:01:0{i + 1}") for i in range(3)
    }
    return {
        "sluice": _clang(build.BPF_DIR / "sluice_xdp.bpf.c", workdir / "sluice.o", defines),
        "before": _clang(old / "sluice_xdp.bpf.c", workdir / "before.o", defines),
        "reflector": _clang(REFLECTOR_C, workdir / "reflector.o", macs),
        "floor": _clang(build.BPF_DIR / "sluice_pass.bpf.c", workdir / "floor.o", {}),
    }


class SluiceWorld:
    """A loaded sluice_xdp (this tree's or the baseline's) with the bench's VIPs, backends and rings."""

    def __init__(self, path: Path) -> None:
        import numpy as np

        from sluice.core.maglev import build_table
        from sluice.dataplane.xdp import loader
        from sluice.dataplane.xdp.maps import (
            BACKEND_F_ACTIVE,
            FAMILY_V4,
            FWD_IPIP,
            FWD_L2,
            BackendEntry,
            GlobalStats,
            Map,
            VipKey,
            VipMeta,
            VipStatsC,
            addr16,
            be16,
            mac_bytes,
            sum_fields,
            update_u32_batch,
            vip_key,
        )

        self.obj = loader.load_object(path, ("sluice_xdp",))
        self.prog = self.obj.programs["sluice_xdp"]
        fds = self.obj.maps
        u32 = ctypes.c_uint32
        self._sum = sum_fields
        self.vip_stats = Map(fds["vip_stats"], u32, VipStatsC, percpu=True)
        self.global_stats = Map(fds["global_stats"], u32, GlobalStats, percpu=True)
        vips = Map(fds["vips"], VipKey, VipMeta)
        backends = Map(fds["backends"], u32, BackendEntry)
        maglev = Map(fds["maglev"], u32, u32)
        if "coarse_clock" in fds:  # this tree's program: the plane writes the clock
            Map(fds["coarse_clock"], u32, ctypes.c_uint64).update(
                u32(0), ctypes.c_uint64(time.monotonic_ns())
            )
        for (fwd, proto), (index, addr, port) in VIPS.items():
            meta = VipMeta(
                index=index,
                maglev_size=M,
                idle_ns=3600 * 10**9,
                fwd=FWD_IPIP if fwd == "ipip" else FWD_L2,
            )
            meta.src_mac[:] = mac_bytes(LB_MAC)
            if fwd == "ipip":
                meta.outer_src[:] = addr16("198.19.0.0")
                meta.outer_hash_mask = 0xFFFF
            vips.update(vip_key(addr, port, 6 if proto == "tcp" else 17), meta)
            names = []
            for i in range(3):
                slot = index * 3 + i
                ip = f"198.18.{1 + index}.{11 + i}"
                entry = BackendEntry(
                    family=FAMILY_V4, flags=BACKEND_F_ACTIVE, vip_index=index, port=be16(port)
                )
                entry.addr[:] = addr16(ip)
                entry.mac[:] = mac_bytes(NEXT_HOP_MAC if fwd == "ipip" else f"02:00:00:00:01:0{i + 1}")
                backends.update(u32(slot), entry)
                names.append((f"{ip}:{port}", slot))
            table = build_table([(n, 1) for n, _ in names], M)
            by_name = dict(names)
            values = np.array([by_name[table.backends[s]] for s in table.slots], dtype=np.uint32)
            keys = np.arange(M, dtype=np.uint32) + np.uint32(index * M)
            update_u32_batch(maglev, keys, values)

    def vip_counter(self, fwd: str, proto: str, field: str) -> Callable[[], int]:
        index = VIPS[(fwd, proto)][0]
        return lambda: self._sum(self.vip_stats.lookup_percpu(ctypes.c_uint32(index)) or [])[field]

    def global_counter(self, field: str) -> Callable[[], int]:
        return lambda: self._sum(self.global_stats.lookup_percpu(ctypes.c_uint32(0)) or [])[field]

    def close(self) -> None:
        self.obj.close()


@dataclass(frozen=True)
class Runner:
    """One program as a path sees it: its fd, the verdict forwarded frames get, its counters."""

    fd: int
    world: SluiceWorld | None  # None: no counters (the reflector, the floor)
    forwards: int  # the verdict of a frame to a VIP (XDP_TX; the floor passes everything)


def _frames(path: str, fwd: str, salt: int, count: int) -> list[bytes]:
    proto = "udp" if path == "udp" else "tcp"
    _index, addr, port = VIPS[(fwd or "l2", proto)]
    sport = 40000 + salt
    if path == "syn":
        return [frame("tcp", CLIENT, addr, sport, port, TCP_SYN)] * count
    if path == "est":
        return [frame("tcp", CLIENT, addr, sport, port, TCP_ACK)] * count
    if path == "udp":
        return [frame("udp", CLIENT, addr, sport, port)] * count
    if path == "new":
        return new_flow_frames(fwd, count, salt)
    return [frame("udp", CLIENT, NOT_A_VIP, sport, 53)] * count  # not_vip


def _counter(runner: Runner, path: str, fwd: str) -> Callable[[], int] | None:
    w = runner.world
    if w is None:
        return None
    if path == "not_vip":
        return w.global_counter("pass_not_vip")
    if path in ("syn", "new"):
        return w.vip_counter(fwd, "tcp", "new_flows")
    return w.vip_counter(fwd, "udp" if path == "udp" else "tcp", "ct_hits")


def measure_round(
    runners: dict[str, Runner], calls: int, chunks: int, round_no: int
) -> dict[str, dict[str, float]]:
    """Every path, the programs interleaved in `chunks` slices (rotating their order), so a change of
    the machine's load hits them alike; per program, the trimmed mean ns per run of each path."""
    from sluice.dataplane.xdp.loader import XDP_PASS

    out: dict[str, dict[str, float]] = {name: {} for name in runners}
    per_chunk = max(1, calls // chunks)
    jobs = [(fwd, path) for fwd in ("l2", "ipip") for path in PATHS] + [("", "not_vip")]
    for fwd, path in jobs:
        key = metric_key(fwd, path) if fwd else "not_vip_ns"
        names = [n for n in runners if n != "reflector" or (fwd, path) == ("l2", "udp")]
        for name in names:  # a flow exists before its hits are timed
            if path in ("est", "udp") and runners[name].world is not None:
                opener = "syn" if path == "est" else "udp"
                time_path(runners[name].fd, _frames(opener, fwd, round_no, 1), verdict=runners[name].forwards)
        durations: dict[str, list[int]] = {n: [] for n in names}
        for c in range(chunks):
            salt = (round_no * chunks + c) % 200
            frames = _frames(path, fwd, salt if path == "new" else round_no, per_chunk)
            for name in names[c % len(names) :] + names[: c % len(names)]:
                runner = runners[name]
                verdict = XDP_PASS if path == "not_vip" else runner.forwards
                timing = time_path(runner.fd, frames, verdict=verdict, counter=_counter(runner, path, fwd))
                durations[name] += timing.durations_ns
        for name in names:
            out[name][key] = trimmed_mean(durations[name])
    return out


@contextmanager
def _pinned(core: int) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run(sc: XdpPaths, n_rounds: int, log: Any = print) -> dict[str, Any]:
    """All rounds (programs alternating within each round); the json document."""
    from sluice.dataplane.xdp import loader

    started = time.monotonic()
    rows: list[Row] = []
    errors: list[str] = []
    lb_core, _gen = proc.cores()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-xdp-paths-") as tmp:
        try:
            objects = compile_programs(Path(tmp))
            worlds = {name: SluiceWorld(objects[name]) for name in ("sluice", "before")}
            plain = {
                "reflector": loader.load_object(objects["reflector"], ("reflect",)),
                "floor": loader.load_object(objects["floor"], ("sluice_pass",)),
            }
            runners = {
                "floor": Runner(plain["floor"].programs["sluice_pass"], None, loader.XDP_PASS),
                "sluice": Runner(worlds["sluice"].prog, worlds["sluice"], loader.XDP_TX),
                "before": Runner(worlds["before"].prog, worlds["before"], loader.XDP_TX),
                "reflector": Runner(plain["reflector"].programs["reflect"], None, loader.XDP_TX),
            }
        except Exception as exc:
            errors.append(f"setup: {type(exc).__name__}: {exc}")
            log(f"  ! xdp_paths setup: {exc}")
            sc.derive(rows)
            return rounds.result(sc, n_rounds, rows, errors, started)
        try:
            with _pinned(lb_core):
                for r in range(1, n_rounds + 1):
                    try:
                        raw = measure_round(runners, sc.calls, CHUNKS, r)
                    except Exception as exc:  # one failed round must not sink the scenario
                        errors.append(f"round {r}: {type(exc).__name__}: {exc}")
                        log(f"  ! round {r}: {exc}")
                        continue
                    for name in PROGRAMS:
                        row = {
                            "round": r,
                            "peer": name,
                            "core": lb_core,
                            **net_of_floor(raw[name], raw["floor"]),
                        }
                        rows.append(row)
                        log(
                            f"  r{r} {name:<10} "
                            + " ".join(f"{k.removesuffix('_ns')}={row[k]:.0f}" for k in raw[name])
                        )
                    log(
                        f"  r{r} floor      "
                        + " ".join(f"{k.removesuffix('_ns')}={v:.0f}" for k, v in raw["floor"].items())
                    )
        finally:
            for w in worlds.values():
                w.close()
            for o in plain.values():
                o.close()
    sc.derive(rows)
    doc = rounds.result(sc, n_rounds, rows, errors, started)
    doc["peer_labels"] = dict(LABELS)
    doc["baseline_commit"] = BASELINE_COMMIT
    return doc
