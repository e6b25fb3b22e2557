"""``camseg.v1.Segmentation``: a thin adapter from protobuf to the data plane.

Each data RPC decodes its request (:mod:`services.codec`), makes one call to the data
plane (:class:`services.dataplane.DataPlane`: pools, batchers, budgets, reply sizes, edge
encodings, and the core's :func:`camseg.pipeline.run.run` behind them) and encodes the
answer with the codec (Explain and Segment hand the codec's reply function to the data
plane, which calls it in the thread that did the work, off the event loop). Errors are
raised as :class:`~camseg.core.errors.CamsegError` and turned into status codes by the
interceptor.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc
import numpy as np

from camseg.core.settings import Settings
from camseg.models.repository import version_key
from services import codec
from services.dataplane import DataPlane
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from services.metrics import ServiceMetrics
from services.repository import ModelRepository, ServedModel


class SegmentationServicer(pb_grpc.SegmentationServicer):
    def __init__(self, repo: ModelRepository, settings: Settings, metrics: ServiceMetrics):
        self.repo = repo
        self.settings = settings
        self.plane = DataPlane(settings, metrics)

    async def close(self) -> None:
        await self.plane.close()

    async def unload(self, served: ServedModel) -> None:
        """Free what a version that left the repository, or was replaced, held."""
        await self.plane.unload(served)

    # ---------------------------------------------------------------- RPCs
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        served = self.repo.get(request.model.name, request.model.version)
        images = codec.sources(request.images)
        probs = await self.plane.classify(served, images, when_gone=context.add_done_callback)
        return codec.classify_reply(request, served, probs)

    async def ClassifyStream(self, request_iterator: AsyncIterator[pb.ClassifyRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ClassifyResponse]:
        async for request in request_iterator:
            yield await self.Classify(request, context)

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        served = self.repo.get(request.model.name, request.model.version)
        call = codec.explain_request(request, served.model, chunk=self.settings.cam_chunk)
        return await self.plane.explain(served, call.options, call.images, heat_bytes=call.heat_bytes,
                                        reply=partial(codec.explain_reply, request, served),
                                        when_gone=context.add_done_callback)

    async def Segment(self, request: pb.SegmentRequest, context: grpc.aio.ServicerContext) -> pb.SegmentResponse:
        served = self.repo.get(request.model.name, request.model.version)
        call = codec.segment_request(request, served.model, chunk=self.settings.cam_chunk)
        return await self.plane.segment(served, call.options, call.images, call.truths, dicom_seg=call.dicom_seg,
                                        reply=partial(codec.segment_reply, request, served, call),
                                        when_gone=context.add_done_callback, heat_bytes=call.heat_bytes)

    async def SegmentUpload(self, request_iterator: AsyncIterator[pb.SegmentChunk],
                            context: grpc.aio.ServicerContext) -> pb.SegmentResponse:
        # the upload's bytes count on the server's budget until the reply is made
        with self.plane.upload_budget() as held:
            request, image = await codec.upload_request(request_iterator, max_bytes=self.settings.max_upload_bytes,
                                                        budget=held)
            served = self.repo.get(request.model.name, request.model.version)
            call = codec.segment_request(request, served.model, chunk=self.settings.cam_chunk, images=[image])
            return await self.plane.segment(served, call.options, call.images, call.truths, dicom_seg=call.dicom_seg,
                                            reply=partial(codec.segment_reply, request, served, call),
                                            when_gone=context.add_done_callback, heat_bytes=call.heat_bytes)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        snap = self.repo.snapshot
        return pb.ListModelsResponse(models=[
            pb.ModelVersions(name=n, versions=sorted(vs, key=version_key), latest=max(vs, key=version_key))
            for n, vs in sorted(snap.items())])

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        served = self.repo.get(request.model.name, request.model.version)
        m = served.model
        meta = m.meta
        scale = m.config.scale if m.config is not None else None
        return pb.ModelInfo(
            name=served.name, version=served.version, architecture=meta.get("architecture", ""),
            input_size=m.size, input_channels=m.channels, classes=m.classes,
            gradcam_layer=meta.get("gradcam_layer", ""), layers=meta.get("layers", []),
            metrics=_flat_metrics(meta.get("metrics", {})), providers=m.onnx.providers if m.onnx else [],
            one_pass_cam=m.onnx is not None and m.onnx.cam_layer is not None,
            recipe=json.dumps(m.recipe.options.to_record()) if m.recipe is not None else "",
            distilled=m.student is not None, source=m.source.value,
            config=m.config.model_dump_json(exclude_none=True) if m.config is not None else "",
            gradients_unavailable=m.unavailable or "",
            scale=(scale.source_pixels_per_model_pixel or 0.0) if scale else 0.0,
            mm_per_model_pixel=(scale.mm_per_model_pixel or 0.0) if scale else 0.0)


def _flat_metrics(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_metrics(v, key + "."))
        elif isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            out[key] = float(v)
    return out
