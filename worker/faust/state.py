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


def owned_partitions(app: Any, topic: str) -> frozenset[int] | None:
    """The partitions of ``topic`` this worker owns as active, once their tables
    are recovered; None while a rebalance or a recovery is under way (tables of
    a newly owned partition are incomplete until then)."""
    if app.rebalancing or not app.tables.recovery.completed.is_set():
        return None
    actives = app.assignor.assigned_actives()
    return frozenset(tp.partition for tp in actives if tp.topic == topic)
