"""Helpers for the service tests: real ``camseg serve`` processes on free loopback ports."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from services.process import ServeProcess, spawn

T = TypeVar("T")
WITHIN = 15.0  # seconds a change may take to show (polling every 0.3 s, plus a load and warm-up on a busy CPU)


def wait_until(what: str, probe: Callable[[], T | None], within: float = WITHIN, *,
               logs: Callable[[], str] | None = None) -> T:
    """``probe()``'s first truthy value; AssertionError naming ``what`` (and the last value,
    and ``logs()`` where given) after ``within`` s."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {within} s (last {last!r})" + (f"\n{logs()}" if logs else ""))


@dataclass
class Server:
    """A real ``camseg serve`` process and the repository it serves."""

    serve: ServeProcess
    repo: Path

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.serve.proc

    @property
    def port(self) -> int:
        return self.serve.port

    @property
    def address(self) -> str:
        return self.serve.address

    def channel(self) -> grpc.Channel:
        """A channel that takes replies up to the server's default send limit (64 MiB)."""
        limit = 64 * 1024 * 1024
        return grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", limit),
                                                             ("grpc.max_send_message_length", limit)])

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.serve.metrics_port}/metrics", timeout=10) as r:
            return str(r.read().decode())


def start_server(repo: Path, *extra: str, env: dict[str, str] | None = None, plaintext: bool = True) -> Server:
    """A ``camseg serve`` process on free ports; ``extra`` arguments are appended."""
    serve = spawn(repo, *extra, plaintext=plaintext,
                  env={"CAMSEG_TORCH_THREADS": "1", "CAMSEG_POLL_SECONDS": "0.3", "CAMSEG_DRAIN_DELAY_SECONDS": "0.3",
                       **(env or {})})
    return Server(serve, repo)


Launcher = Callable[..., Server]


def stop(server: Server) -> None:
    server.serve.stop()


def roi(tiny_folder: Path) -> tuple[bytes, bytes]:
    for m in sorted((tiny_folder / "masks").glob("*.png")):
        return (tiny_folder / "images" / m.name).read_bytes(), m.read_bytes()
    raise AssertionError("no tumor ROI")
