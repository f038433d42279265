"""One vocabulary: every reason string the python data planes count is in `sluice.core.reasons`.

The planes write reasons as string literals (``stats.refused["no_backend"] += 1``,
``self.refuse(client, "connect_failed")``, ``splice.close("idle_timeout")``); this test reads their
source with `ast` and checks each literal that reaches a counter against the table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sluice.core import reasons

SRC = Path(__file__).resolve().parents[2] / "src" / "sluice"
PLANE_MODULES = [
    *sorted((SRC / "dataplane" / "proxy").glob("*.py")),
    SRC / "core" / "connect.py",
    SRC / "core" / "udp_session.py",
    SRC / "control" / "controller.py",
]
"""The python planes, the policy modules of the core that name reasons, and the controller."""
COUNTERS = {
    "refused": set(reasons.REFUSED),
    "closed": set(reasons.CLOSED),
    "dropped": set(reasons.DROPPED),
    "connect_errors": set(reasons.CONNECT_ERRORS),
}
ALL = set().union(*COUNTERS.values())
REASON_CALLS = {
    "refuse": set(reasons.REFUSED),
    "_refuse": set(reasons.REFUSED),
    "GiveUp": set(reasons.REFUSED),
    "Refuse": set(reasons.REFUSED),
    "EndSession": set(reasons.CLOSED),
    "_give_up": set(reasons.REFUSED),
    "_Refused": set(reasons.REFUSED),
    "close": set(reasons.CLOSED),
    "_end": set(reasons.CLOSED),
    "remove": set(reasons.CLOSED),
    "clear": set(reasons.CLOSED),
    "close_backend_flows": set(reasons.CLOSED),
}
"""Functions whose string-literal arguments are reasons, and the table they come from."""


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _strings(expr: ast.expr) -> list[str]:
    """The string literals `expr` can evaluate to: itself, or either branch of ``a if c else b``."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.IfExp):
        return _strings(expr.body) + _strings(expr.orelse)
    return []


def reason_literals(source: str) -> list[tuple[int, str, str]]:
    """(line, table name, reason) for every string literal used as a counter key or passed to a
    function that takes a reason."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in COUNTERS
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            found.append((node.lineno, node.value.attr, node.slice.value))
        elif isinstance(node, ast.Call) and _called_name(node.func) in REASON_CALLS:
            name = _called_name(node.func)
            assert name is not None
            found.extend((node.lineno, name, r) for arg in node.args for r in _strings(arg))
    return found


def _table(name: str) -> set[str]:
    return COUNTERS.get(name) or REASON_CALLS[name]


@pytest.mark.parametrize("path", PLANE_MODULES, ids=lambda p: p.name)
def test_every_reason_a_plane_counts_is_in_the_table(path: Path) -> None:
    unknown = [
        (line, name, r) for line, name, r in reason_literals(path.read_text()) if r not in _table(name)
    ]
    assert not unknown, f"{path.name}: reasons missing from sluice.core.reasons: {unknown}"


def test_the_planes_count_reasons_at_all() -> None:
    """The scan finds the reasons we know are there (else it would pass on anything)."""
    tcp = {
        r
        for path in (
            "dataplane/proxy/tcp.py",
            "dataplane/proxy/connection.py",
            "dataplane/proxy/connector.py",
            "core/connect.py",
        )
        for _, _, r in reason_literals((SRC / path).read_text())
    }
    udp = {
        r
        for path in ("dataplane/proxy/udp.py", "dataplane/proxy/udp_sockets.py", "core/udp_session.py")
        for _, _, r in reason_literals((SRC / path).read_text())
    }
    assert {"max_connections", "connect_failed", "no_resources", "idle_timeout"} <= tcp
    assert {"no_backend", "no_resources", "truncated", "unknown_source", "shutting_down"} <= udp


def test_the_scan_catches_a_reason_outside_the_table() -> None:
    sample = (
        'stats.refused["socket_error"] += 1\nself.refuse(client, "no_backend")\nsplice.close("nope")\n'
        'self._give_up("connect_failed" if tried else "no_such")\n'
    )
    assert sorted((name, r) for _, name, r in reason_literals(sample) if r not in _table(name)) == [
        ("_give_up", "no_such"),
        ("close", "nope"),
        ("refused", "socket_error"),
    ]


def test_the_tcp_splice_names_make_table_reasons() -> None:
    """`Splice` closes with ``<name>_reset`` / ``<name>_error``; connection.py names its sockets."""
    tree = ast.parse((SRC / "dataplane" / "proxy" / "connection.py").read_text())
    names = [
        tuple(ast.literal_eval(kw.value))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "names"
    ]
    assert names == [("client", "backend")]
    assert {f"{n}_{kind}" for n in names[0] for kind in ("reset", "error")} <= set(reasons.CLOSED)


def test_reason_tables_are_snake_case_and_unique() -> None:
    for table in (reasons.REFUSED, reasons.CLOSED, reasons.DROPPED, reasons.CONNECT_ERRORS):
        assert len(set(table)) == len(table)
        assert all(r.isidentifier() and r == r.lower() for r in table)
    assert ALL


def test_udp_drop_reasons_by_errno_are_table_reasons() -> None:
    from sluice.dataplane.proxy import udp_sockets

    assert set(udp_sockets._ERRNO_REASONS.values()) <= set(reasons.DROPPED)
