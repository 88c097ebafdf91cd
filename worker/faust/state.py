"""Read-only views of Faust's private state, for metrics and repairs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def committed_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """The committed offset of each assigned partition as Faust knows it (read
    from the group at assignment, then updated on each commit)."""
    offsets: Mapping[Any, int | None] = consumer._committed_offset
    return offsets


def table_size(table: Any) -> int:
    """Keys in the table's active partitions on this worker.

    RocksDB: the store's own estimate (counting keys would read them all every
    few seconds); it may be off by a few, including one offset key per partition.
    """
    store = table.data
    dbs = getattr(store, "_dbs_for_actives", None)
    if dbs is not None:
        return sum(int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in dbs())
    return len(store)


def owned_partitions(app: Any, topic: str) -> tuple[int, frozenset[int]] | None:
    """Faust's rebalance count and the partitions of ``topic`` this worker owns
    as active, once their tables are recovered; None while a rebalance or a
    recovery is under way (a newly owned partition's tables are incomplete
    until then), or when one began while reading (Faust counts it from the
    consumer's thread)."""
    count = app.rebalancing_count
    if app.rebalancing or not app.tables.recovery.completed.is_set():
        return None
    owned = frozenset(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)
    if app.rebalancing or app.rebalancing_count != count:
        return None
    return count, owned


def rebalance_count(app: Any) -> int:
    """Rebalances begun: what was read of a partition's tables before the last
    one may have been changed by another worker since."""
    count: int = app.rebalancing_count
    return count
