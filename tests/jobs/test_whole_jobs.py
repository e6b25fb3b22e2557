"""Bulk jobs over whole images, through real Redis, a real ``camseg worker`` and a real
``camseg serve``: a folder of whole mammograms (the ``segment`` kind) and a DICOM MG
instance (``segment-series``), both submitted with their tiling over camseg.v1.Jobs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pydicom
import pytest

from camseg.bulk import batch
from camseg.bulk.segment import segment_folder
from camseg.heat.rules import parse_rule
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel
from camseg.pipeline.whole import Tiling, Whole
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.jobs.conftest import JobEnv
from tests.jobs.workers import Worker, start_worker
from tests.services.servers import start_server, stop
from tests.test_dicom import dciodvfy_errors
from tests.wholedata import mammogram, whole_folder, write_mammogram

P90 = pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=90)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_whole_image_jobs_over_grpc(job_env: JobEnv, workers: list[Worker], tmp_path: Path) -> None:
    folder = whole_folder(job_env.data_root / f"whole-{tmp_path.name}")
    archive = job_env.data_root / f"mg-{tmp_path.name}"
    write_mammogram(archive / "left.dcm", mammogram(seed=1))
    # a version without a recorded scale (the synthetic ROIs of the fixture record scale 1)
    unscaled = job_env.repo / "unscaled" / "1"
    shutil.copytree(job_env.repo / "tiny" / "1", unscaled)
    meta = json.loads((unscaled / "metadata.json").read_text())
    del meta["scale"]
    (unscaled / "metadata.json").write_text(json.dumps(meta))
    workers.append(start_worker(job_env.env(), concurrency=1))
    server = start_server(job_env.repo, env=job_env.env())
    try:
        stub = pb_grpc.JobsStub(server.channel())
        seg = stub.SubmitJob(pb.SubmitJobRequest(
            kind=pb.JOB_KIND_SEGMENT, model=pb.ModelRef(name="tiny"), data=str(folder), chunk_size=2,
            threshold=P90, gate=False, scale=1.0, overlap=0.25), timeout=60)
        series = stub.SubmitJob(pb.SubmitJobRequest(
            kind=pb.JOB_KIND_SEGMENT_SERIES, model=pb.ModelRef(name="tiny"), data=str(archive), threshold=P90,
            gate=False, whole=pb.SubmitJobRequest.WHOLE_ALWAYS, scale=1.0, output="seg"), timeout=60)
        assert (seg.images, seg.parts, series.parts) == (4, 2, 1) and series.kind == pb.JOB_KIND_SEGMENT_SERIES
        for job in (seg, series):
            last = list(stub.WatchJob(pb.JobRef(job_id=job.job_id), timeout=300))[-1]
            assert last.state == pb.JOB_STATE_SUCCEEDED, last.reason
        listed = {j.job_id: j.kind for j in stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs}
        assert listed[series.job_id] == pb.JOB_KIND_SEGMENT_SERIES
        # a model without a scale, every image whole: refused when planned, not in a worker
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitJob(pb.SubmitJobRequest(model=pb.ModelRef(name="unscaled"), data=str(folder),
                                               whole=pb.SubmitJobRequest.WHOLE_ALWAYS), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no recorded scale" in err.value.details()
    finally:
        stop(server)

    s = job_env.settings()
    model_dir = job_env.repo / "tiny" / "1"
    # the folder job: the tiling recorded, and the same results as the command's core in one process
    job = s.output_root / seg.job_id
    m = batch.read_manifest(job)
    assert m.options["tiling"] == {"mode": "auto", "scale": 1.0, "overlap": 0.25, "sigma": 0.125,
                                   "tissue_factor": 8, "min_area": 0, "spacing_mm": None}
    assert m.options["max_pixels"] == s.max_whole_pixels
    opts = Options(threshold=parse_rule("p90"), gate=False, tiling=Tiling(scale=1.0, overlap=0.25))
    local = segment_folder(model_dir, folder, tmp_path / "local", opts)
    summary = json.loads((job / "summary.json").read_text())
    assert summary["whole_images"] == local["whole_images"] == 3 and summary["lesions"] == local["lesions"] > 0
    got = {r["id"]: r for r in _csv(job / "results.csv")}
    for r in _csv(tmp_path / "local" / "results.csv"):
        for key in ("mask_area", "whole", "tiles", "skipped", "lesions", "note", "image_score"):
            assert got[r["id"]][key] == r[key], (r["id"], key)
    assert _csv(job / "lesions.csv") == _csv(tmp_path / "local" / "lesions.csv")
    for f in (tmp_path / "local" / "masks").iterdir():
        assert (job / "masks" / f.name).read_bytes() == f.read_bytes()
    # the MG job: one SEG that validates, equal to the in-process run
    sjob = s.output_root / series.job_id
    sm = batch.read_manifest(sjob)
    assert sm.options["pipeline"]["tiling"]["mode"] == Whole.ALWAYS.value
    (row,) = _csv(sjob / "results.csv")
    assert row["whole_slices"] == "1" and int(row["lesions"]) == len(_csv(sjob / row["lesion_file"]))
    assert dciodvfy_errors(sjob / row["output"]) == []
    ref = batch.create_series_job(tmp_path, model_dir, archive, options=Options(threshold=parse_rule("p90"),
                                  gate=False), tiling=Tiling(mode=Whole.ALWAYS, scale=1.0), output="seg",
                                  job_id="ref")
    expected = batch.run_local(ref, LoadedModel.load(model_dir))
    (name,) = expected["outputs"]
    a = pydicom.dcmread(sjob / row["output"])
    b = pydicom.dcmread(ref / expected["outputs"][name])
    assert (a.Rows, a.Columns) == (300, 400) and a.PixelData == b.PixelData
    assert np.asarray(a.pixel_array).any()
