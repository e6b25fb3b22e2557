"""The one place where ``camseg.v1`` messages meet the core's values: requests become
:class:`camseg.pipeline.options.Options` and undecoded :class:`camseg.io.sources.Source`
images (:func:`explain_request`, :func:`segment_request`), results become messages
(:func:`classify_reply`, :func:`explain_reply`, :func:`segment_reply`). The servicer and
:mod:`services.client` both use it; it calls nothing of either."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from camseg.core.errors import InvalidInputError, ResourceExhaustedError, shown
from camseg.core.types import BoolArray, FloatArray
from camseg.heat.cam import HeatGrid
from camseg.heat.methods import CamMethod
from camseg.heat.refine import Refiner
from camseg.heat.rules import ThresholdRule
from camseg.io.guards import Budget
from camseg.io.sources import Raw, Source, decode_sources
from camseg.io.sources import claimed_shapes as source_shapes
from camseg.io.sources import decode_truths as truths_of
from camseg.pipeline.options import Choices, Encoding, HeatResolution, Options, resolve
from camseg.pipeline.run import ImageResult, LoadedModel, Result
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.wire import method_from_pb, rule_from_pb, rule_to_pb, tiling_from_pb, whole_to_pb

if TYPE_CHECKING:
    from camseg.core.windowing import Windowing
    from services.repository import ServedModel

REFINER_FROM_PB: dict[int, Refiner] = {
    pb.REFINEMENT_UNSPECIFIED: Refiner.NONE,
    pb.REFINEMENT_NONE: Refiner.NONE,
    pb.REFINEMENT_CRF: Refiner.CRF,
    pb.REFINEMENT_RANDOM_WALK: Refiner.RANDOM_WALK,
    pb.REFINEMENT_WATERSHED: Refiner.WATERSHED,
    pb.REFINEMENT_GRABCUT: Refiner.GRABCUT,
}
ENCODING_FROM_PB: dict[int, Encoding] = {pb.MASK_ENCODING_PACKED_BITS: Encoding.MASK_BITS,
                                         pb.MASK_ENCODING_PNG: Encoding.MASK_PNG,
                                         pb.MASK_ENCODING_RLE: Encoding.MASK_RLE}
ENCODING_TO_PB = {e: v for v, e in ENCODING_FROM_PB.items()}


RESOLUTION_FROM_PB: dict[int, HeatResolution] = {pb.HEATMAP_RESOLUTION_IMAGE: HeatResolution.IMAGE,
                                                 pb.HEATMAP_RESOLUTION_LAYER: HeatResolution.LAYER}


def resolution_from_pb(value: int) -> HeatResolution | None:
    """A requested heatmap resolution; None where UNSPECIFIED."""
    if value == pb.HEATMAP_RESOLUTION_UNSPECIFIED:
        return None
    try:
        return RESOLUTION_FROM_PB[value]
    except KeyError:
        raise InvalidInputError(f"unknown heatmap resolution {value}") from None


def encodings_from_pb(values: Sequence[int]) -> frozenset[Encoding]:
    """Requested mask encodings; none means packed bits only."""
    out = set()
    for v in values or [pb.MASK_ENCODING_PACKED_BITS]:
        if v == pb.MASK_ENCODING_DICOM_SEG:
            continue  # made at the edge from the mask and the source instance (wants_dicom_seg)
        if v not in ENCODING_FROM_PB:
            raise InvalidInputError(f"unknown mask encoding {v}")
        out.add(ENCODING_FROM_PB[v])
    return frozenset(out)


# ------------------------------------------------------------------ requests
def image_name(what: str, i: int, img: pb.Image) -> str:
    return f"{what} {i}" + (f" ({shown(img.id, quoted=False)})" if img.id else "")


def source(img: pb.Image, name: str) -> Source:
    """What ``img`` carries, nothing decoded: encoded bytes, a raw array, or neither (refused
    when it is decoded)."""
    kind = img.WhichOneof("data")
    if kind == "encoded":
        return Source(name, encoded=img.encoded)
    if kind == "raw":
        return Source(name, raw=Raw(img.raw.dtype, tuple(int(d) for d in img.raw.shape), img.raw.data))
    return Source(name)


def sources(images: Sequence[pb.Image], what: str = "image") -> list[Source]:
    """The images of a request as :class:`~camseg.io.sources.Source` values, named for errors
    (``"image 0 (a)"``)."""
    return [source(img, image_name(what, i, img)) for i, img in enumerate(images)]


def decode_images(images: Sequence[pb.Image], *, max_images: int, max_pixels: int, budget: Budget | None = None,
                  what: str = "image", windowing: Windowing | None = None) -> list[FloatArray]:
    """Decoded ``(H, W)`` or ``(H, W, 3)`` floats in [0, 1], each checked once (header
    first, then the budget, then the pixels); DICOM instances windowed by ``windowing``
    (default: per modality)."""
    return decode_sources(sources(images, what), max_images=max_images, max_pixels=max_pixels, budget=budget,
                          windowing=windowing)


def claimed_shapes(images: Sequence[pb.Image]) -> list[tuple[int, int]]:
    """(height, width) each image claims, from headers and raw shapes alone (nothing
    decoded); see :func:`camseg.io.sources.claimed_shapes`."""
    return source_shapes(sources(images))


def decode_truths(masks: Sequence[pb.Image], n: int, *, max_images: int, max_pixels: int,
                  budget: Budget | None = None) -> list[BoolArray] | None:
    """Truth masks, one per image, or None when none was sent. A pixel is tumor where its
    stored value is non-zero in any channel (float masks are not rescaled first)."""
    return truths_of(sources(masks, "truth mask"), n, max_images=max_images, max_pixels=max_pixels, budget=budget)


def explain_options(options: pb.ExplainOptions, *, overlay: bool, chunk: int,
                    default_method: CamMethod = CamMethod.GRADCAM) -> Options:
    return Options(method=method_from_pb(options.method, default_method), layer=options.layer or None,
                   target=options.target_class if options.HasField("target_class") else None,
                   threshold=None, encodings=frozenset({Encoding.OVERLAY_PNG} if overlay else ()), chunk=chunk)


def choices(request: pb.SegmentRequest | pb.SubmitJobRequest) -> Choices:
    """What a segmentation request chose: an unset field, an UNSPECIFIED enum, an empty
    layer, tta 0 and ``largest_component`` False choose nothing (the wire cannot tell
    False from unset)."""
    o = request.options
    c = Choices(method=method_from_pb(o.method) if o.method != pb.CAM_METHOD_UNSPECIFIED else None,
                layer=o.layer or None, target=o.target_class if o.HasField("target_class") else None,
                threshold=rule_from_pb(request.threshold) if request.HasField("threshold") else None,
                gate=request.gate if request.HasField("gate") else None,
                largest=True if request.largest_component else None)
    if isinstance(request, pb.SegmentRequest):
        c = replace(c, tta=request.tta or None, no_recipe=request.no_recipe,
                    refine=refiner_from_pb(request.refine) if request.refine != pb.REFINEMENT_UNSPECIFIED else None,
                    decision_threshold=request.decision_threshold if request.HasField("decision_threshold")
                    else None)
    return c


def refiner_from_pb(value: int) -> Refiner:
    try:
        return REFINER_FROM_PB[value]
    except KeyError:
        raise InvalidInputError(f"unknown refinement {value}") from None


def segment_options(request: pb.SegmentRequest, *, chunk: int, recipe: Options | None = None,
                    default_method: CamMethod = CamMethod.GRADCAM) -> tuple[Options, bool]:
    """The request's options, and whether they are the model's ``recipe``: its
    :func:`choices` resolved by :func:`camseg.pipeline.options.resolve`, with the
    request's encodings and the server's ``chunk``."""
    enc = encodings_from_pb(request.mask_encodings) | ({Encoding.OVERLAY_PNG} if request.overlay_png else set())
    opts, from_recipe = resolve(recipe, choices(request), default_method=default_method)
    return replace(opts, encodings=frozenset(enc), chunk=chunk), from_recipe


@dataclass(frozen=True)
class ExplainCall:
    """An Explain request in the core's terms."""

    options: Options
    images: list[Source]
    # an image pixel's heatmap bytes in the reply: 1 (uint8), 2 (float16), 0 (at the layer's resolution)
    heat_bytes: int


