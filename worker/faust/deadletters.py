"""The dead-letter topic, written with the Faust app's producer.

The producer is the one that writes the tables' changelogs: a dead letter
then shares its delivery guarantees (acks=all) and its connection.
"""

from __future__ import annotations

from typing import Any


class DeadLetterTopic:
    """The pipeline's dead-letter sink on ``topic``."""

    def __init__(self, app: Any, topic: str) -> None:
        self._app = app
        self._topic = topic

    async def send(self, key: bytes | None, value: bytes) -> None:
        await self._app.producer.send_and_wait(self._topic, key, value, None, None, None)
