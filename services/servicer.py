"""``camseg.v1.Segmentation``: a thin adapter from protobuf to the core library.

Each RPC decodes its request (:mod:`services.codec`), calls one core function
(:func:`camseg.pipeline.run`, or the model's classifier through the dynamic batcher)
and encodes the answer. Errors are raised as :class:`~camseg.errors.CamsegError` and
turned into status codes by the interceptor.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from camseg.data.folder import BoolArray, FloatArray
from camseg.errors import CancelledError
from camseg.pipeline import Options, Result, run
from camseg.repository import version_key
from services import codec
from services.batching import DynamicBatcher
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from services.metrics import ServiceMetrics
from services.repository import ModelRepository, ServedModel
from services.settings import ServeSettings

logger = logging.getLogger(__name__)


class SegmentationServicer(pb_grpc.SegmentationServicer):
    def __init__(self, repo: ModelRepository, settings: ServeSettings, metrics: ServiceMetrics):
        self.repo = repo
        self.settings = settings
        self.metrics = metrics
        self.ort_pool = ThreadPoolExecutor(max_workers=settings.ort_workers, thread_name_prefix="ort")
        # a pool of its own for Grad-CAM, so a flood of Explain calls cannot starve Classify
        self.cam_pool = ThreadPoolExecutor(max_workers=settings.cam_workers, thread_name_prefix="cam")
        self._batchers: dict[tuple[str, str], DynamicBatcher] = {}

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        self.ort_pool.shutdown(wait=False, cancel_futures=True)
        self.cam_pool.shutdown(wait=False, cancel_futures=True)

    def _decode(self, images: Any, what: str = "image") -> list[FloatArray]:
        return codec.decode_images(images, max_images=self.settings.max_images, max_pixels=self.settings.max_pixels,
                                   what=what)

    def _batcher(self, served: ServedModel) -> DynamicBatcher:
        key = (served.name, served.version)
        b = self._batchers.get(key)
        if b is None:
            s = self.settings
            b = DynamicBatcher(served.model.classify_prepared, max_batch=s.max_batch if s.batching else 1,
                               max_delay=s.max_delay_ms / 1000.0 if s.batching else 0.0,
                               executor=self.ort_pool, on_batch=self.metrics.batch_size.observe,
                               on_queue_time=self.metrics.queue_time.observe)
            self._batchers[key] = b
        return b

    async def _run(self, served: ServedModel, images: list[FloatArray], options: Options,
                   context: grpc.aio.ServicerContext, truths: list[BoolArray] | None = None) -> Result:
        """The core pipeline in the Grad-CAM pool. It works in chunks and stops at the next
        chunk once the call is gone (cancelled, deadline passed), so an abandoned request
        does not hold the pool."""
        gone = threading.Event()
        context.add_done_callback(lambda _ctx: gone.set())

        def work() -> Result:
            return run(served.model, images, options, truths=truths, should_stop=gone.is_set)

        try:
            return await asyncio.get_running_loop().run_in_executor(self.cam_pool, work)
        except CancelledError:
            raise asyncio.CancelledError from None

    # ---------------------------------------------------------------- RPCs
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        served = self.repo.get(request.model.name, request.model.version)
        batcher = self._batcher(served)
        with batcher.expect():
            images = self._decode(request.images)
            x = served.model.prepare(images).numpy()
            probs = await batcher.submit(x)
        self.metrics.images.labels("Classify").inc(len(images))
        return pb.ClassifyResponse(
            results=[codec.classification(served.model, p, img.id) for p, img in zip(probs, request.images,
                                                                                      strict=True)],
            model_name=served.name, model_version=served.version)

    async def ClassifyStream(self, request_iterator: AsyncIterator[pb.ClassifyRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ClassifyResponse]:
        async for request in request_iterator:
            yield await self.Classify(request, context)

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        served = self.repo.get(request.model.name, request.model.version)
        options = codec.explain_options(request.options, overlay=request.overlay_png, chunk=self.settings.cam_chunk)
        served.model.engine_for(options)
        images = self._decode(request.images)
        res = await self._run(served, images, options, context)
        uint8 = request.encoding == pb.HEATMAP_ENCODING_UINT8
        self.metrics.images.labels("Explain").inc(len(images))
        return pb.ExplainResponse(
            heatmaps=[codec.heatmap(served.model, r, img.id, res.layers[-1], uint8=uint8)
                      for r, img in zip(res.items, request.images, strict=True)],
            model_name=served.name, model_version=served.version, engine=res.engine.value)

    async def Segment(self, request: pb.SegmentRequest, context: grpc.aio.ServicerContext) -> pb.SegmentResponse:
        served = self.repo.get(request.model.name, request.model.version)
        options = codec.segment_options(request, chunk=self.settings.cam_chunk)
        served.model.engine_for(options)
        images = self._decode(request.images)
        truths = codec.decode_truths(request.truth_masks, len(images), max_images=self.settings.max_images,
                                     max_pixels=self.settings.max_pixels)
        res = await self._run(served, images, options, context, truths)
        assert options.threshold is not None
        self.metrics.images.labels("Segment").inc(len(images))
        return pb.SegmentResponse(
            masks=[codec.mask(served.model, r, img.id, options.threshold)
                   for r, img in zip(res.items, request.images, strict=True)],
            model_name=served.name, model_version=served.version, mean_dice=res.mean_dice)

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
        return pb.ModelInfo(
            name=served.name, version=served.version, architecture=meta.get("architecture", ""),
            input_size=m.size, input_channels=m.channels, classes=m.classes,
            gradcam_layer=meta.get("gradcam_layer", ""), layers=meta.get("layers", []),
            metrics=_flat_metrics(meta.get("metrics", {})), providers=m.onnx.providers if m.onnx else [],
            one_pass_cam=m.onnx is not None and m.onnx.cam_layer is not None)


def _flat_metrics(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_metrics(v, key + "."))
        elif isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            out[key] = float(v)
    return out
