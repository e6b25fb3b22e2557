"""Whole images: the ROI classifier slid over a full-field mammogram or a whole slice.

:func:`camseg.pipeline.run.run` sends an image here when it is larger than the model's
field of view by :data:`WHOLE_FACTOR` (or when the caller forces it, :class:`Tiling`).
The steps, each on the image brought to the model's scale ("model space": the image
resized by ``1 / scale``, where ``scale`` is the source pixels per model pixel the model
was trained at, :mod:`camseg.core.scale`):

1. **tissue** at low resolution (:mod:`camseg.heat.tissue`); tiles without tissue are
   skipped, and an image without tissue gets an empty mask and says so;
2. **tiles** of the model's input size with ``overlap``, streamed through the engine in
   chunks of ``Options.chunk`` tiles: every engine of :func:`run` (one-pass ONNX, the
   torch CAM methods, imported ONNX models, the distilled student); an image smaller
   than one tile is padded with zeros (background) on its bottom and right to one
   tile, and the padding is cut off the results;
3. **blending** with importance weights, as MONAI's sliding-window inferer blends: each
   tile's lesion probability ``p`` and heatmap ``h`` (min-max normalised per tile, or
   the student's probabilities) are added under a Gaussian window (sigma
   ``sigma * tile side``) and divided by the summed weights. The lesion map is
   ``P * H`` for CAM methods, ``H`` for the student; with the gate, zero where the
   blended probability is below the decision threshold (0.5 where none is set);
4. **masks**: the threshold rule applied within each *region* (a connected part of the
   gated area, or the whole tissue without the gate), so a percentile or Otsu rule
   means what it means on an ROI; refinement within each region's box; the largest
   component per region and hole filling where asked;
5. **lesion candidates**: connected components with their score (the highest lesion
   map value inside) and area, in the image's own pixels.

The image-level score is the highest blended probability over the tissue (the lesion
map's highest value for the student).

Memory beyond the decoded image grows with the model-space image of ``h x w =
(H / scale) x (W / scale)`` pixels: about ``26 h w`` bytes (three float32
accumulators, the int32 region labels, the tissue and the mask), plus the outputs at
the image's size, ``5 H W`` bytes (the float32 lesion map and the boolean mask), plus
one chunk of tiles. A 4096 x 5120 image at scale 1 needs about 640 MB by this count;
``bench/whole_bench.py`` measures the peak end to end, the decoded image included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from camseg.core.errors import InvalidInputError
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.core.types import BoolArray, FloatArray
from camseg.heat.lesions import Lesion, label_components, lesions_of
from camseg.heat.masks import _otsu, largest_component
from camseg.heat.refine import Refiner, refine_masks
from camseg.heat.rules import ThresholdRule
from camseg.heat.tissue import tissue_low, upsample_mask

if TYPE_CHECKING:
    from camseg.pipeline.options import Engine, Options
    from camseg.pipeline.run import LoadedModel

WHOLE_FACTOR = 4.0
"""An image whose longer side exceeds this many fields of view of the model (its input
side times its scale) is segmented whole, by sliding the classifier."""

DEFAULT_DECISION = 0.5


class Whole(StrEnum):
    AUTO = "auto"  # whole-image inference for images larger than WHOLE_FACTOR fields of view
    ALWAYS = "always"
    NEVER = "never"  # every image resized to the model's input, as an ROI


@dataclass(frozen=True)
class Tiling:
    """How whole images are tiled. ``scale`` (source pixels per model pixel) overrides
    the model's recorded scale; ``overlap`` is the fraction of a tile shared with its
    neighbour, in [0, 0.9]; ``sigma`` the Gaussian window's width as a fraction of the
    tile side (0: a flat window); ``tissue_factor`` the tissue mask's downsampling in
    model pixels; ``min_area`` the smallest lesion candidate kept, in image pixels;
    ``spacing_mm`` the images' pixel spacing where the model's scale is in millimetres."""

    mode: Whole = Whole.AUTO
    scale: float | None = None
    overlap: float = 0.5
    sigma: float = 0.125
    tissue_factor: int = 8
    min_area: int = 0
    spacing_mm: float | None = None  # the image's pixel spacing, for a scale recorded in millimetres

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", Whole(self.mode))
        except ValueError:
            raise InvalidInputError(f"whole-image mode must be one of {', '.join(w.value for w in Whole)}, "
                                    f"got {self.mode!r}") from None
        if self.scale is not None and not (math.isfinite(self.scale) and 0.05 <= self.scale <= 64):
            raise InvalidInputError(f"scale must be within 0.05..64 source pixels per model pixel, got {self.scale}")
        if not 0.0 <= self.overlap <= 0.9:
            raise InvalidInputError(f"overlap must be within 0..0.9, got {self.overlap}")
        if not 0.0 <= self.sigma <= 1.0:
            raise InvalidInputError(f"sigma must be within 0..1, got {self.sigma}")
        if self.spacing_mm is not None and not (math.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise InvalidInputError(f"pixel spacing must be a positive number of mm, got {self.spacing_mm}")
        if not 1 <= self.tissue_factor <= 64 or self.min_area < 0:
            raise InvalidInputError("tissue_factor must be within 1..64 and min_area >= 0")


@dataclass(frozen=True)
class WholeInfo:
    """What the sliding window did for one image."""

    scale: float
    tiles: int
    skipped: int  # tiles without tissue
    tissue_fraction: float
    padded: bool
    score: float  # the image-level lesion score
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def no_tissue(self) -> bool:
        return self.tissue_fraction == 0.0

    @property
    def note(self) -> str:
        return "no tissue found: empty mask" if self.no_tissue else ""

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "tiles": self.tiles, "skipped": self.skipped,
                "tissue_fraction": round(self.tissue_fraction, 4), "padded": self.padded,
                "score": round(self.score, 6), "lesions": [c.to_dict() for c in self.lesions],
                **({"note": self.note} if self.note else {})}


def whole_bytes(shape: tuple[int, ...], scale: float, *, tile: tuple[int, int] = (64, 64), chunk: int = 16,
                channels: int = 1) -> int:
    """Bytes the sliding window holds for an image of ``shape`` at ``scale``, beyond
    the decoded image: the model-space image (where resized) and its accumulators,
    labels, tissue and mask (about 30 bytes per model-space pixel), the outputs at the
    image's size (5 bytes per pixel) and one chunk of tiles. Budgets count this."""
    h, w = int(shape[0]), int(shape[1])
    small = math.ceil(h / scale) * math.ceil(w / scale)
    resized = 4 * small * channels if abs(scale - 1.0) > 1e-6 else 0
    return int(26 * small + resized + 5 * h * w + chunk * tile[0] * tile[1] * 4 * (channels + 4))


