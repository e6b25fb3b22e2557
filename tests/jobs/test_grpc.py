"""camseg.v1.Jobs over a real ``camseg serve`` and a real worker: Submit, Get, Watch,
Cancel, List, and refusals."""

from __future__ import annotations

import grpc
import pytest

from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.jobs.conftest import JobEnv
from tests.jobs.workers import Worker, start_worker
from tests.services.servers import start_server, stop


def test_jobs_over_grpc(job_env: JobEnv, workers: list[Worker]) -> None:
    workers.append(start_worker(job_env.env(), concurrency=1))
    server = start_server(job_env.repo, env=job_env.env())
    try:
        stub = pb_grpc.JobsStub(server.channel())
        data = str(job_env.data_root / "rois")
        job = stub.SubmitJob(pb.SubmitJobRequest(
            kind=pb.JOB_KIND_SEGMENT, model=pb.ModelRef(name="tiny"), data=data, split="test", chunk_size=8,
            threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=90), gate=False), timeout=60)
        assert job.job_id and job.images == 36 and job.parts == 5
        assert job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED)
        seen = list(stub.WatchJob(pb.JobRef(job_id=job.job_id), timeout=300))
        assert seen[-1].state == pb.JOB_STATE_SUCCEEDED and seen[-1].images_done == 36
        done = [m.images_done for m in seen]
        assert done == sorted(done)  # progress only goes forward
        got = stub.GetJob(pb.JobRef(job_id=job.job_id), timeout=30)
        assert got.state == pb.JOB_STATE_SUCCEEDED and got.HasField("mean_dice") and 0.0 <= got.mean_dice <= 1.0
        assert got.output.endswith(job.job_id)
        # a slow job, cancelled
        slow = stub.SubmitJob(pb.SubmitJobRequest(
            model=pb.ModelRef(name="tiny"), data=data, chunk_size=4,
            options=pb.ExplainOptions(method=pb.CAM_METHOD_FUSED)), timeout=60)
        cancelled = stub.CancelJob(pb.JobRef(job_id=slow.job_id), timeout=30)
        assert cancelled.state == pb.JOB_STATE_CANCELLED
        last = list(stub.WatchJob(pb.JobRef(job_id=slow.job_id), timeout=60))[-1]
        assert last.state == pb.JOB_STATE_CANCELLED and last.images_done < last.images
        listed = {j.job_id: j.state for j in stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs}
        assert listed == {job.job_id: pb.JOB_STATE_SUCCEEDED, slow.job_id: pb.JOB_STATE_CANCELLED}
        # refusals, each with its code
        for request, code in [
            (pb.SubmitJobRequest(model=pb.ModelRef(name="tiny"), data="/etc"), grpc.StatusCode.INVALID_ARGUMENT),
            (pb.SubmitJobRequest(model=pb.ModelRef(name="tiny"), data=data + "/../../.."),
             grpc.StatusCode.INVALID_ARGUMENT),
            (pb.SubmitJobRequest(model=pb.ModelRef(name="nope"), data=data), grpc.StatusCode.NOT_FOUND),
            (pb.SubmitJobRequest(model=pb.ModelRef(name="tiny"), data=""), grpc.StatusCode.INVALID_ARGUMENT),
            (pb.SubmitJobRequest(model=pb.ModelRef(name="tiny"),
                                 volumes=[pb.VolumePair(image="/etc/passwd", label="/etc/passwd")]),
             grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitJob(request, timeout=30)
            assert err.value.code() == code, err.value.details()
        for call in (stub.GetJob, stub.CancelJob):
            with pytest.raises(grpc.RpcError) as err:
                call(pb.JobRef(job_id="no-such-job"), timeout=30)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                call(pb.JobRef(job_id="../etc"), timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        stop(server)
