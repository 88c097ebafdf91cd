"""The demo's settings: paths, ports, sizes, timeouts and the configuration file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reference import Config, parse_config

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "config" / "demo.yaml"
WORKER_LOG = REPO / ".stack" / "demo-worker.log"
WEB_PORT = 6066
BASE_URL = f"http://127.0.0.1:{WEB_PORT}"
PARTITIONS = 4
SHARDS = 2
SEED = 20250301
PROFILES = 3000
UNMAPPED_SEGMENT = "c3f1e8d2-newsletter-subscribers"  # no destination maps it
AWS = {"aws_access_key_id": "demo", "aws_secret_access_key": "demo", "region_name": "us-east-1"}
READY_TIMEOUT_S = 90.0
PHASE_TIMEOUT_S = 90.0
STALL_TIMEOUT_S = 15.0

Json = dict[str, Any]


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def load_config(path: Path = CONFIG) -> Config:
    raw: Json = yaml.safe_load(path.read_text(encoding="utf-8"))
    return parse_config(raw)
