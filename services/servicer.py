"""``camseg.v1.Segmentation``: a thin adapter from protobuf to the core library.

Decoding, batching and thread hand-off live here; the numbers come from
``camseg.predict``, ``camseg.inference`` and ``camseg.cam``. Errors are raised as
:class:`~camseg.errors.CamsegError` and turned into status codes by the interceptor.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import torch
from PIL import Image as PILImage

from camseg.data.folder import FloatArray, decode_image
from camseg.errors import InvalidInputError
from camseg.figures import overlay
from camseg.inference import ONE_PASS_METHODS
from camseg.predict import Explained, explain, explain_onnx, prepare, raw_to_image, run_lengths, segment_one
from services.batching import DynamicBatcher
from services.convert import method_from_pb, rule_from_pb, rule_to_pb
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from services.metrics import ServiceMetrics
from services.repository import ModelRepository, ServedModel, version_key
from services.settings import ServeSettings

logger = logging.getLogger(__name__)



def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _check_header_size(data: bytes, max_pixels: int, name: str) -> None:
    """Refuse an oversized image from its header, before decoding the pixels."""
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception:
        return
    if w * h > max_pixels:
        raise InvalidInputError(f"{name}: {w}x{h} pixels exceed the limit of {max_pixels}")


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

    # ---------------------------------------------------------------- decoding
    def _decode(self, images: Sequence[pb.Image], what: str = "image") -> list[FloatArray]:
        if not images:
            raise InvalidInputError("the request holds no images")
        if len(images) > self.settings.max_images:
            raise InvalidInputError(f"{len(images)} images exceed the limit of {self.settings.max_images} per request")
        out = []
        for i, img in enumerate(images):
            name = f"{what} {i}" + (f" ({img.id})" if img.id else "")
            kind = img.WhichOneof("data")
            if kind == "encoded":
                _check_header_size(img.encoded, self.settings.max_pixels, name)
                arr = decode_image(img.encoded, name=name)
            elif kind == "raw":
                try:
                    arr = raw_to_image(img.raw.dtype, img.raw.shape, img.raw.data, max_pixels=self.settings.max_pixels)
                except InvalidInputError as exc:
                    raise InvalidInputError(f"{name}: {exc.message}") from None
            else:
                raise InvalidInputError(f"{name}: carries neither encoded bytes nor a raw array")
            if arr.shape[0] * arr.shape[1] > self.settings.max_pixels:
                raise InvalidInputError(f"{name}: {arr.shape[1]}x{arr.shape[0]} pixels exceed the limit")
            out.append(arr)
        return out

    def _batcher(self, served: ServedModel) -> DynamicBatcher:
        key = (served.name, served.version)
        b = self._batchers.get(key)
        if b is None:
            s = self.settings
            b = DynamicBatcher(served.onnx.classify, max_batch=s.max_batch if s.batching else 1,
                               max_delay=s.max_delay_ms / 1000.0 if s.batching else 0.0,
                               executor=self.ort_pool, on_batch=self.metrics.batch_size.observe,
                               on_queue_time=self.metrics.queue_time.observe)
            self._batchers[key] = b
        return b

    @staticmethod
    def _classification(served: ServedModel, probs: np.ndarray, image_id: str) -> pb.Classification:
        idx = int(np.argmax(probs))
        return pb.Classification(probabilities=[float(p) for p in probs], label=served.classes[idx],
                                 label_index=idx, id=image_id)

    # ---------------------------------------------------------------- RPCs
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        served = self.repo.get(request.model.name, request.model.version)
        batcher = self._batcher(served)
        with batcher.expect():
            images = self._decode(request.images)
            x = prepare(images, served.onnx.size, served.onnx.channels).numpy()
            probs = await batcher.submit(x)
        self.metrics.images.labels("Classify").inc(len(images))
        return pb.ClassifyResponse(
            results=[self._classification(served, p, img.id) for p, img in zip(probs, request.images, strict=True)],
            model_name=served.name, model_version=served.version)

    async def ClassifyStream(self, request_iterator: AsyncIterator[pb.ClassifyRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ClassifyResponse]:
        async for request in request_iterator:
            yield await self.Classify(request, context)

    async def _explain(self, served: ServedModel, images: list[FloatArray], options: pb.ExplainOptions,
                       context: grpc.aio.ServicerContext) -> tuple[Explained, str]:
        method = method_from_pb(options.method)
        target = options.target_class if options.HasField("target_class") else None
        if target is not None and not 0 <= target < len(served.classes):
            raise InvalidInputError(f"target class {target} is out of range 0..{len(served.classes) - 1}")
        layer = options.layer or None
        if layer is not None:
            served.torch_model.check_layer(layer)
        one_pass = (method in ONE_PASS_METHODS and served.onnx.cam_layer is not None
                    and (layer is None or layer == served.onnx.cam_layer))
        # the work runs in chunks and stops at the next chunk once the call is gone
        # (cancelled, deadline passed), so an abandoned request does not hold the pool
        gone = threading.Event()
        context.add_done_callback(lambda _ctx: gone.set())
        chunk = self.settings.cam_chunk

        def part(imgs: list[FloatArray]) -> Explained:
            if one_pass:
                return explain_onnx(served.onnx, imgs, method=method, target=target)
            return explain(served.torch_model, imgs, method=method, target=target, layer=layer)

        def run() -> Explained:
            parts = []
            for i in range(0, len(images), chunk):
                if gone.is_set():
                    raise asyncio.CancelledError
                parts.append(part(images[i : i + chunk]))
            return Explained([h for p in parts for h in p.heatmaps], torch.cat([p.probabilities for p in parts]),
                             torch.cat([p.targets for p in parts]), parts[0].layers)

        res = await asyncio.get_running_loop().run_in_executor(self.cam_pool, run)
        return res, "onnx" if one_pass else "torch"

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        served = self.repo.get(request.model.name, request.model.version)
        images = self._decode(request.images)
        res, engine = await self._explain(served, images, request.options, context)
        uint8 = request.encoding == pb.HEATMAP_ENCODING_UINT8
        out = []
        for i, (heat, img) in enumerate(zip(res.heatmaps, images, strict=True)):
            h = heat.numpy()
            data = np.round(h * 255).astype(np.uint8).tobytes() if uint8 else h.astype(np.float16).tobytes()
            out.append(pb.Heatmap(
                data=data, shape=list(h.shape),
                encoding=pb.HEATMAP_ENCODING_UINT8 if uint8 else pb.HEATMAP_ENCODING_FLOAT16,
                overlay_png=_png(overlay(img, h)) if request.overlay_png else b"",
                classification=self._classification(served, res.probabilities[i].numpy(), request.images[i].id),
                target_class=int(res.targets[i]), layer=res.layers[-1]))
        self.metrics.images.labels("Explain").inc(len(images))
        return pb.ExplainResponse(heatmaps=out, model_name=served.name, model_version=served.version, engine=engine)

    async def Segment(self, request: pb.SegmentRequest, context: grpc.aio.ServicerContext) -> pb.SegmentResponse:
        served = self.repo.get(request.model.name, request.model.version)
        images = self._decode(request.images)
        truths: list[np.ndarray | None] = [None] * len(images)
        if request.truth_masks:
            if len(request.truth_masks) != len(images):
                raise InvalidInputError(f"{len(request.truth_masks)} truth masks for {len(images)} images")
            truths = [(m.max(axis=-1) if m.ndim == 3 else m) > 0
                      for m in self._decode(request.truth_masks, "truth mask")]
        rule = rule_from_pb(request.threshold)
        gate = request.gate if request.HasField("gate") else True
        res, _ = await self._explain(served, images, request.options, context)
        positive = len(served.classes) - 1
        masks, dices = [], []
        for i, heat in enumerate(res.heatmaps):
            probs = res.probabilities[i].numpy()
            seg = segment_one(heat, rule, predicted=int(np.argmax(probs)), positive=positive, gate=gate,
                              largest=request.largest_component, truth=truths[i])
            m = seg.mask
            if seg.dice is not None:
                dices.append(seg.dice)
            masks.append(pb.Mask(
                png=_png(m.astype(np.uint8) * 255), packed_bits=np.packbits(m.ravel()).tobytes(),
                rle=run_lengths(m), shape=list(m.shape), area=int(m.sum()), threshold=rule_to_pb(rule),
                threshold_value=seg.threshold_value if np.isfinite(seg.threshold_value) else 1.0,
                gated=seg.gated, dice=seg.dice,
                classification=self._classification(served, probs, request.images[i].id),
                overlay_png=_png(overlay(images[i], heat.numpy(), m, truths[i])) if request.overlay_png else b""))
        self.metrics.images.labels("Segment").inc(len(images))
        return pb.SegmentResponse(masks=masks, model_name=served.name, model_version=served.version,
                                  mean_dice=float(np.mean(dices)) if dices else None)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        snap = self.repo.snapshot
        return pb.ListModelsResponse(models=[
            pb.ModelVersions(name=n, versions=sorted(vs, key=version_key), latest=max(vs, key=version_key))
            for n, vs in sorted(snap.items())])

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        served = self.repo.get(request.model.name, request.model.version)
        meta = served.meta
        return pb.ModelInfo(
            name=served.name, version=served.version, architecture=meta.get("architecture", ""),
            input_size=served.onnx.size, input_channels=served.onnx.channels, classes=served.classes,
            gradcam_layer=meta.get("gradcam_layer", ""), layers=meta.get("layers", []),
            metrics=_flat_metrics(meta.get("metrics", {})), providers=served.onnx.providers,
            one_pass_cam=served.onnx.cam_layer is not None)


def _flat_metrics(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_metrics(v, key + "."))
        elif isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            out[key] = float(v)
    return out
