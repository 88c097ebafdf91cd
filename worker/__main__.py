"""Command line: `python -m worker run|check --config FILE` (CONTRACT section 5)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Activates audience segments from Kafka to Amazon Kinesis streams.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the worker until SIGTERM/SIGINT")
    run.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    run.add_argument(
        "--web-port", type=int, default=None, help="port of /metrics, /healthz and /readyz"
    )
    run.add_argument("--data-dir", type=Path, default=None, help="folder of local state")

    check = commands.add_parser(
        "check", help="validate the configuration and check every stream is writable"
    )
    check.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"'{args.command}' is not yet available", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