def model_scale(model: LoadedModel, tiling: Tiling) -> float | None:
    """Source pixels per model pixel: the caller's, else the model's recorded scale (in
    millimetres it needs ``tiling.spacing_mm``, the image's pixel spacing), else None."""
    if tiling.scale is not None:
        return tiling.scale
    spec = model.config.scale if model.config is not None else None
    if spec is None:
        return None
    return spec.to_scale().pixels(tiling.spacing_mm)


def is_whole(model: LoadedModel, shape: tuple[int, ...], tiling: Tiling) -> bool:
    """Whether an image of ``shape`` goes through the sliding window under ``tiling``."""
    if tiling.mode is Whole.NEVER:
        return False
    if tiling.mode is Whole.ALWAYS:
        return True
    try:
        scale = model_scale(model, tiling)
    except InvalidInputError:  # a scale in millimetres and no spacing: segment_whole says so
        scale = None
    view = max(model.input_hw) * (scale or 1.0)
    return max(int(shape[0]), int(shape[1])) > WHOLE_FACTOR * view


def decode_limit(tiling: Tiling, max_pixels: int, max_whole_pixels: int) -> int:
    """The largest image (height x width) to decode for a run under ``tiling``: whole
    images may reach ``max_whole_pixels`` unless whole-image inference is off."""
    return max_pixels if tiling.mode is Whole.NEVER else max(max_pixels, max_whole_pixels)


_NO_SCALE = "has no recorded scale (source pixels per model pixel) for whole images; give one (--scale, Tiling.scale)"


