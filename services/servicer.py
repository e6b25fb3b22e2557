"""``camseg.v1.Segmentation``: a thin adapter from protobuf to the core library.

Each RPC decodes its request (:mod:`services.codec`), calls one core function
(:func:`camseg.pipeline.run`, or the model's classifier through the dynamic batcher)
and encodes the answer. Errors are raised as :class:`~camseg.core.errors.CamsegError` and
turned into status codes by the interceptor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from camseg.core.errors import CancelledError, ResourceExhaustedError
from camseg.core.settings import Settings
from camseg.core.types import BoolArray, FloatArray
from camseg.io.guards import Budget
from camseg.models.repository import version_key
from camseg.pipeline.options import Encoding
from camseg.pipeline.run import run
from services import codec
from services.batching import DynamicBatcher
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from services.metrics import ServiceMetrics
from services.repository import ModelRepository, ServedModel

if TYPE_CHECKING:
    from camseg.core.windowing import Windowing

logger = logging.getLogger(__name__)

T = TypeVar("T")


def reply_size(shapes: Sequence[tuple[int, int]], *, heat_bytes: int = 0, mask_bits: bool = False, png: bool = False,
               rle: bool = False, overlay: bool = False, dicom_seg: bool = False) -> int:
    """An upper estimate of a reply's bytes from the image sizes alone, before any work:
    heatmaps at ``heat_bytes`` a pixel, packed bits, worst-case PNG and run lengths (a
    checkerboard), RGB overlays, and DICOM SEGs (packed bits plus their header)."""
    per_pixel = heat_bytes + (0.125 if mask_bits else 0) + (1.01 if png else 0) + (1.0 if rle else 0) + (
        3.01 if overlay else 0) + (0.125 if dicom_seg else 0)
    return int(sum(h * w * per_pixel + 512 + (SEG_HEADER_BYTES if dicom_seg else 0) for h, w in shapes))


SEG_HEADER_BYTES = 64 * 1024
"""What a SEG adds to its frame's bits, at most: its attributes and the copied patient and
study module of the source."""


class SegmentationServicer(pb_grpc.SegmentationServicer):
    def __init__(self, repo: ModelRepository, settings: Settings, metrics: ServiceMetrics):
        self.repo = repo
        self.settings = settings
        self.metrics = metrics
        self.ort_pool = ThreadPoolExecutor(max_workers=settings.ort_workers, thread_name_prefix="ort")
        self.decode_pool = ThreadPoolExecutor(max_workers=settings.decode_workers, thread_name_prefix="decode")
        # a pool of its own for Grad-CAM, so a flood of Explain calls cannot starve Classify
        self.cam_pool = ThreadPoolExecutor(max_workers=settings.cam_workers, thread_name_prefix="cam")
        # decoded values of all calls in flight: bounds the memory requests can take together
        self.inflight = Budget(settings.max_inflight_values, "server's budget of decoded values in flight")
        # one batcher per loaded model: a version reloaded in place gets a new one
        self._batchers: dict[tuple[str, str, tuple[Any, ...]], DynamicBatcher] = {}
        # DICOM images: windowed per modality unless the settings say otherwise
        self.windowing: Windowing | None = None
        if settings.dicom_window != "auto":
            from camseg.core.windowing import Windowing

            self.windowing = Windowing.parse(settings.dicom_window)

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        self.ort_pool.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.cam_pool.shutdown(wait=False, cancel_futures=True)

    async def unload(self, served: ServedModel) -> None:
        """Free what a version that left the repository, or was replaced, held (its batcher)."""
        b = self._batchers.pop((served.name, served.version, served.signature), None)
        if b is not None:
            await b.close()

    def _budget(self) -> Budget:
        return Budget(self.settings.max_request_values, "request's budget of decoded values", parent=self.inflight)

    def _decode(self, images: Any, budget: Budget, what: str = "image") -> list[FloatArray]:
        return codec.decode_images(images, max_images=self.settings.max_images, max_pixels=self.settings.max_pixels,
                                   budget=budget, what=what, windowing=self.windowing)

    def _batcher(self, served: ServedModel) -> DynamicBatcher:
        key = (served.name, served.version, served.signature)
        b = self._batchers.get(key)
        if b is None:
            s = self.settings
            b = DynamicBatcher(served.model.classify_prepared, max_batch=s.max_batch if s.batching else 1,
                               max_delay=s.max_delay_ms / 1000.0 if s.batching else 0.0,
                               executor=self.ort_pool, max_queue=s.max_queue_images,
                               on_batch=self.metrics.batch_size.observe, on_queue_time=self.metrics.queue_time.observe)
            self._batchers[key] = b
        return b

    def _small(self, images: Any) -> bool:
        """Whether a request decodes in less time than a thread hop takes: its images claim
        at most ``inline_decode_pixels`` pixels together (headers only, nothing decoded)."""
        limit = self.settings.inline_decode_pixels
        return limit > 0 and sum(h * w for h, w in codec.claimed_shapes(images)) <= limit

    def _check_reply(self, size: int) -> None:
        if size > self.settings.max_send_bytes:
            raise ResourceExhaustedError(f"the reply would take up to {size} bytes, over the send limit of "
                                         f"{self.settings.max_send_bytes}; send fewer or smaller images, or ask for "
                                         "fewer encodings")

    async def _off_loop(self, pool: ThreadPoolExecutor, context: grpc.aio.ServicerContext,
                        work: Callable[[Callable[[], bool]], T]) -> T:
        """``work(should_stop)`` in ``pool``; it stops at its next step once the call is gone
        (cancelled, deadline passed), so an abandoned request does not hold the pool."""
        gone = threading.Event()
        context.add_done_callback(lambda _ctx: gone.set())
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, work, gone.is_set)
        except CancelledError:
            raise asyncio.CancelledError from None

    # ---------------------------------------------------------------- RPCs
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        served = self.repo.get(request.model.name, request.model.version)
        batcher = self._batcher(served)

        def prepare(should_stop: Callable[[], bool]) -> npt.NDArray[np.float32]:
            with self._budget() as budget:
                x: npt.NDArray[np.float32] = served.model.prepare(self._decode(request.images, budget)).numpy()
                return x

        with batcher.expect():
            if self._small(request.images):  # cheaper than the hop to a thread and back
                x = prepare(lambda: False)
            else:
                x = await self._off_loop(self.decode_pool, context, prepare)
            probs = await batcher.submit(x)
        self.metrics.images.labels("Classify").inc(len(x))
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
        options = codec.explain_options(request.options, overlay=request.overlay_png, chunk=self.settings.cam_chunk,
                                        default_method=served.model.default_method)
        served.model.engine_for(options)
        uint8 = request.encoding == pb.HEATMAP_ENCODING_UINT8

        def decode(should_stop: Callable[[], bool]) -> list[FloatArray]:
            self._check_reply(reply_size(codec.claimed_shapes(request.images), heat_bytes=1 if uint8 else 2,
                                         overlay=request.overlay_png))
            return self._decode(request.images, budget)

        def work(should_stop: Callable[[], bool]) -> pb.ExplainResponse:
            res = run(served.model, images, options, should_stop=should_stop)
            return pb.ExplainResponse(
                heatmaps=[codec.heatmap(served.model, r, img.id, res.layers[-1], uint8=uint8)
                          for r, img in zip(res.items, request.images, strict=True)],
                model_name=served.name, model_version=served.version, engine=res.engine.value)

        # decoding in its own pool, so the Grad-CAM pool only computes
        with self._budget() as budget:
            images = decode(lambda: False) if self._small(request.images) else \
                await self._off_loop(self.decode_pool, context, decode)
            reply = await self._off_loop(self.cam_pool, context, work)
        self.metrics.images.labels("Explain").inc(len(reply.heatmaps))
        return reply

    async def Segment(self, request: pb.SegmentRequest, context: grpc.aio.ServicerContext) -> pb.SegmentResponse:
        served = self.repo.get(request.model.name, request.model.version)
        recipe = served.model.recipe.options if served.model.recipe is not None else None
        options, from_recipe = codec.segment_options(request, chunk=self.settings.cam_chunk, recipe=recipe,
                                                     default_method=served.model.default_method)
        served.model.engine_for(options)
        rule = options.threshold
        assert rule is not None
        enc = options.encodings
        seg = codec.wants_dicom_seg(request)

        def decode(should_stop: Callable[[], bool]) -> tuple[list[FloatArray], list[BoolArray] | None]:
            self._check_reply(reply_size(codec.claimed_shapes(request.images), mask_bits=Encoding.MASK_BITS in enc,
                                         png=Encoding.MASK_PNG in enc, rle=Encoding.MASK_RLE in enc,
                                         overlay=Encoding.OVERLAY_PNG in enc, dicom_seg=seg))
            images = self._decode(request.images, budget)
            truths = codec.decode_truths(request.truth_masks, len(images), max_images=self.settings.max_images,
                                         max_pixels=self.settings.max_pixels, budget=budget)
            return images, truths

        def work(should_stop: Callable[[], bool]) -> pb.SegmentResponse:
            res = run(served.model, images, options, truths=truths, should_stop=should_stop)
            masks = [codec.mask(served.model, r, img.id, rule) for r, img in zip(res.items, request.images,
                                                                                   strict=True)]
            if seg:
                from camseg.bulk.series import algorithm, instance_segmentation

                algo = algorithm(served.model, options, {"model": served.name, "version": served.version})
                for i, (m, r, img) in enumerate(zip(masks, res.items, request.images, strict=True)):
                    assert r.mask is not None
                    m.dicom_seg = instance_segmentation(img.encoded, r.mask, algo,
                                                        name=codec.image_name("image", i, img))
            return pb.SegmentResponse(masks=masks, model_name=served.name, model_version=served.version,
                                      mean_dice=res.mean_dice, recipe=from_recipe)

        with self._budget() as budget:
            small = self._small([*request.images, *request.truth_masks])
            images, truths = decode(lambda: False) if small else \
                await self._off_loop(self.decode_pool, context, decode)
            reply = await self._off_loop(self.cam_pool, context, work)
        self.metrics.images.labels("Segment").inc(len(reply.masks))
        return reply

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
            one_pass_cam=m.onnx is not None and m.onnx.cam_layer is not None,
            recipe=json.dumps(m.recipe.options.to_record()) if m.recipe is not None else "",
            distilled=m.student is not None, source=m.source.value,
            config=m.config.model_dump_json(exclude_none=True) if m.config is not None else "",
            gradients_unavailable=m.unavailable or "")


def _flat_metrics(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_metrics(v, key + "."))
        elif isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            out[key] = float(v)
    return out
