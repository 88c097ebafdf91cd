"""Dead letters fit in one Kafka message whatever they carry (worker/deadletters.py)."""

from __future__ import annotations

import base64

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import deadletters
from worker.deadletters import MAX_BYTES, build
from worker.vocabulary import DeadLetterReason as Reason

SOURCE = {"topic": "segment-qualifications", "partition": 3, "offset": 18233}


def _body(letter: deadletters.DeadLetter) -> dict[str, object]:
    body = orjson.loads(letter.value)
    assert isinstance(body, dict)
    return body


def test_a_small_event_is_kept_whole() -> None:
    letter = build(b"p1", Reason.INVALID_JSON, "not JSON", b"{oops", SOURCE)
    body = _body(letter)
    assert letter.key == b"p1"
    assert letter.reason == "invalid_json"
    assert body["value"] == "{oops"
    assert body["source"] == SOURCE
    assert "truncated" not in body
    assert (
        build(b"p1", Reason.INVALID_JSON, None, b"\xff\xfe", SOURCE).value.find(
            b'"valueBase64":"//4="'
        )
        > 0
    )
    assert _body(build(None, Reason.MISSING_VALUE, "none", None, SOURCE))["value"] is None


def test_escaping_is_counted_a_value_of_nul_bytes() -> None:
    # 170,000 NUL bytes: 1,020,000 bytes once escaped as \u0000 (the reproduction).
    letter = build(b"p1", Reason.INVALID_JSON, "x", b"\x00" * 170_000, SOURCE)
    body = _body(letter)
    assert letter.size < MAX_BYTES
    assert body["truncated"] is True
    assert body["size"] == 170_000
    assert isinstance(body["value"], str)
    assert set(body["value"]) == {"\x00"}
    assert len(body["value"]) > 150_000  # cut to fit, not to a fixed small share


def test_detail_and_context_are_cut() -> None:
    status = "x" * 900_000
    letter = build(b"p1", Reason.INVALID_STATUS, f"status {status!r} is not one of", b"{}", SOURCE)
    body = _body(letter)
    assert letter.size < 20_000
    assert isinstance(body["detail"], str)
    assert len(body["detail"]) == deadletters.MAX_DETAIL_CHARS
    assert body["detail"].endswith("…")


def test_a_long_key_is_cut_and_its_size_recorded() -> None:
    key = b"k" * 450_000
    letter = build(key, Reason.KEY_MISMATCH, f"key {key!r}", b"v" * 900_000, SOURCE)
    body = _body(letter)
    assert letter.size < MAX_BYTES
    assert letter.key == key[: deadletters.MAX_KEY_BYTES]
    assert body["keyTruncated"] is True
    assert body["keySize"] == 450_000


def test_invalid_utf8_over_the_budget_is_base64_not_lost() -> None:
    # Formerly cut at 256 KiB and decoded ignoring errors: the invalid bytes vanished.
    value = (b"\xff" + b"a" * 1000) * 1000
    body = _body(build(b"p1", Reason.INVALID_JSON, "x", value, SOURCE))
    assert "value" not in body
    assert body["truncated"] is True
    assert body["size"] == len(value)
    kept = base64.b64decode(str(body["valueBase64"]))
    assert value.startswith(kept)
    assert len(kept) > 600_000


@settings(max_examples=300, deadline=None)
@given(
    key=st.none() | st.binary(max_size=3000),
    detail=st.text(max_size=5000),
    payload=st.none()
    | st.binary(max_size=2000)
    | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(0, 300_000))
    | st.builds(
        lambda t, n: (t * n).encode(), st.text(min_size=1, max_size=4), st.integers(0, 400_000)
    ),
    context=st.dictionaries(
        st.sampled_from(["destination", "stream", "partitionKey"]), st.text(max_size=3000)
    ),
)
def test_every_dead_letter_fits_and_holds_a_prefix_of_its_payload(
    key: bytes | None, detail: str, payload: bytes | None, context: dict[str, str]
) -> None:
    letter = build(key, Reason.INTERNAL_ERROR, detail, payload, SOURCE, **context)
    assert letter.size < MAX_BYTES
    body = _body(letter)
    assert body["reason"] == "internal_error"
    assert body["source"] == SOURCE
    if payload is None:
        assert body["value"] is None
        return
    if "value" in body:
        kept = str(body["value"]).encode()
    else:
        kept = base64.b64decode(str(body["valueBase64"]))
    assert payload.startswith(kept)
    assert body.get("truncated", False) == (kept != payload)
    if kept != payload:
        assert body["size"] == len(payload)
