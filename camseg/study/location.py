"""Where the heatmaps sit: on the mass, on the ROI border, or neither.

Guan & Loew ("A Sneak Attack on Segmentation of Medical Images Using Deep Neural
Network Classifiers", arXiv:2201.02771) report, from a figure of Grad-CAM heatmaps,
that InceptionV3 and NASNetMobile put their heat on the mass while DenseNet121,
ResNet50V2 and MobileNetV2 light up the borders of the ROI (no claim for Xception).
This module measures it, per heatmap (:func:`locate`, :func:`locate_batch`) and per
CAM method over the tumor ROIs of a split (:func:`location_sweep`,
:func:`summarize`), and writes the finding (:func:`finding_markdown`).

Per heatmap ``h >= 0`` of side ``max(H, W)`` and its truth mask ``M``:

* **share inside** ``sum(h M) / sum(h)``, beside its chance level ``mean(M)`` (what a
  uniform heatmap gives);
* **share on the border** ``sum(h B) / sum(h)``, where the band ``B`` holds the pixels
  whose distance to the nearest image edge (in pixels, 0 on the edge) is less than
  ``band * side``; chance level ``mean(B)``. With ``band = 0.1`` a 20x20 ROI has a 2-px
  ring of 144 pixels, chance 0.36;
* **peak distance**: from the heatmap's peak (its argmax; among ties the first pixel in
  row-major order) to the mass centroid (the mean row and column of ``M``), in pixels
  and as a fraction of the side;
* **centroid distance**: from the heat-weighted centroid to the mass centroid, likewise;
* **hit**: the peak falls inside ``M`` -- the pointing game of Zhang et al. ("Top-down
  Neural Attention by Excitation Backprop", ECCV 2016), here with zero tolerance.

Edge cases. A heatmap with no heat (``sum(h) == 0``, e.g. Grad-CAM's all-zero map
when every channel weight is negative) is *flat*: its shares, distances and centroid
are NaN and it is no hit. An empty mask has share inside 0, chance 0, NaN distances
(no centroid) and no hit. :func:`summarize` counts every map in ``n``, counts flat maps
in ``flat`` and takes every mean over the non-flat maps, NaN-aware (so an empty mask
drops out of the distance and pointing means only); a row whose maps are all flat
has NaN means.

>>> import torch
>>> mask = torch.zeros(20, 20, dtype=torch.bool); mask[8:12, 8:12] = True
>>> loc = locate(mask.float(), mask)
>>> loc.inside, loc.chance_inside, loc.centroid_px, loc.hit
(1.0, 0.04, 0.0, True)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from camseg.core.errors import InvalidInputError
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.data.folder import FolderDataset
from camseg.data.tensors import ArraySet, load_arrays
from camseg.heat.cam import CAMS, METHODS, CamNetwork, cam_batches, lesion_targets
from camseg.heat.methods import parse_method
from camseg.models import PAPER_NAMES
from camseg.pipeline.run import LoadedModel

logger = logging.getLogger(__name__)

BORDER_BAND = 0.1
# the paper's reading of its figure (Guan & Loew, arXiv:2201.02771): where each
# architecture's Grad-CAM heat sits; None: the paper makes no claim
PAPER_CLAIMS: dict[str, str | None] = {"inception": "mass", "nasnet": "mass", "densenet": "border",
                                       "resnet": "border", "mobilenet": "border", "xception": None}
CLAIMS = ("mass", "border")
# paper names of the architectures the paper claims something about that camseg does not build
_OTHER_NAMES = {"nasnet": "NASNetMobile"}
_TIE = 1e-9  # enrichments closer than this are equal (floating-point rounding)
_ROUNDING = 1e-9  # 0.07 x 100 is 7.000000000000001 in floating point; that band is 7 pixels wide

HeatLike = Tensor | npt.NDArray[np.floating] | npt.NDArray[np.bool_]
MaskLike = Tensor | npt.NDArray[np.bool_] | npt.NDArray[np.integer]


# ------------------------------------------------------------------- one heatmap
@dataclass(frozen=True)
class ImageLocation:
    """Where one heatmap's heat sits relative to its truth mask (see the module
    docstring for the definitions and the flat / empty-mask rules)."""

    inside: float
    border: float
    chance_inside: float
    chance_border: float
    peak_px: float
    peak_frac: float
    centroid_px: float
    centroid_frac: float
    hit: bool
    flat: bool
    peak_border: bool = False  # the peak lies in the border band (never for a flat map)

    @property
    def inside_enrichment(self) -> float:
        """Share inside over its chance level; NaN for a flat map or an empty mask."""
        return _ratio(self.inside, self.chance_inside)

    @property
    def border_enrichment(self) -> float:
        """Share on the border over its chance level; NaN for a flat map or an empty band."""
        return _ratio(self.border, self.chance_border)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(a) else math.nan


def _check_band(band: float) -> None:
    if not (0.0 < band <= 0.5):
        raise InvalidInputError(f"the border band is a fraction of the ROI side in (0, 0.5], got {band!r}")


def border_band(shape: tuple[int, int], band: float = BORDER_BAND, device: torch.device | str = "cpu") -> Tensor:
    """The ``(H, W)`` boolean band of pixels whose distance to the nearest image edge is
    less than ``band * max(H, W)`` pixels (edge pixels are at distance 0): a ring
    ``ceil(band * max(H, W))`` pixels wide, to within floating-point rounding."""
    _check_band(band)
    h, w = shape
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    to_edge = torch.minimum(torch.minimum(rows, h - 1 - rows)[:, None], torch.minimum(cols, w - 1 - cols)[None, :])
    # distances are whole pixels, so "< band * side" is "< ceil(band * side)", compared exactly
    width = math.ceil(band * max(h, w) - _ROUNDING)
    return to_edge < width


def _as_tensor(x: HeatLike | MaskLike, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{what} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def locate_batch(heat: HeatLike, masks: MaskLike, *, band: float = BORDER_BAND) -> list[ImageLocation]:
    """:func:`locate` for ``(N, H, W)`` heatmaps and masks at once, vectorised in torch
    (float64, on the heatmaps' device).

    Raises:
        TypeError for something other than a tensor or array; InvalidInputError for
        mismatched shapes, negative or non-finite heat, or a band outside (0, 0.5].
    """
    _check_band(band)
    h = _as_tensor(heat, "heat")
    m = _as_tensor(masks, "masks")
    if h.ndim != 3 or tuple(m.shape) != tuple(h.shape):
        raise InvalidInputError(f"heatmaps (N, H, W) and masks of the same shape needed, got "
                                f"{tuple(h.shape)} and {tuple(m.shape)}")
    if h.is_complex():
        raise InvalidInputError(f"heatmaps must be real numbers, got {h.dtype}")
    if h.shape[0] == 0:
        return []
    h = h.to(torch.float64)
    if not bool(torch.isfinite(h).all()):
        raise InvalidInputError("heatmaps must be finite")
    if bool((h < 0).any()):
        raise InvalidInputError("heatmaps must be non-negative (after the CAM's ReLU)")
    m = m.to(h.device) != 0
    n, height, width = h.shape
    side = float(max(height, width))
    ring = border_band((height, width), band, h.device)
    mf = m.to(torch.float64)
    rows = torch.arange(height, dtype=torch.float64, device=h.device)[None, :, None]
    cols = torch.arange(width, dtype=torch.float64, device=h.device)[None, None, :]

    total = h.sum((1, 2))
    flat = total <= 0
    denom = torch.where(flat, torch.ones_like(total), total)
    nan = torch.full_like(total, math.nan)

    def share(weight: Tensor) -> Tensor:
        return torch.where(flat, nan, (h * weight).sum((1, 2)) / denom)

    inside = share(mf)
    border = share(ring.to(torch.float64)[None])
    chance_inside = mf.mean((1, 2))
    chance_border = ring.to(torch.float64).mean().expand(n)

    area = mf.sum((1, 2))
    empty = area == 0
    area = torch.where(empty, torch.ones_like(area), area)
    mass_r = torch.where(empty, nan, (mf * rows).sum((1, 2)) / area)
    mass_c = torch.where(empty, nan, (mf * cols).sum((1, 2)) / area)
    # torch.argmax returns the first maximal index: ties go to the first pixel in row-major order
    peak = h.reshape(n, -1).argmax(1)
    peak_r, peak_c = (peak // width).to(torch.float64), (peak % width).to(torch.float64)
    heat_r = torch.where(flat, nan, (h * rows).sum((1, 2)) / denom)
    heat_c = torch.where(flat, nan, (h * cols).sum((1, 2)) / denom)
    peak_px = torch.where(flat, nan, torch.hypot(peak_r - mass_r, peak_c - mass_c))
    centroid_px = torch.hypot(heat_r - mass_r, heat_c - mass_c)
    hit = m.reshape(n, -1).gather(1, peak[:, None])[:, 0] & ~flat
    peak_border = ring.reshape(-1)[peak] & ~flat

    cols_out = [t.cpu().tolist() for t in (inside, border, chance_inside, chance_border, peak_px, centroid_px)]
    return [
        ImageLocation(float(i), float(b), float(ci), float(cb), float(p), float(p) / side, float(c), float(c) / side,
                      bool(ht), bool(f), bool(pb))
        for i, b, ci, cb, p, c, ht, f, pb in zip(*cols_out, hit.cpu().tolist(), flat.cpu().tolist(),
                                                 peak_border.cpu().tolist(), strict=True)
    ]


def locate(heat: HeatLike, mask: MaskLike, *, band: float = BORDER_BAND) -> ImageLocation:
    """Where one heatmap ``(H, W) >= 0`` sits relative to its truth mask ``(H, W)``.

    The heat need not be normalised (shares are scale-free). Definitions and edge cases
    (flat maps, empty masks, ties of the peak) are in the module docstring; the pointing
    game hit is Zhang et al.'s (ECCV 2016) with zero tolerance.

    >>> import numpy as np
    >>> heat = np.zeros((10, 10)); heat[0, 0] = 1.0
    >>> mask = np.zeros((10, 10), bool); mask[4:6, 4:6] = True
    >>> loc = locate(heat, mask, band=0.1)   # one hot pixel on the edge, 4.5 rows and columns off
    >>> round(loc.peak_px, 4), loc.border, loc.inside, loc.hit
    (6.364, 1.0, 0.0, False)
    """
    h = _as_tensor(heat, "heat")
    m = _as_tensor(mask, "mask")
    if h.ndim != 2:
        raise InvalidInputError(f"a heatmap is (H, W), got {tuple(h.shape)}")
    return locate_batch(h[None], m[None], band=band)[0]


# ------------------------------------------------------------------ a whole split
@dataclass(frozen=True)
class LocationRow:
    """One CAM method at one layer over the tumor ROIs of a split.

    ``n`` counts every ROI, ``flat`` the heatmaps with no heat; every mean is over the
    ``n - flat`` others, NaN-aware. The enrichments are ratios of the means (share over
    chance), so a uniform heatmap scores 1 on both. ``pointing`` is the pointing game's
    hit rate (Zhang et al., ECCV 2016, zero tolerance) over non-flat maps with a
    non-empty mask. Plain floats, so ``dataclasses.asdict`` gives JSON (NaN as NaN).
    """

    method: str
    layer: str
    n: int
    flat: int
    inside: float
    border: float
    chance_inside: float
    chance_border: float
    inside_enrichment: float
    border_enrichment: float
    peak_px: float
    peak_frac: float
    centroid_px: float
    centroid_frac: float
    pointing: float
    peak_on_border: float = math.nan  # share of the non-flat maps whose peak lies in the border band (chance:
    # chance_border): where the paper's "lights up the borders" would show first

    @property
    def used(self) -> int:
        """The heatmaps the means are over."""
        return self.n - self.flat

    @property
    def sits_on(self) -> str:
        """``"mass"`` when the inside enrichment exceeds both 1 and the border
        enrichment; ``"border"`` when the border enrichment exceeds both 1 and the inside
        enrichment; ``"neither"`` otherwise -- at chance (a uniform map: both 1), below
        chance on both, on a tie, or when either enrichment is NaN (every map flat).
        "Exceeds" means by more than rounding (1e-9), so a uniform map is never called
        "mass" for a last-bit difference."""
        a, b = self.inside_enrichment, self.border_enrichment
        if math.isnan(a) or math.isnan(b):
            return "neither"
        if a > max(b, 1.0) + _TIE:
            return "mass"
        if b > max(a, 1.0) + _TIE:
            return "border"
        return "neither"


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return math.fsum(kept) / len(kept) if kept else math.nan


def summarize(method: str, layer: str, items: Sequence[ImageLocation]) -> LocationRow:
    """The :class:`LocationRow` of ``items``: ``n = len(items)``, ``flat`` the flat maps,
    NaN-aware means over the non-flat ones (all NaN when none is left; ``n == 0`` is
    allowed and gives the same)."""
    used = [it for it in items if not it.flat]

    def mean(field: str) -> float:
        return _nanmean([float(getattr(it, field)) for it in used])

    inside, border = mean("inside"), mean("border")
    chance_inside, chance_border = mean("chance_inside"), mean("chance_border")
    pointing = _nanmean([float(it.hit) if it.chance_inside > 0 else math.nan for it in used])
    return LocationRow(
        method, layer, len(items), len(items) - len(used), inside, border, chance_inside, chance_border,
        _ratio(inside, chance_inside), _ratio(border, chance_border), mean("peak_px"), mean("peak_frac"),
        mean("centroid_px"), mean("centroid_frac"), pointing, _nanmean([float(it.peak_border) for it in used]),
    )


def location_sweep(
    model: CamNetwork,
    data: ArraySet,
    *,
    methods: Sequence[str] = METHODS,
    layer: str | None = None,
    positives: Sequence[int] | None = None,
    band: float = BORDER_BAND,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> list[LocationRow]:
    """One :class:`LocationRow` per method, in the order of ``methods``, over the tumor
    ROIs of ``data`` (``has_mask``).

    Heatmaps are at the input size, of the lesion class chosen as
    :func:`camseg.study.evaluation.dice_sweep` chooses it (``positives``, default the last
    class; with several, each image's most probable one), at ``layer`` (default
    ``model.cam_layer``). As in the Dice sweep, the fused method runs once, at
    ``model.cam_layer`` (the product of its last two stages), and its row says so.

    Raises:
        InvalidInputError / NotFoundError before any computation: no tumor ROI, an
        unknown or non-gradient method, an unknown layer, a bad band.
        CancelledError when ``should_stop`` says so (checked after every batch).
    """
    _check_band(band)
    layer = layer or model.cam_layer
    model.check_layer(layer)
    parsed = [parse_method(m) for m in methods]
    bad = [m.value for m in parsed if not CAMS[m].gradients]
    if bad:
        raise InvalidInputError(f"the location sweep runs the gradient CAM methods ({', '.join(METHODS)}), "
                                f"not {', '.join(bad)}")
    if not parsed:
        raise InvalidInputError("the location sweep needs at least one method")
    if not bool(data.has_mask.any()):
        raise InvalidInputError("the location sweep needs tumor ROIs with truth masks in the split")
    pos = tuple(positives) if positives else (model.num_classes - 1,)
    data = data.select(torch.nonzero(data.has_mask).flatten())
    targets = lesion_targets(model, data.images, pos)
    combos = [(m, model.cam_layer if CAMS[m].layers > 1 else layer) for m in parsed]
    tracker = Tracker("Heatmap location", len(combos) * len(data), on_progress=on_progress,
                      should_stop=should_stop)
    rows = []
    for method, at in combos:
        items: list[ImageLocation] = []
        for res in cam_batches(model, data.images, method=method, layer=at, targets=targets):
            items += locate_batch(res.heatmaps, data.masks[len(items) : len(items) + len(res.heatmaps)], band=band)
            tracker.advance(len(res.heatmaps))
        row = summarize(method.value, at, items)
        logger.info("location of %s@%s over %d tumor ROIs (%d flat): sits on %s",
                    row.method, row.layer, row.n, row.flat, row.sits_on)
        rows.append(row)
    return rows


# --------------------------------------------------------------------- the finding
def verdict(claim: str | None, row: LocationRow) -> str:
    """``"no claim"`` when ``claim`` is None; ``"holds"`` when the row sits where the
    claim says (``"mass"`` or ``"border"``, :attr:`LocationRow.sits_on`); ``"does not
    hold"`` otherwise, including a row that sits on neither (all maps flat included).

    Raises:
        InvalidInputError for a claim other than ``"mass"``, ``"border"`` or None.
    """
    if claim is None:
        return "no claim"
    if claim not in CLAIMS:
        raise InvalidInputError(f"a claim is 'mass', 'border' or None, got {claim!r}")
    return "holds" if row.sits_on == claim else "does not hold"


def _paper_name(arch: str, names: Mapping[str, str]) -> str:
    return names.get(arch) or _OTHER_NAMES.get(arch) or arch


def _num(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def _dist(px: float, frac: float) -> str:
    return "-" if math.isnan(px) else f"{px:.3f} px ({_pct(frac)})"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def finding_markdown(rows: Mapping[str, Sequence[LocationRow]], *, method: str = "gradcam",
                     names: Mapping[str, str] = PAPER_NAMES) -> str:
    """The body of the report section on the paper's finding (the caller adds the title).

    ``rows`` maps an architecture key (``"resnet"``, ...) to its :func:`location_sweep`
    rows. One sentence states the paper's claim; the first table has one line per
    architecture at ``method`` (its first row of that method; ``"not measured"`` where
    it has none), the second every method of every architecture; the last line counts
    the architectures with a claim, measured at ``method``, for which the claim holds.
    Numbers have three decimals, percentages of the ROI side one; NaN shows as ``-``.
    """
    mass = [_paper_name(a, names) for a, c in PAPER_CLAIMS.items() if c == "mass"]
    border = [_paper_name(a, names) for a, c in PAPER_CLAIMS.items() if c == "border"]
    silent = [_paper_name(a, names) for a, c in PAPER_CLAIMS.items() if c is None]
    lines = [
        f"Guan & Loew (arXiv:2201.02771) report, from their figure of Grad-CAM heatmaps, that {_join(mass)} "
        f"put the heat on the mass while {_join(border)} light up the ROI borders"
        + (f" (no claim for {_join(silent)})." if silent else "."),
        "",
        f"Measured with {method} on the tumor ROIs; chance levels (a uniform heatmap) in brackets, "
        f"enrichment = share / chance; the border band is {BORDER_BAND:g} of the ROI side by default; "
        "distances to the mass centroid in pixels (% of the ROI side); pointing game after Zhang et al. "
        "(ECCV 2016). Means over the non-flat heatmaps (flat: no heat at all).",
        "",
        "| architecture | claim | ROIs (flat) | share inside (chance) | share on border (chance) | "
        "enrichment inside / border | peak distance | centroid distance | pointing game (chance) | "
        "peaks on border (chance) | sits on | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    held = claimed = 0
    for arch, arch_rows in rows.items():
        claim = PAPER_CLAIMS.get(arch)
        name = _paper_name(arch, names)
        row = next((r for r in arch_rows if r.method == method), None)
        if row is None:
            lines.append(f"| {name} | {claim or '-'} | - | - | - | - | - | - | - | - | - | not measured |")
            continue
        said = verdict(claim, row)
        claimed += claim is not None
        held += said == "holds"
        lines.append(
            f"| {name} | {claim or '-'} | {row.n} ({row.flat}) | {_num(row.inside)} ({_num(row.chance_inside)}) | "
            f"{_num(row.border)} ({_num(row.chance_border)}) | {_num(row.inside_enrichment)} / "
            f"{_num(row.border_enrichment)} | {_dist(row.peak_px, row.peak_frac)} | "
            f"{_dist(row.centroid_px, row.centroid_frac)} | {_num(row.pointing)} ({_num(row.chance_inside)}) | "
            f"{_num(row.peak_on_border)} ({_num(row.chance_border)}) | {row.sits_on} | {said} |")
    lines += ["", "Every method:", "",
              "| architecture | method | layer | share inside | share on border | pointing game | peaks on border | "
              "sits on |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for arch, arch_rows in rows.items():
        for r in arch_rows:
            lines.append(f"| {_paper_name(arch, names)} | {r.method} | {r.layer} | {_num(r.inside)} | "
                         f"{_num(r.border)} | {_num(r.pointing)} | {_num(r.peak_on_border)} | {r.sits_on} |")
    lines += ["", f"The claim holds for {held} of {claimed} architectures with a claim ({method}). *Sits on* "
              "compares the heat shares with their chance levels; the pointing game and the peaks on the border "
              "say where each map's single hottest pixel lands, against the same chance levels."]
    return "\n".join(lines) + "\n"


def evaluate_location(model: LoadedModel, data_dir: Path, *, split: str | None = "test",
                      methods: Sequence[str] = METHODS, band: float = BORDER_BAND,
                      on_progress: OnProgress | None = None,
                      should_stop: ShouldStop | None = None) -> list[LocationRow]:
    """:func:`location_sweep` of a loaded model over the tumor ROIs of one split of a
    folder data set (at the model's input size, its lesion classes as targets)."""

    ds = FolderDataset.open(data_dir)
    arrays = load_arrays(ds, ds.subset(split), model.input_hw, model.channels)
    return location_sweep(model.gradients(), arrays, methods=methods, positives=model.positives, band=band,
                          on_progress=on_progress, should_stop=should_stop)