def explain_request(request: pb.ExplainRequest, model: LoadedModel, *, chunk: int) -> ExplainCall:
    options = explain_options(request.options, overlay=request.overlay_png, chunk=chunk,
                              default_method=model.default_method)
    resolution = resolution_from_pb(request.heatmap_resolution) or HeatResolution.IMAGE
    return ExplainCall(options=replace(options, tiling=tiling_from_pb(request.tiling), heat_resolution=resolution),
                       images=sources(request.images),
                       heat_bytes=0 if resolution is HeatResolution.LAYER
                       else 1 if request.encoding == pb.HEATMAP_ENCODING_UINT8 else 2)


@dataclass(frozen=True)
class SegmentCall:
    """A Segment request in the core's terms."""

    options: Options
    from_recipe: bool  # the options are the model's recipe
    images: list[Source]
    truths: list[Source]  # none sent: empty
    dicom_seg: bool  # the masks are also wanted as DICOM SEGs
    heatmaps: bool = False  # each mask's heatmap is wanted too (float16, at options.heat_resolution)

    @property
    def heat_bytes(self) -> int:
        """An image pixel's heatmap bytes in the reply."""
        return 2 if self.heatmaps and self.options.heat_resolution is HeatResolution.IMAGE else 0


def segment_request(request: pb.SegmentRequest, model: LoadedModel, *, chunk: int,
                    images: list[Source] | None = None) -> SegmentCall:
    """The request's call; ``images`` (an upload's) stand for the request's own."""
    recipe = model.recipe.options if model.recipe is not None else None
    options, from_recipe = segment_options(request, chunk=chunk, recipe=recipe, default_method=model.default_method)
    resolution = resolution_from_pb(request.heatmap_resolution)
    return SegmentCall(options=replace(options, tiling=tiling_from_pb(request.tiling),
                                       heat_resolution=resolution or HeatResolution.IMAGE),
                       from_recipe=from_recipe,
                       images=sources(request.images) if images is None else images,
                       truths=sources(request.truth_masks, "truth mask"),
                       dicom_seg=pb.MASK_ENCODING_DICOM_SEG in request.mask_encodings,
                       heatmaps=resolution is not None)


