"""Startup, run, reload and shutdown of one sluice process."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from sluice.config import ConfigError, load_config
from sluice.control.controller import Controller

log = logging.getLogger("sluice")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str = "plain", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for exotic platforms
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def serve(config_path: Path) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads `config_path` (a bad file keeps the running config)."""
    controller = Controller(load_config(config_path))
    await controller.start()
    log.info(
        "sluice running: %s", ", ".join(f"{v.name}={v.protocol}/{v.listen}" for v in controller.config.vips)
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue(maxsize=1)

    def _on_reload_signal() -> None:
        if reloads.empty():
            reloads.put_nowait(None)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _on_reload_signal)

    async def _reloader() -> None:
        while True:
            await reloads.get()
            try:
                await controller.reload(config_path)
            except ConfigError as exc:
                log.error("reload rejected, keeping the running config:\n%s", exc)
            except OSError as exc:
                log.error("reload failed while applying: %s", exc)

    reloader = asyncio.create_task(_reloader())
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        reloader.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await controller.close()


def run(config_path: Path) -> None:
    """Blocking entry point used by `sluice run`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(config_path))
