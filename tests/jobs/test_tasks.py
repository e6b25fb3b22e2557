"""Bulk jobs through real Redis and real ``camseg worker`` processes: completion, the
in-process equality, killed workers, a Redis that forgets everything, cancel, a bad
image, a path outside the roots."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from camseg.bulk import batch
from camseg.bulk.segment import segment_folder
from camseg.core.errors import InvalidInputError
from camseg.heat.methods import CamMethod
from camseg.heat.rules import parse_rule
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel
from jobs.app import make_app
from jobs.submit import resume, submit_segment, submit_series
from tests.jobs.conftest import JobEnv
from tests.jobs.workers import RedisServer, Worker, free_port, start_worker

OPTS = Options(threshold=parse_rule("p90"), gate=False)
SLOW = Options(method=CamMethod.FUSED, threshold=parse_rule("p90"), gate=False)  # the torch path: chunks take a while


def wait_for(job: Path, states: set[batch.JobState], timeout: float = 240) -> batch.JobStatus:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = batch.status(job)
        if st.state in states:
            return st
        time.sleep(0.2)
    raise AssertionError(f"job {job.name} still {batch.status(job)} after {timeout} s")


def rows(job: Path) -> list[dict[str, str]]:
    with (job / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def assert_every_image_once(job: Path) -> None:
    m = batch.read_manifest(job)
    ids = [r["id"] for r in rows(job)]
    assert len(ids) == m.images == len(set(ids)), (len(ids), m.images, len(set(ids)))
    assert len(list((job / "masks").iterdir())) == m.images


def test_bulk_job_equals_the_core_in_process(job_env: JobEnv, workers: list[Worker], tmp_path: Path) -> None:
    worker = start_worker(job_env.env(CAMSEG_WORKER_METRICS_PORT="0"), concurrency=2)
    workers.append(worker)
    s = job_env.settings()
    sub = submit_segment(make_app(s), s, model="tiny", version="", data=job_env.data_root / "rois", options=OPTS,
                         chunk_size=16)
    assert sub.images == 240 and sub.chunks == 15
    job = s.output_root / sub.job_id
    wait_for(job, {batch.JobState.SUCCEEDED})
    summary = json.loads((job / "summary.json").read_text())
    assert summary["images"] == summary["segmented"] == 240 and summary["failed"] == 0
    assert summary["labels"] == {"model": "tiny", "version": "1"}
    assert_every_image_once(job)
    local = segment_folder(job_env.repo / "tiny" / "1", job_env.data_root / "rois", tmp_path / "local", OPTS)
    assert summary["mean_dice"] == pytest.approx(local["mean_dice"], abs=1e-6)
    assert summary["with_truth"] == local["with_truth"] and summary["accuracy"] == pytest.approx(local["accuracy"])
    # the worker's metrics, merged over its prefork children (the last task's are counted
    # just after it wrote the summary)
    end = time.monotonic() + 30
    while "camseg_job_images_total 240.0" not in (text := worker.metrics()) and time.monotonic() < end:
        time.sleep(0.2)
    done = re.search(r'camseg_job_tasks_total\{outcome="SUCCESS",task="camseg.run_part"\} (\d+)', text)
    assert done and int(done.group(1)) >= 15, text
    assert re.search(r"camseg_job_images_total 240\.0", text)
    assert re.search(r'camseg_job_last_success_timestamp_seconds\{kind="segment"\} \d', text)
    assert 'camseg_job_queue_length{queue="camseg"} 0.0' in text
    assert "camseg_job_task_duration_seconds_bucket" in text


@pytest.mark.parametrize("kill", ["child", "whole worker"])
def test_a_killed_worker_loses_nothing(job_env: JobEnv, workers: list[Worker], kill: str) -> None:
    env = job_env.env(CAMSEG_VISIBILITY_TIMEOUT="4")
    first = start_worker(env, concurrency=1)
    workers.append(first)
    s = job_env.settings(visibility_timeout=4)
    sub = submit_segment(make_app(s), s, model="tiny", version="", data=job_env.data_root / "rois", options=SLOW,
                         chunk_size=4)
    job = s.output_root / sub.job_id
    end = time.monotonic() + 120
    while batch.status(job).chunks_done < 3 and time.monotonic() < end:
        time.sleep(0.05)
    assert batch.status(job).chunks_done < sub.chunks, "the job ended before the kill"
    if kill == "child":
        children = first.children()
        assert children
        for pid in children:
            os.kill(pid, 9)
    else:
        first.kill()
    workers.append(start_worker(env, concurrency=1))  # a second worker finishes it
    wait_for(job, {batch.JobState.SUCCEEDED}, timeout=300)
    assert_every_image_once(job)


def test_redis_restarted_empty_then_resume(job_env: JobEnv, workers: list[Worker]) -> None:
    server = RedisServer(free_port()).start()
    try:
        env = job_env.env(CAMSEG_REDIS_URL=server.url)
        workers.append(start_worker(env, concurrency=1))
        s = job_env.settings(redis_url=server.url)
        app = make_app(s)
        sub = submit_segment(app, s, model="tiny", version="", data=job_env.data_root / "rois", options=SLOW,
                             chunk_size=4)
        job = s.output_root / sub.job_id
        end = time.monotonic() + 120
        while batch.status(job).chunks_done < 3 and time.monotonic() < end:
            time.sleep(0.05)
        server.kill()  # every queued chunk is gone with it
        server.start()
        time.sleep(2)
        done_then = batch.status(job).chunks_done
        assert done_then < sub.chunks
        # nothing left in the broker: without a resume the job would wait forever
        assert resume(make_app(s), s, sub.job_id) > 0
        wait_for(job, {batch.JobState.SUCCEEDED}, timeout=300)
        assert_every_image_once(job)
    finally:
        server.kill()


def test_cancel_a_bad_image_and_a_path_outside_the_roots(job_env: JobEnv, workers: list[Worker],
                                                         tmp_path: Path) -> None:
    import shutil

    data = job_env.data_root / "with-bad"
    if not data.exists():
        shutil.copytree(job_env.data_root / "rois", data)
        victim = sorted((data / "images").iterdir())[5]
        victim.write_bytes(b"not an image")
    s = job_env.settings()
    app = make_app(s)
    # refused before anything is read or queued
    with pytest.raises(InvalidInputError, match="outside the allowed roots"):
        submit_segment(app, s, model="tiny", version="", data=tmp_path, options=OPTS)
    with pytest.raises(InvalidInputError, match="outside the allowed roots"):
        submit_segment(app, s, model="tiny", version="", data=job_env.data_root / ".." / "..", options=OPTS)
    cli = subprocess.run([sys.executable, "-m", "camseg", "jobs", "submit", "--model", "tiny", "--data", str(tmp_path)],
                         capture_output=True, text=True, env={**os.environ, **job_env.env()}, timeout=120)
    assert cli.returncode == 2 and cli.stderr.strip().startswith("camseg: error:") and "Traceback" not in cli.stderr
    # a bad image fails alone
    workers.append(start_worker(job_env.env(), concurrency=1))
    sub = submit_segment(app, s, model="tiny", version="", data=data, options=OPTS, chunk_size=32)
    job = s.output_root / sub.job_id
    wait_for(job, {batch.JobState.SUCCEEDED})
    summary = json.loads((job / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["segmented"] == 239
    assert "not a readable image" in summary["failures"][0]["error"]
    bad = [r for r in rows(job) if r["error"]]
    assert len(bad) == 1 and bad[0]["mask_area"] == ""
    # cancel stops the job: nothing more runs
    sub = submit_segment(app, s, model="tiny", version="", data=job_env.data_root / "rois", options=SLOW,
                         chunk_size=4)
    job = s.output_root / sub.job_id
    while batch.status(job).chunks_done < 1:
        time.sleep(0.05)
    batch.cancel(job)
    time.sleep(3)
    st = wait_for(job, {batch.JobState.CANCELLED})
    frozen = st.chunks_done
    time.sleep(2)
    assert batch.status(job).chunks_done == frozen < sub.chunks
    assert not (job / "summary.json").exists()


def test_in_process_reference_run(job_env: JobEnv) -> None:
    """The core's own runner over the same job layout (no broker): the reference the
    workers are compared with, and idempotent chunks."""
    model = LoadedModel.load(job_env.repo / "tiny" / "1")
    job = batch.create_segment_job(job_env.out, job_env.repo / "tiny" / "1", job_env.data_root / "rois",
                                   options=OPTS, chunk_size=50)
    assert batch.pending_chunks(job) == [0, 1, 2, 3, 4]
    assert batch.run_part(job, 2, model=model) is True
    assert batch.run_part(job, 2, model=model) is False  # done: not run again
    assert batch.pending_chunks(job) == [0, 1, 3, 4]
    with pytest.raises(InvalidInputError, match="not done"):
        batch.finish(job)
    summary = batch.run_local(job, model)
    assert summary["images"] == 240
    assert batch.finish(job) == summary  # idempotent
    assert_every_image_once(job)


def test_the_reconciler_queues_what_the_broker_forgot(job_env: JobEnv, workers: list[Worker]) -> None:
    """A job planned on disk whose chunks never reached the broker (or were lost with it):
    the reconciler's run finds it from its folder and the job completes."""
    s = job_env.settings()
    job = batch.create_segment_job(s.output_root, job_env.repo / "tiny" / "1", job_env.data_root / "rois",
                                   options=OPTS, chunk_size=40)
    done_before = batch.status(job)
    assert done_before.state is batch.JobState.QUEUED and done_before.chunks_done == 0
    workers.append(start_worker(job_env.env(), concurrency=1))
    result = make_app(s).send_task("camseg.reconcile").get(timeout=120)
    assert result == {"chunks": 6}
    wait_for(job, {batch.JobState.SUCCEEDED})
    assert_every_image_once(job)


