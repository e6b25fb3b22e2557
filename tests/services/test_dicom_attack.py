"""``camseg dicom-listen`` attacked: real listener processes, pynetdicom and dcmtk as the peers.

A fuzzed corpus over C-STORE (each mutant refused with a failure status, or stored and its
series failed or filed on its own by a real worker, C-ECHO answered throughout, peak RSS
under :data:`RSS_CEILING`), an instance over the size limit, PDUs longer than advertised,
an association flood, non-image objects, a full spool, and one SOP Instance UID sent with
two contents. The rules are SECURITY.md's "DICOM receiver".
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import resource
import shutil
import socket
import struct
import subprocess
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from camseg.bulk import batch
from tests.dicomdata import write_series
from tests.dicomfuzz import KINDS, fuzz_corpus
from tests.jobs.workers import TEST_DB, Worker, flushed_redis, start_worker
from tests.services.servers import wait_until
from tests.services.test_dicom_listen import Env, Listener, ct_volume, spawn_listener, storescu

MiB = 1 << 20
RSS_CEILING = 512 * MiB  # the listener's peak RSS (VmHWM) through the fuzz corpus and the floods (about 0.4 GiB)
N_FUZZ = 48  # mutants, 8 of each kind
SEED = 21
STRICT_MAX_ASSOCIATIONS = 4
STRICT_MAX_INSTANCE = 1 * MiB
STRICT_MAX_INFLIGHT = 768 * 1024  # below one instance's limit, so one association can pass it alone
SHORT = 128  # short associations in the flood, from 8 threads
NON_IMAGES = (BasicTextSRStorage, EncapsulatedPDFStorage, GrayscaleSoftcopyPresentationStateStorage,
              SegmentationStorage)
FAILURE = (0xA000, 0xC000)  # status & 0xF000 of C-STORE failures (with 0x01xx, PS3.7 C.4)


def failed(status: int) -> bool:
    return status & 0xF000 in FAILURE or status & 0xFF00 == 0x0100


def vmhwm(pid: int) -> int:
    """Peak resident set of process ``pid``, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.fixture(autouse=True)
