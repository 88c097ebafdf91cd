"""`python -m worker check`: is this configuration usable here and now?"""

from __future__ import annotations

import sys

from aiokafka.errors import KafkaError

from worker import logs
from worker.kafka_client import diagnose_connection
from worker.kinesis import AioBotoTransport, TransportError
from worker.settings import ConfigError, Settings
from worker.topics import preflight


async def check(settings: Settings) -> int:
    """Prints one line per check; returns 0 when every check passed."""
    failures = 0
    # A failure line can quote an exception, and an exception can quote a secret.
    redact = logs.Redactor(logs.secret_values(settings))

    def report(ok: bool, line: str) -> None:
        nonlocal failures
        failures += 0 if ok else 1
        line = redact(line)
        print(f"{'ok ' if ok else 'FAIL'} {line}", file=sys.stdout if ok else sys.stderr)

    report(True, f"configuration: {len(settings.destinations)} destination(s)")
    try:
        layout = await preflight(settings)
        report(True, f"kafka: input topics co-partitioned ({layout.partitions} partitions)")
    except (ConfigError, KafkaError) as exc:
        # "cannot reach" hides a refused login or an untrusted certificate, and a Kafka
        # error can follow a login the broker refused silently (OAUTHBEARER): say which.
        unclear = not isinstance(exc, ConfigError) or "cannot reach" in str(exc)
        cause = await diagnose_connection(settings.kafka) if unclear else None
        report(False, f"kafka: {cause or exc}")
    for index, destination in enumerate(settings.destinations):
        transport = AioBotoTransport(destination.transport())
        where = f"destinations.{index} ({destination.name!r}) stream {destination.stream!r}"
        try:
            summary = await transport.describe_stream(destination.stream)
        except TransportError as exc:
            report(False, f"{where}: {exc}")
            continue
        finally:
            await transport.close()
        if summary.status not in ("ACTIVE", "UPDATING"):
            report(False, f"{where}: status {summary.status}, not writable")
        else:
            report(
                True,
                f"{where}: {summary.status}, {summary.open_shards} open shard(s), "
                f"records up to {summary.max_record_bytes // 1024} KiB",
            )
    return 0 if failures == 0 else 1
