"""Fixtures of the service tests: a model repository made from the session's exported
tiny model, and real ``camseg serve`` processes over it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.services.servers import Launcher, Server, roi, start_server, stop


@pytest.fixture
def launch() -> Iterator[Launcher]:
    """Start servers with :func:`start_server`'s arguments; all are stopped afterwards."""
    started: list[Server] = []

    def _launch(repo: Path, *extra: str, env: dict[str, str] | None = None, plaintext: bool = True) -> Server:
        s = start_server(repo, *extra, env=env, plaintext=plaintext)
        started.append(s)
        return s

    yield _launch
    for s in started:
        stop(s)


@pytest.fixture(scope="module")
def repo(exported: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(exported[0], root / "tiny" / "1")
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    s = start_server(repo)
    yield s
    stop(s)


@pytest.fixture(scope="module")
def stub(server: Server) -> pb_grpc.SegmentationStub:
    return pb_grpc.SegmentationStub(server.channel())




@pytest.fixture(scope="session")
def tumor_roi(tiny_folder: Path) -> tuple[bytes, bytes]:
    """PNG bytes of the first tumor ROI of the tiny data set and of its truth mask."""
    return roi(tiny_folder)
