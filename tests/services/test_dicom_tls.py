"""``camseg dicom-listen`` over TLS: real processes and real certificates, nothing mocked.

dcmtk's ``storescu`` sends a series over mutual TLS to a real listener, a real worker
segments it, and the listener sends the SEG over mutual TLS to dcmtk's ``storescp``. Clients
without a certificate, plaintext clients and a peer that never finishes its handshake are
refused (the last without holding up anyone else).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from camseg.core.errors import InvalidInputError
from camseg.core.settings import Settings, SettingsError
from services import dicom_tls
from services.dicom_listener import DicomListener
from tests.dicomdata import write_series
from tests.jobs.workers import Worker, flushed_redis, free_port, start_worker
from tests.services.servers import wait_until
from tests.services.test_client import openssl
from tests.services.test_dicom_listen import Env, Listener, check_seg, ct_volume, wait_port
from tests.services.test_dicom_listen import launch as launch  # the listener processes' fixture

# the machine's Redis: a DB index of these tests' own; TEST_REDIS_DB moves it (two checkouts at once)
DB = int(os.environ.get("TEST_REDIS_DB", "13"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA; ``server`` (the listener, and the destination) for 127.0.0.1; ``client`` (the
    modality, and the listener as the destination's client); ``rogue``, signed by another CA."""
    d = tmp_path_factory.mktemp("dicom-pki")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                "-days", "2", "-subj", f"/CN=camseg test {ca}", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogue-ca")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d


@pytest.fixture
def env(tmp_path: Path, exported: tuple[Path, dict[str, Any]]) -> Iterator[Env]:
    repo = tmp_path / "repo"
    shutil.copytree(exported[0], repo / "tiny" / "1")
    (tmp_path / "data").mkdir()
    with flushed_redis(DB) as url:
        yield Env(tmp_path, repo, tmp_path / "spool", tmp_path / "out", url)


def tls_env(pki: Path, **extra: str) -> dict[str, str]:
    return {"CAMSEG_DICOM_TLS_CERT": str(pki / "server.pem"), "CAMSEG_DICOM_TLS_KEY": str(pki / "server.key"),
            "CAMSEG_DICOM_TLS_CLIENT_CA": str(pki / "ca.pem"), **extra}


