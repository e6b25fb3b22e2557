"""Run ``camseg serve`` as a child process on free ports: for the demo, benchmarks and tests.

The server prints one line once it listens (``camseg serving on HOST:PORT (metrics on
PORT)``); its log goes to a file, since an unread pipe could fill up and stall it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

READY = re.compile(r"serving on (\S+):(\d+) \(metrics on (\d+|None)\)")


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    host: str
    port: int
    metrics_port: int | None
    log: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a drain), then a kill if it does not end within ``timeout``. The log is
        removed after a clean exit and kept (for reading) after any other."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.returncode == 0:
            self.log.unlink(missing_ok=True)
        return self.proc.returncode


def spawn(repo: Path, *extra: str, plaintext: bool = True, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> ServeProcess:
    """Start ``camseg serve`` over ``repo`` on free ports and wait until it listens; ``cwd``
    (another checkout, for a benchmark's before and after) is where ``camseg`` is imported from."""
    fd, log_name = tempfile.mkstemp(prefix="camseg-serve-", suffix=".log")
    with os.fdopen(fd, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "camseg", "serve", "--model-repo", str(repo), "--port", "0", "--metrics-port", "0",
             *(["--plaintext"] if plaintext else []), *extra],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=cwd,
            env={**os.environ, **(env or {}), **({"PYTHONPATH": str(cwd)} if cwd is not None else {})})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = READY.search(line)
    if not m:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        text = Path(log_name).read_text()
        Path(log_name).unlink(missing_ok=True)
        raise RuntimeError(f"camseg serve did not start: {line!r} {text}")
    metrics_port = None if m.group(3) == "None" else int(m.group(3))
    return ServeProcess(proc, m.group(1), int(m.group(2)), metrics_port, Path(log_name))
