"""The job store and the job kinds in one process, without Redis or a worker: the
manifest of a planned job, a part run twice, a part that fails with its reason, cancel,
results written whole and last, and each kind's parts and results through the registry."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nrrd
import numpy as np
import pytest

from camseg.bulk import batch, store
from camseg.bulk.segment import segment_folder
from camseg.core.errors import CancelledError, InvalidInputError, NotFoundError
from camseg.core.limits import DEFAULT_MAX_WHOLE_PIXELS
from camseg.core.outdir import MARKER
from camseg.data.synth import SynthConfig, generate
from camseg.heat.rules import parse_rule
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel

OPTS = Options(threshold=parse_rule("p90"), gate=False)


@pytest.fixture(scope="module")
def model(trained_dir: Path) -> LoadedModel:
    return LoadedModel.load(trained_dir, threads=1)


def results(job: Path) -> list[dict[str, str]]:
    with (job / batch.RESULTS).open() as fh:
        return list(csv.DictReader(fh))


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: its modification time and bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def leftovers(job: Path) -> list[str]:
    """Temporary names of atomic writes still lying around (hidden files and folders,
    the finish lock and the marks of camseg's own folders aside)."""
    return [str(p.relative_to(job)) for p in job.rglob(".*") if p.name not in (".finish.lock", MARKER)]


def test_a_planned_job_is_its_manifest_and_nothing_else(trained_dir: Path, tiny_folder: Path,
                                                        tmp_path: Path) -> None:
    job = batch.create_segment_job(tmp_path, trained_dir, tiny_folder, options=OPTS, chunk_size=10, job_id="j1",
                                   labels={"model": "tiny", "version": "1"})
    assert job == tmp_path / "j1"
    m = batch.read_manifest(job)
    assert (m.job_id, m.kind, m.split, m.heatmaps) == ("j1", "segment", None, False)
    assert [len(c) for c in m.chunks] == [10, 10, 4] and m.images == 24
    assert sorted(i for c in m.chunks for i in c) == list(range(24))  # every image once
    assert m.model == str(trained_dir.resolve()) and m.data == str(tiny_folder.resolve())
    # the options, the tiling of whole images and the largest image the parts decode
    assert m.options == {**OPTS.to_record(tiling=True), "max_pixels": DEFAULT_MAX_WHOLE_PIXELS}
    assert m.labels == {"model": "tiny", "version": "1"}
    assert sorted(p.name for p in job.iterdir()) == [batch.MANIFEST]
    assert batch.pending_chunks(job) == [0, 1, 2]
    assert batch.status(job) == store.JobStatus("j1", "segment", batch.JobState.QUEUED, 0, 3, 0, 24)
    assert batch.status(job, started=True).state is batch.JobState.RUNNING
    assert [st.job_id for st in batch.list_jobs(tmp_path)] == ["j1"]
    # the same id twice, an id that is a path, and a bad chunk size: refused, nothing written
    with pytest.raises(InvalidInputError, match="exists already"):
        batch.create_segment_job(tmp_path, trained_dir, tiny_folder, options=OPTS, job_id="j1")
    with pytest.raises(InvalidInputError, match="bad job id"):
        batch.create_segment_job(tmp_path, trained_dir, tiny_folder, options=OPTS, job_id="../j2")
    with pytest.raises(InvalidInputError, match="chunk size"):
        batch.create_segment_job(tmp_path, trained_dir, tiny_folder, options=OPTS, chunk_size=0, job_id="j3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j1"]
    # a split plans only its images
    test_split = batch.read_manifest(batch.create_segment_job(tmp_path, trained_dir, tiny_folder, split="test",
                                                              options=OPTS, chunk_size=100))
    assert 0 < test_split.images < 24 and test_split.split == "test"


def test_a_part_runs_once_and_the_results_come_whole_and_last(trained_dir: Path, tiny_folder: Path,
                                                              model: LoadedModel, tmp_path: Path) -> None:
    job = batch.create_segment_job(tmp_path / "jobs", trained_dir, tiny_folder, options=OPTS, chunk_size=10)
    assert batch.run_part(job, 1, model=model) is True
    chunk = snapshot(job / "chunks")
    assert len([k for k in chunk if k.endswith(".png")]) == 10
    assert batch.run_part(job, 1, model=model) is False  # done: nothing is run or written again
    assert snapshot(job / "chunks") == chunk
    assert batch.part_images(job, 1) == 10
    assert batch.pending_chunks(job) == [0, 2]
    st = batch.status(job)
    assert (st.state, st.chunks_done, st.images_done) == (batch.JobState.RUNNING, 1, 10)
    with pytest.raises(NotFoundError, match="no part 3"):
        batch.run_part(job, 3, model=model)
    with pytest.raises(InvalidInputError, match="2 chunks are not done"):
        batch.finish(job)
    assert not (job / batch.SUMMARY).exists() and not (job / batch.RESULTS).exists()

    summary = batch.run_local(job, model)
    ids = [r["id"] for r in results(job)]
    assert len(ids) == len(set(ids)) == summary["images"] == summary["segmented"] == 24
    assert sorted(p.name for p in (job / "masks").iterdir()) == sorted(f"{i}.png" for i in ids)
    assert summary["failed"] == 0 and summary["kind"] == "segment" and summary["job_id"] == job.name
    assert json.loads((job / batch.SUMMARY).read_text()) == summary
    assert batch.status(job).state is batch.JobState.SUCCEEDED
    assert leftovers(job) == []
    # the same numbers as the core's own folder segmentation in process
    local = segment_folder(model, tiny_folder, tmp_path / "local", OPTS)
    assert summary["mean_dice"] == pytest.approx(local["mean_dice"], abs=1e-6)
    assert summary["with_truth"] == local["with_truth"] and summary["accuracy"] == pytest.approx(local["accuracy"])
    # a finished job's results are read back, not written again
    written = snapshot(job)
    assert batch.finish(job) == summary
    assert snapshot(job) == written


def test_a_finish_that_fails_writes_no_summary_and_the_lost_part_runs_again(
        trained_dir: Path, tiny_folder: Path, model: LoadedModel, tmp_path: Path) -> None:
    job = batch.create_segment_job(tmp_path, trained_dir, tiny_folder, options=OPTS, chunk_size=10)
    for i in batch.pending_chunks(job):
        batch.run_part(job, i, model=model)
    shutil.rmtree(job / "chunks" / "000002" / "masks")  # a part's files lost, its marker still there
    with pytest.raises(FileNotFoundError):
        batch.finish(job)
    assert not (job / batch.SUMMARY).exists()  # the summary is the last write: the job is not done
    assert batch.status(job).state is batch.JobState.RUNNING
    shutil.rmtree(job / "chunks" / "000002")  # the marker gone too: the part is pending again
    assert batch.pending_chunks(job) == [2]
    assert batch.run_local(job, model)["segmented"] == 24
    assert len(results(job)) == 24 and leftovers(job) == []


def test_a_bad_image_fails_alone_with_its_reason_and_a_failed_job_says_why(
        trained_dir: Path, tiny_folder: Path, model: LoadedModel, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    victim = sorted((data / "images").iterdir())[3]
    victim.write_bytes(b"not an image")
    job = batch.create_segment_job(tmp_path / "jobs", trained_dir, data, options=OPTS, chunk_size=24)
    summary = batch.run_local(job, model)
    assert (summary["segmented"], summary["failed"]) == (23, 1)
    assert summary["failures"][0]["id"] == victim.stem
    assert "not a readable image" in summary["failures"][0]["error"]
    bad = [r for r in results(job) if r["error"]]
    assert [r["id"] for r in bad] == [victim.stem] and bad[0]["mask_area"] == ""
    assert not (job / "masks" / f"{victim.stem}.png").exists()
    # a part that fails the job (what a worker records): the state and the reason, from disk
    other = batch.create_segment_job(tmp_path / "jobs", trained_dir, data, options=OPTS, chunk_size=24)
    batch.fail(other, "part 0: the model folder is gone")
    st = batch.status(other)
    assert (st.state, st.reason) == (batch.JobState.FAILED, "part 0: the model folder is gone")


def test_a_cancelled_job_runs_nothing_more(trained_dir: Path, tiny_folder: Path, model: LoadedModel,
                                           tmp_path: Path) -> None:
    job = batch.create_segment_job(tmp_path, trained_dir, tiny_folder, options=OPTS, chunk_size=10)
    batch.run_part(job, 0, model=model)
    batch.cancel(job)
    assert batch.is_cancelled(job) and batch.status(job).state is batch.JobState.CANCELLED
    with pytest.raises(CancelledError):
        batch.run_part(job, 1, model=model)
    assert batch.pending_chunks(job) == [1, 2]  # the stopped part left nothing behind
    assert sorted(p.name for p in (job / "chunks").iterdir()) == ["000000"]
    # the caller's own stop, on a job that is not cancelled
    (job / batch.CANCELLED).unlink()
    with pytest.raises(CancelledError):
        batch.run_part(job, 1, model=model, should_stop=lambda: True)
    assert batch.pending_chunks(job) == [1, 2]


def test_the_registry_knows_every_kind_and_refuses_others(trained_dir: Path, tiny_folder: Path,
                                                          tmp_path: Path) -> None:
    assert set(batch.KINDS) == {"segment", "segment-series", "evaluate", "retrain"}
    assert {k for k, v in batch.KINDS.items() if v.uses_model} == {"segment", batch.SERIES}
    job = batch.create_segment_job(tmp_path, trained_dir, tiny_folder, options=OPTS, job_id="odd")
    m = json.loads((job / batch.MANIFEST).read_text())
    (job / batch.MANIFEST).write_text(json.dumps({**m, "kind": "paint"}))
    for call in (batch.pending_chunks, batch.status, batch.finish, lambda j: batch.run_part(j, 0)):
        with pytest.raises(InvalidInputError, match="unknown kind 'paint'"):
            call(job)
    good = batch.create_segment_job(tmp_path, trained_dir, tiny_folder, options=OPTS, job_id="good")
    assert [st.job_id for st in batch.list_jobs(tmp_path)] == [good.name]  # the unreadable job left out
    (job / batch.MANIFEST).write_text("{")
    with pytest.raises(InvalidInputError, match="not a job manifest"):
        batch.read_manifest(job)
    with pytest.raises(NotFoundError, match="no such job"):
        batch.read_manifest(tmp_path / "none")


def test_an_evaluation_job_reports_the_protocols_dice(trained_dir: Path, tiny_folder: Path, model: LoadedModel,
                                                      tmp_path: Path) -> None:
    job = batch.create_evaluate_job(tmp_path, trained_dir, tiny_folder, methods=["gradcam"], rules=["otsu", "p90"])
    m = batch.read_manifest(job)
    assert (m.kind, m.chunks) == ("evaluate", [[0]])
    assert m.options == {"select": "val", "report": "test", "methods": ["gradcam"], "rules": ["otsu", "p90"]}
    assert batch.run_part(job, 0) is True
    assert batch.run_part(job, 0) is False
    assert batch.part_images(job, 0) == 0  # it segments nothing the image counters count
    summary = batch.finish(job)
    report = json.loads((job / "report" / "report.json").read_text())
    assert summary["mean_dice"] == report["best"]["mean_dice"] and 0.0 <= summary["mean_dice"] <= 1.0
    assert summary["n_report"] == report["n_report"] > 0
    assert batch.status(job).state is batch.JobState.SUCCEEDED


def test_a_retraining_job_runs_one_part_per_threshold_and_filter(trained_dir: Path, tiny_folder: Path,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown filters"):
        batch.create_retrain_job(tmp_path, trained_dir, tiny_folder, filters=["blur"])
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        batch.create_retrain_job(tmp_path, trained_dir, tiny_folder, thresholds=[1.5])
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    job = batch.create_retrain_job(tmp_path, trained_dir, tiny_folder, thresholds=[0.3, 0.6], filters=["keep-hot"],
                                   epochs=1)
    assert batch.read_manifest(job).options["runs"] == [[0.3, "keep-hot"], [0.6, "keep-hot"]]
    assert batch.pending_chunks(job) == [0, 1]
    assert batch.run_part(job, 1) is True
    assert (job / "retrain" / "runs" / "keep-hot-t0.6.json").is_file()
    assert batch.pending_chunks(job) == [0]
    summary = batch.run_local(job, LoadedModel.load(trained_dir))
    rows = summary["results"]
    assert {(r["filter"], r["threshold"]) for r in rows if r["filter"] != "none"} == {("keep-hot", 0.3),
                                                                                        ("keep-hot", 0.6)}
    assert (job / "retrain" / "results.json").is_file()


def test_a_series_job_counts_the_slices_of_its_parts(exported: tuple[Path, dict[str, object]],
                                                     tmp_path: Path) -> None:
    images, _, _, _ = generate(SynthConfig(n=3, size=32, seed=4))
    stored = np.round(864 + 400 * np.clip(images, 0, 1)).astype(np.uint16)
    data = tmp_path / "data"
    data.mkdir()
    nrrd.write(str(data / "vol.nrrd"), np.transpose(stored, (2, 1, 0)))
    (data / "empty.dcm").write_bytes(b"\0" * 128 + b"DICM")  # DICOM, but unreadable: reported, the job goes on
    job = batch.create_series_job(tmp_path / "jobs", exported[0], data, options=OPTS, output="nrrd")
    m = batch.read_manifest(job)
    assert (m.kind, m.chunks) == (batch.SERIES, [[0]]) and len(m.options["unreadable"]) == 1
    model = LoadedModel.load(exported[0], threads=1)
    assert batch.run_part(job, 0, model=model) is True and batch.run_part(job, 0, model=model) is False
    assert batch.part_images(job, 0) == 3
    summary = batch.finish(job)
    assert (summary["series"], summary["segmented"], summary["images"], summary["failed"]) == (1, 1, 3, 1)
    (output,) = summary["outputs"].values()
    mask, _ = nrrd.read(str(job / output))
    assert mask.shape == (32, 32, 3)
