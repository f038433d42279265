"""Config validation: every rule has a test on `sluice check`'s output and exit code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.cli import main
from sluice.config import ConfigError, Endpoint, load_config, native_engine_built, parse_duration

GOOD = """\
vips:
  - name: web
    protocol: tcp
    listen: 127.0.0.1:8000
    mode: proxy
    scheduler: maglev
    maglev_table_size: 65537
    backends:
      - address: 127.0.0.1:9001
        weight: 1
      - address: 127.0.0.1:9002
    timeouts:
      connect: 3s
      idle: 350s
    max_connections: 10000
    proxy_protocol: v1
    accept_proxy_protocol: false
"""

VIP = "  - name: {name}\n    listen: {listen}\n    backends:\n      - address: 127.0.0.1:9001\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str], *, host: bool = False) -> tuple[int, str, str]:
    """`sluice check` of the file (``--offline`` unless `host`: GOOD's ports may be taken here)."""
    code = main(["check", str(path)] if host else ["check", "--offline", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_reference_config_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(write(tmp_path, GOOD), capsys)
    assert (code, err) == (0, "")
    assert "ok, 1 VIP(s): web" in out
    vip = load_config(tmp_path / "sluice.yaml").vips[0]
    assert vip.proxy_protocol == "v1"
    assert vip.timeouts.connect == 3.0 and vip.idle_timeout_s == 350.0
    assert vip.backends[1].weight == 1


def test_yaml_off_means_off(tmp_path: Path) -> None:
    text = GOOD.replace("proxy_protocol: v1", "proxy_protocol: off")
    assert load_config(write(tmp_path, text)).vips[0].proxy_protocol == "off"


def test_idle_default_depends_on_protocol(tmp_path: Path) -> None:
    text = "vips:\n" + VIP.format(name="a", listen="127.0.0.1:1") + "    protocol: udp\n"
    assert load_config(write(tmp_path, text)).vips[0].idle_timeout_s == 120.0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("    maglev_table_size: 65537", "    maglev_table_size: 65536"),
            "vips[0].maglev_table_size: must be a prime",
        ),
        (
            ("        weight: 1", "        weight: -1"),
            "vips[0].backends[0].weight: must be at least 0, got -1",
        ),
        (
            ("    max_connections: 10000", "    max_connections: 10000\n    colour: blue"),
            "vips[0].colour: unknown key",
        ),
        (
            ("      - address: 127.0.0.1:9002", "      - address: 127.0.0.1:99999"),
            "vips[0].backends[1].address: port must be",
        ),
        (
            ("      - address: 127.0.0.1:9002", "      - address: web.local:80"),
            "vips[0].backends[1].address: expected IPv4:port",
        ),
        (
            ("      - address: 127.0.0.1:9002", "      - address: 127.0.0.1:9001"),
            "vips[0].backends[1].address: duplicate backend",
        ),
        (("      idle: 350s", "      idle: 5d"), "vips[0].timeouts.idle: expected a duration like 3s, 250ms"),
        (("      connect: 3s", "      connect: 0s"), "vips[0].timeouts.connect: a duration must be positive"),
        (("    protocol: tcp", "    protocol: sctp"), "vips[0].protocol: expected tcp or udp, got 'sctp'"),
        (("    scheduler: maglev", "    scheduler: fastest"), "vips[0].scheduler: expected "),
        (
            ("    proxy_protocol: v1", "    proxy_protocol: v3"),
            "vips[0].proxy_protocol: expected off, v1 or v2, got 'v3'",
        ),
        (("    mode: proxy", "    mode: dsr"), "vips[0]: mode: dsr needs a dsr block"),
        (("    protocol: tcp", "    protocol: udp"), "vips[0].proxy_protocol: v1 has no UDP form"),
        (
            ("      - address: 127.0.0.1:9002", "      - address: 127.0.0.1:8000"),
            "vips[0]: backend 127.0.0.1:8000 is the VIP itself",
        ),
        (("    listen: 127.0.0.1:8000", "    listen: 8000"), "vips[0].listen: expected a string"),
    ],
)
def test_each_rule_is_reported_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], expected: str
) -> None:
    assert change[0] in GOOD
    code, out, err = check(write(tmp_path, GOOD.replace(change[0], change[1], 1)), capsys)
    assert code == 2
    assert expected in err, err
    assert "Traceback" not in err and out == ""


def test_no_backends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "vips:\n  - name: a\n    listen: 127.0.0.1:1\n    backends: []\n"
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2 and "vips[0].backends: a VIP needs at least one backend" in err