async def upload_request(chunks: AsyncIterator[pb.SegmentChunk], *, max_bytes: int,
                         budget: Budget | None = None) -> tuple[pb.SegmentRequest, Source]:
    """A SegmentUpload's request and its one image: the first chunk's request (which must
    hold no images; its reply names the image by the first chunk's id) and the chunks'
    bytes joined. More than ``max_bytes`` is refused as it arrives; ``budget`` is charged
    a value per 4 bytes received (the joined bytes are held until the call ends)."""
    head: pb.SegmentChunk | None = None
    parts: list[bytes] = []
    size = 0
    async for c in chunks:
        if head is None:
            if not c.HasField("request"):
                raise InvalidInputError("the first chunk of an upload must carry the request")
            if c.request.images:
                raise InvalidInputError("an upload's request holds no images: the chunks carry its image's bytes")
            head = c
        elif c.HasField("request"):
            raise InvalidInputError("only the first chunk of an upload carries the request")
        size += len(c.data)
        if size > max_bytes:
            raise ResourceExhaustedError(f"the uploaded image exceeds the limit of {max_bytes} bytes")
        if budget is not None:
            budget.take(math.ceil(len(c.data) / 4), "the upload's bytes")
        parts.append(c.data)
    if head is None:
        raise InvalidInputError("the upload carries no chunks")
    request = pb.SegmentRequest()
    request.CopyFrom(head.request)
    image = request.images.add(id=head.id)  # the reply's id; the bytes stay out of the message
    data = b"".join(parts)
    parts.clear()
    return request, Source(image_name("image", 0, image), encoded=data)