def test_volume_pairs_are_sliced_and_segmented(job_env: JobEnv, workers: list[Worker]) -> None:
    """NRRD image + label volumes as a job's input: sliced along the axis into the job's
    own data folder; a slice is a tumor slice when its label has a voxel."""
    import nrrd
    import numpy as np

    vol = job_env.data_root / "volumes"
    vol.mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 1000, size=(32, 32, 6)).astype(np.int16)
    label = np.zeros((32, 32, 6), np.uint8)
    label[10:16, 12:20, 2] = 1
    label[4:9, 4:9, 4] = 1
    nrrd.write(str(vol / "case1.nrrd"), image, {"encoding": "gzip"})
    nrrd.write(str(vol / "case1_label.nrrd"), label, {"encoding": "gzip"})
    workers.append(start_worker(job_env.env(), concurrency=1))
    s = job_env.settings()
    app = make_app(s)
    sub = submit_segment(app, s, model="tiny", version="", volumes=[(vol / "case1.nrrd", vol / "case1_label.nrrd")],
                         options=OPTS)
    assert sub.images == 6
    job = s.output_root / sub.job_id
    wait_for(job, {batch.JobState.SUCCEEDED})
    summary = json.loads((job / "summary.json").read_text())
    assert summary["images"] == 6 and summary["with_truth"] == 2 and summary["failed"] == 0
    assert_every_image_once(job)
    with pytest.raises(InvalidInputError, match="outside the allowed roots"):
        submit_segment(app, s, model="tiny", version="", volumes=[(Path("/etc/passwd"), vol / "case1_label.nrrd")])
    with pytest.raises(InvalidInputError, match="either"):
        submit_segment(app, s, model="tiny", version="", data=job_env.data_root / "rois",
                       volumes=[(vol / "case1.nrrd", vol / "case1_label.nrrd")])


