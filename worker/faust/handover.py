"""The consumer hands a fetched record to the streams without a task when it can.

faust-streaming 0.15.3's ``Consumer._drain_messages`` delivers each record with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: two
tasks, an ``asyncio.wait`` and its callbacks per record, so that a delivery
blocked on a full stream buffer can be abandoned when flow stops (a rebalance).
The delivery almost never blocks: decoding is synchronous and the stream's
queue has room. Here the delivery is started at once; if it finishes without
waiting (the common case) nothing else is created, and the flow-control wait
is never started. If it does wait, the rest of it runs under the original
``wait_first`` exactly as before. A performance change, not a fix: the
semantics are those of the original, in which a delivery that completes is
never undone. Not reported upstream.

Proved by tests/unit/test_faust_handover.py (the same records and exceptions
either way, and the flow-control race) and, end to end, by the kill and
scaling tests.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport import consumer as faust_consumer
from mode.services import WaitResults

original_wait_first = faust_consumer.Consumer.wait_first


class Resume:
    """The rest of a coroutine already stepped once, which yielded ``pending``."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                sent = yield pending
            except BaseException as exc:  # thrown in by the task (cancellation)
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> WaitResults:  # noqa: ASYNC109
    """``Service.wait_first`` that runs a first coroutine eagerly (see module)."""
    first = coros[0] if coros else None
    if not isinstance(first, types.CoroutineType):
        return await original_wait_first(self, *coros, timeout=timeout)
    try:
        pending = first.send(None)
    except StopIteration as stop:
        _close(coros[1:])
        return WaitResults([first], [stop.value], False)
    except BaseException:
        _close(coros[1:])
        raise
    return await original_wait_first(self, Resume(first, pending), *coros[1:], timeout=timeout)


def _close(others: tuple[Any, ...]) -> None:
    for other in others:
        if isinstance(other, types.CoroutineType):
            other.close()  # never started: no "never awaited" warning


def apply() -> None:
    faust_consumer.Consumer.wait_first = wait_first  # type: ignore[method-assign]
