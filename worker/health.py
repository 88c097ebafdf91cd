"""What the probes answer: ready to take traffic, and alive.

Ready: the tables are recovered, no rebalance is under way, and every
destination's stream is writable. Alive: the worker is not stuck, meaning
neither waiting on lag with no event fetched (worker.faust.repair) nor holding
events with no batch completed for longer than ``stall_timeout_s``.
A worker that is not alive is restarted by its orchestrator; one that is not
ready is only taken out of service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Writable(Protocol):
    stream: str

    @property
    def writable(self) -> bool: ...


class Stuck(Protocol):
    @property
    def stuck(self) -> bool: ...


class Health:
    """The two probes of one worker.

    ``app`` is the Faust app (its table recovery and rebalancing state);
    ``writers`` the destinations' writers; ``repairs`` the fetch watchdog, or
    None; ``stalled_s`` how long events have waited with no batch completed;
    ``stall_timeout_s`` how long that may last before the worker counts as stuck.
    """

    def __init__(
        self,
        app: Any,
        writers: Sequence[Writable],
        repairs: Stuck | None,
        stalled_s: Callable[[], float],
        stall_timeout_s: float,
    ) -> None:
        self._app = app
        self._writers = writers
        self._repairs = repairs
        self._stalled_s = stalled_s
        self._stall_timeout_s = stall_timeout_s

    def ready(self) -> tuple[bool, str]:
        if not self._app.tables.recovery.completed.is_set() or self._app.rebalancing:
            return False, "tables recovering"
        for writer in self._writers:
            if not writer.writable:
                return False, f"stream {writer.stream} not writable"
        return True, "ready"

    def alive(self) -> tuple[bool, str]:
        if self._repairs is not None and self._repairs.stuck:
            return False, "stuck: lag waiting, no event fetched"
        stalled = self._stalled_s()
        if stalled > self._stall_timeout_s:
            return False, f"stuck: no batch completed for {stalled:.0f}s with events waiting"
        return True, "alive"