def _finish_at(job: str, start: float) -> str:
    while time.time() < start:
        time.sleep(0.001)
    return json.dumps(batch.finish(Path(job)), sort_keys=True)


def test_finishers_that_end_together_write_one_result(job_env: JobEnv, tmp_path: Path) -> None:
    """The last chunks of two workers can end at once: both see nothing pending and both
    finish the job. Neither may fail, and the results are whole."""
    import multiprocessing

    model = LoadedModel.load(job_env.repo / "tiny" / "1", threads=1)
    job = batch.create_segment_job(tmp_path / "out", job_env.repo / "tiny" / "1", job_env.data_root / "rois",
                                   options=OPTS, chunk_size=64)
    for i in batch.pending_chunks(job):
        batch.run_part(job, i, model=model)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        for _ in range(3):
            for name in ("summary.json", "results.csv"):
                (job / name).unlink(missing_ok=True)
            start = time.time() + 1.5
            outs = pool.starmap(_finish_at, [(str(job), start)] * 4)
            assert len(set(outs)) == 1
            assert_every_image_once(job)


def test_bulk_jobs_of_imported_models(job_env: JobEnv, workers: list[Worker], tmp_path: Path) -> None:
    """An imported ONNX classifier runs as a bulk job exactly as camseg's own: same rows as
    the core in process; a four-class model scores the two-class data as lesion vs. not;
    a graph without a gradient path runs the gradient-free method its config asks for."""
    from tests.foreign import cumsum_net, tf_like

    tf_like().write(job_env.repo / "foreign" / "1")
    cum = cumsum_net()
    cum.write(job_env.repo / "nograd" / "1", config={**cum.config, "cam": {"method": "scorecam"}})
    workers.append(start_worker(job_env.env(), concurrency=1))
    s = job_env.settings()
    app = make_app(s)
    four = submit_segment(app, s, model="foreign", version="", data=job_env.data_root / "rois", options=OPTS,
                          chunk_size=60)
    nograd = submit_segment(app, s, model="nograd", version="", data=job_env.data_root / "rois", options=None,
                            chunk_size=120)
    job = s.output_root / four.job_id
    wait_for(job, {batch.JobState.SUCCEEDED})
    assert_every_image_once(job)
    summary = json.loads((job / "summary.json").read_text())
    local = segment_folder(job_env.repo / "foreign" / "1", job_env.data_root / "rois", tmp_path / "local", OPTS)
    assert summary["mean_dice"] == pytest.approx(local["mean_dice"], abs=1e-6)
    assert summary["accuracy"] == pytest.approx(local["accuracy"])
    assert {r["predicted_label"] for r in rows(job)} <= {"normal", "mass", "calcification", "distortion"}
    job = s.output_root / nograd.job_id
    wait_for(job, {batch.JobState.SUCCEEDED})
    assert batch.read_manifest(job).options["method"] == "scorecam"  # the config's method, recorded
    assert json.loads((job / "summary.json").read_text())["segmented"] == 240


