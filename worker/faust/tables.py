"""The pipeline's state tables on Faust tables, and the two private hooks they need.

- ``faust.streams._current_event``: Faust picks a table write's changelog
  partition (and RocksDB's partition store) from the current event, and has no
  public way to choose it. Tables here are written after a whole batch, so
  each key is written in the scope of the last event that touched it: same
  profile id, same partition number.
- ``Table.send_changelog``: Faust drops the future of a write's changelog
  message and its producer flush gives up after 0.1 s with writes queued. The
  offsets of a batch must not be committed before its state is durable (a
  restart would find stale state and drop exports: a lost "exited" in the
  kill test), so the futures are kept and awaited.

Proved by tests/integration/test_pipeline.py::test_killing_the_worker_loses_nothing
and ::test_restart_recovers_state.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event


@contextmanager
def event_scope(event: Any) -> Iterator[None]:
    """Makes ``event`` Faust's current event while tables are touched."""
    token = _current_event.set(weakref.ref(event) if event is not None else None)
    try:
        yield
    finally:
        _current_event.reset(token)


class FaustTables:
    """The pipeline's StateTables on two Faust tables keyed by profile id."""

    def __init__(self, profiles: Any, memberships: Any) -> None:
        self.profiles = profiles
        self.memberships = memberships
        self._pending: list[tuple[Any, Callable[[], Any]]] = []
        for table in (profiles, memberships):
            table.send_changelog = self._tracking(table.send_changelog)

    def _tracking(self, send_changelog: Callable[..., Any]) -> Callable[..., Any]:
        def send(*args: Any, **kwargs: Any) -> Any:
            future = send_changelog(*args, **kwargs)
            self._pending.append((future, lambda: send_changelog(*args, **kwargs)))
            return future

        return send

    async def flush(self) -> None:
        """Waits until Kafka acknowledged every changelog write made so far.

        A write Kafka refused is sent again at once and the error raised: the
        batch is retried, and its retry finds the tables already holding the
        new values (so it writes nothing itself) and waits for these.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        results = await asyncio.gather(*(future for future, _ in pending), return_exceptions=True)
        failed = [
            (again, result)
            for (_, again), result in zip(pending, results, strict=True)
            if isinstance(result, BaseException)
        ]
        for again, _ in failed:
            self._pending.append((again(), again))
        if failed:
            raise failed[0][1]

    def get_profile(self, profile_id: str, scope: Any) -> dict[str, Any] | None:
        with event_scope(scope):
            value: dict[str, Any] | None = self.profiles.get(profile_id)
            return value

    def get_memberships(self, profile_id: str, scope: Any) -> dict[str, Any] | None:
        with event_scope(scope):
            value: dict[str, Any] | None = self.memberships.get(profile_id)
            return value

    def put_profile(self, profile_id: str, value: dict[str, Any] | None, scope: Any) -> None:
        self._put(self.profiles, profile_id, value, scope)

    def put_memberships(self, profile_id: str, value: dict[str, Any] | None, scope: Any) -> None:
        self._put(self.memberships, profile_id, value, scope)

    @staticmethod
    def _put(table: Any, key: str, value: dict[str, Any] | None, scope: Any) -> None:
        with event_scope(scope):
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
