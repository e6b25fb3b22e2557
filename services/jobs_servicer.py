"""``camseg.v1.Jobs``: submitting and following the workers' bulk jobs over gRPC.

A thin adapter over :mod:`jobs.submit` (which checks every input before anything is
read and queues the parts) and :mod:`camseg.bulk.batch` (a job's state, read from its
folder). Blocking work runs in a thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc

from camseg.bulk import batch
from camseg.core.errors import InvalidInputError
from camseg.core.settings import Settings
from camseg.pipeline.options import tiling_of
from camseg.pipeline.whole import Tiling
from jobs import submit
from services import codec
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc

T = TypeVar("T")

KIND_FROM_PB = {pb.JOB_KIND_UNSPECIFIED: "segment", pb.JOB_KIND_SEGMENT: "segment",
                pb.JOB_KIND_EVALUATE: "evaluate", pb.JOB_KIND_RETRAIN: "retrain",
                pb.JOB_KIND_SEGMENT_SERIES: batch.SERIES}
KIND_TO_PB = {"segment": pb.JOB_KIND_SEGMENT, "evaluate": pb.JOB_KIND_EVALUATE, "retrain": pb.JOB_KIND_RETRAIN,
              batch.SERIES: pb.JOB_KIND_SEGMENT_SERIES}
WHOLE_FROM_PB = {pb.SubmitJobRequest.WHOLE_UNSPECIFIED: None, pb.SubmitJobRequest.WHOLE_AUTO: "auto",
                 pb.SubmitJobRequest.WHOLE_ALWAYS: "always", pb.SubmitJobRequest.WHOLE_NEVER: "never"}
STATE_TO_PB = {batch.JobState.QUEUED: pb.JOB_STATE_QUEUED, batch.JobState.RUNNING: pb.JOB_STATE_RUNNING,
               batch.JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED, batch.JobState.FAILED: pb.JOB_STATE_FAILED,
               batch.JobState.CANCELLED: pb.JOB_STATE_CANCELLED}
ENDED = {batch.JobState.SUCCEEDED, batch.JobState.FAILED, batch.JobState.CANCELLED}


def job_message(settings: Settings, st: batch.JobStatus) -> pb.Job:
    job = pb.Job(job_id=st.job_id, kind=KIND_TO_PB.get(st.kind, pb.JOB_KIND_UNSPECIFIED), state=STATE_TO_PB[st.state],
                 parts_done=st.chunks_done, parts=st.chunks, images_done=st.images_done, images=st.images,
                 reason=st.reason, output=str(settings.output_root / st.job_id))
    if st.state is batch.JobState.SUCCEEDED:
        summary = json.loads((settings.output_root / st.job_id / batch.SUMMARY).read_text())
        d = summary.get("mean_dice")
        if isinstance(d, int | float) and math.isfinite(d):
            job.mean_dice = float(d)
    return job


def tiling_from_pb(request: pb.SubmitJobRequest) -> Tiling:
    """The request's whole-image fields (unset: the defaults)."""
    if request.whole not in WHOLE_FROM_PB:
        raise InvalidInputError(f"unknown whole-image mode {request.whole}")
    return tiling_of(WHOLE_FROM_PB[request.whole], request.scale if request.HasField("scale") else None,
                     request.overlap if request.HasField("overlap") else None)


class JobsServicer(pb_grpc.JobsServicer):
    def __init__(self, settings: Settings, *, poll_seconds: float = 0.5):
        from jobs.app import make_app

        self.settings = settings
        self.app = make_app(settings)
        self.poll_seconds = poll_seconds
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jobs")

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    def _status(self, job_id: str) -> pb.Job:
        return job_message(self.settings, submit.status(self.settings, job_id))

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        kind = KIND_FROM_PB.get(request.kind)
        if kind is None:
            raise InvalidInputError(f"unknown job kind {request.kind}")
        volumes = [(Path(v.image), Path(v.label)) for v in request.volumes]
        if not request.data and not (volumes and kind == "segment"):
            raise InvalidInputError("name the data set (data), or volume pairs for a segmentation")
        s, data = self.settings, Path(request.data) if request.data else None
        name, version = request.model.name, request.model.version

        def go() -> Any:
            if kind == "evaluate":
                assert data is not None
                return submit.submit_evaluate(self.app, s, model=name, version=version, data=data)
            if kind == "retrain":
                assert data is not None
                return submit.submit_retrain(self.app, s, model=name, version=version, data=data,
                                             thresholds=list(request.thresholds) or [0.5],
                                             filters=list(request.filters) or None, epochs=request.epochs or None)
            choices = codec.choices(request)  # resolved against the model's recipe when the job is planned
            if kind == batch.SERIES:
                assert data is not None
                return submit.submit_series(self.app, s, model=name, version=version, data=data,
                                            output=request.output or "auto", heatmaps=request.heatmaps,
                                            windowing=request.windowing or None, options=choices,
                                            tiling=tiling_from_pb(request))
            axis = request.axis if request.HasField("axis") else 2
            return submit.submit_segment(self.app, s, model=name, version=version, data=data, volumes=volumes,
                                         axis=axis, split=request.split or None, options=choices,
                                         tiling=tiling_from_pb(request), heatmaps=request.heatmaps,
                                         chunk_size=request.chunk_size or None)

        sub = await self._run(go)
        return await self._run(lambda: self._status(sub.job_id))

    async def GetJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.Job:
        return await self._run(lambda: self._status(request.job_id))

    async def CancelJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.Job:
        st = await self._run(lambda: submit.cancel(self.settings, request.job_id))
        return job_message(self.settings, st)

    async def WatchJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Job]:
        last = None
        while True:
            job = await self._run(lambda: self._status(request.job_id))
            if job != last:
                yield job
                last = job
            if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
                return
            await asyncio.sleep(self.poll_seconds)

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        def go() -> list[pb.Job]:
            return [job_message(self.settings, st) for st in batch.list_jobs(self.settings.output_root)]

        return pb.ListJobsResponse(jobs=await self._run(go))
