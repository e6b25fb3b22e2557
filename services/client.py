"""A typed client of the ``camseg.v1.Segmentation`` service.

>>> with SegmentationClient("127.0.0.1:50051", plaintext=True) as c:  # doctest: +SKIP
...     result = c.classify([Path("roi.png")])[0]
...     print(result.label, result.probabilities)

TLS is the default; ``ca`` verifies the server and ``cert``/``key`` present a client
certificate for mutual TLS. Plaintext is for loopback development.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import numpy.typing as npt

from camseg.core.errors import (
    CamsegError,
    CancelledError,
    InvalidInputError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    UnsupportedError,
)
from camseg.heat.rules import parse_rule
from camseg.io import codecs
from services.gen.camseg.v1 import camseg_pb2, camseg_pb2_grpc
from services.wire import WholeImage, method_to_pb, rule_to_pb, tiling_to_pb, whole_from_pb

if TYPE_CHECKING:  # torch and the method load only where a layer-resolution map is laid over its image
    from camseg.heat.cam import HeatGrid

ImageInput = Path | bytes | npt.NDArray[Any]
UPLOAD_CHUNK = 1024 * 1024
"""Bytes per SegmentUpload chunk: well under any message limit."""
MAX_UPLOAD_BYTES = 128 * 1024 * 1024
"""The largest image :meth:`SegmentationClient.segment_upload` sends (the server's default)."""


@dataclass(frozen=True)
class Tiling:
    """Whole images' tiling in a request: ``mode`` auto, always or never; ``scale`` in
    source pixels per model pixel (None: the model's); ``overlap`` (None: 0.5);
    ``spacing_mm`` the images' pixel spacing, for a model whose scale is in millimetres."""

    mode: str = "auto"
    scale: float | None = None
    overlap: float | None = None
    min_area: int = 0
    spacing_mm: float | None = None


@dataclass(frozen=True)
class Classification:
    id: str
    label: str
    label_index: int
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class Heatmap:
    heatmap: npt.NDArray[np.float32]
    classification: Classification
    target_class: int
    layer: str
    overlay_png: bytes
    whole: WholeImage | None = None  # where the image was explained whole
    # where ``heatmap`` is at the CAM layer's resolution: its cells' place in the image
    grid: HeatGrid | None = None

    def at_image(self) -> npt.NDArray[np.float32]:
        """The heatmap at its image's size: as sent, or a layer-resolution map laid over
        the image by its grid (bilinear at pixel centres, then min-max normalised; equal
        to the server's image-resolution map up to float16 rounding)."""
        if self.grid is None:
            return self.heatmap
        import torch

        from camseg.heat.cam import normalise_maps

        h, w = self.heatmap.shape
        size = (round(self.grid.scale_y * h), round(self.grid.scale_x * w))
        out: npt.NDArray[np.float32] = normalise_maps(
            self.grid.to_image(torch.from_numpy(self.heatmap)[None], size))[0].numpy()
        return out


RESOLUTIONS = ("image", "layer")
"""Heatmap resolutions a call may ask for (:class:`camseg.pipeline.options.HeatResolution`)."""


@dataclass(frozen=True)
class MaskResult:
    mask: npt.NDArray[np.bool_]
    png: bytes
    area: int
    threshold_value: float | None  # None where the rule found no threshold
    gated: bool
    dice: float | None
    classification: Classification
    overlay_png: bytes
    whole: WholeImage | None = None  # where the image was segmented whole


_ERRORS: dict[grpc.StatusCode, type[CamsegError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError, grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: UnsupportedError, grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError, grpc.StatusCode.CANCELLED: CancelledError}


class SegmentationClient:
    def __init__(self, target: str, *, plaintext: bool = False, ca: Path | None = None, cert: Path | None = None,
                 key: Path | None = None, timeout: float = 60.0, model: str = "", version: str = ""):
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                   ("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if plaintext:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca.read_bytes() if ca else None,
                private_key=key.read_bytes() if key else None,
                certificate_chain=cert.read_bytes() if cert else None)
            self.channel = grpc.secure_channel(target, creds, options=options)
        self._pb = pb = camseg_pb2
        self.stub = camseg_pb2_grpc.SegmentationStub(self.channel)
        self.timeout = timeout
        self.model = pb.ModelRef(name=model, version=version)

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _image(self, item: ImageInput, i: int) -> Any:
        pb = self._pb
        if isinstance(item, Path):
            return pb.Image(encoded=item.read_bytes(), id=item.stem)
        if isinstance(item, bytes):
            return pb.Image(encoded=item, id=str(i))
        arr = np.ascontiguousarray(item)
        return pb.Image(raw=pb.RawArray(dtype=arr.dtype.name, shape=list(arr.shape), data=arr.tobytes()), id=str(i))

    @staticmethod
    def _tiling(tiling: Tiling | None) -> Any:
        t = tiling or Tiling()
        return tiling_to_pb(t.mode, scale=t.scale, overlap=t.overlap, min_area=t.min_area, spacing_mm=t.spacing_mm)

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            # every failure becomes a camseg error (one line on the command line), never a traceback
            code = exc.code()
            details = exc.details() or code.name
            err = _ERRORS.get(code)
            if err is not None:
                raise err(details) from None
            raise CamsegError(f"{code.name}: {details}") from None

    @staticmethod
    def _cls(c: Any) -> Classification:
        return Classification(c.id, c.label, c.label_index, tuple(c.probabilities))

    def classify(self, images: Sequence[ImageInput]) -> list[Classification]:
        req = self._pb.ClassifyRequest(model=self.model, images=[self._image(x, i) for i, x in enumerate(images)])
        return [self._cls(r) for r in self._call(self.stub.Classify, req).results]

    def _options(self, method: str, target: int | None, layer: str) -> Any:
        opts = self._pb.ExplainOptions(method=method_to_pb(method), layer=layer)
        if target is not None:
            opts.target_class = target
        return opts

    def explain(self, images: Sequence[ImageInput], *, method: str = "gradcam", target: int | None = None,
                layer: str = "", overlay: bool = False, tiling: Tiling | None = None,
                resolution: str = "image") -> list[Heatmap]:
        """Heatmaps of ``images``: at each image's size, or with ``resolution`` "layer" at
        the CAM layer's own resolution with their grid (:meth:`Heatmap.at_image` lays one
        over its image)."""
        pb = self._pb
        if resolution not in RESOLUTIONS:
            raise InvalidInputError(f"heatmap resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
        req = pb.ExplainRequest(model=self.model, images=[self._image(x, i) for i, x in enumerate(images)],
                                options=self._options(method, target, layer), encoding=pb.HEATMAP_ENCODING_FLOAT16,
                                overlay_png=overlay, tiling=self._tiling(tiling),
                                heatmap_resolution=pb.HEATMAP_RESOLUTION_LAYER if resolution == "layer"
                                else pb.HEATMAP_RESOLUTION_IMAGE)
        out = []
        for h in self._call(self.stub.Explain, req).heatmaps:
            heat = np.frombuffer(h.data, np.float16).reshape(tuple(h.shape)).astype(np.float32)
            out.append(Heatmap(heat, self._cls(h.classification), h.target_class, h.layer, h.overlay_png,
                               whole_from_pb(h), _grid(h.grid) if h.HasField("grid") else None))
        return out

    def _segment_request(self, images: Sequence[ImageInput], *, method: str | None, threshold: str | None,
                         gate: bool, largest: bool, truth: Sequence[ImageInput], layer: str, overlay: bool,
                         png: bool, tiling: Tiling | None) -> Any:
        pb = self._pb
        encodings = [pb.MASK_ENCODING_PACKED_BITS] + ([pb.MASK_ENCODING_PNG] if png else [])
        req = pb.SegmentRequest(
            model=self.model, images=[self._image(x, i) for i, x in enumerate(images)], gate=gate,
            largest_component=largest, truth_masks=[self._image(x, i) for i, x in enumerate(truth)],
            overlay_png=overlay, mask_encodings=encodings, tiling=self._tiling(tiling))
        if method is not None or layer:
            req.options.CopyFrom(self._options(method or "gradcam", None, layer))
        if threshold is not None:
            req.threshold.CopyFrom(rule_to_pb(parse_rule(threshold)))
        return req

    def _masks(self, reply: Any) -> list[MaskResult]:
        return [MaskResult(codecs.unpack_bits(m.packed_bits, m.shape), m.png, m.area,
                           m.threshold_value if m.HasField("threshold_value") else None,
                           m.gated, m.dice if m.HasField("dice") else None, self._cls(m.classification),
                           m.overlay_png, whole_from_pb(m))
                for m in reply.masks]

    def segment(self, images: Sequence[ImageInput], *, method: str | None = None, threshold: str | None = None,
                gate: bool = True, largest: bool = False, truth: Sequence[ImageInput] = (), layer: str = "",
                overlay: bool = False, png: bool = False, tiling: Tiling | None = None) -> list[MaskResult]:
        """Masks (from packed bits); ``png`` and ``overlay`` also ask for those encodings.
        Without ``method``, ``threshold``, ``layer`` and ``largest`` the model's recipe
        chooses (the defaults, Grad-CAM and Otsu, where it has none). ``tiling`` says how
        whole images are tiled (default: images larger than four fields of view go whole)."""
        req = self._segment_request(images, method=method, threshold=threshold, gate=gate, largest=largest,
                                    truth=truth, layer=layer, overlay=overlay, png=png, tiling=tiling)
        return self._masks(self._call(self.stub.Segment, req))

    def segment_upload(self, image: Path | bytes, *, method: str | None = None, threshold: str | None = None,
                       gate: bool = True, largest: bool = False, layer: str = "", overlay: bool = False,
                       png: bool = False, tiling: Tiling | None = None, chunk: int = UPLOAD_CHUNK,
                       max_bytes: int = MAX_UPLOAD_BYTES) -> MaskResult:
        """:meth:`segment` of one encoded image (a file or its bytes) sent in pieces of
        ``chunk`` bytes (SegmentUpload), for an image larger than a message; one larger
        than ``max_bytes`` is refused before anything is sent."""
        data = image.read_bytes() if isinstance(image, Path) else image
        if len(data) > max_bytes:
            raise InvalidInputError(f"the image holds {len(data)} bytes, over the upload limit of {max_bytes}")
        if chunk < 1:
            raise InvalidInputError(f"chunk must be at least 1 byte, got {chunk}")
        head = self._segment_request([], method=method, threshold=threshold, gate=gate, largest=largest, truth=(),
                                     layer=layer, overlay=overlay, png=png, tiling=tiling)
        image_id = image.stem if isinstance(image, Path) else "0"
        pb = self._pb

        def chunks() -> Iterator[Any]:
            view = memoryview(data)
            yield pb.SegmentChunk(request=head, id=image_id, data=bytes(view[:chunk]))
            for start in range(chunk, len(data), chunk):
                yield pb.SegmentChunk(data=bytes(view[start : start + chunk]))

        return self._masks(self._call(self.stub.SegmentUpload, chunks()))[0]

    def list_models(self) -> dict[str, list[str]]:
        reply = self._call(self.stub.ListModels, self._pb.ListModelsRequest())
        return {m.name: list(m.versions) for m in reply.models}


def save_png(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _grid(g: Any) -> HeatGrid:
    """A reply's ``HeatmapGrid`` as the core's :class:`~camseg.heat.cam.HeatGrid` (which
    loads torch: only a layer-resolution reply pays for it)."""
    from camseg.heat.cam import HeatGrid

    return HeatGrid(g.scale_y, g.scale_x, g.offset_y, g.offset_x)