def dicom_tools() -> None:
    missing = [t for t in ("storescu", "echoscu") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make tools` (deploy/ensure-tools.sh) installs them")


@pytest.fixture(scope="module")
def env(exported: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("attack")
    shutil.copytree(exported[0], root / "repo" / "tiny" / "1")
    (root / "data").mkdir()
    with flushed_redis(TEST_DB) as url:
        yield Env(root, root / "repo", root / "spool", root / "out", url)


Launch = Callable[..., Listener]


@pytest.fixture(scope="module")
def launch() -> Iterator[Launch]:
    """Start ``camseg dicom-listen`` processes (``limits``: RLIMIT name -> bytes); all stopped at the end."""
    started: list[Listener] = []

    def _launch(env: dict[str, str], limits: dict[int, int] | None = None) -> Listener:
        started.append(spawn_listener(env, limits=limits, prefix="camseg-dicom-attack-"))
        return started[-1]

    yield _launch
    for listener in started:
        listener.stop()
        listener.log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def strict(env: Env, launch: Launch) -> tuple[Env, Listener]:
    """One listener with small limits, shared by the tests that do not fill it."""
    e = dataclasses.replace(env, spool=env.root / "strict-spool")
    # a connection that never completes an association holds a slot for the timeout: keep it short here
    return e, launch(e.listener_env(CAMSEG_DICOM_MAX_ASSOCIATIONS=str(STRICT_MAX_ASSOCIATIONS),
                                    CAMSEG_DICOM_MAX_INSTANCE_BYTES=str(STRICT_MAX_INSTANCE),
                                    CAMSEG_DICOM_MAX_INFLIGHT_BYTES=str(STRICT_MAX_INFLIGHT),
                                    CAMSEG_DICOM_TIMEOUT_SECONDS="3"))


@contextlib.contextmanager
def raw_sends() -> Iterator[None]:
    """pynetdicom sends a file's data set bytes as they are (only its file meta is read)."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


@contextlib.contextmanager
def association(port: int, *contexts: str) -> Iterator[Any]:
    ae = AE(ae_title="STORESCU")
    for cx in contexts or (CTImageStorage,):
        ae.add_requested_context(cx, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CAMSEG")
    assert assoc.is_established, "association not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def store(assoc: Any, what: Dataset | Path) -> int | None:
    """The C-STORE status, None when no response came (the association was aborted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        status = assoc.send_c_store(what).get("Status")
    return None if status is None else int(status)


def echo(port: int) -> int | None:
    """A C-ECHO on an association of its own: its status, None when rejected or unanswered."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CAMSEG")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo().get("Status")
        return None if status is None else int(status)
    finally:
        assoc.release()


def storescu_v(port: int, files: list[Path]) -> str:
    """dcmtk's storescu, verbose: what it printed (each store response's status among it)."""
    r = subprocess.run(["storescu", "-v", "-aec", "CAMSEG", "-aet", "STORESCU", "127.0.0.1", str(port),
                        *map(str, files)], capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def echoscu(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-aec", "CAMSEG", "-aet", "STORESCU", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def series(folder: Path, n: int = 2, size: int = 32, *, series_uid: str | None = None,
           study_uid: str | None = None, frame_of_reference_uid: str | None = None) -> list[Path]:
    """``n`` CT slices: synthetic tumor ROIs at 32 px (what the tiny model segments), else seeded noise."""
    if size == 32:
        volume = ct_volume(n=max(n, 2))[:n]
    else:
        volume = np.random.default_rng(size).integers(900, 1300, (n, size, size), dtype=np.uint16)
    return write_series(folder, volume, series_uid=series_uid, study_uid=study_uid,
                        frame_of_reference_uid=frame_of_reference_uid)


def held(spool: Path, series_uid: str) -> dict[str, bytes]:
    """The instances a series' latest generation holds, by file name."""
    gens = sorted((spool / series_uid).iterdir(), key=lambda p: int(p.name)) if (spool / series_uid).is_dir() else []
    return {f.name: f.read_bytes() for f in (gens[-1] / "instances").iterdir()} if gens else {}


def body(part10: bytes) -> bytes:
    """The data set of a Part 10 file, after its preamble and file meta."""
    (meta,) = struct.unpack_from("<L", part10, 132 + 8)  # (0002,0000) UL: the meta's length
    return part10[132 + 12 + meta:]


def encoded(ds: Dataset) -> bytes:
    """The data set as C-STORE sends it (Explicit VR Little Endian, no file meta)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return body(buf.getvalue())


def free_slots(port: int, most: int) -> int:
    """How many associations the listener accepts at once now (at most ``most``)."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", port, ae_title="CAMSEG") for _ in range(most)]
    n = sum(a.is_established for a in held)
    for a in held:
        if a.is_established:
            a.release()
    return n


# ---------------------------------------------------------------------- the fuzzed corpus
def test_fuzzed_instances_are_refused_or_fail_alone(env: Env, launch: Launch, tmp_path: Path) -> None:
    e = dataclasses.replace(env, spool=env.root / "fuzz-spool")
    worker: Worker = start_worker(e.env(), concurrency=1)
    try:
        lis = launch(e.listener_env())
        source = series(tmp_path / "src", n=1, series_uid=generate_uid(entropy_srcs=["fuzz-src"]),
                        study_uid=generate_uid(entropy_srcs=["fuzz-study"]),
                        frame_of_reference_uid=generate_uid(entropy_srcs=["fuzz-frame"]))[0]
        corpus = fuzz_corpus(source, tmp_path / "fuzz", N_FUZZ, seed=SEED)
        clean_uid = generate_uid()
        clean = series(tmp_path / "clean", n=3, series_uid=clean_uid)
        before = vmhwm(lis.proc.pid)

        statuses: dict[int, int | None] = {}
        echoes: list[int | None] = []
        with raw_sends(), association(lis.port) as assoc:
            for i, m in enumerate(corpus):
                statuses[i] = store(assoc, m.path)
                if i % 8 == 7:  # on an association of its own, while this one stays open
                    echoes.append(echo(lis.port))
                if i == N_FUZZ // 2:  # a clean series by dcmtk in the middle of it all
                    sent = storescu(lis.port, clean)
                    assert sent.returncode == 0, sent.stderr
        assert echoes == [0] * (N_FUZZ // 8)
        dcmtk_echo = echoscu(lis.port)
        assert dcmtk_echo.returncode == 0, dcmtk_echo.stderr

        assert None not in statuses.values(), "an association was aborted"
        stored = [i for i, s in statuses.items() if s == 0]
        refused = {i: s for i, s in statuses.items() if s != 0}
        assert all(s is not None and failed(s) for s in refused.values()), {i: hex(s or 0) for i, s in refused.items()}
        by_kind = Counter((corpus[i].kind, "stored" if i in stored else "refused") for i in statuses)
        print(f"\nfuzz: {N_FUZZ} mutants, {len(stored)} stored, {len(refused)} refused "
              f"({Counter(hex(s or 0) for s in refused.values())}); by kind {dict(sorted(by_kind.items()))}")
        assert stored and refused  # the corpus reaches both paths
        assert {k for k, _ in by_kind} == set(KINDS)
        assert lis.value("camseg_dicom_instances_received_total", result="stored") == len(stored) + len(clean)
        assert lis.value("camseg_dicom_instances_received_total", result="refused") == len(refused)

        # every stored mutant ends on its own (failed with a reason, or segmented and filed); the clean series is filed
        def states() -> dict[str, dict[str, Any]]:
            return {p.parent.name: e.state(p.parent.name) for p in e.spool.glob("*/1")}

        def logs() -> str:
            return f"{states()}\n--- worker\n{worker.log.read_text(errors='replace')[-3000:]}"

        def ended() -> dict[str, dict[str, Any]] | None:
            st = states()
            return st if st and all(s.get("state") in ("failed", "filed") for s in st.values()) else None

        final = wait_until("every series final", ended, 150, logs=logs)
        assert final[clean_uid]["state"] == "filed"
        assert (e.out / "dicom-seg" / str(dcmread(clean[0]).StudyInstanceUID) / f"{clean_uid}.dcm").is_file()
        ends = Counter(s["state"] for uid, s in final.items() if uid != clean_uid)
        assert all(s["reason"] for s in final.values() if s["state"] == "failed")
        assert sum(ends.values()) >= 1
        for i in stored:  # a mutant whose series UID survived is in its own series, alone
            if corpus[i].series_uid in final:
                assert list(held(e.spool, corpus[i].series_uid)) == [f"{corpus[i].sop_uid}.dcm"]
        peak = vmhwm(lis.proc.pid)
        print(f"fuzz: series ends {dict(ends)}; listener VmHWM {before / MiB:.0f} MiB at start, "
              f"{peak / MiB:.0f} MiB after (ceiling {RSS_CEILING / MiB:.0f})")
        assert peak < RSS_CEILING
        assert lis.stop() == 0
    finally:
        worker.stop()
        worker.log.unlink(missing_ok=True)


# ---------------------------------------------------------------------- size limits
def test_instance_over_the_limit_is_refused_unwritten(strict: tuple[Env, Listener], tmp_path: Path) -> None:
    e, lis = strict
    refused = lis.value("camseg_dicom_instances_received_total", result="refused")
    big_uid = generate_uid()
    big = series(tmp_path / "big", n=1, size=1024, series_uid=big_uid)  # 2 MiB of pixels, twice the limit
    assert big[0].stat().st_size > 2 * STRICT_MAX_INSTANCE

    with association(lis.port) as assoc:
        assert store(assoc, dcmread(big[0])) is None  # aborted mid-instance: no status
        wait_until("the A-ABORT", lambda: assoc.is_aborted, 10)
    sent = storescu(lis.port, big)  # dcmtk: the same abort
    assert sent.returncode != 0 and "abort" in (sent.stdout + sent.stderr).lower(), sent.stdout + sent.stderr
    assert not (e.spool / big_uid).exists()
    assert not any((e.spool / ".incoming").iterdir())
    assert lis.value("camseg_dicom_instances_received_total", result="refused") == refused + 2

    small = series(tmp_path / "small", n=1)
    with association(lis.port) as assoc:
        assert store(assoc, dcmread(small[0])) == 0
    assert echo(lis.port) == 0


def test_bytes_arriving_at_once_are_bounded(strict: tuple[Env, Listener], tmp_path: Path) -> None:
    """The listener-wide limit on instance bytes arriving: an instance that takes the total
    past it is aborted unwritten, whatever the per-instance limit; after each instance its
    bytes stop counting, so instances under it keep arriving one after another."""
    e, lis = strict
    refused = lis.value("camseg_dicom_instances_received_total", result="refused")
    under = [series(tmp_path / f"under{k}", n=1, size=512)[0] for k in range(3)]  # 0.5 MiB each
    over_uid = generate_uid()
    over = series(tmp_path / "over", n=1, size=672, series_uid=over_uid)[0]  # 0.86 MiB: < instance limit
    assert STRICT_MAX_INFLIGHT < over.stat().st_size < STRICT_MAX_INSTANCE

    with association(lis.port) as assoc:
        assert [store(assoc, dcmread(f)) for f in under] == [0, 0, 0]  # 1.5 MiB in all, one at a time
    with association(lis.port) as assoc:
        # in one PDU it is whole before the count can abort it: refused then, unwritten all the same
        assert store(assoc, dcmread(over)) in (None, 0xA700)
    assert not (e.spool / over_uid).exists()
    assert lis.value("camseg_dicom_instances_received_total", result="refused") == refused + 1
    assert "instances arriving at once past" in lis.log.read_text()
    assert echo(lis.port) == 0


def test_pdus_longer_than_advertised_close_the_connection(strict: tuple[Env, Listener]) -> None:
    """A peer that claims a 2 GiB PDU (before or after association) and streams: the listener
    closes the connection after at most one advertised PDU, and keeps answering."""
    _, lis = strict
    before = vmhwm(lis.proc.pid)
    chunk = bytes(64 * 1024)
    for pdu_type in (0x01, 0x04):  # A-ASSOCIATE-RQ, P-DATA-TF
        sent = 0
        with socket.create_connection(("127.0.0.1", lis.port), timeout=10) as s, \
                contextlib.suppress(ConnectionError, TimeoutError):
                s.sendall(struct.pack(">BBL", pdu_type, 0, 0x7FFFFFFF))
                while sent < 256 * MiB:
                    s.sendall(chunk)
                    sent += len(chunk)
        assert sent < 64 * MiB, f"PDU type {pdu_type:#x}: {sent} bytes taken before the connection closed"
    assert echo(lis.port) == 0
    assert vmhwm(lis.proc.pid) - before < 32 * MiB


# ---------------------------------------------------------------------- association floods
def test_association_flood(strict: tuple[Env, Listener], tmp_path: Path) -> None:
    e, lis = strict
    wait_until("every slot free", lambda: free_slots(lis.port, STRICT_MAX_ASSOCIATIONS) == STRICT_MAX_ASSOCIATIONS, 20)
    accepted0 = lis.value("camseg_dicom_associations_total", result="accepted")
    rejected0 = lis.value("camseg_dicom_associations_total", result="rejected")

    # more than the maximum at once: the excess rejected (A-ASSOCIATE-RJ), the accepted ones complete
    over = 3
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    held_open = [ae.associate("127.0.0.1", lis.port, ae_title="CAMSEG")
                 for _ in range(STRICT_MAX_ASSOCIATIONS + over)]
    try:
        assert [a.is_established for a in held_open].count(True) == STRICT_MAX_ASSOCIATIONS
        assert [a.is_rejected for a in held_open].count(True) == over
        dcmtk = echoscu(lis.port)
        assert dcmtk.returncode != 0 and "local limit exceeded" in (dcmtk.stdout + dcmtk.stderr).lower(), \
            dcmtk.stdout + dcmtk.stderr
        uids = []
        for k, a in enumerate(a for a in held_open if a.is_established):
            f = series(tmp_path / f"held{k}", n=1)[0]
            uids.append(str(dcmread(f).SeriesInstanceUID))
            assert store(a, dcmread(f)) == 0
    finally:
        for a in held_open:
            if a.is_established:
                a.release()
    assert all(held(e.spool, uid) for uid in uids)

    # many short ones from 8 threads: each accepted and answered, or rejected; nothing else
    results: Counter[str] = Counter()
    lock = threading.Lock()

    def short(n: int) -> None:
        client = AE(ae_title="STORESCU")
        client.add_requested_context(Verification)
        for _ in range(n):
            a = client.associate("127.0.0.1", lis.port, ae_title="CAMSEG")
            if a.is_established:
                status = a.send_c_echo().get("Status")
                a.release()
                outcome = "echoed" if status == 0 else f"unanswered {status}"
            else:
                outcome = "rejected" if a.is_rejected else "aborted or unreachable"
            with lock:
                results[outcome] += 1

    threads = [threading.Thread(target=short, args=(SHORT // 8,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    print(f"\nflood: {STRICT_MAX_ASSOCIATIONS + over} at once ({STRICT_MAX_ASSOCIATIONS} accepted), "
          f"then {SHORT} short from 8 threads: {dict(results)}; listener VmHWM {vmhwm(lis.proc.pid) / MiB:.0f} MiB")
    assert set(results) <= {"echoed", "rejected"} and sum(results.values()) == SHORT, results
    assert results["echoed"] >= STRICT_MAX_ASSOCIATIONS
    assert wait_until("an echo after the flood", lambda: echo(lis.port) == 0, 20)
    accepted = lis.value("camseg_dicom_associations_total", result="accepted") - accepted0
    rejected = lis.value("camseg_dicom_associations_total", result="rejected") - rejected0
    assert rejected >= over + 1 + results["rejected"]
    assert accepted >= STRICT_MAX_ASSOCIATIONS + results["echoed"]
    assert vmhwm(lis.proc.pid) < RSS_CEILING


# ---------------------------------------------------------------------- non-image objects
def _non_image(sop_class: str, like: Dataset) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = like.StudyInstanceUID
    ds.SeriesInstanceUID = like.SeriesInstanceUID  # the image series' own: they must still stay out of it
    ds.PatientID = "FUZZ"
    ds.Modality = {str(BasicTextSRStorage): "SR", str(EncapsulatedPDFStorage): "DOC",
                   str(GrayscaleSoftcopyPresentationStateStorage): "PR", str(SegmentationStorage): "SEG"}[sop_class]
    if sop_class == EncapsulatedPDFStorage:
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    elif sop_class == BasicTextSRStorage:
        ds.ValueType = "CONTAINER"
        ds.ContentSequence = [Dataset()]
        ds.ContentSequence[0].ValueType = "TEXT"
        ds.ContentSequence[0].TextValue = "no image here"
    elif sop_class == SegmentationStorage:  # pixel data, but camseg's own kind of output
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated = ds.BitsStored = 1
        ds.HighBit = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes(8)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def test_non_image_objects_never_reach_the_workers(strict: tuple[Env, Listener], tmp_path: Path) -> None:
    e, lis = strict
    images = series(tmp_path / "ct", n=2)
    ct = [dcmread(f) for f in images]
    uid = str(ct[0].SeriesInstanceUID)
    others = [_non_image(c, ct[0]) for c in NON_IMAGES]
    pixelless = dcmread(images[0])  # an image class with its pixel data removed
    pixelless.SOPInstanceUID = pixelless.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del pixelless.PixelData
    disguised = _non_image(EncapsulatedPDFStorage, ct[0])  # a PDF sent as a CT image: the meta says CT
    meta = DicomBytesIO()
    meta.write(bytes(128) + b"DICM")
    disguised.file_meta.MediaStorageSOPClassUID = CTImageStorage
    write_file_meta_info(meta, disguised.file_meta, enforce_standard=True)
    disguised_path = tmp_path / "disguised.dcm"
    disguised_path.write_bytes(meta.getvalue() + encoded(disguised))

    with association(lis.port, CTImageStorage, *NON_IMAGES) as assoc:
        assert store(assoc, ct[0]) == 0
        assert [store(assoc, ds) for ds in others] == [0x0122] * len(others)
        assert store(assoc, pixelless) == 0x0122
        with raw_sends():
            assert store(assoc, disguised_path) == 0xA900
        assert store(assoc, ct[1]) == 0
    pdf = tmp_path / "report.dcm"
    others[1].save_as(pdf, enforce_file_format=True)
    told = storescu_v(lis.port, [pdf])  # dcmtk is told the same
    assert "Received Store Response (Refused: SOPClassNotSupported)" in told, told

    # the series' job lists the two CT instances, nothing else
    state = wait_until("the job", lambda: (st := e.state(uid)).get("submitted") and st, 30)
    manifest = batch.read_manifest(e.out / state["job_id"])
    files = manifest.options["series"][0]["files"]
    assert sorted(Path(f).name for f in files) == sorted(f"{ds.SOPInstanceUID}.dcm" for ds in ct)
    assert sorted(held(e.spool, uid)) == sorted(f"{ds.SOPInstanceUID}.dcm" for ds in ct)


# ---------------------------------------------------------------------- the same UID twice
def test_same_sop_instance_uid_with_other_content(strict: tuple[Env, Listener], tmp_path: Path) -> None:
    """The first content is kept: the same bytes again are acknowledged (a retry), other bytes
    under the UID are refused with 0x0111, while the series receives and after it is queued."""
    e, lis = strict
    files = series(tmp_path / "ct", n=2)
    first = dcmread(files[0])
    other = dcmread(files[0])
    other.PixelData = bytes(len(other.PixelData))  # same UIDs, other pixels
    uid = str(first.SeriesInstanceUID)
    name = f"{first.SOPInstanceUID}.dcm"

    with association(lis.port) as assoc:
        assert store(assoc, first) == 0
        assert store(assoc, first) == 0  # a retry
        assert store(assoc, other) == 0x0111
        assert store(assoc, dcmread(files[1])) == 0
    assert body(held(e.spool, uid)[name]) == encoded(first)
    wait_until("the series queued", lambda: e.state(uid).get("submitted"), 30)

    with association(lis.port) as assoc:
        assert store(assoc, other) == 0x0111
        assert store(assoc, first) == 0
    conflicting = tmp_path / "other.dcm"
    other.save_as(conflicting, enforce_file_format=True)
    told = storescu_v(lis.port, [conflicting])
    assert "Received Store Response (Unknown Status: 0x111)" in told, told  # dcmtk names no C-STORE 0x0111
    assert sorted(p.name for p in (e.spool / uid).iterdir()) == ["1"]  # no new generation
    assert body(held(e.spool, uid)[name]) == encoded(first)


# ---------------------------------------------------------------------- the spool full
def test_full_spool_is_out_of_resources_and_nothing_unwritten_is_acknowledged(
        env: Env, launch: Launch, tmp_path: Path) -> None:
    """A quota (CAMSEG_DICOM_SPOOL_MAX_BYTES) and a real write error (a file size limit,
    RLIMIT_FSIZE, under which writes fail with EFBIG as on a full disk) both answer 0xA700."""
    e = dataclasses.replace(env, spool=env.root / "full-spool")
    medium = series(tmp_path / "medium", n=6, size=600)  # about 0.7 MiB each
    size = len(encoded(dcmread(medium[0])))
    quota = 5 * size + size // 2
    lis = launch(e.listener_env(CAMSEG_DICOM_SPOOL_MAX_BYTES=str(quota)), limits={resource.RLIMIT_FSIZE: MiB})
    too_big = series(tmp_path / "big", n=1, size=800)[0]  # 1.2 MiB: the file cannot be written whole

    statuses = {}
    with association(lis.port) as assoc:
        statuses[too_big] = store(assoc, dcmread(too_big))
        for f in medium:
            statuses[f] = store(assoc, dcmread(f))
    assert statuses[too_big] == 0xA700
    assert [statuses[f] for f in medium] == [0] * 5 + [0xA700]
    acknowledged = {f"{dcmread(f).SOPInstanceUID}.dcm": encoded(dcmread(f)) for f in medium[:5]}
    uid = str(dcmread(medium[0]).SeriesInstanceUID)
    assert {k: body(v) for k, v in held(e.spool, uid).items()} == acknowledged  # on disk, whole
    assert not (e.spool / str(dcmread(too_big).SeriesInstanceUID)).exists()
    assert not any((e.spool / ".incoming").iterdir())
    assert echo(lis.port) == 0
    assert "spool quota" in lis.log.read_text() and "File too large" in lis.log.read_text()
    assert lis.stop() == 0
