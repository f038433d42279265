"""sluice's own log (`sluice.control.logs`): formats, ISO-8601 timestamps, structured fields, levels."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from sluice.cli import build_parser
from sluice.control.logs import setup_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


@pytest.mark.usefixtures("restore_root")
def test_json_lines_carry_an_iso_timestamp_and_structured_fields(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json", "info")
    log = logging.getLogger("sluice.test")
    log.info("vip %s: listening on %s", "web", "tcp/127.0.0.1:80")
    log.warning("vip %s backend %s: %s -> %s", "web", "127.0.0.1:9001", "up", "down")
    log.warning("health", extra={"vip": "dns", "backend": "[::1]:53", "from": "up", "to": "down"})
    log.info("no vip here %s", "x")
    first, second, third, fourth = (json.loads(line) for line in lines(capsys))
    assert datetime.fromisoformat(first["ts"]).tzinfo is not None and first["ts"].endswith("Z")
    assert (first["vip"], first["msg"]) == ("web", "vip web: listening on tcp/127.0.0.1:80")
    assert "backend" not in first
    assert (second["vip"], second["backend"], second["level"]) == ("web", "127.0.0.1:9001", "warning")
    assert {k: third[k] for k in ("vip", "backend", "from", "to")} == {
        "vip": "dns",
        "backend": "[::1]:53",
        "from": "up",
        "to": "down",
    }
    assert "vip" not in fourth


@pytest.mark.usefixtures("restore_root")
def test_plain_lines_start_with_an_iso_timestamp(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("plain", "info")
    logging.getLogger("sluice.test").info("vip %s: updated", "web")
    [line] = lines(capsys)
    stamp, level, name, message = line.split(" ", 3)
    assert datetime.fromisoformat(stamp).year >= 2024
    assert (level, name, message) == ("INFO", "sluice.test:", "vip web: updated")


@pytest.mark.usefixtures("restore_root")
@pytest.mark.parametrize(
    ("level", "shown"),
    [("debug", ["D", "I", "W", "E"]), ("info", ["I", "W", "E"]), ("warning", ["W", "E"]), ("error", ["E"])],
)
def test_the_level_filters(level: str, shown: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json", level)  # type: ignore[arg-type]
    log = logging.getLogger("sluice.test")
    log.debug("D")
    log.info("I")
    log.warning("W")
    log.error("E")
    assert [json.loads(line)["msg"] for line in lines(capsys)] == shown


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "trace")])
def test_unknown_format_or_level_is_refused(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        setup_logging(fmt, level)  # type: ignore[arg-type]


def test_run_takes_log_level_and_format() -> None:
    args = build_parser().parse_args(["run", "c.yaml", "--log-level", "debug", "--log-format", "json"])
    assert (args.log_level, args.log_format) == ("debug", "json")
    assert build_parser().parse_args(["run", "c.yaml"]).log_level == "info"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "c.yaml", "--log-level", "loud"])
