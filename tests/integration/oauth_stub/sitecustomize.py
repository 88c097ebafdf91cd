"""TEST-ONLY: on the PYTHONPATH of a worker subprocess, AWS_MSK_IAM tokens become unsigned JWTs.

The local broker's SASL_SSL listener checks OAUTHBEARER tokens with Kafka's
unsecured validator: it takes an unsigned JWT and cannot check AWS signatures.
Replacing only the signing step (credentials + SigV4) lets a test run the rest
of the worker's AWS_MSK_IAM path end to end: the settings, Faust's
OAuthCredentials, aiokafka's OAUTHBEARER login on every client, token reuse.
Active only with TEST_UNSECURED_MSK_IAM_TOKENS=1.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any


def _part(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _unsigned_jwt(self: Any) -> tuple[str, int]:
    now = int(time.time())
    expires = now + 900
    token = f"{_part({'alg': 'none'})}.{_part({'sub': 'worker', 'iat': now, 'exp': expires})}."
    return token, expires * 1000


if os.environ.get("TEST_UNSECURED_MSK_IAM_TOKENS") == "1":
    from worker import kafka_client

    kafka_client.MskIamTokenProvider._sign = _unsigned_jwt  # type: ignore[method-assign]
