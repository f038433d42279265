"""Fuzzing the config loader: YAML text, raw bytes and structured mutations of a valid config.

Whatever the input, loading either gives a `Config` whose values are values (finite, bounded
durations; bounded table sizes) or raises `ConfigError` with path-named lines: never another
exception, never a traceback. Small in the test command; ``make fuzz`` (SLUICE_FUZZ_FULL=1) runs
over 100,000 inputs in all; SLUICE_CONFIG_FUZZ_EXAMPLES sets the count per test.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.config import (
    MAX_DURATION_S,
    MAX_TABLE_SIZE,
    Config,
    ConfigError,
    load_config,
    parse_config,
    parse_config_text,
)
from sluice.core.maglev import is_prime

FULL = os.environ.get("SLUICE_FUZZ_FULL") == "1"
EXAMPLES = int(os.environ.get("SLUICE_CONFIG_FUZZ_EXAMPLES", 34_000 if FULL else 700))
"""Inputs per test (three fuzz tests: 2,100 in the test command, 102,000 with SLUICE_FUZZ_FULL=1)."""
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

GOOD = """\
vips:
  - name: web
    protocol: tcp
    listen: 127.0.0.1:8000
    scheduler: maglev
    maglev_table_size: 65537
    backends:
      - address: 127.0.0.1:9001
        weight: 2
        check_port: 9101
      - address: "[::1]:9002"
    timeouts: {connect: 3s, idle: 350s}
    max_connections: 10000
    proxy_protocol: v2
    health: {type: http, interval: 2s, timeout: 1s, rise: 2, fall: 3, path: /health, expect_status: [200, 204]}
    passive: {consecutive_failures: 5, base_ejection_time: 10s, max_ejection_time: 300s}
    slow_start: 30s
    drain_timeout: 5m
  - name: dns
    protocol: udp
    listen: 127.0.0.1:5353
    scheduler: round_robin
    backends:
      - address: 127.0.0.1:5301
    udp: {hash: source_ip, responses: 1, max_sessions: 1000}
    health: {type: dns, query_name: example.org, interval: 5s, timeout: 1s}