# ------------------------------------------------------------------ responses
def classification(model: LoadedModel, probs: npt.NDArray[np.float32], image_id: str) -> pb.Classification:
    idx = int(np.argmax(probs))
    return pb.Classification(probabilities=probs.tolist(), label=model.classes[idx], label_index=idx,
                             id=image_id)


def heat_bytes(h: npt.NDArray[np.float32], *, uint8: bool) -> bytes:
    """A heatmap's values as the wire's bytes: round(h * 255) as uint8, or float16."""
    if uint8:
        q = np.multiply(h, 255.0, dtype=np.float32)
        return np.rint(q, out=q).astype(np.uint8).tobytes()
    return h.astype(np.float16).tobytes()


def grid_to_pb(grid: HeatGrid) -> pb.HeatmapGrid:
    return pb.HeatmapGrid(scale_y=grid.scale_y, scale_x=grid.scale_x, offset_y=grid.offset_y, offset_x=grid.offset_x)


def heatmap(model: LoadedModel, r: ImageResult, image_id: str, layer: str, *, uint8: bool) -> pb.Heatmap:
    h = r.heatmap.numpy()
    return pb.Heatmap(data=heat_bytes(h, uint8=uint8), shape=list(h.shape),
                      encoding=pb.HEATMAP_ENCODING_UINT8 if uint8 else pb.HEATMAP_ENCODING_FLOAT16,
                      overlay_png=r.overlay_png or b"", classification=classification(model, r.probabilities, image_id),
                      target_class=r.target, layer=layer, whole=whole_to_pb(r.whole) if r.whole else None,
                      grid=grid_to_pb(r.grid) if r.grid is not None else None)


def mask(model: LoadedModel, r: ImageResult, image_id: str, rule: ThresholdRule) -> pb.Mask:
    assert r.mask is not None
    return pb.Mask(
        png=r.mask_png or b"", packed_bits=r.mask_bits or b"", rle=r.mask_rle or [], shape=list(r.mask.shape),
        area=r.area, threshold=rule_to_pb(rule),
        threshold_value=r.threshold_value,
        gated=r.gated, dice=r.dice, classification=classification(model, r.probabilities, image_id),
        overlay_png=r.overlay_png or b"", whole=whole_to_pb(r.whole) if r.whole else None)


def classify_reply(request: pb.ClassifyRequest, served: ServedModel,
                   probs: npt.NDArray[np.float32]) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(
        results=[classification(served.model, p, img.id) for p, img in zip(probs, request.images, strict=True)],
        model_name=served.name, model_version=served.version)


def explain_reply(request: pb.ExplainRequest, served: ServedModel, res: Result) -> pb.ExplainResponse:
    uint8 = request.encoding == pb.HEATMAP_ENCODING_UINT8
    return pb.ExplainResponse(
        heatmaps=[heatmap(served.model, r, img.id, res.layers[-1], uint8=uint8)
                  for r, img in zip(res.items, request.images, strict=True)],
        model_name=served.name, model_version=served.version, engine=res.engine.value)


def segment_reply(request: pb.SegmentRequest, served: ServedModel, call: SegmentCall, res: Result,
                  segs: Sequence[bytes] | None) -> pb.SegmentResponse:
    """The masks under ``call``'s threshold rule, each with its DICOM SEG where ``segs`` holds them."""
    rule = call.options.threshold
    assert rule is not None
    masks = [mask(served.model, r, img.id, rule) for r, img in zip(res.items, request.images, strict=True)]
    for m, seg in zip(masks, segs or (), strict=False):
        m.dicom_seg = seg
    if call.heatmaps:
        layer = res.layers[-1] if res.layers else ""
        for m, r in zip(masks, res.items, strict=True):
            h = r.heatmap.numpy()
            m.heatmap.CopyFrom(pb.Heatmap(data=heat_bytes(h, uint8=False), shape=list(h.shape),
                                          encoding=pb.HEATMAP_ENCODING_FLOAT16, target_class=r.target, layer=layer,
                                          grid=grid_to_pb(r.grid) if r.grid is not None else None))
    return pb.SegmentResponse(masks=masks, model_name=served.name, model_version=served.version,
                              mean_dice=res.mean_dice, recipe=call.from_recipe)