def check_scale(model: LoadedModel, tiling: Tiling) -> None:
    """Refuse, before any image is read, whole images for a model with no scale at all (a
    scale in millimetres is checked per image, against its pixel spacing)."""
    if tiling.scale is None and (model.config is None or model.config.scale is None):
        raise InvalidInputError(f"{model.path.name} {_NO_SCALE}")


def require_scale(model: LoadedModel, tiling: Tiling) -> float:
    scale = model_scale(model, tiling)
    if scale is None:
        raise InvalidInputError(f"{model.path.name} {_NO_SCALE}")
    return scale


def window(size: tuple[int, int], sigma: float) -> FloatArray:
    """The importance weights of one tile: a Gaussian of ``sigma`` times each side,
    peak 1, clamped away from 0 (as MONAI's ``compute_importance_map``); flat for 0."""
    if sigma <= 0:
        return np.ones(size, dtype=np.float32)
    axes = []
    for n in size:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        axes.append(np.exp(-0.5 * (x / (sigma * n)) ** 2))
    w = np.outer(axes[0], axes[1]).astype(np.float32)
    w /= w.max()
    return np.maximum(w, max(float(w[w > 0].min()), 1e-3)).astype(np.float32)



def positions(length: int, tile: int, overlap: float) -> list[int]:
    """Tile origins covering ``length`` (>= ``tile``) with ``overlap``; the last tile
    ends at the edge."""
    stride = max(1, round(tile * (1.0 - overlap)))
    out = list(range(0, length - tile + 1, stride))
    if out[-1] != length - tile:
        out.append(length - tile)
    return out


def to_model_space(image: FloatArray, scale: float) -> FloatArray:
    """``image`` resized by ``1 / scale`` with area averaging (itself at scale 1)."""
    if abs(scale - 1.0) < 1e-6:
        return np.asarray(image, dtype=np.float32)
    h, w = image.shape[:2]
    size = (max(1, round(h / scale)), max(1, round(w / scale)))
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    mode = "area" if scale > 1 else "bilinear"
    y = F.interpolate(x, size=size, mode=mode) if mode == "area" else F.interpolate(
        x, size=size, mode=mode, align_corners=False)
    out = y[0, 0] if image.ndim == 2 else y[0].permute(1, 2, 0)
    return np.ascontiguousarray(out.numpy())


def _to_image_size(a: FloatArray | BoolArray, shape: tuple[int, int]) -> Any:
    """A model-space map back to the image's size (nearest for masks, bilinear else),
    in row strips so no second full-size float temporary is made."""
    if a.shape == shape:
        return a
    if a.dtype == bool:
        ys = np.minimum((np.arange(shape[0]) * a.shape[0] / shape[0]).astype(np.int64), a.shape[0] - 1)
        xs = np.minimum((np.arange(shape[1]) * a.shape[1] / shape[1]).astype(np.int64), a.shape[1] - 1)
        return a[ys][:, xs]
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    out: FloatArray = F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    return out


def _region_masks(lesion_map: FloatArray, regions: np.ndarray, n: int, rule: ThresholdRule,
                  ) -> tuple[BoolArray, float | None]:
    """The rule applied within each region; the first region's threshold is returned."""
    mask = np.zeros(lesion_map.shape, dtype=bool)
    first: float | None = None
    for k, box in enumerate(ndimage.find_objects(regions), start=1):
        if box is None:
            continue
        inside = regions[box] == k
        values = lesion_map[box][inside]
        if rule.kind == "fixed":
            t = rule.value
        elif rule.kind == "percentile":
            t = float(np.percentile(values, rule.value))
        else:
            t = _otsu(values)
        if not math.isfinite(t):
            continue
        first = t if first is None else first
        mask[box] |= inside & (lesion_map[box] >= t) & (lesion_map[box] > 0)
    return mask, first