def test_duplicate_names_and_listen_addresses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "vips:\n" + VIP.format(name="a", listen="127.0.0.1:1") + VIP.format(name="a", listen="127.0.0.1:1")
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert "vips[1].name: duplicate VIP name a (first at vips[0].name)" in err
    assert "vips[1].listen: duplicate listen address tcp/127.0.0.1:1" in err


def test_every_error_is_listed_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace("65537", "100").replace("weight: 1", "weight: -3").replace("idle: 350s", "idle: x")
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2
    assert "(3 errors)" in err
    for path in ("maglev_table_size", "backends[0].weight", "timeouts.idle"):
        assert f"vips[0].{path}:" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vips: [", "invalid YAML"),
        ("- just a list\n", "(top level): expected a mapping"),
        ("vips: []\n", "vips: at least one VIP is needed"),
        ("", "(top level): expected a mapping"),
    ],
)
def test_malformed_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == 2 and expected in err and "Traceback" not in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(tmp_path / "nope.yaml", capsys)
    assert code == 2 and "cannot read" in err


def test_ipv6_endpoints_and_durations() -> None:
    assert str(Endpoint.parse("[::1]:8000")) == "[::1]:8000"
    assert Endpoint.parse("[::1]:8000").family_v6
    assert [parse_duration(v) for v in ("250ms", "3s", "2m", 5)] == [0.25, 3.0, 120.0, 5.0]
    with pytest.raises(ValueError):
        Endpoint.parse("::1:8000")


def test_config_error_lists_lines() -> None:
    err = ConfigError(["a: b", "c: d"])
    assert str(err) == "a: b\nc: d"


def test_schema_command_prints_json_schema() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sluice", "schema"], capture_output=True, text=True, check=True
    )
    schema = json.loads(proc.stdout)
    assert "vips" in schema["properties"]
    assert "Vip" in schema["$defs"]


def test_check_as_a_process(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD.replace("65537", "65536"))
    proc = subprocess.run([sys.executable, "-m", "sluice", "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "vips[0].maglev_table_size: must be a prime number, got 65536" in proc.stderr


# ---------------------------------------------------------------- engine and workers (top level)


def test_engine_and_workers_default_to_auto_choice(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert (config.engine, config.workers) == (None, "auto")


@pytest.mark.parametrize(
    ("extra", "engine", "workers"),
    [
        ("engine: python\n", "python", "auto"),
        ("engine: native\nworkers: 1\n", "native", 1),
        ("workers: 256\n", None, 256),
        ("workers: auto\n", None, "auto"),
    ],
)
def test_engine_and_workers_accepted(tmp_path: Path, extra: str, engine: str | None, workers: object) -> None:
    config = load_config(write(tmp_path, extra + GOOD))
    assert (config.engine, config.workers) == (engine, workers)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("engine: rust\n", "engine: expected native or python, got 'rust'"),
        ("workers: 0\n", "workers: expected auto or a number of worker threads 1..256, got 0"),
        ("workers: 257\n", "workers: expected auto or a number of worker threads 1..256, got 257"),
        ("workers: true\n", "workers: expected auto or a number of worker threads 1..256, got True"),
        ("workers: '4'\n", "workers: expected auto or a number of worker threads 1..256, got '4'"),
        ("workers: 2.5\n", "workers: expected auto or a number of worker threads 1..256, got 2.5"),
    ],
)
def test_engine_and_workers_rejected_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, expected: str
) -> None:
    code, out, err = check(write(tmp_path, extra + GOOD), capsys)
    assert (code, out) == (2, "")
    assert expected in err, err


def test_native_engine_without_the_extension_is_rejected_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sluice.config.loading

    assert native_engine_built()  # built in this tree; the test pretends it is not
    monkeypatch.setattr(sluice.config.loading, "native_engine_built", lambda: False)
    code, _, err = check(write(tmp_path, "engine: native\n" + GOOD), capsys)
    assert code == 2
    assert "engine: native needs the C extension" in err
    assert load_config(write(tmp_path, "engine: python\n" + GOOD)).engine == "python"


