"""What the probes answer: ready to take traffic, and alive.

Ready: the tables are recovered and no rebalance is under way. A destination
whose stream refuses records has them parked (worker.parking): the worker
stays ready and alive, and says which destination is parked and why. Alive:
the worker is not stuck, meaning neither waiting on lag with no event
fetched (worker.faust.repair) nor holding events with no batch completed for
longer than ``stall_timeout_s``.
A worker that is not alive is restarted by its orchestrator; one that is not
ready is only taken out of service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from worker.vocabulary import DeliveryState


class Delivery(Protocol):
    """One destination's state (worker.parking.DestinationStatus)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> DeliveryState: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def parked(self) -> int: ...

    @property
    def oldest_age_s(self) -> float: ...


class Stuck(Protocol):
    @property
    def stuck(self) -> bool: ...


class Health:
    """The two probes of one worker.

    ``app`` is the Faust app (its table recovery and rebalancing state);
    ``destinations`` the destinations' delivery states; ``repairs`` the fetch watchdog, or
    None; ``stalled_s`` how long events have waited with no batch completed;
    ``stall_timeout_s`` how long that may last before the worker counts as stuck.
    """

    def __init__(
        self,
        app: Any,
        destinations: Callable[[], Sequence[Delivery]],
        repairs: Stuck | None,
        stalled_s: Callable[[], float],
        stall_timeout_s: float,
    ) -> None:
        self._app = app
        self._destinations = destinations
        self._repairs = repairs
        self._stalled_s = stalled_s
        self._stall_timeout_s = stall_timeout_s

    def ready(self) -> tuple[bool, str]:
        if not self._app.tables.recovery.completed.is_set() or self._app.rebalancing:
            return False, "tables recovering"
        held = [
            f"destination {d.name} {d.state}" + (f": {d.reason}" if d.reason else "")
            for d in self._destinations()
            if d.state is not DeliveryState.DIRECT
        ]
        return True, "; ".join(["ready", *held])

    def destinations(self) -> dict[str, dict[str, Any]]:
        """Each destination's delivery state, for /readyz."""
        return {
            d.name: {
                "state": d.state.value,
                "reason": d.reason,
                "parkedRecords": d.parked,
                "oldestParkedAgeSeconds": round(d.oldest_age_s, 1),
            }
            for d in self._destinations()
        }

    def alive(self) -> tuple[bool, str]:
        if self._repairs is not None and self._repairs.stuck:
            return False, "stuck: lag waiting, no event fetched"
        stalled = self._stalled_s()
        if stalled > self._stall_timeout_s:
            return False, f"stuck: no batch completed for {stalled:.0f}s with events waiting"
        return True, "alive"
