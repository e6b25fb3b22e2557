"""Helpers for the service tests: real ``camseg serve`` processes on free loopback ports."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    repo: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return str(r.read().decode())


def start_server(repo: Path, *extra: str, env: dict[str, str] | None = None, plaintext: bool = True) -> Server:
    """A ``camseg serve`` process on free ports; ``extra`` arguments are appended."""
    # the log goes to a file: an unread pipe could fill up and stall the server
    log = tempfile.NamedTemporaryFile(prefix="camseg-serve-", suffix=".log", delete=False)  # noqa: SIM115
    log.close()
    with open(log.name, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "camseg", "serve", "--model-repo", str(repo), "--port", "0", "--metrics-port",
             "0", *(["--plaintext"] if plaintext else []), *extra],
            stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, "CAMSEG_TORCH_THREADS": "1", "CAMSEG_POLL_SECONDS": "0.3", **(env or {})})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"serving on 127\.0\.0\.1:(\d+) \(metrics on (\d+)\)", line)
    if not m:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise AssertionError(f"server did not start: {line!r} {Path(log.name).read_text()}")
    return Server(proc, int(m.group(1)), int(m.group(2)), repo)


Launcher = Callable[..., Server]


def stop(server: Server) -> None:
    """SIGTERM (a drain), then a kill if it does not end in 30 s."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    if server.proc.stdout is not None:
        server.proc.stdout.close()


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def roi(tiny_folder: Path) -> tuple[bytes, bytes]:
    for m in sorted((tiny_folder / "masks").glob("*.png")):
        return (tiny_folder / "images" / m.name).read_bytes(), m.read_bytes()
    raise AssertionError("no tumor ROI")
