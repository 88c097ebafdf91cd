"""The probes: /healthz fails when events wait and no batch completes; /readyz
while tables recover or a stream is not writable (worker/health.py, worker/web.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson

from worker.health import Health
from worker.web import WebServer


def app(recovered: bool = True, rebalancing: bool = False) -> Any:
    completed = asyncio.Event()
    if recovered:
        completed.set()
    recovery = SimpleNamespace(completed=completed)
    return SimpleNamespace(tables=SimpleNamespace(recovery=recovery), rebalancing=rebalancing)


def writer(stream: str, writable: bool) -> Any:
    return SimpleNamespace(stream=stream, writable=writable)


async def probe(health: Health, path: str) -> tuple[int, Any]:
    server = WebServer("127.0.0.1", 0, health.ready, health.alive)
    handler = {"/healthz": server._healthz, "/readyz": server._readyz}[path]
    response = await handler(None)  # type: ignore[arg-type]
    assert response.body is not None
    return response.status, orjson.loads(response.body)  # type: ignore[arg-type]


def stalled_for(seconds: float, repairs: Any = None) -> Health:
    return Health(app(), [], repairs, lambda: seconds, stall_timeout_s=600.0)


async def test_alive_while_batches_complete() -> None:
    assert await probe(stalled_for(0.0), "/healthz") == (200, {"status": "alive"})
    assert (await probe(stalled_for(599.0), "/healthz"))[0] == 200


async def test_stuck_once_no_batch_completed_for_the_timeout() -> None:
    status, body = await probe(stalled_for(601.0), "/healthz")
    assert status == 503
    assert "no batch completed for 601s" in body["status"]


async def test_stuck_when_lag_waits_and_no_event_is_fetched() -> None:
    status, body = await probe(stalled_for(0.0, SimpleNamespace(stuck=True)), "/healthz")
    assert (status, body) == (503, {"status": "stuck: lag waiting, no event fetched"})


async def test_ready_only_when_recovered_and_every_stream_writable() -> None:
    def ready(health: Health) -> Any:
        return probe(health, "/readyz")

    streams = [writer("a", True), writer("b", True)]
    assert await ready(Health(app(), streams, None, lambda: 0.0, 600.0)) == (
        200,
        {"ready": True, "detail": "ready"},
    )
    for not_ready, detail in (
        (Health(app(recovered=False), streams, None, lambda: 0.0, 600.0), "tables recovering"),
        (Health(app(rebalancing=True), streams, None, lambda: 0.0, 600.0), "tables recovering"),
        (
            Health(app(), [writer("a", True), writer("b", False)], None, lambda: 0.0, 600.0),
            "stream b not writable",
        ),
    ):
        assert await ready(not_ready) == (503, {"ready": False, "detail": detail})
