"""The worker as a child process: started on the demo's configuration, ready, stopped."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from reference import Config

from .config import BASE_URL, CONFIG, READY_TIMEOUT_S, REPO, WEB_PORT, WORKER_LOG, say


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    data_dir: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                say("the worker ignored SIGTERM for 30 s: killing it")
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def log_tail(lines: int = 30) -> str:
    try:
        text = WORKER_LOG.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no worker log)"
    return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:])


def port_in_use(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_worker(bootstrap: str, endpoint: str, config: Config) -> Worker:
    if port_in_use(WEB_PORT):  # else /readyz could be answered by someone else
        raise RuntimeError(f"port {WEB_PORT} is in use: is another demo worker running?")
    data_dir = Path(tempfile.mkdtemp(prefix="kd-demo-"))
    env = dict(os.environ)
    env["KD_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    for index in range(len(config.destinations)):
        env[f"KD_DESTINATIONS__{index}__ENDPOINT_URL"] = endpoint
    WORKER_LOG.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "worker", "run", "--config", str(CONFIG)]
    command += ["--web-port", str(WEB_PORT), "--data-dir", str(data_dir)]
    with WORKER_LOG.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the worker
        )
    say(f"started the worker (pid {process.pid}), log in {WORKER_LOG.relative_to(REPO)}")
    return Worker(process, data_dir)


async def wait_ready(session: aiohttp.ClientSession, worker: Worker) -> bool:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if not worker.alive():
            say(f"the worker exited with code {worker.process.returncode}; log tail:")
            print(log_tail(), flush=True)
            return False
        try:
            async with session.get(f"{BASE_URL}/readyz") as reply:
                if reply.status == 200:
                    say(f"worker ready after {time.monotonic() - started:.1f} s")
                    return True
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    say(f"the worker was not ready after {READY_TIMEOUT_S:.0f} s; log tail:")
    print(log_tail(), flush=True)
    return False
