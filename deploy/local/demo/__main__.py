"""`make demo` (`python -m deploy.local.demo`): the whole run, and its clean-up.

Environment: KAFKA_BOOTSTRAP (127.0.0.1:9092), KINESIS_ENDPOINT (http://127.0.0.1:4567).
Exit code 0 when the streams and the dead-letter topic hold exactly what was expected.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from types import FrameType

import aiohttp
from aiokafka import AIOKafkaProducer

from reference import Config, Model

from .admin import delete_streams, drop_topics, kinesis_client, prepare_streams, prepare_topics
from .config import CONFIG, PROFILES, REPO, SEED, load_config, say
from .feed import Feed
from .observe import Received, read_dead_letters, read_metrics, read_stream
from .process import Worker, log_tail, start_worker, wait_ready
from .report import report
from .waves import PhaseTiming, run_phase


async def feed_and_check(bootstrap: str, endpoint: str, config: Config, worker: Worker) -> bool:
    started = time.monotonic()
    model = Model(config)
    feed = Feed(config, random.Random(SEED), model)
    feed.build()
    total = sum(len(w.messages) for w in feed.waves)
    say(
        f"generated {total:,} events for {PROFILES:,} profiles in "
        f"{time.monotonic() - started:.1f} s (seed {SEED}); expecting {len(model.records):,} "
        f"records and {model.dead_letters.total()} dead letters"
    )
    timings: list[PhaseTiming] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        if not await wait_ready(session, worker):
            return False
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            produced = 0
            for wave in feed.waves:
                produced += len(wave.messages)
                say(f"wave {wave.name!r}: producing {len(wave.messages):,} events")
                timing = await run_phase(
                    session,
                    producer,
                    worker,
                    wave.name,
                    wave.messages,
                    produced,
                    wave.records_after,
                )
                if timing is None:
                    break
                timings.append(timing)
        finally:
            await producer.stop()
        final = await read_metrics(session) if worker.alive() else None
    if len(timings) < len(feed.waves):
        say("reading back what arrived anyway")
    kinesis = kinesis_client(endpoint)
    received: list[Received] = []
    for index, destination in enumerate(config.destinations):
        received.extend(read_stream(kinesis, index, destination.stream))
    letters = await read_dead_letters(bootstrap, config.dlq_topic, model.dead_letters.total())
    say(f"read back {len(received):,} records from Kinesis, {len(letters)} dead letters")
    ok = report(config, model, received, letters, timings, final)
    return ok and len(timings) == len(feed.waves)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cleanup(bootstrap: str, endpoint: str, config: Config, worker: Worker | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    say("cleaning up")
    if worker is not None:
        worker.stop()
        say(f"worker stopped (exit code {worker.process.returncode})")
    try:
        asyncio.run(drop_topics(bootstrap, config))
        say("deleted the demo's topics")
    except Exception as exc:
        say(f"could not delete the demo's topics: {exc!r}")
    try:
        delete_streams(kinesis_client(endpoint), config)
        say("deleted the demo's streams")
    except Exception as exc:
        say(f"could not delete the demo's streams: {exc!r}")


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP") or "127.0.0.1:9092"
    endpoint = os.environ.get("KINESIS_ENDPOINT") or "http://127.0.0.1:4567"
    config = load_config()
    signal.signal(signal.SIGTERM, _terminate)
    say(f"Kafka at {bootstrap}, Kinesis at {endpoint}, configuration {CONFIG.relative_to(REPO)}")
    worker: Worker | None = None
    try:
        asyncio.run(prepare_topics(bootstrap, config))
        prepare_streams(kinesis_client(endpoint), config)
        worker = start_worker(bootstrap, endpoint, config)
        ok = asyncio.run(feed_and_check(bootstrap, endpoint, config, worker))
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as exc:
        say(f"failed: {exc!r}")
        if worker is not None:
            print(log_tail(), flush=True)
        return 1
    finally:
        cleanup(bootstrap, endpoint, config, worker)


if __name__ == "__main__":
    sys.exit(main())
