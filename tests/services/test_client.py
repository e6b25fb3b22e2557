"""camseg.client and ``camseg client`` against real servers, plaintext and mutual TLS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camseg.core.errors import InvalidInputError, NotFoundError, UnavailableError
from services.client import SegmentationClient
from tests.services.servers import Server, roi, start_server, stop


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=camseg test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d


def test_client_round_trip(server: Server, tiny_folder: Path, tmp_path: Path) -> None:
    image, mask = roi(tiny_folder)
    path = tmp_path / "roi.png"
    path.write_bytes(image)
    arr = np.asarray(Image.open(path))
    with SegmentationClient(server.address, plaintext=True) as c:
        assert c.list_models() == {"tiny": ["1"]}
        by_file, by_array = c.classify([path, arr])
        assert by_file.id == "roi" and by_file.probabilities == pytest.approx(by_array.probabilities, abs=1e-5)
        (h,) = c.explain([path], method="layercam", overlay=True)
        assert h.heatmap.shape == (32, 32) and h.overlay_png.startswith(b"\x89PNG")
        (m,) = c.segment([path], threshold="p80", gate=False, truth=[mask])
        assert m.area == int(m.mask.sum()) and m.dice is not None and 0 <= m.dice <= 1
        with pytest.raises(InvalidInputError, match="readable"):
            c.classify([b"garbage"])
    with SegmentationClient(server.address, plaintext=True, model="nope") as c, pytest.raises(NotFoundError):
        c.classify([path])


def test_cli_client_writes_masks_and_overlays(server: Server, tiny_folder: Path, tmp_path: Path) -> None:
    image, _ = roi(tiny_folder)
    (tmp_path / "a.png").write_bytes(image)
    env = {**os.environ, "CAMSEG_TORCH_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "camseg", "client", "segment", str(tmp_path / "a.png"), "--server",
                          server.address, "--plaintext", "--out", str(tmp_path / "out"), "--threshold", "p90"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "out" / "a_mask.png").size == (32, 32)
    assert Image.open(tmp_path / "out" / "a_overlay.png").mode == "RGB"
    out = subprocess.run([sys.executable, "-m", "camseg", "client", "classify", str(tmp_path / "missing.png"),
                          "--plaintext"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("camseg: error:")


def test_mutual_tls(repo: Path, pki: Path, tiny_folder: Path) -> None:
    s = start_server_tls(repo, pki)
    image, _ = roi(tiny_folder)
    try:
        with SegmentationClient(s.address, ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key") as c:
            assert c.classify([image])[0].label in ("normal", "tumor")
        with SegmentationClient(s.address, ca=pki / "ca.pem", timeout=10) as c, pytest.raises(UnavailableError):
            c.classify([image])  # no client certificate
        with SegmentationClient(s.address, plaintext=True, timeout=10) as c, pytest.raises(UnavailableError):
            c.classify([image])  # plaintext against TLS
    finally:
        stop(s)


def start_server_tls(repo: Path, pki: Path) -> Server:
    return start_server(repo, "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
                        "--tls-client-ca", str(pki / "ca.pem"), plaintext=False)


def test_tls_needs_a_certificate(repo: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "camseg", "serve", "--model-repo", str(repo), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "TLS needs" in out.stderr


def test_cli_client_errors_are_one_line(server: Server, tmp_path: Path) -> None:
    """A PNG whose header claims 30000x30000 pixels: the server refuses it, and the
    command prints one line (no grpc traceback) and exits 2."""
    from tests.hostile import png_bomb

    (tmp_path / "huge.png").write_bytes(png_bomb(30000, 30000, rows=2))
    env = {**os.environ, "CAMSEG_TORCH_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "camseg", "client", "classify", str(tmp_path / "huge.png"),
                          "--server", server.address, "--plaintext"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("camseg: error:") and "Traceback" not in out.stderr
    assert "30000x30000" in lines[0] or "decompression bomb" in lines[0]
