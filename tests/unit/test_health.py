"""The probes: /healthz fails when events wait and no batch completes; /readyz
while tables recover or a rebalance is under way; a parked destination is told
(worker/health.py, worker/web.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson

from worker.health import Health
from worker.parking import DestinationStatus
from worker.vocabulary import DeliveryState
from worker.web import WebServer


def app(recovered: bool = True, rebalancing: bool = False) -> Any:
    completed = asyncio.Event()
    if recovered:
        completed.set()
    recovery = SimpleNamespace(completed=completed)
    return SimpleNamespace(tables=SimpleNamespace(recovery=recovery), rebalancing=rebalancing)


def delivery(name: str, state: DeliveryState, reason: str | None = None) -> Any:
    return DestinationStatus(
        name, state, reason, 3 if state is not DeliveryState.DIRECT else 0, 1.5
    )


async def probe(health: Health, path: str) -> tuple[int, Any]:
    server = WebServer("127.0.0.1", 0, health.ready, health.alive)
    handler = {"/healthz": server._healthz, "/readyz": server._readyz}[path]
    response = await handler(None)  # type: ignore[arg-type]
    assert response.body is not None
    return response.status, orjson.loads(response.body)  # type: ignore[arg-type]


def stalled_for(seconds: float, repairs: Any = None) -> Health:
    return Health(app(), list, repairs, lambda: seconds, stall_timeout_s=600.0)


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


async def test_ready_when_recovered_whatever_the_destinations_say() -> None:
    def ready(health: Health) -> Any:
        return probe(health, "/readyz")

    def direct() -> list[Any]:
        return [delivery("a", DeliveryState.DIRECT), delivery("b", DeliveryState.DIRECT)]

    assert await ready(Health(app(), direct, None, lambda: 0.0, 600.0)) == (
        200,
        {"ready": True, "detail": "ready"},
    )
    for not_ready in (
        Health(app(recovered=False), direct, None, lambda: 0.0, 600.0),
        Health(app(rebalancing=True), direct, None, lambda: 0.0, 600.0),
    ):
        assert await ready(not_ready) == (503, {"ready": False, "detail": "tables recovering"})


async def test_a_parked_destination_leaves_the_worker_ready_and_says_why() -> None:
    def held() -> list[Any]:
        return [
            delivery("a", DeliveryState.PARKED, "ResourceNotFoundException: gone"),
            delivery("b", DeliveryState.DIRECT),
            delivery("c", DeliveryState.PAUSED, "paused by a command"),
        ]

    health = Health(app(), held, None, lambda: 0.0, 600.0)
    server = WebServer("127.0.0.1", 0, health.ready, health.alive, health.destinations)
    response = await server._readyz(None)  # type: ignore[arg-type]
    body = orjson.loads(response.body)  # type: ignore[arg-type]
    assert response.status == 200
    assert body["detail"] == (
        "ready; destination a parked: ResourceNotFoundException: gone; "
        "destination c paused: paused by a command"
    )
    assert body["destinations"]["a"] == {
        "state": "parked",
        "reason": "ResourceNotFoundException: gone",
        "parkedRecords": 3,
        "oldestParkedAgeSeconds": 1.5,
    }
    assert body["destinations"]["b"]["state"] == "direct"
    assert health.alive() == (True, "alive")
