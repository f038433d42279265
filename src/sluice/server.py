"""Startup, run, reload and shutdown of one sluice process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from sluice.config import Config, load_config
from sluice.control import systemd
from sluice.control.announce import Announcer
from sluice.control.api import AdminServer, TokenError, build_app, read_token
from sluice.control.controller import Controller, ReloadResult
from sluice.control.metrics import Sources, build_registry, xdp_counters
from sluice.control.preflight import host_errors
from sluice.dataplane.limits import raise_nofile_limit
from sluice.dataplane.tasks import cancel_and_wait

log = logging.getLogger("sluice")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for exotic platforms
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class StartupError(Exception):
    """sluice could not start; `errors` holds one line per problem, naming what failed (which
    listener, file or interface). Whatever startup had set up is released again."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _token(config: Config) -> str | None:
    if config.admin is None or config.admin.token_file is None:
        return None
    try:
        return read_token(config.admin.token_file)
    except TokenError as exc:
        raise StartupError([f"admin.token_file: {exc}"]) from None


def _one_line(exc: BaseException) -> str:
    """An error as one line: an OSError without its ``[Errno N]``, the file it names kept."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return " ".join(text.split()) or type(exc).__name__


def _announcer(config: Config) -> Announcer | None:
    """The BGP announcer of the ``announce:`` block (BIRD runs as sluice's child), or None."""
    return None if config.announce is None else Announcer(config.announce)


def metrics_sources(controller: Controller) -> Sources:
    sources = Sources(
        stats=controller.stats,
        config=lambda: controller.config,
        health=controller.monitor.records,
        weights=controller.effective_weights,
        transitions=lambda: controller.monitor.transitions,
        clock=controller.monitor.clock,
        reloads=lambda: controller.reloads,
        last_reload=lambda: None if (last := controller.last_reload) is None else (last[0], last[1]),
        last_good_reload=lambda: controller.last_good_reload,
        closed_by_control=lambda: controller.closed_by_control,
        xdp=lambda: xdp_counters(controller.plane("dsr")),
    )
    if (announcer := controller.announcer) is not None:
        sources.announce_changes = lambda: announcer.counts
        sources.announced = announcer.prefix_states
        sources.announce_errors = lambda: announcer.errors
    return sources


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP


class Server:
    """One sluice process, in the steps of uvicorn's ``Server``: `startup`, `main_loop`, `shutdown`.

    SIGHUP (or ``POST /api/v1/reload``) reloads `config_path`: the file is read, parsed and validated
    in a worker thread (`load`, bounded by `controller.RELOAD_PARSE_TIMEOUT_S`) so traffic on the event loop
    never waits for it; a bad file is one logged error, keeps the running config, and no reload
    failure ends the reload task. SIGTERM/SIGINT stop gracefully: take no new flows, let
    established ones finish for up to ``shutdown_timeout``, then close them; a second stop signal
    closes everything at once. systemd is told READY=1 / RELOADING=1 / STOPPING=1 when NOTIFY_SOCKET
    is set.
    """

    def __init__(
        self,
        config_path: Path,
        load: Callable[[Path], Config] = load_config,
        preflight: Callable[[Config], list[str]] = host_errors,
    ) -> None:
        self.config_path = config_path
        self.load = load
        """Reads, parses and validates a config file (raises ConfigError); run off the loop on reloads."""
        self.preflight = preflight
        """What the config needs from the host, checked before anything starts (``sluice check``'s)."""
        self.config: Config | None = None
        """The config read at startup (its ``admin`` and ``announce`` blocks hold until a restart)."""
        self.controller: Controller | None = None
        self.admin: AdminServer | None = None
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self._reload_requests: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        self._reload_lock = asyncio.Lock()
        self._reloader: asyncio.Task[None] | None = None
        self._signals: list[signal.Signals] = []

    async def serve(self) -> None:
        """Start, run until a stop signal, stop gracefully; resources are released on every path."""
        await self.startup()
        try:
            await self.main_loop()
            await self.shutdown()
        finally:
            await self.close()

    # ------------------------------------------------------------ steps

    async def startup(self) -> None:
        """Load the config, check what it needs from the host, start the data planes and the admin
        API, install the signal handlers, then tell systemd READY=1. Any failure raises ConfigError
        or StartupError (one line naming what failed) after releasing what was set up: listeners,
        attached XDP programs, and the pinned maps this start created."""
        config = self.load(self.config_path)
        if errors := self.preflight(config):
            raise StartupError(errors)
        token = _token(config)
        self.config = config
        raise_nofile_limit()  # before the data planes open sockets: 2 descriptors per idle TCP flow
        controller = Controller(config, announcer=_announcer(config))
        self.controller = controller
        step = "starting the data planes"
        try:
            await controller.start()
            if config.admin is not None:
                step = f"admin API on {config.admin.listen}"
                registry = build_registry(metrics_sources(controller))
                self.admin = AdminServer(
                    config.admin,
                    lambda unix: build_app(
                        controller, token=token, over_unix=unix, reload=self.reload, registry=registry
                    ),
                )
                await self.admin.start()
        except BaseException as exc:
            self.admin = self.controller = None
            await controller.close(discard=True)
            if not isinstance(exc, Exception):
                raise
            log.debug("startup failed at: %s", step, exc_info=True)
            raise StartupError([f"{step}: {_one_line(exc)}"]) from exc
        log.info(
            "sluice running: %s",
            ", ".join(f"{v.name}={v.protocol}/{v.listen}" for v in controller.config.vips),
        )
        self._install_signal_handlers()
        self._reloader = asyncio.create_task(self._run_reloads(), name="sluice-reloader")
        systemd.notify("READY=1")

    async def main_loop(self) -> None:
        """Serve until a stop signal; reloads run meanwhile in their own task."""
        await self.should_exit.wait()

    async def shutdown(self) -> None:
        """Graceful stop: no more reloads, no new flows, established flows drain for up to
        ``shutdown_timeout``, or until a second stop signal."""
        _, controller = self._running()
        systemd.notify("STOPPING=1")
        self._stop_reloads()
        timeout = controller.config.shutdown_timeout
        log.info(
            "shutting down: no new flows; waiting up to %.0fs for %d flows",
            timeout,
            controller.active_flows(),
        )
        graceful = asyncio.create_task(controller.shutdown(timeout))
        forced = asyncio.create_task(self.force_exit.wait())
        await asyncio.wait({graceful, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not graceful.done():
            await cancel_and_wait(graceful)

    async def close(self) -> None:
        """Release everything `startup` took: signal handlers, reloads, data planes, the admin API."""
        self._stop_reloads()
        self._remove_signal_handlers()
        if self.controller is not None:
            await self.controller.close()
        if self.admin is not None:
            await self.admin.close()
        log.info("stopped")

    # ------------------------------------------------------------ reloads

    async def reload(self, dry_run: bool = False) -> ReloadResult:
        """Re-read the config file and apply it (one reload at a time); raises ConfigError for a bad
        file, which leaves the running config untouched. Also the admin API's reload. `dry_run`:
        only tell what would change (`Controller.reload`)."""
        started, controller = self._running()
        async with self._reload_lock:
            if dry_run:
                return await controller.reload(self.config_path, load=self.load, dry_run=True)
            systemd.notify(systemd.reloading_message())
            try:
                result = await self._load_and_apply(controller)
            finally:
                systemd.notify("READY=1")
            new = result.config
            if new.admin != started.admin:
                log.warning("the admin block changed; it takes effect at the next restart")
            if new.announce is not None and started.announce is None:
                log.warning("the announce block was added; it takes effect at the next restart")
            return result

    async def _load_and_apply(self, controller: Controller) -> ReloadResult:
        """The file, loaded in a thread, then applied; `controller.reloads` counts the result."""
        return await controller.reload(self.config_path, load=self.load)

    def request_reload(self) -> None:
        """Queue one reload (what SIGHUP does); requests made while one is queued fold into it."""
        if self._reload_requests.empty():
            self._reload_requests.put_nowait(None)

    async def _run_reloads(self) -> None:
        while True:
            await self._reload_requests.get()
            with contextlib.suppress(Exception):  # logged by Controller.reload, one line (or a traceback)
                await self.reload()

    def _stop_reloads(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()

    # ------------------------------------------------------------ signals

    def handle_stop_signal(self) -> None:
        """The first stop signal starts the graceful stop; a second one closes every flow now."""
        if self.should_exit.is_set():
            log.warning("second stop signal: closing every flow now")
            self.force_exit.set()
        self.should_exit.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.handle_stop_signal)
            self._signals.append(sig)
        loop.add_signal_handler(RELOAD_SIGNAL, self.request_reload)
        self._signals.append(RELOAD_SIGNAL)

    def _remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        while self._signals:
            loop.remove_signal_handler(self._signals.pop())

    def _running(self) -> tuple[Config, Controller]:
        """The startup config and the controller; only after `startup`."""
        if self.config is None or self.controller is None:
            raise RuntimeError("the server has not started")
        return self.config, self.controller


async def serve(config_path: Path) -> None:
    """Run `config_path` until SIGTERM/SIGINT (see `Server`)."""
    await Server(config_path).serve()


def run(config_path: Path) -> None:
    """Blocking entry point used by `sluice run`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(config_path))
