"""Dead letters: what could not be applied or delivered, and why.

A dead letter must fit in one Kafka message whatever the event held: Kafka
refuses a larger one, and a batch whose dead letter is refused could only be
retried forever. So every part is cut to its share *after* JSON escaping
(escaping can grow text six-fold: a NUL byte becomes ``\\u0000``), and the
whole is checked against ``MAX_BYTES`` by construction, not by hope.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from worker.vocabulary import DeadLetterReason

# Key + value of one dead letter. Kafka's default limit is 1,048,576 bytes for
# a producer request and 1,048,588 for a record batch on the broker; what is
# left is room for the record and batch headers.
MAX_BYTES = 1_000_000
# A Kafka key longer than this is cut (the body says so and gives its size).
MAX_KEY_BYTES = 1024
# ``detail`` quotes values (a key, a status); it is cut to this many characters.
MAX_DETAIL_CHARS = 1000
# Room kept for the fields around the payload (reason, source, context...).
_ENVELOPE_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter: the Kafka key and JSON value to write, and its reason."""

    key: bytes | None
    value: bytes
    reason: DeadLetterReason

    @property
    def size(self) -> int:
        return len(self.key or b"") + len(self.value)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cut_text(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _encoded_len(text: str) -> int:
    return len(orjson.dumps(text))


def _longest_prefix(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose JSON string encoding fits in ``budget`` bytes."""
    if _encoded_len(text) <= budget:
        return text
    # Each character costs 1 to 6 bytes once encoded: search between the bounds.
    low, high = 0, min(len(text), budget)
    while low < high:
        middle = (low + high + 1) // 2
        if _encoded_len(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def payload_fields(value: bytes | None, budget: int) -> dict[str, Any]:
    """``value`` (UTF-8 text) or ``valueBase64`` (anything else), at most ``budget``
    bytes once encoded; when cut, ``truncated`` and the full ``size`` say so."""
    if value is None:
        return {"value": None}
    size = len(value)
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        cut = _longest_prefix(text, budget)
        if cut is text:
            return {"value": text}
        return {"value": cut, "truncated": True, "size": size}
    room = max(0, (budget - 2) // 4 * 3)  # base64: 4 bytes per 3 plus quotes, no escaping
    if room >= size:
        return {"valueBase64": base64.b64encode(value).decode()}
    return {"valueBase64": base64.b64encode(value[:room]).decode(), "truncated": True, "size": size}


def build(
    key: bytes | None,
    reason: DeadLetterReason,
    detail: str | None,
    payload: bytes | None,
    source: dict[str, Any],
    **context: Any,
) -> DeadLetter:
    """A dead letter: why, the source offset, what could not go, and ``context``.

    ``context`` values are short strings from configuration or the record
    (destination, stream, partition key); they are cut like ``detail``.
    """
    body: dict[str, Any] = {
        "reason": reason,
        "detail": None if detail is None else _cut_text(detail, MAX_DETAIL_CHARS),
        **{
            name: _cut_text(value, MAX_DETAIL_CHARS) if isinstance(value, str) else value
            for name, value in context.items()
        },
        "source": source,
        "failedAt": _now(),
    }
    if key is not None and len(key) > MAX_KEY_BYTES:
        body["keyTruncated"] = True
        body["keySize"] = len(key)
        key = key[:MAX_KEY_BYTES]
    envelope = len(orjson.dumps(body))
    budget = MAX_BYTES - len(key or b"") - envelope - _ENVELOPE_BYTES
    body.update(payload_fields(payload, budget))
    value = orjson.dumps(body)
    if len(value) + len(key or b"") > MAX_BYTES:  # cannot happen; never let it wedge
        body.pop("value", None)
        body.pop("valueBase64", None)
        body.update({"value": None, "truncated": True, "size": len(payload or b"")})
        value = orjson.dumps(body)
    return DeadLetter(key, value, reason)
