"""deploy/Dockerfile and .dockerignore: hadolint-clean and what the image promises."""

from __future__ import annotations

import http.server
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.helpers import REPO, run

DOCKERFILE = REPO / "deploy" / "Dockerfile"
CONFIG_PATH = "/etc/kinesis-destination/config.yaml"
DATA_DIR = "/var/lib/kinesis-destination"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def args_of(dockerfile: list[tuple[str, str]], name: str) -> list[str]:
    return [args for word, args in dockerfile if word == name]


def test_dockerfile_passes_hadolint_without_any_finding(hadolint: Path) -> None:
    result = run([hadolint, "--no-color", "--failure-threshold", "style", DOCKERFILE])
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, (
        f"hadolint found problems in deploy/Dockerfile (fix them, or ignore one inline with "
        f"'# hadolint ignore=DLxxxx' and a reason):\n{findings}"
    )
    assert not findings, f"hadolint printed findings:\n{findings}"


def test_hadolint_does_catch_problems(hadolint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n", encoding="utf-8")
    result = run([hadolint, "--no-color", bad])
    assert result.returncode != 0, "hadolint passed a Dockerfile it must refuse"
    assert "DL3007" in result.stdout, result.stdout


def test_base_image_is_pinned_python_311_slim_bookworm(dockerfile: list[tuple[str, str]]) -> None:
    arg = next(a for a in args_of(dockerfile, "ARG") if a.startswith("PYTHON_IMAGE="))
    image = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    froms = args_of(dockerfile, "FROM")
    assert len(froms) >= 2, "the image is built in stages (a build stage and a runtime stage)"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms
    stage_names = [f.split()[-1] for f in froms]
    assert stage_names[0] == "build", stage_names
    assert stage_names[-1] == "runtime", stage_names
    copies_from_build = [c for c in args_of(dockerfile, "COPY") if c.startswith("--from=build")]
    assert copies_from_build, "the runtime stage takes the virtualenv from the build stage"


def test_installs_the_rocksdb_extra_and_no_dev_dependencies(
    dockerfile: list[tuple[str, str]],
) -> None:
    runs = " ".join(args_of(dockerfile, "RUN"))
    assert '".[rocksdb]"' in runs, "wheels for the project with its rocksdb extra"
    assert '"kinesis-destination[rocksdb]"' in runs, "installed with its rocksdb extra"
    assert "--no-index" in runs, "the venv is installed from the built wheels only"
    assert "dev]" not in runs
    assert "[dev" not in runs


def test_runs_as_a_numeric_non_root_user(dockerfile: list[tuple[str, str]]) -> None:
    user = args_of(dockerfile, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: a numeric uid, so runAsNonRoot can check it"
    assert gid.isdigit(), f"USER {user}: a numeric gid"
    assert int(uid) != 0, user
    assert int(gid) != 0, user


def test_entrypoint_is_exec_form_python_with_sigterm(dockerfile: list[tuple[str, str]]) -> None:
    assert args_of(dockerfile, "STOPSIGNAL") == ["SIGTERM"]
    entrypoint = json.loads(args_of(dockerfile, "ENTRYPOINT")[-1])
    assert entrypoint == ["python", "-m", "worker"], entrypoint
    command = json.loads(args_of(dockerfile, "CMD")[-1])
    assert command == ["run", "--config", CONFIG_PATH], command


def test_state_volume_is_the_working_directory(dockerfile: list[tuple[str, str]]) -> None:
    assert json.loads(args_of(dockerfile, "VOLUME")[-1]) == [DATA_DIR]
    # runtime.data_dir defaults to a relative "kd-data": it lands on the volume.
    assert args_of(dockerfile, "WORKDIR")[-1] == DATA_DIR
    assert "6066" in args_of(dockerfile, "EXPOSE")[-1]


def test_sets_no_kd_variable(dockerfile: list[tuple[str, str]]) -> None:
    # The worker reads every KD_* variable as configuration (and refuses unknown
    # ones); an image default would silently override the mounted file.
    for env in args_of(dockerfile, "ENV"):
        assert not re.search(r"(^|\s)KD_", env), env


def healthcheck_command(dockerfile: list[tuple[str, str]]) -> list[str]:
    healthcheck = args_of(dockerfile, "HEALTHCHECK")[-1]
    _, _, command = healthcheck.partition(" CMD ")
    parsed: list[str] = json.loads(command)
    return parsed


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: list[str] = []  # noqa: RUF012 (class-level on purpose: set per server below)

    def do_GET(self) -> None:
        self.seen.append(self.path)
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[tuple[http.server.HTTPServer, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"seen": [], "status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_healthcheck_probes_healthz_on_the_configured_port(
    dockerfile: list[tuple[str, str]],
    probe_server: tuple[http.server.HTTPServer, type[_Handler]],
) -> None:
    command = healthcheck_command(dockerfile)
    assert command[:2] == ["python", "-c"], command
    healthcheck = args_of(dockerfile, "HEALTHCHECK")[-1]
    assert "--start-period=" in healthcheck
    assert "--timeout=" in healthcheck
    server, handler = probe_server
    port = str(server.server_address[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    env["KD_RUNTIME__WEB_PORT"] = port  # how the image learns a non-default port
    ok = run([sys.executable, *command[1:]], env=env, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert handler.seen == ["/healthz"]
    handler.status = 503
    failing = run([sys.executable, *command[1:]], env=env, timeout=30)
    assert failing.returncode != 0, "the health check passed on a 503"


def test_dockerignore_lets_in_exactly_what_the_build_copies(
    dockerfile: list[tuple[str, str]],
) -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing: everything not let in stays out"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for args in args_of(dockerfile, "COPY"):
        if args.startswith("--from="):
            continue
        *sources, _dest = args.split()
        copied.update(s.rstrip("/").removeprefix("./") for s in sources)
    assert copied == allowed, f"COPY sources {sorted(copied)} != .dockerignore's {sorted(allowed)}"
    for path in copied:
        assert (REPO / path).exists(), path
