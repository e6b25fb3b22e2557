"""Real Celery worker processes (``camseg worker``) and Redis servers for the job tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

# the machine's Redis, a DB index of the job tests' own; TEST_REDIS_DB moves it (two checkouts tested at once)
TEST_DB = int(os.environ.get("TEST_REDIS_DB", "12"))


@contextlib.contextmanager
def flushed_redis(db: int) -> Iterator[str]:
    """The URL of the local Redis's database ``db``, emptied before and after."""
    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def metrics(self) -> str:
        """The worker's Prometheus page (it must run with CAMSEG_WORKER_METRICS_PORT set)."""
        import re
        import urllib.request

        m = re.search(r"camseg worker metrics on \S+:(\d+)", self.log.read_text(errors="replace"))
        assert m, "the worker serves no metrics"
        with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the worker and its children: a machine gone, no goodbye."""
        for pid in [*self.children(), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def start_worker(env: dict[str, str], *, concurrency: int = 1, timeout: float = 90.0) -> Worker:
    fd, name = tempfile.mkstemp(prefix="camseg-worker-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "camseg", "worker", "--concurrency", str(concurrency)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    w = Worker(proc, Path(name))
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if " ready." in w.log.read_text(errors="replace"):
            return w
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    if proc.poll() is None:
        w.kill()
    raise RuntimeError(f"worker did not start:\n{w.log.read_text(errors='replace')[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server of the test's own, on a free port, keeping nothing on disk."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
