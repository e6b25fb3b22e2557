"""services.process.spawn: a real ``camseg serve`` child process on free ports."""

from __future__ import annotations

import socket
import tempfile
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.process import READY, spawn

ENV = {"CAMSEG_TORCH_THREADS": "1"}


def test_spawn_serves_and_stops_cleanly(repo: Path) -> None:
    serve = spawn(repo, env=ENV)
    try:
        assert serve.proc.poll() is None
        assert serve.host == "127.0.0.1"
        assert 0 < serve.port < 65536 and serve.address == f"127.0.0.1:{serve.port}"
        assert serve.metrics_port is not None and serve.metrics_port not in (0, serve.port)
        with grpc.insecure_channel(serve.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "camseg.v1.Segmentation"):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with urllib.request.urlopen(f"http://127.0.0.1:{serve.metrics_port}/metrics", timeout=10) as r:
            assert 'camseg_model_info{name="tiny",version="1"} 1.0' in r.read().decode()
    finally:
        code = serve.stop()
    assert code == 0  # SIGTERM drains and exits cleanly
    assert serve.proc.returncode == 0
    assert serve.stop() == 0  # stopping again is harmless
    assert not serve.log.exists()  # a clean exit leaves no log behind
    with socket.socket() as s:  # nothing listens on the port any more
        assert s.connect_ex(("127.0.0.1", serve.port)) != 0


def test_spawn_over_a_missing_repository_raises_with_the_servers_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-repo"
    logs_before = set(Path(tempfile.gettempdir()).glob("camseg-serve-*.log"))
    with pytest.raises(RuntimeError, match="camseg serve did not start") as exc:
        spawn(missing, env=ENV)
    assert f"{missing}: no such model repository" in str(exc.value)
    assert set(Path(tempfile.gettempdir()).glob("camseg-serve-*.log")) <= logs_before  # its log is not left behind


def test_ready_line() -> None:
    m = READY.search("camseg serving on 127.0.0.1:50051 (metrics on 9100)")
    assert m is not None and m.groups() == ("127.0.0.1", "50051", "9100")
    m = READY.search("camseg serving on 0.0.0.0:1234 (metrics on None)")
    assert m is not None and m.group(3) == "None"
    assert READY.search("camseg: error: something") is None
