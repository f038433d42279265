"""Startup, run, reload and shutdown of one sluice process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

from sluice.config import Config, ConfigError, load_config
from sluice.control import systemd
from sluice.control.announce import Announcer
from sluice.control.api import AdminServer, TokenError, build_app, read_token
from sluice.control.controller import Controller
from sluice.control.metrics import Sources, build_registry

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


def _token(config: Config) -> str | None:
    if config.admin is None or config.admin.token_file is None:
        return None
    try:
        return read_token(config.admin.token_file)
    except TokenError as exc:
        raise ConfigError([f"admin.token_file: {exc}"]) from None


def _announcer(config: Config) -> Announcer | None:
    """The BGP announcer of the ``announce:`` block (BIRD runs as sluice's child), or None."""
    return None if config.announce is None else Announcer(config.announce)


def metrics_sources(controller: Controller) -> Sources:
    sources = Sources(
        stats=controller.stats,
        health=controller.monitor.records,
        weights=controller.effective_weights,
        transitions=lambda: controller.monitor.transitions,
        reloads=lambda: controller.reloads,
        closed_by_control=lambda: controller.closed_by_control,
    )
    if (announcer := controller.announcer) is not None:
        sources.announce_changes = lambda: announcer.counts
        sources.announced = announcer.prefix_states
        sources.announce_errors = lambda: announcer.errors
    return sources


async def serve(config_path: Path) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP (or ``POST /api/v1/reload``) reloads `config_path` (a bad
    file keeps the running config).

    Shutdown is graceful: stop taking new flows, let established ones finish for up to
    ``shutdown_timeout``, then close them; a second SIGTERM/SIGINT closes everything at once.
    systemd is told READY=1 / RELOADING=1 / STOPPING=1 when NOTIFY_SOCKET is set.
    """
    config = load_config(config_path)
    token = _token(config)
    controller = Controller(config, announcer=_announcer(config))
    await controller.start()
    loop = asyncio.get_running_loop()
    reload_lock = asyncio.Lock()

    async def reload() -> Config:
        async with reload_lock:
            systemd.notify(systemd.reloading_message())
            try:
                new = await controller.reload(config_path)
            finally:
                systemd.notify("READY=1")
            if new.admin != config.admin:
                log.warning("the admin block changed; it takes effect at the next restart")
            if new.announce is not None and config.announce is None:
                log.warning("the announce block was added; it takes effect at the next restart")
            return new

    admin: AdminServer | None = None
    if config.admin is not None:
        registry = build_registry(metrics_sources(controller))
        admin = AdminServer(
            config.admin,
            lambda unix: build_app(controller, token=token, over_unix=unix, reload=reload, registry=registry),
        )
        try:
            await admin.start()
        except BaseException:
            await controller.close()
            raise
    log.info(
        "sluice running: %s", ", ".join(f"{v.name}={v.protocol}/{v.listen}" for v in controller.config.vips)
    )
    stop = asyncio.Event()
    force = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue(maxsize=1)

    def _on_stop_signal() -> None:
        if stop.is_set():
            log.warning("second stop signal: closing every flow now")
            force.set()
        stop.set()

    def _on_reload_signal() -> None:
        if reloads.empty():
            reloads.put_nowait(None)

    loop.add_signal_handler(signal.SIGTERM, _on_stop_signal)
    loop.add_signal_handler(signal.SIGINT, _on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, _on_reload_signal)

    async def _reloader() -> None:
        while True:
            await reloads.get()
            try:
                await reload()
            except ConfigError as exc:
                log.error("reload rejected, keeping the running config:\n%s", exc)
            except OSError as exc:
                log.error("reload failed while applying: %s", exc)

    reloader = asyncio.create_task(_reloader())
    systemd.notify("READY=1")
    try:
        await stop.wait()
        systemd.notify("STOPPING=1")
        reloader.cancel()
        timeout = controller.config.shutdown_timeout
        log.info(
            "shutting down: no new flows; waiting up to %.0fs for %d flows",
            timeout,
            controller.active_flows(),
        )
        graceful = asyncio.create_task(controller.shutdown(timeout))
        forced = asyncio.create_task(force.wait())
        await asyncio.wait({graceful, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not graceful.done():
            graceful.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await graceful
    finally:
        reloader.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await controller.close()
        if admin is not None:
            await admin.close()
        log.info("stopped")


def run(config_path: Path) -> None:
    """Blocking entry point used by `sluice run`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(config_path))
