"""sluice's own log: where it goes (stderr), its level and its two formats (``sluice run``).

- plain: ``2026-12-02T00:57:34.123Z INFO sluice.dataplane.proxy.plane: vip web: listening on ...``
- json: one object per line, ``{"ts": "2026-12-02T00:57:34.123Z", "level": "info", "logger": ...,
  "msg": ..., "vip": "web", ...}``: the ISO-8601 UTC timestamp, and the structured fields a record
  carries (`STRUCTURED_FIELDS`: given with ``extra={"vip": ..., "backend": ..., "from": ..., "to": ...}``,
  or read from sluice's message convention: a message starting ``vip %s`` names the VIP in its first
  argument, ``vip %s backend %s`` the backend in its second).

The per-flow access log is not this log: see `sluice.dataplane.flowlog`.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Final, Literal

from sluice.core.flowlog import iso_timestamp

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "STRUCTURED_FIELDS",
    "JsonFormatter",
    "LogFormat",
    "LogLevel",
    "PlainFormatter",
    "setup_logging",
    "structured_fields",
]

LogFormat = Literal["plain", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_FORMATS: Final = ("plain", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
STRUCTURED_FIELDS: Final = ("vip", "backend", "from", "to", "client", "listen", "reason")
"""Record attributes the JSON format writes as fields of their own when a record carries them."""


def structured_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `STRUCTURED_FIELDS` `record` carries, given as extras or read from the message convention."""
    out: dict[str, Any] = {
        name: record.__dict__[name] for name in STRUCTURED_FIELDS if name in record.__dict__
    }
    args = record.args if isinstance(record.args, tuple) else ()
    if isinstance(record.msg, str) and record.msg.startswith("vip %s") and args:
        out.setdefault("vip", str(args[0]))
        if record.msg.startswith("vip %s backend %s") and len(args) > 1:
            out.setdefault("backend", str(args[1]))
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (ISO-8601, UTC), level, logger, msg, the structured fields,
    exc (a traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": iso_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in structured_fields(record).items():
            out[name] = value if isinstance(value, int | float | bool) or value is None else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class PlainFormatter(logging.Formatter):
    """``<ISO-8601 UTC> <LEVEL> <logger>: <message>`` (and the traceback below, if any)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"{iso_timestamp(record.created)} {super().format(record)}"


def setup_logging(fmt: LogFormat = "plain", level: LogLevel | int = "info") -> None:
    """sluice's log to stderr in `fmt` from `level` up (replaces the root logger's handlers)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")
    if isinstance(level, str):
        if level not in LOG_LEVELS:
            raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LOG_LEVELS)}")
        level = logging.getLevelNamesMapping()[level.upper()]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
