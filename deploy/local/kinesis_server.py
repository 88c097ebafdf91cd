"""moto's server as the local Kinesis endpoint, with two fixes to its Kinesis shard.

moto 5.2's ``Shard.put_record`` says of itself "not safe for concurrency": it
takes the last sequence number and stores the record under the next one, so
two concurrent ``PutRecords`` calls to one shard can get the same number and
one record silently replaces the other. Real Kinesis never does that, and our
tests send concurrent calls on purpose. It also finds the last number by
listing every key, so puts slow down as a stream grows. Both are fixed here
(a lock per process, the last key in O(1)); everything else is moto's.

    python deploy/local/kinesis_server.py -H 127.0.0.1 -p 4567
"""

from __future__ import annotations

import threading
from typing import Any

from moto import server
from moto.kinesis import models

_put_lock = threading.Lock()
_moto_put_record = models.Shard.put_record


def _last_sequence_number(self: Any) -> int:
    return next(reversed(self.records)) if self.records else 0


def _put_record(self: Any, *args: Any, **kwargs: Any) -> str:
    with _put_lock:
        result: str = _moto_put_record(self, *args, **kwargs)
        return result


models.Shard.get_max_sequence_number = _last_sequence_number  # type: ignore[method-assign]
models.Shard.put_record = _put_record  # type: ignore[method-assign]

if __name__ == "__main__":
    server.main()
