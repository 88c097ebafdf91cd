"""/healthz fails when events wait and no batch completes (worker/app.py WebServer)."""

from __future__ import annotations

from typing import Any

import orjson

from worker.app import WebServer


async def health(stalled: float) -> tuple[int, Any]:
    server = WebServer(
        app=None,  # type: ignore[arg-type]  # /healthz does not read the Faust app
        host="127.0.0.1",
        port=0,
        writers=[],
        stalled_s=lambda: stalled,
        stall_timeout_s=600.0,
    )
    response = await server._healthz(None)  # type: ignore[arg-type]
    assert response.body is not None
    return response.status, orjson.loads(response.body)  # type: ignore[arg-type]


async def test_alive_while_batches_complete() -> None:
    assert await health(0.0) == (200, {"status": "alive"})
    assert (await health(599.0))[0] == 200


async def test_stuck_once_no_batch_completed_for_the_timeout() -> None:
    status, body = await health(601.0)
    assert status == 503
    assert "no batch completed for 601s" in body["status"]