def test_dicom_series_jobs_write_one_seg_per_series(job_env: JobEnv, workers: list[Worker], tmp_path: Path) -> None:
    """A folder of DICOM series as a job: one task per series on a real worker, one SEG each
    that validates and equals the in-process run; a series that cannot be read fails alone
    with its reason, and the job succeeds."""
    from camseg.data.synth import SynthConfig, generate
    from tests.dicomdata import write_series

    images, _, _, _ = generate(SynthConfig(n=6, size=32, seed=2))
    values = np.round(864 + 400 * np.clip(images, 0, 1)).astype(np.uint16)
    archive = job_env.data_root / f"pacs-{tmp_path.name}"
    write_series(archive / "one", values[:3])
    write_series(archive / "two", values[3:], row_cosines=(0.0, 1.0, 0.0), column_cosines=(0.0, 0.0, -1.0))
    bad = write_series(archive / "three", values[:3], prefix="BAD")
    ds = pydicom.dcmread(bad[0])
    del ds.PixelData
    ds.save_as(bad[0])
    workers.append(start_worker(job_env.env(), concurrency=1))
    s = job_env.settings()
    sub = submit_series(make_app(s), s, model="tiny", version="", data=archive, options=OPTS)
    assert sub.chunks == 3
    job = s.output_root / sub.job_id
    wait_for(job, {batch.JobState.SUCCEEDED})
    summary = json.loads((job / "summary.json").read_text())
    assert summary["segmented"] == 2 and summary["failed"] == 1
    assert "no pixel data" in summary["failures"][0]["error"] and bad[0].name in summary["failures"][0]["error"]
    local = batch.create_series_job(tmp_path, job_env.repo / "tiny" / "1", archive, options=OPTS, job_id="local")
    expected = batch.run_local(local, LoadedModel.load(job_env.repo / "tiny" / "1"))
    assert set(summary["outputs"]) == set(expected["outputs"])
    for name, seg_file in summary["outputs"].items():
        got = pydicom.dcmread(job / seg_file)
        want = pydicom.dcmread(local / expected["outputs"][name])
        assert got.Modality == "SEG" and got.NumberOfFrames == want.NumberOfFrames == 3
        assert got.PixelData == want.PixelData
        check = subprocess.run(["dciodvfy", str(job / seg_file)], capture_output=True, text=True)
        assert not [ln for ln in check.stderr.splitlines() if ln.startswith("Error")], check.stderr
