"""A fault-injecting HTTP proxy for the Kinesis API, for tests.

Put it between a Kinesis client (botocore/aiobotocore) and a Kinesis endpoint
(the local moto server, or a fake)::

    proxy = KinesisFaultProxy("http://127.0.0.1:4567", seed=7)
    url = await proxy.start()          # give this URL to the client as endpoint_url
    proxy.faults.throttle_share = 0.3  # change faults at any time
    ...
    await proxy.stop()

Every request is forwarded to the upstream endpoint as it came: method, path,
query, headers (the SigV4 ``Authorization``, ``X-Amz-Target``...) and body.
``PutRecords`` calls (``X-Amz-Target: Kinesis_20131202.PutRecords``) get the
faults of :class:`Faults`; every other call (``DescribeStreamSummary``,
``ListShards``...) is forwarded untouched unless an outage is on.

Wire format: botocore 1.40 (aiobotocore 2.25) speaks JSON 1.1 to Kinesis
(``"protocols": ["json"]`` in its service model; the CBOR encoding is what the
Java SDK uses). A ``PutRecords`` body that is not JSON cannot get per-record
faults: the proxy then answers 400 ``ProxyCannotParse`` rather than silently
injecting nothing (with no per-record fault on, it forwards the body as it is).

Records marked failed by the proxy are withheld from the upstream: the proxy
sends only the others, then merges the upstream's reply entries back into the
original order with the fake failures in place and ``FailedRecordCount``
adjusted. A record the client sees failed is therefore really not in the
stream. Changing the body invalidates the SigV4 signature: fine for moto and
the fakes, which do not check it; real AWS would refuse it.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

PUT_RECORDS_TARGET = "Kinesis_20131202.PutRecords"
THROTTLED = "ProvisionedThroughputExceededException"
INTERNAL_FAILURE = "InternalFailure"
JSON_CONTENT_TYPE = "application/x-amz-json-1.1"

OutageMode = Literal["refuse", "503", "not_found"]

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones aiohttp recomputes for the body it sends.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
# Dropped from upstream replies: aiohttp decompressed the body and recomputes its length.
_REPLY_DROP = _HOP_BY_HOP | {"content-encoding", "date", "server"}

# PutRecords bodies go up to 5 MiB of data, base64 in JSON: about 7 MB.
MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass
class Faults:
    """What the proxy does to calls; tests change the fields at any time.

    Per-record shares are turned into a count per call by randomized rounding
    (``share * n`` rounded down or up at random, so the expected count is exact),
    then that many records are picked at random. Per-call shares are the
    probability of the fault for each ``PutRecords`` call.
    """

    # PutRecords records failed with ProvisionedThroughputExceededException, withheld upstream.
    throttle_share: float = 0.0
    # PutRecords records failed with InternalFailure, withheld upstream.
    internal_failure_share: float = 0.0
    # PutRecords calls answered 500 InternalFailure or 503 ServiceUnavailable, not forwarded.
    error_5xx_share: float = 0.0
    # Delay before a PutRecords call is forwarded.
    latency_s: float = 0.0
    # PutRecords calls forwarded, then answered by closing the connection.
    drop_share: float = 0.0
    # Also every Nth such call (0: none): a test that must see a drop gets one,
    # whatever the random draws (0.98 ** 134 calls is 7% without any).
    drop_every: int = 0
    # time.monotonic() before which every call is refused (see outage_mode).
    outage_until: float = 0.0
    # "refuse": close the connection at once; "503": answer 503 ServiceUnavailable;
    # "not_found": answer 400 ResourceNotFoundException, as for a deleted stream.
    outage_mode: OutageMode = "refuse"

    def outage_for(self, seconds: float) -> None:
        """Starts an outage now, for ``seconds``."""
        self.outage_until = time.monotonic() + seconds

    def outage_active(self) -> bool:
        return time.monotonic() < self.outage_until

    def clear(self) -> None:
        """No faults any more (the outage mode is kept)."""
        self.throttle_share = self.internal_failure_share = 0.0
        self.error_5xx_share = self.latency_s = self.drop_share = 0.0
        self.drop_every = 0
        self.outage_until = 0.0


@dataclass
class Counters:
    """What the proxy did, since it was created."""

    calls: int = 0  # requests received, of any kind
    put_records_calls: int = 0
    records_received: int = 0  # records in PutRecords calls received
    records_forwarded: int = 0  # records sent upstream
    records_throttled: int = 0  # failed by the proxy with ProvisionedThroughputExceededException
    records_failed: int = 0  # failed by the proxy with InternalFailure
    connections_dropped: int = 0  # PutRecords calls forwarded, then answered by a disconnect
    # Records the upstream accepted in calls whose connection was dropped: the client
    # does not know they landed, so this bounds the duplicates a retry may cause.
    records_in_dropped_calls: int = 0
    errors_5xx: int = 0  # PutRecords calls answered 500/503 by the proxy (not the outage)
    outage_refused: int = 0  # calls refused or answered 503 because of an outage
    upstream_errors: int = 0  # calls the upstream could not be reached for (answered 502)
    unparsable: int = 0  # PutRecords bodies that were not JSON

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class _Plan:
    """Per-record fate within one PutRecords call: index -> fake error code."""

    failures: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SeenRequest:
    """What a test may want to know of a request: its API and who signed it."""

    target: str | None  # X-Amz-Target (JSON APIs such as Kinesis); None for query APIs
    access_key_id: str | None
    form: dict[str, list[str]]  # the parsed body of query APIs such as STS


class KinesisFaultProxy:
    """An aiohttp server on 127.0.0.1 forwarding to ``upstream`` with :attr:`faults`."""

    def __init__(
        self, upstream: str, *, seed: int | None = 0, faults: Faults | None = None
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = faults or Faults()
        self.counters = Counters()
        self.rng = random.Random(seed)
        self._drop_turn = 0  # PutRecords calls that reached the drop decision
        # Called at the start of every request, before faults apply: a test can change
        # the faults there at an exact point (say, once N records were throttled).
        self.on_call: Callable[[KinesisFaultProxy], None] | None = None
        self.url: str | None = None
        self.seen: list[SeenRequest] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        """Starts listening on a free port of 127.0.0.1; returns the proxy's URL."""
        if self.url is not None:
            return self.url
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=128),
            timeout=aiohttp.ClientTimeout(total=120),
            auto_decompress=True,
            skip_auto_headers=("User-Agent", "Content-Type"),
        )
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = int(self._runner.addresses[0][1])
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.url = None

    async def __aenter__(self) -> KinesisFaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the request path ---------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counters.calls += 1
        await self._note(request)
        if self.on_call is not None:
            self.on_call(self)
        faults = self.faults
        if faults.outage_active():
            self.counters.outage_refused += 1
            if faults.outage_mode == "503":
                return _error_reply(503, "ServiceUnavailable", "proxy: outage")
            if faults.outage_mode == "not_found":
                return _error_reply(
                    400, "ResourceNotFoundException", "proxy: stream not found (outage)"
                )
            return _disconnect(request)
        if request.headers.get("X-Amz-Target") != PUT_RECORDS_TARGET:
            return await self._forward_untouched(request)
        return await self._put_records(request)

    async def _note(self, request: web.Request) -> None:
        authorization = request.headers.get("Authorization", "")
        key_id = None
        if "Credential=" in authorization:
            key_id = authorization.split("Credential=", 1)[1].split("/", 1)[0]
        target = request.headers.get("X-Amz-Target")
        form: dict[str, list[str]] = {}
        if target is None:
            form = urllib.parse.parse_qs((await request.read()).decode(errors="replace"))
        self.seen.append(SeenRequest(target, key_id, form))

    async def _forward_untouched(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        reply = await self._upstream(request, body)
        if reply is None:
            return _error_reply(502, "ProxyUpstreamError", "proxy: upstream unreachable")
        status, headers, data = reply
        return web.Response(status=status, headers=headers, body=data)

    async def _put_records(self, request: web.Request) -> web.StreamResponse:
        counters, faults = self.counters, self.faults
        counters.put_records_calls += 1
        body = await request.read()
        if faults.error_5xx_share > 0 and self.rng.random() < faults.error_5xx_share:
            counters.errors_5xx += 1
            if self.rng.random() < 0.5:
                return _error_reply(500, "InternalFailure", "proxy: injected 500")
            return _error_reply(503, "ServiceUnavailable", "proxy: injected 503")
        if faults.latency_s > 0:
            await asyncio.sleep(faults.latency_s)

        payload = _parse(body)
        per_record = faults.throttle_share > 0 or faults.internal_failure_share > 0
        if payload is None:
            counters.unparsable += 1
            if per_record:
                return _error_reply(400, "ProxyCannotParse", "proxy: PutRecords body is not JSON")
            records_in: list[Any] = []
            plan = _Plan()
            upstream_body = body
        else:
            records_in = payload["Records"]
            counters.records_received += len(records_in)
            plan = self._plan(len(records_in))
            kept = [r for i, r in enumerate(records_in) if i not in plan.failures]
            upstream_body = (
                body if not plan.failures else orjson.dumps({**payload, "Records": kept})
            )
        counters.records_throttled += sum(1 for c in plan.failures.values() if c == THROTTLED)
        counters.records_failed += sum(1 for c in plan.failures.values() if c != THROTTLED)
        self._drop_turn += 1
        drop = (faults.drop_share > 0 and self.rng.random() < faults.drop_share) or (
            faults.drop_every > 0 and self._drop_turn % faults.drop_every == 0
        )

        forwarded = len(records_in) - len(plan.failures)
        if plan.failures and forwarded == 0:
            # Nothing to send upstream: the whole reply is made up.
            status, headers, data = 200, _json_headers(), _merge(records_in, plan, None)
        else:
            reply = await self._upstream(request, upstream_body)
            if reply is None:
                return _error_reply(502, "ProxyUpstreamError", "proxy: upstream unreachable")
            counters.records_forwarded += forwarded
            status, headers, data = reply
            upstream_reply = _parse(data) if status == 200 else None
            if upstream_reply is not None and plan.failures:
                data = _merge(records_in, plan, upstream_reply)
                headers.popall("x-amz-crc32", None)
            if drop and upstream_reply is not None:
                counters.records_in_dropped_calls += sum(
                    1 for entry in upstream_reply.get("Records", []) if "ErrorCode" not in entry
                )
        if drop:
            counters.connections_dropped += 1
            return _disconnect(request)
        return web.Response(status=status, headers=headers, body=data)

    def _plan(self, count: int) -> _Plan:
        faults = self.faults
        throttle = min(1.0, max(0.0, faults.throttle_share))
        internal = min(1.0 - throttle, max(0.0, faults.internal_failure_share))
        if count == 0 or (throttle == 0 and internal == 0):
            return _Plan()
        n_throttle = self._round(throttle * count)
        n_internal = min(count - n_throttle, self._round(internal * count))
        chosen = self.rng.sample(range(count), n_throttle + n_internal)
        failures = {index: THROTTLED for index in chosen[:n_throttle]}
        failures.update({index: INTERNAL_FAILURE for index in chosen[n_throttle:]})
        return _Plan(failures)

    def _round(self, exact: float) -> int:
        """``exact`` rounded down or up at random: the expected value is ``exact``."""
        whole = math.floor(exact)
        return whole + (1 if self.rng.random() < exact - whole else 0)

    async def _upstream(
        self, request: web.Request, body: bytes
    ) -> tuple[int, CIMultiDict[str], bytes] | None:
        assert self._session is not None, "proxy not started"
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.rel_url.raw_path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as reply:
                data = await reply.read()
                reply_headers = CIMultiDict(
                    (k, v) for k, v in reply.headers.items() if k.lower() not in _REPLY_DROP
                )
                return reply.status, reply_headers, data
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.counters.upstream_errors += 1
            return None


def _parse(body: bytes) -> dict[str, Any] | None:
    """A PutRecords request or reply as JSON, or None when it is not that."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("Records"), list):
        return None
    return value


def _merge(records_in: list[Any], plan: _Plan, upstream: Mapping[str, Any] | None) -> bytes:
    """The reply the client sees: upstream entries in order, fake failures in place."""
    upstream_entries = list(upstream["Records"]) if upstream is not None else []
    expected = len(records_in) - len(plan.failures)
    if len(upstream_entries) != expected:
        raise web.HTTPBadGateway(
            text=f"proxy: upstream answered {len(upstream_entries)} entries for {expected}"
        )
    entries: list[dict[str, Any]] = []
    taken = iter(upstream_entries)
    for index in range(len(records_in)):
        code = plan.failures.get(index)
        if code is None:
            entries.append(next(taken))
        elif code == THROTTLED:
            entries.append({"ErrorCode": code, "ErrorMessage": "Rate exceeded for shard (proxy)"})
        else:
            entries.append({"ErrorCode": code, "ErrorMessage": "Internal service failure (proxy)"})
    failed = int(upstream.get("FailedRecordCount", 0)) if upstream is not None else 0
    reply: dict[str, Any] = dict(upstream or {})
    reply["FailedRecordCount"] = failed + len(plan.failures)
    reply["Records"] = entries
    return orjson.dumps(reply)


def _json_headers() -> CIMultiDict[str]:
    return CIMultiDict({"Content-Type": JSON_CONTENT_TYPE, "x-amzn-RequestId": str(uuid.uuid4())})


def _error_reply(status: int, error_type: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        headers=_json_headers(),
        body=orjson.dumps({"__type": error_type, "message": message}),
    )


def _disconnect(request: web.Request) -> web.Response:
    """Closes the connection: the client sees a disconnect, never the reply returned."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)
