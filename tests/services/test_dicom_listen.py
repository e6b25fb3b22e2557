"""``camseg dicom-listen`` end to end: real processes, nothing mocked.

A real Redis DB of these tests' own, a real ``camseg worker``, dcmtk's ``storescu`` as the
modality, ``storescp`` as the destination, and the listener as a subprocess restarted over
its spool: a SEG that could not be sent before a restart is sent after it, and one that was
sent is not sent again.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SegmentationStorage, generate_uid

from camseg.data.synth import SynthConfig, generate
from tests.dicomdata import write_series
from tests.jobs.workers import Worker, flushed_redis, free_port, start_worker
from tests.services.servers import wait_until

DB = 10  # the machine's Redis: a DB index of these tests' own
READY = re.compile(r"camseg dicom-listen: (\S+) on (\S+):(\d+) \(metrics on (\d+|None)\)")



@pytest.fixture(autouse=True)
def dicom_tools() -> None:
    """dcmtk and dicom3tools, which `make tools` installs: missing, these tests fail, never skip."""
    missing = [t for t in ("storescu", "storescp", "echoscu", "dciodvfy") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make tools` (deploy/ensure-tools.sh) installs them")


@dataclass
class Env:
    root: Path
    repo: Path
    spool: Path
    out: Path
    redis_url: str

    def env(self, **extra: str) -> dict[str, str]:
        return {"CAMSEG_REDIS_URL": self.redis_url, "CAMSEG_MODEL_REPO": str(self.repo),
                "CAMSEG_DATA_ROOTS": json.dumps([str(self.root / "data"), str(self.spool)]),
                "CAMSEG_OUTPUT_ROOT": str(self.out), "CAMSEG_TORCH_THREADS": "1", **extra}

    def listener_env(self, **extra: str) -> dict[str, str]:
        return self.env(CAMSEG_DICOM_PORT="0", CAMSEG_DICOM_METRICS_PORT="0", CAMSEG_DICOM_MODEL="tiny",
                        CAMSEG_DICOM_SPOOL=str(self.spool), CAMSEG_DICOM_QUIET_SECONDS="2",
                        CAMSEG_DICOM_POLL_SECONDS="0.2", CAMSEG_DICOM_ALLOWED_AES='["STORESCU"]', **extra)

    def state(self, series_uid: str, generation: int = 1) -> dict[str, Any]:
        path = self.spool / series_uid / str(generation) / "state.json"
        return dict(json.loads(path.read_text())) if path.is_file() else {}


@dataclass
class Listener:
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    log: Path

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of the listener's Prometheus page, by name and labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def value(self, name: str, **labels: str) -> float:
        return self.samples()[(name, tuple(sorted(labels.items())))]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture
def env(tmp_path: Path, exported: tuple[Path, dict[str, Any]]) -> Iterator[Env]:
    repo = tmp_path / "repo"
    shutil.copytree(exported[0], repo / "tiny" / "1")
    (tmp_path / "data").mkdir()
    with flushed_redis(DB) as url:
        yield Env(tmp_path, repo, tmp_path / "spool", tmp_path / "out", url)


def spawn_listener(env: dict[str, str], *, limits: dict[int, int] | None = None,
                   prefix: str = "camseg-dicom-listen-") -> Listener:
    """A ``camseg dicom-listen -v`` process with ``env`` over this one's environment (and
    ``limits``: RLIMIT name -> value), started and its ports read; its log in a temporary file."""
    def preexec() -> None:
        for which, n in (limits or {}).items():
            resource.setrlimit(which, (n, n))

    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".log")
    with os.fdopen(fd, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "camseg", "dicom-listen", "-v"], stdout=subprocess.PIPE,
                                stderr=log, text=True, env={**os.environ, **env},
                                preexec_fn=preexec if limits else None)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # EOF (an empty line) when it exits instead
    m = READY.search(line)
    if not m or m.group(4) == "None":
        proc.kill()
        proc.wait()
        raise AssertionError(f"dicom-listen did not start: {line!r}\n{Path(name).read_text()[-3000:]}")
    return Listener(proc, int(m.group(3)), int(m.group(4)), Path(name))


@pytest.fixture
def launch() -> Iterator[Callable[[dict[str, str]], Listener]]:
    """Start ``camseg dicom-listen`` processes; every one is stopped afterwards."""
    started: list[Listener] = []

    def _launch(env: dict[str, str]) -> Listener:
        started.append(spawn_listener(env))
        return started[-1]

    yield _launch
    for listener in started:
        listener.stop()
        listener.log.unlink(missing_ok=True)


@pytest.fixture
def worker(env: Env) -> Iterator[Worker]:
    w = start_worker(env.env(), concurrency=1)
    try:
        yield w
    finally:
        w.stop()
        w.log.unlink(missing_ok=True)


def wait_port(port: int, timeout: float = 20.0) -> None:
    def accepting() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(f"port {port}", accepting, timeout)


def ct_volume(n: int = 4, size: int = 32) -> npt.NDArray[np.uint16]:
    """Synthetic tumor ROIs as CT stored values (intercept -1024) spanning the soft-tissue
    window (-160..240 HU), so the default windowing shows them as the model saw them."""
    images, _, _, _ = generate(SynthConfig(n=n, size=size, seed=11, tumor_fraction=0.99))
    hu = -160.0 + 400.0 * images
    return np.round(hu + 1024.0).astype(np.uint16)


def storescu(port: int, files: list[Path], calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["storescu", "-aec", "CAMSEG", "-aet", calling, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=60)


def test_bad_settings_are_one_line_errors(env: Env) -> None:
    r = subprocess.run([sys.executable, "-m", "camseg", "dicom-listen", "--model", "tiny", "--destination",
                        "PACS@nowhere"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **env.listener_env()})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "dicom_destination" in lines[0] and "AE@host:port" in lines[0], r.stderr


def test_echo_rejected_aes_and_refused_instances(env: Env, launch: Callable[[dict[str, str]], Listener],
                                                 tmp_path: Path) -> None:
    lis = launch(env.listener_env())
    echo = subprocess.run(["echoscu", "-aec", "CAMSEG", "-aet", "STORESCU", "127.0.0.1", str(lis.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr

    files = write_series(tmp_path / "src", ct_volume(n=2))
    rejected = storescu(lis.port, files, calling="INTRUDER")
    assert rejected.returncode != 0
    assert "reject" in (rejected.stdout + rejected.stderr).lower()

    # instances whose UIDs cannot name a spool folder are refused with "cannot understand"
    from pynetdicom import AE

    bad = []
    for series_uid in (None, "../../etc", "1.2.3.4"):
        ds = dcmread(files[0])
        with warnings.catch_warnings():  # pydicom warns of the invalid UIDs these are made of
            warnings.simplefilter("ignore", UserWarning)
            ds.SOPInstanceUID = generate_uid() if series_uid != "1.2.3.4" else "1.2.x"
            if series_uid is None:
                del ds.SeriesInstanceUID
            else:
                ds.SeriesInstanceUID = series_uid
        bad.append(ds)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", lis.port, ae_title="CAMSEG")
    assert assoc.is_established
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            statuses = [int(assoc.send_c_store(ds).Status) for ds in bad]
    finally:
        assoc.release()
    assert all(s & 0xF000 == 0xC000 for s in statuses), [hex(s) for s in statuses]

    assert lis.value("camseg_dicom_associations_total", result="rejected") == 1
    assert lis.value("camseg_dicom_associations_total", result="accepted") == 2
    assert lis.value("camseg_dicom_instances_received_total", result="refused") == 3
    assert lis.value("camseg_dicom_instances_received_total", result="stored") == 0
    assert sorted(p.name for p in env.spool.iterdir()) == [".incoming"]
    assert not any((env.spool / ".incoming").iterdir())
    assert lis.stop() == 0


def test_quiet_period_completes_a_series_whose_association_stays_open(env: Env, tmp_path: Path) -> None:
    """In-process, no worker: the series is queued as a job (its tasks wait in Redis) while
    the sender still holds the association; a later instance starts generation 2."""
    from pynetdicom import AE

    from camseg.bulk import batch
    from camseg.core.settings import Settings
    from services.dicom_listener import DicomListener

    settings = Settings(redis_url=env.redis_url, model_repo=env.repo, data_roots=[env.root / "data"],
                                output_root=env.out, dicom_model="tiny", dicom_port=0, dicom_spool=env.spool,
                                dicom_quiet_seconds=0.5, dicom_poll_seconds=0.1)
    files = write_series(tmp_path / "src", ct_volume(n=3))
    series_uid = str(dcmread(files[0]).SeriesInstanceUID)
    listener = DicomListener(settings)
    port = listener.start()
    try:
        ae = AE(ae_title="ANY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="CAMSEG")
        assert assoc.is_established
        try:
            assert [int(assoc.send_c_store(dcmread(f)).Status) for f in files[:2]] == [0, 0]
            state = wait_until("the job", lambda: (st := env.state(series_uid)).get("submitted") and st, 30)
            assert state["state"] == "queued"
            job = env.out / state["job_id"]
            assert batch.read_manifest(job).kind == batch.SERIES
            assert batch.status(job).state is batch.JobState.QUEUED
            assert len(batch.read_manifest(job).options["series"][0]["files"]) == 2
            assert int(assoc.send_c_store(dcmread(files[2])).Status) == 0
        finally:
            assoc.release()
        assert env.state(series_uid, 2)["state"] in ("receiving", "queued")
        assert len(list((env.spool / series_uid / "2" / "instances").iterdir())) == 3
        assert len(list((env.spool / series_uid / "1" / "instances").iterdir())) == 2
        assert (listener.metrics.registry.get_sample_value("camseg_dicom_series_total", {"state": "queued"}) or 0) >= 1
    finally:
        listener.stop()


def test_series_is_segmented_sent_and_survives_restarts(env: Env, worker: Worker,
                                                        launch: Callable[[dict[str, str]], Listener],
                                                        tmp_path: Path) -> None:
    dest_port = free_port()
    dest_dir = tmp_path / "received"
    dest_dir.mkdir()
    lenv = env.listener_env(CAMSEG_DICOM_DESTINATION=f"DEST@127.0.0.1:{dest_port}")
    series_uid = generate_uid()
    files = write_series(tmp_path / "src", ct_volume(), series_uid=series_uid)

    # 1. received, segmented by the worker; the destination is down: the send waits
    first = launch(lenv)
    sent = storescu(first.port, files)
    assert sent.returncode == 0, sent.stderr

    def logs() -> str:
        return (f"state {env.state(series_uid)}\n--- listener\n{first.log.read_text()[-3000:]}\n--- worker\n"
                f"{worker.log.read_text(errors='replace')[-3000:]}")

    state = wait_until("a failed send", lambda: (st := env.state(series_uid)).get("state") == "sending"
                       and st.get("attempts", 0) >= 1 and st, 120, logs=logs)
    assert state["job_id"] and "association" in state["reason"]
    assert first.value("camseg_dicom_instances_received_total", result="stored") == 4
    assert first.value("camseg_dicom_associations_total", result="accepted") == 1
    assert first.value("camseg_dicom_series_total", state="queued") == 1
    assert first.value("camseg_dicom_series_total", state="succeeded") == 1
    assert first.value("camseg_dicom_sends_total", result="failure") >= 1
    assert first.value("camseg_dicom_sends_total", result="success") == 0
    assert first.value("camseg_dicom_series_pending") == 1
    assert first.stop() == 0
    assert env.state(series_uid)["state"] == "sending"  # the pending send outlives the process

    # 2. the destination comes up; a restarted listener sends the SEG it owed
    scp = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(dest_dir), "+xa", str(dest_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(dest_port)
        second = launch(lenv)
        wait_until("the SEG sent", lambda: env.state(series_uid).get("state") == "sent", 60,
                   logs=lambda: second.log.read_text()[-3000:])
        assert second.value("camseg_dicom_sends_total", result="success") == 1
        assert second.value("camseg_dicom_series_pending") == 0
        received = sorted(dest_dir.iterdir())
        assert len(received) == 1
        check_seg(received[0], series_uid, [dcmread(f).SOPInstanceUID for f in files])
        assert second.stop() == 0

        # 3. restarted again, filing instead of sending: the sent SEG is neither sent nor filed
        # again, a sender's retry of the same instances is acknowledged without a new job,
        # and two late slices start generation 2: the whole series (6) segmented and filed
        sent_state = (env.spool / series_uid / "1" / "state.json").read_text()
        src = dcmread(files[0])
        late = write_series(tmp_path / "late", ct_volume(), series_uid=series_uid, study_uid=src.StudyInstanceUID,
                            frame_of_reference_uid=src.FrameOfReferenceUID, origin=(-100.0, -120.0, 60.0))[:2]
        third = launch(env.listener_env())
        again = storescu(third.port, [*files, *late])
        assert again.returncode == 0, again.stderr
        wait_until("generation 2 filed", lambda: env.state(series_uid, 2).get("state") == "filed", 60,
                   logs=lambda: third.log.read_text()[-3000:])
        assert sorted(p.name for p in (env.spool / series_uid).iterdir()) == ["1", "2"]
        assert len(list((env.spool / series_uid / "2" / "instances").iterdir())) == 6
        assert (env.spool / series_uid / "1" / "state.json").read_text() == sent_state
        assert third.value("camseg_dicom_instances_received_total", result="stored") == 6
        assert third.value("camseg_dicom_series_total", state="queued") == 1
        assert third.value("camseg_dicom_series_total", state="succeeded") == 1
        assert third.value("camseg_dicom_sends_total", result="success") == 0
        assert len(list(dest_dir.iterdir())) == 1
        filed = list((env.out / "dicom-seg").rglob("*.dcm"))
        assert filed == [env.out / "dicom-seg" / src.StudyInstanceUID / f"{series_uid}.dcm"]
        check_seg(filed[0], series_uid, [dcmread(f).SOPInstanceUID for f in [*files, *late]])
        assert third.stop() == 0
    finally:
        scp.terminate()
        scp.wait(timeout=10)


def check_seg(path: Path, series_uid: str, sop_uids: list[str]) -> None:
    """A valid DICOM SEG that references every instance of the sent series."""
    import highdicom

    ds: Dataset = dcmread(path)
    assert ds.Modality == "SEG"
    assert ds.SOPClassUID == SegmentationStorage
    assert [s.SeriesInstanceUID for s in ds.ReferencedSeriesSequence] == [series_uid]
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)
    seg = highdicom.seg.segread(path)
    referenced = seg.get_source_image_uids()
    assert len(referenced) == len(sop_uids)
    assert {sop for _, series, sop in referenced if series == series_uid} == set(sop_uids)
