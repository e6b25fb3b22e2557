"""The service's data plane: everything a served call needs between its decoded request
and its reply, apart from gRPC (after KServe's ``DataPlane``, kept apart from its gRPC
servicer).

It owns the thread pools (decoding, ONNX Runtime batches, Grad-CAM), a Classify batcher
per loaded model version (:class:`services.batching.DynamicBatcher`), the memory budgets
(a request's, drawing on the server's: each image charged, from its header, what its
whole path will hold, :mod:`camseg.pipeline.cost`), the check of a reply's size
before any work, and the encodings made at the edge from the core's results (DICOM
SEG). An image that goes whole (:mod:`camseg.pipeline.whole`) has its own pixel limit
(``max_whole_pixels``) and charges its sliding window's memory to the budgets before it
is decoded. Its methods take the core's values (a served model, :class:`Options`, undecoded
:class:`Source` images) and hand the core's results to the caller's ``reply`` function,
which runs in the pool thread that did the work: a large reply is encoded there, not on
the event loop, so health checks and small calls are not held up by it.
:mod:`services.codec` turns messages into those values and results into messages;
nothing here knows a message or a status code.

A call's ``when_gone`` registers a callback for the end of the call (gRPC's
``context.add_done_callback``): work in a pool stops at its next step once the caller is
gone (cancelled, deadline passed), so an abandoned request does not hold the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from camseg.bulk.series import algorithm, instance_segmentation
from camseg.core.errors import CancelledError, InvalidInputError, ResourceExhaustedError
from camseg.core.settings import Settings
from camseg.core.types import BoolArray, FloatArray
from camseg.core.windowing import Windowing
from camseg.io.guards import Budget, is_dicom
from camseg.io.inputs import read_header
from camseg.io.sources import Source, claimed_shapes, decode_source, decode_sources, decode_truths
from camseg.pipeline.cost import classify_bytes, path_bytes
from camseg.pipeline.options import Encoding, Options
from camseg.pipeline.run import Result, run
from camseg.pipeline.whole import is_whole, model_scale, whole_bytes
from services.batching import Arrivals, DynamicBatcher
from services.metrics import ServiceMetrics
from services.repository import ServedModel

T = TypeVar("T")
R = TypeVar("R")
ShouldStop = Callable[[], bool]
WhenGone = Callable[[Callable[[Any], None]], None]
"""Registers a callback called once the call has ended (gRPC's ``context.add_done_callback``)."""

SEG_HEADER_BYTES = 64 * 1024
"""What a SEG adds to its frame's bits, at most: its attributes and the copied patient and
study module of the source."""


def reply_size(shapes: Sequence[tuple[int, int]], *, heat_bytes: int = 0, mask_bits: bool = False, png: bool = False,
               rle: bool = False, overlay: bool = False, dicom_seg: bool = False) -> int:
    """An upper estimate of a reply's bytes from the image sizes alone, before any work:
    heatmaps at ``heat_bytes`` a pixel, packed bits, worst-case PNG and run lengths (a
    checkerboard), RGB overlays, and DICOM SEGs (packed bits plus their header)."""
    per_pixel = heat_bytes + (0.125 if mask_bits else 0) + (1.01 if png else 0) + (1.0 if rle else 0) + (
        3.01 if overlay else 0) + (0.125 if dicom_seg else 0)
    return int(sum(h * w * per_pixel + 512 + (SEG_HEADER_BYTES if dicom_seg else 0) for h, w in shapes))


class DataPlane:
    """Pools, batchers, budgets, reply sizes and edge encodings of one server."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics):
        self.settings = settings
        self.metrics = metrics
        self.ort_pool = ThreadPoolExecutor(max_workers=settings.ort_workers, thread_name_prefix="ort")
        self.decode_pool = ThreadPoolExecutor(max_workers=settings.decode_workers, thread_name_prefix="decode")
        # a pool of its own for Grad-CAM, so a flood of Explain calls cannot starve Classify
        self.cam_pool = ThreadPoolExecutor(max_workers=settings.cam_workers, thread_name_prefix="cam")
        # the memory of all calls in flight (their paths, camseg.pipeline.cost): bounds what requests take together
        self.inflight = Budget(settings.max_inflight_values, "server's budget of memory in flight (values of 4 bytes)")
        # one batcher per loaded model: a version reloaded in place gets a new one
        self._batchers: dict[tuple[str, str, tuple[Any, ...]], DynamicBatcher] = {}
        # DICOM images: windowed per modality unless the settings say otherwise
        self.windowing = Windowing.parse(settings.dicom_window) if settings.dicom_window != "auto" else None
        self.calls = 0  # Classify, Explain and Segment calls in flight here (any model)
        self.arrivals = Arrivals()  # calls noted by the server's interceptor as they are accepted
        self._images = {rpc: metrics.images.labels(rpc) for rpc in ("Classify", "Explain", "Segment")}

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1

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

    # ------------------------------------------------------------ the three paths
    async def classify(self, served: ServedModel, images: Sequence[Source], *,
                       when_gone: WhenGone) -> npt.NDArray[np.float32]:
        """Class probabilities ``(n, classes)``, the images batched with other calls'. A lone
        call (no other in flight, nothing queued or running) whose batch is small (at most
        ``inline_run_pixels`` model pixels over its images, on ONNX Runtime) runs on the
        event loop, without the hand-off to a thread and back."""
        batcher = self._batcher(served)

        def prepare(should_stop: ShouldStop) -> npt.NDArray[np.float32]:
            with self._budget() as budget:
                work = [_values(classify_bytes(hw, channels=_claimed_channels(src)))
                        for src, hw in zip(images, claimed_shapes(images), strict=True)] \
                    if len(images) <= self.settings.max_images else []
                x: npt.NDArray[np.float32] = served.model.prepare(self._decode(images, budget, work)).numpy()
                return x

        with self._call(), batcher.expect():  # a batch waits for this call while it decodes
            x = await self._step(self.decode_pool, prepare, when_gone, inline=self._small(images))
            inline = served.model.onnx is not None and \
                x.shape[0] * x.shape[-2] * x.shape[-1] <= self.settings.inline_run_pixels
            probs = await batcher.submit(x, inline=inline, alone=self.calls == 1 and self.arrivals.alone())
        self._images["Classify"].inc(len(x))
        return probs

    async def explain(self, served: ServedModel, options: Options, images: Sequence[Source], *, heat_bytes: int,
                      reply: Callable[[Result], R], when_gone: WhenGone) -> R:
        """``reply`` of the heatmaps (and overlays where ``options`` ask for them) of
        ``images``; the reply, at ``heat_bytes`` a heatmap pixel, must fit the send limit."""
        served.model.engine_for(options)

        def decode(should_stop: ShouldStop) -> list[FloatArray]:
            shapes = claimed_shapes(images)
            self._check_reply(reply_size(shapes, heat_bytes=heat_bytes,
                                         overlay=Encoding.OVERLAY_PNG in options.encodings))
            work, _ = self._work(served, images, shapes, options, heat_reply=heat_bytes)
            return self._decode(images, budget, work)

        def work(should_stop: ShouldStop) -> R:
            return reply(run(served.model, decoded, options, should_stop=should_stop))

        # decoding in its own pool, so the Grad-CAM pool only computes
        with self._call(), self._budget() as budget:
            decoded = await self._step(self.decode_pool, decode, when_gone, inline=self._small(images))
            out = await self._step(self.cam_pool, work, when_gone)
        self._images["Explain"].inc(len(decoded))
        return out

    async def segment(self, served: ServedModel, options: Options, images: Sequence[Source],
                      truths: Sequence[Source], *, dicom_seg: bool,
                      reply: Callable[[Result, list[bytes] | None], R], when_gone: WhenGone, heat_bytes: int = 0) -> R:
        """``reply`` of the masks of ``images`` under ``options`` (Dice against ``truths``
        where sent) and of a DICOM SEG of each where ``dicom_seg`` asks (every image must
        then be a DICOM instance; None where not asked); ``heat_bytes`` a pixel where the
        reply carries image-sized heatmaps too."""
        served.model.engine_for(options)
        enc = options.encodings
        if dicom_seg:
            for src in images:
                if src.encoded is None or not is_dicom(src.encoded):
                    raise InvalidInputError(f"{src.name}: a DICOM SEG mask needs a DICOM instance as the image")

        def decode(should_stop: ShouldStop) -> tuple[list[FloatArray], list[BoolArray] | None]:
            shapes = claimed_shapes(images)
            self._check_reply(reply_size(shapes, heat_bytes=heat_bytes, mask_bits=Encoding.MASK_BITS in enc,
                                         png=Encoding.MASK_PNG in enc, rle=Encoding.MASK_RLE in enc,
                                         overlay=Encoding.OVERLAY_PNG in enc, dicom_seg=dicom_seg))
            work, whole = self._work(served, images, shapes, options, heat_reply=heat_bytes, dicom_seg=dicom_seg)
            decoded = self._decode(images, budget, work, whole)
            s = self.settings
            # a whole image's truth mask is as large as the image
            limit = s.max_whole_pixels if any(whole) else s.max_pixels
            return decoded, decode_truths(truths, len(decoded), max_images=s.max_images, max_pixels=limit,
                                          budget=budget)

        def work(should_stop: ShouldStop) -> R:
            res = run(served.model, decoded, options, truths=masks, should_stop=should_stop)
            return reply(res, self._dicom_segs(served, options, images, res) if dicom_seg else None)

        with self._call(), self._budget() as budget:
            decoded, masks = await self._step(self.decode_pool, decode, when_gone,
                                              inline=self._small([*images, *truths]))
            out = await self._step(self.cam_pool, work, when_gone)
        self._images["Segment"].inc(len(decoded))
        return out

    @staticmethod
    def _dicom_segs(served: ServedModel, options: Options, images: Sequence[Source], res: Result) -> list[bytes]:
        """A DICOM SEG of each image's mask, made from its source instance."""
        algo = algorithm(served.model, options, {"model": served.name, "version": served.version})
        segs = []
        for r, src in zip(res.items, images, strict=True):
            assert r.mask is not None and src.encoded is not None
            segs.append(instance_segmentation(src.encoded, r.mask, algo, name=src.name))
        return segs

    def upload_budget(self) -> Budget:
        """A budget for an upload's bytes (as values of 4 bytes), drawing on the server's."""
        return Budget(math.ceil(self.settings.max_upload_bytes / 4), "upload's budget", parent=self.inflight)

    # ------------------------------------------------------------ what the paths share
    def _budget(self) -> Budget:
        return Budget(self.settings.max_request_values, "request's budget of memory (values of 4 bytes)",
                      parent=self.inflight)

    def _decode(self, images: Sequence[Source], budget: Budget, work: Sequence[int] = (),
                whole: Sequence[bool] = ()) -> list[FloatArray]:
        """The images decoded, each checked header first, and each charged to ``budget``
        before it is decoded: the work of its path beyond its decoded values (its entry
        of ``work``, in values of 4 bytes) and then those values. One that goes whole (its
        entry of ``whole``) is checked against ``max_whole_pixels``."""
        s = self.settings
        if not work or not images or len(images) > s.max_images:
            # nothing to charge, or a count decode_sources refuses before anything is decoded
            return decode_sources(images, max_images=s.max_images, max_pixels=s.max_pixels, budget=budget,
                                  windowing=self.windowing)
        out = []
        for i, (src, extra) in enumerate(zip(images, work, strict=True)):
            is_big = bool(whole[i]) if whole else False
            if extra > 0:
                budget.take(extra, f"{src.name} (the memory of its path: camseg.pipeline.cost)")
            out.append(decode_source(src, max_pixels=s.max_whole_pixels if is_big else s.max_pixels,
                                     budget=budget, windowing=self.windowing))
        return out

    def _work(self, served: ServedModel, images: Sequence[Source], shapes: Sequence[tuple[int, int]],
              options: Options, *, heat_reply: int = 0, dicom_seg: bool = False) -> tuple[list[int], list[bool]]:
        """For each image (from its claimed shape, nothing decoded), the memory its path
        under ``options`` holds beyond its decoded values, in values of 4 bytes
        (:func:`camseg.pipeline.cost.path_bytes`, with the sliding window of
        :func:`camseg.pipeline.whole.whole_bytes` for an image that goes whole under
        ``options.tiling``), and whether it goes whole. An image over
        ``max_whole_pixels``, or a model without a scale for it, is refused here."""
        model, tiling = served.model, options.tiling
        work: list[int] = []
        whole: list[bool] = []
        if len(images) > self.settings.max_images:
            return work, whole
        for src, (h, w) in zip(images, shapes, strict=True):
            channels = _claimed_channels(src)
            if h * w == 0 or not is_whole(model, (h, w), tiling):
                work.append(_values(path_bytes((h, w), options, channels=channels, heat_reply=heat_reply,
                                               dicom_seg=dicom_seg)) - h * w * channels)
                whole.append(False)
                continue
            if h * w > self.settings.max_whole_pixels:
                raise InvalidInputError(f"{src.name}: {w}x{h} pixels exceed the whole-image limit of "
                                        f"{self.settings.max_whole_pixels}")
            try:
                scale = model_scale(model, tiling)
            except InvalidInputError as exc:  # a scale in millimetres and no spacing
                raise InvalidInputError(f"model {served.name} version {served.version}: {exc.message} "
                                        f"({src.name}); give the request's tiling a spacing_mm or a scale") from None
            if scale is None:
                raise InvalidInputError(
                    f"model {served.name} version {served.version} has no recorded scale (source pixels per model "
                    f"pixel) for whole images ({src.name} is {w}x{h}); give the request's tiling a scale, or send "
                    "the image as an ROI (tiling mode never)")
            window = whole_bytes((h, w), scale, tile=model.input_hw, chunk=options.chunk, channels=channels)
            small = (math.ceil(h / scale), math.ceil(w / scale))
            work.append(_values(path_bytes((h, w), options, channels=channels, whole=window, model_space=small,
                                           heat_reply=heat_reply, dicom_seg=dicom_seg)) - h * w * channels)
            whole.append(True)
        return work, whole

    def _batcher(self, served: ServedModel) -> DynamicBatcher:
        key = (served.name, served.version, served.signature)
        b = self._batchers.get(key)
        if b is None:
            s = self.settings
            b = DynamicBatcher(served.model.classify_prepared, max_batch=s.max_batch if s.batching else 1,
                               max_delay=s.max_delay_ms / 1000.0 if s.batching else 0.0,
                               executor=self.ort_pool, max_queue=s.max_queue_images,
                               on_batch=self.metrics.batch_size.observe, on_queue_time=self.metrics.queue_time.observe,
                               on_inline=self.metrics.inline_runs.inc)
            self._batchers[key] = b
        return b

    def _small(self, images: Sequence[Source]) -> bool:
        """Whether a call decodes in less time than a thread hop takes: its images claim
        at most ``inline_decode_pixels`` pixels together (headers only, nothing decoded)."""
        limit = self.settings.inline_decode_pixels
        return limit > 0 and sum(h * w for h, w in claimed_shapes(images)) <= limit

    def _check_reply(self, size: int) -> None:
        if size > self.settings.max_send_bytes:
            raise ResourceExhaustedError(f"the reply would take up to {size} bytes, over the send limit of "
                                         f"{self.settings.max_send_bytes}; send fewer or smaller images, or ask for "
                                         "fewer encodings")

    async def _step(self, pool: ThreadPoolExecutor, work: Callable[[ShouldStop], T], when_gone: WhenGone, *,
                    inline: bool = False) -> T:
        """``work(should_stop)``: on the event loop where ``inline`` (cheaper than the hop to
        a thread and back), else in ``pool``, where it stops at its next step once the call
        is gone."""
        if inline:
            return work(lambda: False)
        gone = threading.Event()
        when_gone(lambda _call: gone.set())
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, work, gone.is_set)
        except CancelledError:
            raise asyncio.CancelledError from None


def _values(nbytes: int) -> int:
    """Bytes as values of 4 bytes (the budgets' unit), rounded up."""
    return math.ceil(nbytes / 4)


def _claimed_channels(src: Source) -> int:
    """Channels an image will decode to (1 or 3), from its header or raw shape alone."""
    try:
        if src.encoded is not None:
            return 3 if read_header(src.encoded, src.name).samples >= 3 else 1
    except InvalidInputError:
        return 1
    if src.raw is not None and len(src.raw.shape) == 3 and src.raw.shape[2] >= 3:
        return 3
    return 1
