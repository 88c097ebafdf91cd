"""worker.faust.handover: the consumer's delivery runs eagerly, with the
results, exceptions and cancellation of mode's ``Service.wait_first``."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from mode import Service

from worker.faust import handover


class Consumer(Service):
    pass


async def delivered(value: Any) -> Any:
    return value


def count_tasks_created(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    created: list[Any] = []
    real = asyncio.ensure_future

    def spy(coro: Any, **kwargs: Any) -> Any:
        created.append(coro)
        return real(coro, **kwargs)

    monkeypatch.setattr(asyncio, "ensure_future", spy)
    return created


async def test_a_delivery_that_does_not_wait_creates_no_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = Consumer()
    flow = asyncio.Event()
    created = count_tasks_created(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" fails the test
        results = await handover.wait_first(consumer, delivered(7), flow.wait())
    assert results.results == [7]
    assert not results.stopped
    assert created == []


async def test_a_delivery_that_waits_finishes_under_mode_s_wait_first() -> None:
    consumer = Consumer()
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def blocked() -> str:
        await asyncio.sleep(0)  # a bare yield first
        return await room

    flow = asyncio.Event()
    waiting = asyncio.ensure_future(handover.wait_first(consumer, blocked(), flow.wait()))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    room.set_result("put")
    results = await waiting
    assert "put" in results.results
    assert not results.stopped


async def test_flow_suspended_while_the_delivery_waits_cancels_it() -> None:
    consumer = Consumer()
    cancelled = asyncio.Event()

    async def blocked() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    flow = asyncio.Event()
    waiting = asyncio.ensure_future(handover.wait_first(consumer, blocked(), flow.wait()))
    await asyncio.sleep(0.01)
    flow.set()  # a rebalance suspends the flow
    results = await waiting
    assert results.results == [True]
    await asyncio.sleep(0)
    assert cancelled.is_set()


async def test_exceptions_propagate_before_and_after_waiting() -> None:
    consumer = Consumer()

    async def fails_at_once() -> None:
        raise ValueError("at once")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    with pytest.raises(ValueError, match="at once"):
        await handover.wait_first(consumer, fails_at_once(), asyncio.Event().wait())
    with pytest.raises(KeyError, match="later"):
        await handover.wait_first(consumer, fails_later(), asyncio.Event().wait())


async def test_anything_but_a_coroutine_goes_to_mode_s_wait_first() -> None:
    consumer = Consumer()
    done = asyncio.Event()
    done.set()
    results = await handover.wait_first(consumer, done)
    assert results.done == [done]  # type: ignore[comparison-overlap]