admin: {listen: 127.0.0.1:9090}
shutdown_timeout: 30s
"""
GOOD_DATA: dict[str, Any] = yaml.safe_load(GOOD)

# Values that are not values, or are at the edges: what a review throws at a config.
HOSTILE_SCALARS = st.one_of(
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            0,
            -1,
            1e308,
            2**63,
            10**30,
            10000000000000061,
            100000000000031,
            1_000_003,
            1_000_033,
            65536,
            "",
            "0s",
            "3s",
            "250ms",
            "5m",
            "99999999999999999999m",
            "1e309s",
            "\u00e9",
            "\x00",
            "off",
            "on",
            True,
            False,
            None,
            "127.0.0.1:0",
            "[::1]:65536",
            "256.1.1.1:80",
            "/" + "a" * 200,
        ]
    ),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
VALUES = st.recursive(
    HOSTILE_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _assert_values_are_values(config: Config) -> None:
    """Invariants of every accepted config."""
    for vip in config.vips:
        assert 2 <= vip.maglev_table_size <= MAX_TABLE_SIZE and is_prime(vip.maglev_table_size)
        durations = [vip.timeouts.connect, vip.idle_timeout_s, vip.drain_timeout]
        durations += [vip.slow_start] if vip.slow_start is not None else []
        if vip.health is not None:
            durations += [vip.health.interval, vip.health.timeout]
        if vip.passive is not None:
            durations += [vip.passive.base_ejection_time, vip.passive.max_ejection_time]
        for d in durations:
            assert math.isfinite(d) and 0 < d <= MAX_DURATION_S, d
    assert 0 < config.shutdown_timeout <= MAX_DURATION_S


def _load(text_or_data: Any, *, text: bool) -> None:
    try:
        config = parse_config_text(text_or_data) if text else parse_config(text_or_data)
    except ConfigError as exc:
        assert exc.errors and all(isinstance(line, str) and line for line in exc.errors)
        assert "Traceback" not in str(exc)
        return
    _assert_values_are_values(config)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


def _mutated(data: Any, path: tuple[Any, ...], action: str, value: Any, key: str) -> Any:
    if not path:
        return value if action == "replace" else data
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        copy = dict(data)
        if not rest and action == "delete":
            copy.pop(head, None)
        elif not rest and action == "add":
            copy[head] = _mutated(copy[head], rest, "replace", value, key)
            copy[key] = value
        else:
            copy[head] = _mutated(copy[head], rest, action, value, key)
        return copy
    copy_list = list(data)
    if not rest and action == "delete":
        del copy_list[head]
    elif not rest and action == "add":
        copy_list.append(value)
    else:
        copy_list[head] = _mutated(copy_list[head], rest, action, value, key)
    return copy_list


@FUZZ
@given(st.data())
def test_structured_mutations_of_a_valid_config(data: st.DataObject) -> None:
    document: Any = GOOD_DATA
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(document)
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        value = data.draw(VALUES)
        key = data.draw(st.sampled_from(["colour", "name", "listen", "weight", "idle", "x"]))
        document = _mutated(document, path, action, value, key)
    _load(document, text=False)


def _text_mutations() -> st.SearchStrategy[str]:
    lines = GOOD.splitlines(keepends=True)

    def mutate(ops: list[tuple[int, int, str]]) -> str:
        out = list(lines)
        for where, kind, piece in ops:
            i = where % (len(out) + 1)
            if kind == 0:
                out.insert(i, piece)
            elif kind == 1 and out:
                del out[i % len(out)]
            elif out:
                line = out[i % len(out)]
                cut = where % (len(line) + 1)
                out[i % len(out)] = line[:cut] + piece + line[cut:]
        return "".join(out)

    pieces = st.one_of(
        st.sampled_from(
            [
                ".nan",
                ".inf",
                "-.inf",
                "9" * 5000,
                "&a [*a, *a]",
                "*a",
                "!!python/object:os.system",
                "[" * 200,
                "{",
                "\t",
                ": :",
                "- ",
                "\n  ",
                "maglev_table_size: 10000000000000061\n",
                "    timeouts: {connect: .nan}\n",
                "0x7fffffffffffffff",
                "1e400",
                "~",
            ]
        ),
        st.text(max_size=20),
    )
    return st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2), pieces), min_size=1, max_size=4).map(
        mutate
    )


@FUZZ
@given(st.one_of(_text_mutations(), st.text(max_size=400)))
def test_yaml_text(text: str) -> None:
    _load(text, text=True)


@FUZZ
@given(
    st.one_of(_text_mutations().map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=400))
)
def test_file_bytes(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as where:
        path = Path(where) / "sluice.yaml"
        path.write_bytes(content)
        try:
            config = load_config(path)
        except ConfigError as exc:
            assert exc.errors and all(isinstance(line, str) and line for line in exc.errors)
            return
        _assert_values_are_values(config)


def test_findings_of_the_review_stay_fixed() -> None:
    """Each finding of issue 12 (config part) as a fixed case."""
    for text, expected in [
        (
            GOOD.replace("connect: 3s", "connect: .nan"),
            "vips[0].timeouts.connect: a duration must be a finite",
        ),
        (GOOD.replace("idle: 350s", "idle: .inf"), "vips[0].timeouts.idle: a duration must be a finite"),
        (
            GOOD.replace("interval: 2s", "interval: .nan"),
            "vips[0].health.interval: a duration must be a finite",
        ),
        (GOOD.replace("shutdown_timeout: 30s", "shutdown_timeout: .inf"), "shutdown_timeout: a duration"),
        (GOOD.replace("65537", "100000000000031"), "vips[0].maglev_table_size: must be at most 1000003"),
        (GOOD.replace("65537", "10000000000000061"), "vips[0].maglev_table_size: must be at most 1000003"),
        (GOOD.replace("shutdown_timeout: 30s", "shutdown_timeout: " + "9" * 5000), "invalid YAML"),
    ]:
        try:
            parse_config_text(text, "sluice.yaml")
        except ConfigError as exc:
            assert any(expected in line for line in exc.errors), exc.errors
        else:
            raise AssertionError(f"accepted: {expected}")
