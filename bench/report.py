"""BENCHMARKS.md, generated from every bench/results/*.json present (never typed by hand)."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from bench.proc import REPO

RESULTS = REPO / "bench" / "results"
OUTPUT = REPO / "BENCHMARKS.md"
ORDER = (
    "tcp_bulk",
    "tcp_conn",
    "tcp_keepalive",
    "tcp_latency",
    "udp_64_many",
    "udp_64_one",
    "udp_1200_many",
    "udp_1200_one",
    "udp_flood",
    "udp_flood_hard",
    "udp_ladder",
    "maglev",
    "anycast",
)
SHORT = {"haproxy": "HAProxy", "nginx": "NGINX"}
VERSION_NAMES = {"sluice": "sluice", "haproxy": "HAProxy", "nginx": "NGINX", "iperf3": "iperf3", "wrk": "wrk"}


def fmt(v: float | None, digits: int = 3) -> str:
    """`digits` significant digits, no exponent, thousands separated."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    decimals = digits - 1 - math.floor(math.log10(a))
    return f"{v:.{decimals}f}"


def load() -> list[dict[str, Any]]:
    docs = []
    for p in sorted(RESULTS.glob("*.json")):
        try:
            docs.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    rank = {name: i for i, name in enumerate(ORDER)}

    def key(d: dict[str, Any]) -> tuple[int, str]:
        name = d.get("scenario", "")
        return (rank.get(name.split("-")[0], len(ORDER)), name)

    return sorted(docs, key=key)


def _layout(doc: dict[str, Any]) -> str:
    lay = doc.get("layout")
    if not lay:
        return ""
    if lay["lb_core"] == lay["generator_core"]:
        where = f"LB, generator and backend all on core {lay['lb_core']}"
    else:
        where = f"LB on core {lay['lb_core']}, generator and backend on core {lay['generator_core']}"
    nice = f", nice {lay['nice']}" if lay.get("nice") else ""
    return f"layout {lay['name']} ({where}{nice})"


def _versions(v: dict[str, Any]) -> str:
    return ", ".join(f"{label} {v[k]}" for k, label in VERSION_NAMES.items() if v.get(k))


def _machine(m: dict[str, Any]) -> str:
    virt = ", virtual machine" if m.get("virtualised") else ""
    return f"{m.get('cpu_model')}, {m.get('cores')} cores{virt}, Linux {m.get('kernel')}, Python {m.get('python')}"


def _short(error: str, width: int = 240) -> str:
    """First line of an error; when long, its head and its tail (a traceback's last line)."""
    line = error.splitlines()[0].replace("`", "'")
    return line if len(line) <= width else f"{line[:90]} … {line[-(width - 93) :]}"


def _target_line(t: dict[str, Any], doc: dict[str, Any]) -> str:
    if t["met"] is None:
        return f"- **not measured**: {t['text']}"
    ref = doc["reference"]
    if t["kind"] == "ratio":
        value = f"{t['value']:.2f}× {SHORT.get(ref, ref)}"
    else:  # an absolute target: show the reference peer's figure next to it for context
        unit = f" {t['unit']}" if t.get("unit") else ""
        value = fmt(t["value"]) + unit
        ref_value = doc.get("medians", {}).get(ref, {}).get(t["metric"])
        if ref_value is not None and ref != t["peer"]:
            value += f" ({doc.get('peer_labels', {}).get(ref, ref)}: {fmt(ref_value)}{unit})"
    return f"- **{'met' if t['met'] else 'MISSED'}**: {t['text']} — measured {value}"


def table(doc: dict[str, Any]) -> list[str]:
    ref = doc["reference"]
    shown = [m for m in doc["metrics"] if m["show"]]
    has_ratio = any(p != ref for p in doc["peers"]) and ref in doc["peers"]
    head, align = [doc.get("row_label", "peer")], ["---"]
    for m in shown:
        head.append(m["label"])
        align.append("---:")
        if m["ratio"] and has_ratio:
            head.append(f"× {SHORT.get(ref, ref)}")
            align.append("---:")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for p in doc["peers"]:
        cells = [doc["peer_labels"].get(p, p)]
        for m in shown:
            cells.append(fmt(doc["medians"][p].get(m["key"]), m["digits"]))
            if m["ratio"] and has_ratio:
                r = doc["ratios"][p].get(m["key"])
                cells.append("–" if r is None else f"{r:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def section(doc: dict[str, Any], header_facts: tuple[str, str]) -> list[str]:
    params = ", ".join(f"{k}={v}" for k, v in doc.get("params", {}).items())
    out = [f"## {doc['title']}", ""]
    if doc.get("quick"):
        out += ["> quick smoke run (`--quick`: short rounds): shows the harness works, not a result.", ""]
    run = [f"`{doc['scenario']}`", f"{doc['rounds']} rounds", doc["date"], f"{doc['elapsed_s']} s"]
    out.append(" · ".join([*run, *filter(None, [_layout(doc), params])]))
    if doc.get("description"):
        out += ["", doc["description"]]
    facts = (_machine(doc.get("machine", {})), _versions(doc.get("versions", {})))
    if facts != header_facts:
        out += ["", f"Measured on: {facts[0]}; {facts[1]}."]
    out += ["", *table(doc), ""]
    if doc["peers"] and doc.get("targets"):
        out += ["Targets:", *[_target_line(t, doc) for t in doc.get("targets", [])]]
    missing = [p for p in doc.get("peer_labels", {}) if p not in doc["peers"]]
    if missing:
        out.append(f"- not measured (see errors in the json): {', '.join(missing)}")
    for e in doc.get("errors", [])[:6]:
        out.append(f"- error: `{_short(e)}`")
    return [*out, ""]


def render(docs: list[dict[str, Any]]) -> str:
    latest = max(docs, key=lambda d: d.get("date", ""), default={})
    facts = (_machine(latest.get("machine", {})), _versions(latest.get("versions", {})))
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# sluice benchmarks",
        "",
        "Generated from `bench/results/*.json` by the bench harness; do not edit by hand.",
        "Regenerate everything with `make bench` (`python -m bench.run`); one scenario with",
        "`python -m bench.run --scenario NAME`; only this file with `python -m bench.run --report-only`.",
        "",
        f"- Machine: {facts[0]}",
        f"- Versions: {facts[1]}",
        f"- Generated: {now}",
        "- Method: layout split (throughput scenarios): the LB pinned to core 0, load generators and",
        "  backends to core 1; layout shared (`tcp_latency`, and tables named `*-shared`): the LB on the",
        "  generator core too (`--layout` picks one for all). Peers run in alternating",
        "  rounds (A B C D, A B C D, ...); a figure is the median over rounds, a `×` column",
        "  the median of same-round ratios to the reference peer (HAProxy for TCP, NGINX for UDP).",
        '  "LB CPU" is user+sys of the LB\'s process tree (psutil), the cost that does not depend on',
        '  how fast the shared generator core is. "direct" = no LB: the harness\'s own limit.',
        "",
    ]
    if not docs:
        out.append("No results yet: run `make bench`.")
    for doc in docs:
        out += section(doc, facts)
    return "\n".join(out).rstrip() + "\n"


def write() -> Path:
    OUTPUT.write_text(render(load()))
    return OUTPUT


def summary(docs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for doc in docs:
        for t in doc.get("targets", []):
            lines.append(f"{doc['scenario']:<14} {_target_line(t, doc)[2:]}")
    return lines
