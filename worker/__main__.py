"""Command line: `python -m worker run|check|resend|pause|resume --config FILE`
(CONTRACT section 5)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from worker.settings import ConfigError, Settings, load_settings


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

    resend = commands.add_parser(
        "resend",
        help="ask the running workers to send a destination's current members again",
    )
    resend.add_argument("--config", type=Path, required=True, help="YAML configuration file")
    resend.add_argument("--destination", required=True, help="the destination's name")
    resend.add_argument(
        "--segment",
        action="append",
        default=[],
        metavar="ID",
        help="only the members of this segment (repeatable; default: every mapped segment)",
    )
    resend.add_argument(
        "--wait", action="store_true", help="return once every member was sent, not once taken"
    )
    resend.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up after this long (exit 3); default 120 s, none with --wait",
    )
    for name, says in (
        ("pause", "park a destination's records in Kafka until `resume` (all workers)"),
        ("resume", "send a paused destination's parked records, then go direct again"),
    ):
        command = commands.add_parser(name, help=says)
        command.add_argument("--config", type=Path, required=True, help="YAML configuration file")
        command.add_argument("--destination", required=True, help="the destination's name")
        command.add_argument(
            "--timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="give up after this long (exit 3); default 120 s",
        )
    return parser


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        overrides={
            "runtime.web_port": getattr(args, "web_port", None),
            "runtime.data_dir": str(args.data_dir) if getattr(args, "data_dir", None) else None,
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _load(args)
        if args.command == "check":
            from worker import logs
            from worker.check import check

            # The libraries' log lines (aiokafka's "Unable connect ..." and the like)
            # get run's redacting JSON formatter; on stderr, so that stdout holds
            # nothing but report lines.
            logs.setup(settings.runtime.log_level, logs.secret_values(settings), sys.stderr)
            return asyncio.run(check(settings))
        if args.command == "resend":
            from worker import logs
            from worker.resend import resend

            logs.setup(settings.runtime.log_level, logs.secret_values(settings), sys.stderr)
            return asyncio.run(
                resend(settings, args.destination, args.segment, args.wait, args.timeout)
            )
        if args.command in ("pause", "resume"):
            from worker import logs
            from worker.resend import pause

            logs.setup(settings.runtime.log_level, logs.secret_values(settings), sys.stderr)
            paused = args.command == "pause"
            return asyncio.run(pause(settings, args.destination, paused, args.timeout))
        from worker.app import run

        return run(settings)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