@dataclass(frozen=True)
class WholeMaps:
    """The sliding window's maps of one image in model space (``h x w``), before any
    threshold: the blended lesion probability ``prob``, the blended heatmap ``heat``
    (``calibrated`` where it is the student's probability), the ``tissue`` and the
    gray model-space image (for refinement); with the probabilities of the most
    suspicious tile and the tile counts. :func:`masks_of` makes masks of them under any
    options, so a caller choosing a threshold slides the classifier once."""

    prob: FloatArray
    heat: FloatArray
    tissue: BoolArray
    gray: FloatArray
    calibrated: bool
    best_probs: FloatArray
    scale: float
    shape: tuple[int, int]
    tiles: int
    skipped: int
    padded: bool

    def tissue_at_image_size(self) -> BoolArray:
        """The tissue mask the window used, at the image's own size."""
        out: BoolArray = _to_image_size(self.tissue, self.shape)
        return out


def whole_maps(model: LoadedModel, image: FloatArray, opts: Options, engine: Engine, *,
               on_progress: OnProgress | None = None, should_stop: ShouldStop | None = None) -> WholeMaps:
    """Slide ``model`` over ``image``: tissue, tiles, blending (the module's steps 1-3)."""
    tiling = opts.tiling
    scale = require_scale(model, tiling)
    shape = (int(image.shape[0]), int(image.shape[1]))
    small = to_model_space(image, scale)
    th, tw = model.input_hw
    h, w = small.shape[:2]
    padded = h < th or w < tw
    if padded:
        grown = np.zeros((max(h, th), max(w, tw), *small.shape[2:]), dtype=np.float32)
        grown[:h, :w] = small
        small = grown
    H, W = small.shape[:2]
    f = tiling.tissue_factor
    tissue_lo = tissue_low(small[:h, :w], factor=f)
    tissue_lo = np.pad(tissue_lo, ((0, -(-H // f) - tissue_lo.shape[0]), (0, -(-W // f) - tissue_lo.shape[1])))
    tiles = [(y, x) for y in positions(H, th, tiling.overlap) for x in positions(W, tw, tiling.overlap)]
    kept = [(y, x) for y, x in tiles if tissue_lo[y // f : -(-(y + th) // f), x // f : -(-(x + tw) // f)].any()]
    n_classes = len(model.classes)
    acc_h = np.zeros((H, W), dtype=np.float32)
    acc_p = np.zeros((H, W), dtype=np.float32)
    acc_w = np.zeros((H, W), dtype=np.float32)
    weight = window((th, tw), tiling.sigma)
    best_probs = np.zeros(n_classes, dtype=np.float32)
    best_p = -1.0
    calibrated = False
    pos = list(model.positives)
    tracker = Tracker("tiles", len(kept), on_progress=on_progress, should_stop=should_stop)
    for start in range(0, len(kept), opts.chunk):
        part = kept[start : start + opts.chunk]
        crops = [small[y : y + th, x : x + tw] for y, x in part]
        raw = model.raw_cam(engine, model.prepare(crops), opts)
        calibrated = raw.calibrated
        probs = F.softmax(raw.logits, dim=1).numpy()
        heat = raw.render((th, tw)).numpy()
        p_pos = probs[:, pos].sum(1)
        for k, (y, x) in enumerate(part):
            acc_h[y : y + th, x : x + tw] += weight * heat[k]
            acc_p[y : y + th, x : x + tw] += weight * float(p_pos[k])
            acc_w[y : y + th, x : x + tw] += weight
            if p_pos[k] > best_p:
                best_p, best_probs = float(p_pos[k]), probs[k].astype(np.float32)
        tracker.advance(len(part))
    tracker.finish()
    covered = acc_w > 0
    np.divide(acc_h, acc_w, out=acc_h, where=covered)
    np.divide(acc_p, acc_w, out=acc_p, where=covered)
    del acc_w, covered
    tissue = upsample_mask(tissue_lo, (h, w), f)
    if best_p < 0:  # no tile had tissue: the classifier never ran
        negatives = [c for c in range(n_classes) if c not in pos] or pos
        best_probs[negatives[0]] = 1.0
    gray = small[:h, :w].mean(axis=2) if small.ndim == 3 else small[:h, :w]
    return WholeMaps(acc_p[:h, :w], acc_h[:h, :w], np.ascontiguousarray(tissue), gray, calibrated, best_probs,
                     scale, shape, len(kept), len(tiles) - len(kept), padded)


def masks_of(maps: WholeMaps, opts: Options) -> tuple[FloatArray, BoolArray | None, float | None, WholeInfo]:
    """The lesion map at the image's size, the mask (None without a threshold rule), its
    threshold (the first region's; None where no region had one) and the
    :class:`WholeInfo`, under ``opts`` (the module's steps 3-5). ``maps`` is not changed."""
    prob_map, tissue, scale = maps.prob, maps.tissue, maps.scale
    lesion_map = maps.heat.copy() if maps.calibrated else maps.heat * prob_map
    tau = opts.decision_threshold if opts.decision_threshold is not None else DEFAULT_DECISION
    if opts.gate:
        lesion_map[prob_map < tau] = 0.0
    lesion_map[~tissue] = 0.0
    if maps.calibrated:
        score = float(lesion_map.max()) if tissue.any() else 0.0
    else:
        score = float(prob_map[tissue].max()) if tissue.any() else 0.0
    mask: BoolArray | None = None
    threshold: float | None = None
    lesions: list[Lesion] = []
    if opts.threshold is not None:
        gate_area = (prob_map >= tau) & tissue if opts.gate else tissue
        regions, n = label_components(gate_area)
        mask, threshold = _region_masks(lesion_map, regions, n, opts.threshold)
        mask = _finish_mask(mask, regions, lesion_map, maps.gray, opts)
        min_area = opts.tiling.min_area / (scale * scale)
        lesions = [Lesion(c.score, round(c.area * scale * scale),
                          (int(c.box[0] * scale), int(c.box[1] * scale), math.ceil(c.box[2] * scale),
                           math.ceil(c.box[3] * scale)), (c.centroid[0] * scale, c.centroid[1] * scale))
                   for c in lesions_of(mask, lesion_map, min_area=max(1, math.ceil(min_area)))]
        if min_area > 1:  # drop the specks below min_area from the mask as from the candidates
            labels, _ = label_components(mask)
            sizes = np.bincount(labels.ravel())
            mask = np.isin(labels, np.flatnonzero(sizes >= min_area)) & (labels > 0)
        mask = _to_image_size(mask, maps.shape)
    info = WholeInfo(scale, maps.tiles, maps.skipped, float(tissue.mean()) if tissue.size else 0.0,
                     maps.padded, score, lesions)
    return _to_image_size(np.ascontiguousarray(lesion_map), maps.shape), mask, threshold, info


def segment_whole(model: LoadedModel, image: FloatArray, opts: Options, engine: Engine, *,
                  on_progress: OnProgress | None = None, should_stop: ShouldStop | None = None,
                  ) -> tuple[FloatArray, FloatArray, BoolArray | None, float | None, WholeInfo]:
    """Slide ``model`` over ``image`` (see the module's docstring): the probabilities of
    the most suspicious tile ``(classes,)`` and :func:`masks_of`'s four results."""
    maps = whole_maps(model, image, opts, engine, on_progress=on_progress, should_stop=should_stop)
    return (maps.best_probs, *masks_of(maps, opts))


def _finish_mask(mask: BoolArray, regions: np.ndarray, lesion_map: FloatArray, gray: FloatArray,
                 opts: Options) -> BoolArray:
    """Refinement, the largest component and hole filling, region by region."""
    if opts.refine is Refiner.NONE and not opts.largest and not opts.fill_holes:
        return mask
    out = mask.copy()
    for k, box in enumerate(ndimage.find_objects(regions), start=1):
        if box is None or not mask[box].any():
            continue
        inside = regions[box] == k
        m = mask[box] & inside
        if opts.refine is not Refiner.NONE:
            m = refine_masks(torch.from_numpy(np.ascontiguousarray(gray[box]))[None],
                             torch.from_numpy(np.ascontiguousarray(lesion_map[box]))[None].clamp(0, 1),
                             torch.from_numpy(m)[None], opts.refine)[0].numpy() & inside
        if opts.largest:
            m = largest_component(m)
        if opts.fill_holes:
            m = ndimage.binary_fill_holes(m)
        out[box] = np.where(inside, m, out[box])
    return out