def storescu_tls(port: int, files: list[Path], *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["storescu", *tls, "-aec", "CAMSEG", "-aet", "STORESCU", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=60)


def test_a_series_in_and_its_seg_out_over_mutual_tls(env: Env, pki: Path,
                                                     launch: Callable[[dict[str, str]], Listener],
                                                     tmp_path: Path) -> None:
    dest_port = free_port()
    dest_dir = tmp_path / "received"
    dest_dir.mkdir()
    scp = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(dest_dir), "+xa", "+tls", str(pki / "server.key"),
                            str(pki / "server.pem"), "+cf", str(pki / "ca.pem"), "--require-peer-cert",
                            str(dest_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker: Worker | None = None
    try:
        wait_port(dest_port)
        lis = launch(env.listener_env(**tls_env(
            pki, CAMSEG_DICOM_DESTINATION=f"DEST@127.0.0.1:{dest_port}",
            CAMSEG_DICOM_DESTINATION_TLS_CA=str(pki / "ca.pem"),
            CAMSEG_DICOM_DESTINATION_TLS_CERT=str(pki / "client.pem"),
            CAMSEG_DICOM_DESTINATION_TLS_KEY=str(pki / "client.key"))))
        series_uid = generate_uid()
        files = write_series(tmp_path / "src", ct_volume(), series_uid=series_uid)

        # refused before any instance is read: plaintext, TLS without a client certificate,
        # and a certificate from another CA
        plain = storescu_tls(lis.port, files[:1])
        anonymous = storescu_tls(lis.port, files[:1], "+tla", "+cf", str(pki / "ca.pem"))
        rogue = storescu_tls(lis.port, files[:1], "+tls", str(pki / "rogue.key"), str(pki / "rogue.pem"),
                             "+cf", str(pki / "ca.pem"))
        for r in (plain, anonymous, rogue):
            assert r.returncode != 0, r.stdout + r.stderr
        assert not any(env.spool.glob("*/*/instances/*.dcm"))

        sent = storescu_tls(lis.port, files, "+tls", str(pki / "client.key"), str(pki / "client.pem"),
                            "+cf", str(pki / "ca.pem"))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        worker = start_worker(env.env(), concurrency=1)
        w = worker
        wait_until("the SEG sent over TLS", lambda: env.state(series_uid).get("state") == "sent", 120,
                   logs=lambda: f"{env.state(series_uid)}\n--- listener\n{lis.log.read_text()[-3000:]}\n"
                                f"--- worker\n{w.log.read_text(errors='replace')[-2000:]}")
        received = sorted(dest_dir.iterdir())
        assert len(received) == 1
        check_seg(received[0], series_uid, [dcmread(f).SOPInstanceUID for f in files])
        assert lis.value("camseg_dicom_associations_total", result="tls_refused") == 3
        assert lis.value("camseg_dicom_associations_total", result="accepted") == 1
        assert lis.value("camseg_dicom_instances_received_total", result="stored") == 4
        assert lis.value("camseg_dicom_sends_total", result="success") == 1
        assert lis.value("camseg_dicom_sends_total", result="failure") == 0
        assert lis.value("camseg_dicom_sends_pending") == 0
        assert "TLS handshake with 127.0.0.1 failed" in lis.log.read_text()
        assert lis.stop() == 0
    finally:
        if worker is not None:
            worker.stop()
            worker.log.unlink(missing_ok=True)
        scp.terminate()
        scp.wait(timeout=10)


def _echo(port: int, ctx: Any | None) -> bool:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="CAMSEG", tls_args=(ctx, "127.0.0.1") if ctx else None)
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def test_client_certificates_required_and_a_stalled_handshake_holds_up_no_one(env: Env, pki: Path) -> None:
    settings = Settings(redis_url=env.redis_url, model_repo=env.repo, data_roots=[env.root / "data"],
                        output_root=env.out, dicom_model="tiny", dicom_port=0, dicom_spool=env.spool,
                        dicom_timeout_seconds=3, dicom_tls_cert=pki / "server.pem", dicom_tls_key=pki / "server.key",
                        dicom_tls_client_ca=pki / "ca.pem")
    # the modality's side, as a sender would set it: the CA, and its own certificate or not
    with_cert = dicom_tls.client_context(settings.updated(
        dicom_destination_tls_ca=pki / "ca.pem", dicom_destination_tls_cert=pki / "client.pem",
        dicom_destination_tls_key=pki / "client.key"))
    without_cert = dicom_tls.client_context(settings.updated(dicom_destination_tls_ca=pki / "ca.pem"))
    listener = DicomListener(settings)
    port = listener.start()
    socket.create_connection(("127.0.0.1", port)).close()  # a TCP probe: neither logged as a failure nor counted
    stalled = socket.create_connection(("127.0.0.1", port))  # connects, never says a word
    try:
        t0 = time.monotonic()
        assert _echo(port, with_cert)
        assert time.monotonic() - t0 < 3  # answered while the stalled handshake still waits
        assert not _echo(port, without_cert)
        assert not _echo(port, None)  # plaintext
        # the stalled peer is dropped after the timeout and counted (the probe is not)
        wait_until("the stalled handshake dropped", lambda: listener.metrics.registry.get_sample_value(
            "camseg_dicom_associations_total", {"result": "tls_refused"}) == 3, 15)
        stalled.settimeout(5)
        assert stalled.recv(1) == b""  # closed by the listener
        assert _echo(port, with_cert)
        assert listener.metrics.registry.get_sample_value("camseg_dicom_associations_total",
                                                          {"result": "accepted"}) == 2
    finally:
        stalled.close()
        listener.stop()


def test_bad_tls_settings_are_one_line_errors(env: Env, pki: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "camseg", "dicom-listen", *args], capture_output=True, text=True,
                              timeout=60, env={**os.environ, **env.listener_env()})

    (tmp_path / "bad.pem").write_text("not a certificate\n")
    for r, named in ((run("--tls-cert", str(pki / "server.pem")), "dicom_tls_key"),  # no key
                     (run("--tls-cert", str(tmp_path / "bad.pem"), "--tls-key", str(pki / "server.key")), "bad.pem")):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("camseg: error:"), r.stderr
        assert named in lines[0], r.stderr
    # the same errors in-process: what the command prints is their message
    base = Settings(redis_url=env.redis_url, model_repo=env.repo, dicom_model="tiny", dicom_spool=env.spool)
    with pytest.raises(InvalidInputError, match=r"CAMSEG_DICOM_TLS_CLIENT_CA \(.*missing.pem\): cannot be loaded"):
        DicomListener(base.updated(dicom_tls_cert=pki / "server.pem", dicom_tls_key=pki / "server.key",
                                   dicom_tls_client_ca=tmp_path / "missing.pem"))
    with pytest.raises(SettingsError, match="CAMSEG_DICOM_DESTINATION_TLS_CA"):
        base.updated(dicom_destination_tls_cert=pki / "client.pem", dicom_destination_tls_key=pki / "client.key")
    with pytest.raises(SettingsError, match="CAMSEG_DICOM_TLS_CERT"):
        base.updated(dicom_tls_client_ca=pki / "ca.pem")
