"""Readiness probes for the local stack, run by stack.sh.

`probe.py kafka HOST:PORT` waits until the broker answers a metadata request;
`probe.py kinesis URL` until the endpoint answers a Kinesis API call. Both give
up after --timeout seconds with a message and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

import aioboto3
from aiokafka.admin import AIOKafkaAdminClient


async def _kafka_ready(bootstrap: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        return f"cluster {cluster['cluster_id']}, {len(cluster['brokers'])} broker(s)"
    finally:
        await admin.close()


async def _kinesis_ready(endpoint: str) -> str:
    session = aioboto3.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
    )
    async with session.client("kinesis", endpoint_url=endpoint) as kinesis:
        streams = await kinesis.list_streams()
        return f"{len(streams['StreamNames'])} stream(s)"


async def _wait(kind: str, address: str, give_up_after: float) -> int:
    check = _kafka_ready if kind == "kafka" else _kinesis_ready
    deadline = time.monotonic() + give_up_after
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            detail = await asyncio.wait_for(check(address), timeout=5)
        except Exception as exc:  # any failure means "not yet"
            last_error = exc
            await asyncio.sleep(0.5)
            continue
        print(f"{kind} ready at {address}: {detail}")
        return 0
    print(
        f"{kind} at {address} not ready after {give_up_after:.0f}s: {last_error!r}",
        file=sys.stderr,
    )
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["kafka", "kinesis"])
    parser.add_argument("address")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    # aiokafka logs every refused connection while the broker starts; the probe says it once.
    logging.basicConfig(level=logging.CRITICAL)
    return asyncio.run(_wait(args.kind, args.address, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
