"""The worker's HTTP port: /metrics, /healthz and /readyz.

Up from start-up, before table recovery, so that probes and scrapes work
while the worker is not ready yet. What "alive" and "ready" mean is decided
elsewhere (worker.health); this module only serves the answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker import metrics

log = logging.getLogger(__name__)

# (ok, why): why is "ready", "alive" or what is wrong.
Probe = Callable[[], tuple[bool, str]]


class WebServer(Service):
    """Serves the probes and the metrics on ``host``:``port``.

    ``ready`` answers /readyz and sets ``kd_ready`` at each scrape; ``alive``
    answers /healthz. Both are called on every request and must not block.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ready: Probe,
        alive: Probe,
        details: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``details``: more for /readyz (each destination's delivery state)."""
        super().__init__()
        self.details = details
        self.host = host
        self.port = port
        self.ready = ready
        self.alive = alive
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        ok, _ = self.ready()
        metrics.READY.set(1 if ok else 0)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, why = self.alive()
        return web.json_response({"status": why}, status=200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, why = self.ready()
        body: dict[str, Any] = {"ready": ok, "detail": why}
        if self.details is not None:
            body["destinations"] = self.details()
        return web.json_response(body, status=200 if ok else 503)

    async def on_start(self) -> None:
        application = web.Application()
        application.router.add_get("/metrics", self._metrics)
        application.router.add_get("/healthz", self._healthz)
        application.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(application, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("serving /metrics, /healthz, /readyz on %s:%d", self.host, self.port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