# ---------------------------------------------------------------- values that are not values (issue 12.3)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("      connect: 3s", "      connect: .nan"),
            "vips[0].timeouts.connect: a duration must be a finite",
        ),
        (
            ("      connect: 3s", "      connect: .inf"),
            "vips[0].timeouts.connect: a duration must be a finite",
        ),
        (("      idle: 350s", "      idle: -.inf"), "vips[0].timeouts.idle: a duration must be a finite"),
        (
            ("      idle: 350s", "      idle: 1.0e+300"),
            "vips[0].timeouts.idle: a duration must be at most 604800s",
        ),
        (
            ("      idle: 350s", "      idle: 99999999999999999999999m"),
            "vips[0].timeouts.idle: a duration must be at most 604800s",
        ),
        (
            ("    max_connections: 10000", "    max_connections: 10000\n    drain_timeout: .nan"),
            "vips[0].drain_timeout: a duration must be a finite",
        ),
        (
            ("    max_connections: 10000", "    max_connections: 10000\n    slow_start: .inf"),
            "vips[0].slow_start: a duration must be a finite",
        ),
        (
            ("    max_connections: 10000", "    max_connections: 10000\n    health: {interval: .nan}"),
            "vips[0].health.interval: a duration must be a finite",
        ),
        (
            ("    max_connections: 10000", "    max_connections: 10000\n    health: {timeout: .inf}"),
            "vips[0].health.timeout: a duration must be a finite",
        ),
        (
            ("    max_connections: 10000", "    max_connections: 10000\n    health: {jitter: .nan}"),
            "vips[0].health.jitter:",
        ),
        (
            (
                "    max_connections: 10000",
                "    max_connections: 10000\n    passive: {base_ejection_time: .inf}",
            ),
            "vips[0].passive.base_ejection_time: a duration must be a finite",
        ),
        (("vips:", "shutdown_timeout: .nan\nvips:"), "shutdown_timeout: a duration must be a finite"),
        (
            ("vips:", "shutdown_timeout: 1000000000000\nvips:"),
            "shutdown_timeout: a duration must be at most 604800s",
        ),
        (
            ("    maglev_table_size: 65537", "    maglev_table_size: 100000000000031"),
            "vips[0].maglev_table_size: must be at most 1000003",
        ),
        (
            ("    max_connections: 10000", "    max_connections: 100000000000"),
            "vips[0].max_connections: must be at most 10000000, got 100000000000",
        ),
        (
            (
                "    max_connections: 10000",
                "    max_connections: 10000\n    udp: {max_sessions: 100000000000}",
            ),
            "vips[0].udp.max_sessions: must be at most 10000000, got 100000000000",
        ),
    ],
)
def test_values_that_are_not_values_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], expected: str
) -> None:
    assert change[0] in GOOD
    code, out, err = check(write(tmp_path, GOOD.replace(change[0], change[1], 1)), capsys)
    assert code == 2 and expected in err, err
    assert "Traceback" not in err and out == ""


def test_table_size_bound_is_checked_before_the_prime_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sluice.config.vip as vip_model

    def no_prime_test(n: int) -> bool:
        raise AssertionError(f"is_prime({n}) ran before the bound check")

    monkeypatch.setattr(vip_model, "is_prime", no_prime_test)
    for size in (10000000000000061, 1_000_033, 10**4000):
        text = GOOD.replace("maglev_table_size: 65537", f"maglev_table_size: {size}")
        with pytest.raises(ConfigError, match=r"vips\[0\]\.maglev_table_size: must be"):
            load_config(write(tmp_path, text))


def test_durations_are_finite_and_bounded() -> None:
    assert parse_duration(604800) == 604800.0
    for bad in (float("nan"), float("inf"), -float("inf"), 604800.5, "10081m", 10**400):
        with pytest.raises(ValueError, match="duration must be"):
            parse_duration(bad)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (GOOD.encode().replace(b"web", b"w\xffb"), "is not UTF-8 (byte 0xff at offset"),
        (b"\xfe\xff\x00v", "is not UTF-8"),
        (b"vips:\n  - name: " + b"9" * 5000 + b"\n", "invalid YAML"),
        (b"x" * (4 * 1024 * 1024 + 1), "larger than 4 MiB"),
    ],
)
def test_undecodable_or_huge_files_are_path_named_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors[0].startswith(f"{path}: ") and expected in info.value.errors[0]
    code, _, err = check(path, capsys)
    assert code == 2 and expected in err and "Traceback" not in err


def test_a_device_is_not_read_whole(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"^/dev/zero: larger than 4 MiB"):
        load_config("/dev/zero")
    with pytest.raises(ConfigError, match=r"^\(top level\): expected a mapping"):
        load_config("/dev/null")
    code, _, err = check(Path("/dev/zero"), capsys)
    assert code == 2 and "/dev/zero: larger than 4 MiB" in err and "Traceback" not in err


def test_a_directory_is_a_path_named_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path))}: cannot read"):
        load_config(tmp_path)
