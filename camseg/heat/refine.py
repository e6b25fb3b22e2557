"""Refine heatmap-thresholded masks from the image itself.

A class-activation map is blurry, often offset from the lesion and larger than it,
so the mask thresholded from it (:mod:`camseg.heat.masks`) follows the heat, not the
lesion's edge. Each refiner here keeps the mask's idea of *where* the lesion is and
lets the image's intensities decide *where it ends*:

* ``crf``: a fully connected CRF with Gaussian edge potentials solved by mean-field
  inference (Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with
  Gaussian Edge Potentials", NeurIPS 2011), here over a local window in plain torch.
  The unary is the heatmap calibrated to a foreground probability by a sigmoid
  (:func:`calibrate`), centred by default on the mask's own threshold;
* ``randomwalk``: the random walker (Grady, "Random Walks for Image Segmentation",
  IEEE TPAMI 28(11), 2006) from foreground and background seeds;
* ``watershed``: a seeded (marker-controlled) watershed of the gradient magnitude
  (Beucher & Meyer, "The Morphological Approach to Segmentation: The Watershed
  Transformation", 1993);
* ``grabcut``: GrabCut (Rother, Kolmogorov & Blake, "GrabCut: Interactive Foreground
  Extraction using Iterated Graph Cuts", SIGGRAPH 2004), initialised from the seeds.

Seeds, shared by the seeded methods (:func:`seeds`): foreground where the mask is and
the heat is near the mask's peak; background outside the mask where the heat is low
or far from the mask. In between the method decides. Every method keeps an empty
mask empty (the classifier gate's decision stands) and returns a mask unchanged when
it has no foreground or no background seed to work from.

>>> import torch
>>> images = torch.zeros(1, 8, 8)
>>> heat = torch.zeros(1, 8, 8)
>>> masks = torch.zeros(1, 8, 8, dtype=torch.bool)
>>> refine_masks(images, heat, masks, "watershed").any().item()  # gated: stays empty
False
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, fields
from enum import StrEnum
from types import ModuleType
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from camseg.core.errors import InvalidInputError, UnsupportedError
from camseg.core.types import BoolArray, FloatArray

logger = logging.getLogger(__name__)



class Refiner(StrEnum):
    """The mask refinement methods (see the module docstring)."""

    NONE = "none"
    CRF = "crf"
    RANDOM_WALK = "randomwalk"
    WATERSHED = "watershed"
    GRABCUT = "grabcut"


REFINERS: tuple[str, ...] = tuple(r.value for r in Refiner)


def parse_refiner(name: str | Refiner) -> Refiner:
    """``"crf"`` (any case, surrounding blanks ignored) to :class:`Refiner`.

    Raises :class:`InvalidInputError` naming the choices on anything else.
    """
    if isinstance(name, Refiner):
        return name
    text = str(name).strip().lower()
    try:
        return Refiner(text)
    except ValueError:
        raise InvalidInputError(f"unknown refiner {name!r}: use one of {', '.join(REFINERS)}") from None


WORKING_PIXELS = 1024 * 1024
"""The default working resolution of every refiner (:attr:`RefineParams.max_pixels`)."""

WORKING_BYTES_PER_PIXEL: dict[Refiner, int] = {
    Refiner.NONE: 0,
    # logit, q, its padded copy, the message, the total, the image and its padded copy
    # (float32), with the kernel counted apart (CRF_KERNEL_BYTES)
    Refiner.CRF: 40,
    # scikit-image's Laplacian (float64 data, int32 indices, ~5 entries a pixel, twice
    # while it is built), the conjugate gradient's vectors and the labels
    Refiner.RANDOM_WALK: 260,
    # the smoothed image, the float64 Sobel gradient, int32 markers and labels, the
    # queue's entries
    Refiner.WATERSHED: 56,
    # the RGB uint8 copy, the labels and OpenCV's graph (~9 edges a pixel)
    Refiner.GRABCUT: 160,
}
"""Bytes each refiner holds per pixel of its working resolution, at its peak."""

CRF_KERNEL_BYTES = 96 * 1024 * 1024
"""The dense CRF's pairwise kernel held at once: an image is refined in bands of rows (of
columns where it is wider than tall) of at most this much kernel (see :func:`_crf`)."""


@dataclass(frozen=True)
class RefineParams:
    """Seed levels and per-method settings; the defaults suit 64-256 px ROIs.

    Lengths in pixels are for the image as given; intensities are on the [0, 1] scale.
    """

    fg: float = 0.8
    """Foreground seeds: inside the mask where heat >= ``fg`` times the mask's peak heat
    (= ``fg`` on maps normalised to peak 1). In (0, 1]."""
    bg: float = 0.15
    """Background seeds: outside the mask where heat <= ``bg``. In [0, 1)."""
    band: float = 0.05
    """Background seeds also: farther than ``band`` times the shorter image side
    (at least 1 px) from the mask, whatever the heat there. In (0, 1]."""
    smooth_sigma: float = 1.0
    """Gaussian sigma (px) that smooths the image for the random walker, the watershed's
    gradient and GrabCut; 0 turns it off."""
    crf_centre: float | None = None
    """CRF calibration: the heat where the foreground probability is 1/2; ``None``: each
    mask's own threshold (its lowest heat), so the CRF moves the mask's edge rather than
    re-thresholding the map. A fixed level (e.g. 0.35) suits maps whose scale is known;
    below the mask's threshold it grows the mask, above it shrinks it."""
    crf_slope: float = 12.0
    """CRF calibration: p(fg) = sigmoid(crf_slope * (heat - centre))."""
    crf_radius: int = 6
    """CRF pairwise window radius (px): each pixel talks to a (2r+1)^2 neighbourhood."""
    crf_appearance_weight: float = 1.0
    """CRF weight of the appearance (bilateral) kernel."""
    crf_appearance_xy: float = 3.0
    """CRF appearance kernel spatial sigma (px)."""
    crf_appearance_intensity: float = 0.05
    """CRF appearance kernel intensity sigma (on the [0, 1] scale)."""
    crf_smoothness_weight: float = 0.3
    """CRF weight of the smoothness (spatial-only) kernel."""
    crf_smoothness_xy: float = 1.5
    """CRF smoothness kernel spatial sigma (px)."""
    crf_iterations: int = 8
    """Mean-field iterations."""
    rw_beta: float = 1000.0
    """Random walker edge penalty (scikit-image's ``beta``): larger stops at weaker edges."""
    rw_mode: Literal["cg_j", "bf"] = "cg_j"
    """Random walker solver: Jacobi-preconditioned conjugate gradient or a direct solve."""
    grabcut_iterations: int = 5
    """GrabCut iterations."""
    seed: int = 0
    """Seed of OpenCV's RNG (GrabCut's k-means initialisation), for determinism."""
    max_pixels: int = WORKING_PIXELS
    """Working resolution: an image of more pixels is refined at a size of at most this
    many (image and heat area-averaged, mask sampled), and the refined mask is brought
    back to the image's size (nearest). Lengths above (radii, sigmas) are then in
    working pixels. Bounds every refiner's memory (:func:`refine_bytes`)."""

    def __post_init__(self) -> None:
        checks = {
            "fg": 0.0 < self.fg <= 1.0,
            "bg": 0.0 <= self.bg < 1.0,
            "band": 0.0 < self.band <= 1.0,
            "smooth_sigma": self.smooth_sigma >= 0.0,
            "crf_centre": self.crf_centre is None or 0.0 <= self.crf_centre <= 1.0,
            "crf_slope": self.crf_slope > 0.0,
            "crf_radius": 1 <= self.crf_radius <= 16,
            "crf_appearance_weight": self.crf_appearance_weight >= 0.0,
            "crf_appearance_xy": self.crf_appearance_xy > 0.0,
            "crf_appearance_intensity": self.crf_appearance_intensity > 0.0,
            "crf_smoothness_weight": self.crf_smoothness_weight >= 0.0,
            "crf_smoothness_xy": self.crf_smoothness_xy > 0.0,
            "crf_iterations": self.crf_iterations >= 1,
            "rw_beta": self.rw_beta > 0.0,
            "rw_mode": self.rw_mode in ("cg_j", "bf"),
            "grabcut_iterations": self.grabcut_iterations >= 1,
            "max_pixels": self.max_pixels >= 64 * 64,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name in bad)
            raise InvalidInputError(f"bad refine parameters: {values}")


def refine_masks(
    images: Tensor,
    heatmaps: Tensor,
    masks: Tensor,
    method: Refiner | str,
    *,
    params: RefineParams | None = None,
) -> Tensor:
    """Refine ``masks`` ``(N, H, W)`` bool from ``images`` and ``heatmaps`` ``(N, H, W)``.

    ``images`` are grayscale in [0, 1]; ``heatmaps`` in [0, 1]. Returns a bool tensor of
    the masks' shape on the masks' device.

    Edge cases: ``none`` returns ``masks`` itself; an empty mask stays empty for every
    method; a mask with no foreground or no background seed (:func:`seeds`; e.g. one
    that covers nearly the whole image) comes back unchanged; ``N == 0`` returns an
    empty result. Shapes are checked before any work (:class:`InvalidInputError`), and
    so is the method name; ``grabcut`` raises :class:`UnsupportedError` when OpenCV
    is not installed.
    """
    refiner = parse_refiner(method)
    if images.ndim != 3 or heatmaps.shape != images.shape or masks.shape != images.shape:
        raise InvalidInputError(
            "images, heatmaps and masks must share one (N, H, W) shape, got "
            f"{tuple(images.shape)}, {tuple(heatmaps.shape)} and {tuple(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        raise InvalidInputError(f"masks must be bool, got {masks.dtype}")
    p = params if params is not None else RefineParams()
    if refiner is Refiner.NONE:
        return masks
    keep = masks.flatten(1).any(1)
    if not bool(keep.any()):
        return masks.clone()
    h, w = masks.shape[-2:]
    size = working_size((h, w), p.max_pixels)
    if size != (h, w):
        # a bounded working resolution: image and heat area-averaged, the mask sampled
        # at the working pixels' centres; the refined mask comes back by nearest neighbour
        images = F.interpolate(images.float()[:, None], size=size, mode="area")[:, 0]
        heatmaps = F.interpolate(heatmaps.float()[:, None], size=size, mode="area")[:, 0]
        masks = masks[:, _nearest(h, size[0])][:, :, _nearest(w, size[1])]
    if refiner is Refiner.CRF:
        out = _crf(images, heatmaps, masks, p)
    else:
        out = _per_image(images, heatmaps, masks, refiner, p)
    if size != (h, w):
        out = out[:, _nearest(size[0], h)][:, :, _nearest(size[1], w)]
    # the classifier gate's empty masks stand, whatever the image says
    out = out & keep[:, None, None]
    logger.debug("refined %d of %d masks with %s", int(keep.sum()), masks.shape[0], refiner.value)
    return out


def working_size(shape: tuple[int, int], max_pixels: int = WORKING_PIXELS) -> tuple[int, int]:
    """The size an image of ``shape`` is refined at: itself when it has at most
    ``max_pixels`` pixels, else scaled down, aspect kept, to at most that many.

    >>> working_size((4096, 4096))
    (1024, 1024)
    >>> working_size((300, 200))
    (300, 200)
    >>> working_size((2, 8 * 1024 * 1024))
    (1, 1048576)
    """
    h, w = int(shape[0]), int(shape[1])
    if h * w <= max_pixels:
        return h, w
    f = math.sqrt(max_pixels / (h * w))
    wh, ww = max(1, math.floor(h * f)), max(1, math.floor(w * f))
    if wh * ww > max_pixels:  # a side that scaled below one pixel stays one; the other gives way
        return (1, max_pixels) if wh == 1 else (max_pixels, 1)
    return wh, ww


def refine_bytes(method: Refiner | str, shape: tuple[int, int], params: RefineParams | None = None) -> int:
    """Bytes :func:`refine_masks` allocates, at its peak, to refine one image of ``shape``:
    its working-resolution copies and the method's own (:data:`WORKING_BYTES_PER_PIXEL`;
    the CRF's kernel band, at most :data:`CRF_KERNEL_BYTES`) plus the refined mask at the
    image's size. Budgets charge this before the work."""
    refiner = parse_refiner(method)
    if refiner is Refiner.NONE:
        return 0
    p = params if params is not None else RefineParams()
    h, w = int(shape[0]), int(shape[1])
    wh, ww = working_size((h, w), p.max_pixels)
    small = wh * ww
    copies = 9 * small if (wh, ww) != (h, w) else 0  # image and heat (float32) and mask at working size
    own = WORKING_BYTES_PER_PIXEL[refiner] * small
    if refiner is Refiner.CRF:
        k = (2 * p.crf_radius + 1) ** 2 - 1
        across, rows, _ = _crf_bands(wh, ww, p)
        own += 4 * k * across * rows
    return copies + own + 2 * h * w


def _nearest(n: int, m: int) -> Tensor:
    """Indices of ``m`` samples of ``n`` at the samples' centres (nearest neighbour)."""
    return ((torch.arange(m, dtype=torch.float64) + 0.5) * (n / m)).long().clamp_(0, n - 1)


def seeds(heatmap: Tensor, mask: Tensor, params: RefineParams | None = None) -> tuple[Tensor, Tensor]:
    """Foreground and background seeds ``(fg, bg)`` of masks ``(N, H, W)``, bool.

    Foreground: inside the mask, heat >= ``params.fg`` times the mask's peak heat.
    Background: outside the mask, and heat <= ``params.bg`` or farther than
    ``params.band`` of the shorter side from the mask (Chebyshev distance, by dilation).
    The two never overlap. An empty mask has no seeds of either kind.
    """
    p = params if params is not None else RefineParams()
    heat = heatmap.float()
    m = mask.bool()
    peak = torch.where(m, heat, torch.full_like(heat, -math.inf)).flatten(1).amax(1)
    fg = m & (heat >= (p.fg * peak)[:, None, None])
    reach = max(1, round(p.band * min(m.shape[-2:])))
    near = F.max_pool2d(m[:, None].float(), 2 * reach + 1, stride=1, padding=reach)[:, 0] > 0
    bg = ~m & ((heat <= p.bg) | ~near) & m.flatten(1).any(1)[:, None, None]
    return fg, bg


# ------------------------------------------------------------------ dense CRF
def calibrate(heatmaps: Tensor, masks: Tensor, params: RefineParams | None = None) -> Tensor:
    """Foreground probability of heatmaps ``(N, H, W)``: ``sigmoid(slope * (heat - centre))``.

    Raw CAM values are not probabilities (a dense CRF on them over-trusts the blurry
    tail); the sigmoid puts p = 1/2 at ``params.crf_centre``, or, when that is ``None``,
    at each mask's lowest heat (an empty mask: at 1, so nothing is likely foreground).
    """
    p = params if params is not None else RefineParams()
    heat = heatmaps.float()
    if p.crf_centre is None:
        inside = torch.where(masks.bool(), heat, torch.full_like(heat, math.inf)).flatten(1).amin(1)
        centre = torch.where(torch.isfinite(inside), inside, torch.ones_like(inside))[:, None, None]
    else:
        centre = torch.full((heat.shape[0], 1, 1), p.crf_centre, dtype=heat.dtype, device=heat.device)
    return torch.sigmoid(p.crf_slope * (heat - centre))


def _crf(images: Tensor, heatmaps: Tensor, masks: Tensor, p: RefineParams) -> Tensor:
    """Mean-field dense CRF (Krähenbühl & Koltun 2011, Alg. 1) over a local window.

    Potts pairwise term with kernel ``w_a exp(-|dx|^2/2 a^2 - |dI|^2/2 b^2) +
    w_s exp(-|dx|^2/2 g^2)`` restricted to ``|dx|_inf <= crf_radius``. The kernel of
    ``(2r+1)^2 - 1`` offsets a pixel is held for one band of rows (columns, for an image
    wider than tall) at a time, at most :data:`CRF_KERNEL_BYTES`: after ``t`` iterations a
    pixel's marginal depends only on pixels within ``t r`` rows, so each band is solved with
    a margin of ``crf_iterations * crf_radius`` rows on either side and its own rows kept:
    the result equals the whole image's solved at once.
    """
    n, h, w = masks.shape
    k = (2 * p.crf_radius + 1) ** 2 - 1
    halo = p.crf_iterations * p.crf_radius
    _, band, dim = _crf_bands(h, w, p)
    along = h if dim == 1 else w
    if band >= along:
        # small images (ROIs): whole, several at once within the same kernel bound
        chunk = max(1, CRF_KERNEL_BYTES // (4 * k * h * w))
        with torch.no_grad():
            parts = [_crf_band(images[s : s + chunk].float(),
                               calibrate(heatmaps[s : s + chunk], masks[s : s + chunk], p), p)
                     for s in range(0, n, chunk)]
        return torch.cat(parts).to(masks.device)
    rows = band - 2 * halo  # the rows a band keeps
    out = torch.empty((n, h, w), dtype=torch.bool)
    with torch.no_grad():
        for i in range(n):
            image = images[i : i + 1].float()
            prob = calibrate(heatmaps[i : i + 1], masks[i : i + 1], p)
            for top in range(0, along, rows):
                lo, hi = max(0, top - halo), min(along, top + rows + halo)
                keep = min(rows, along - top)
                solved = _crf_band(image.narrow(dim, lo, hi - lo), prob.narrow(dim, lo, hi - lo), p)
                out[i : i + 1].narrow(dim, top, keep).copy_(solved.narrow(dim, top - lo, keep))
    return out.to(masks.device)


def _crf_bands(h: int, w: int, p: RefineParams) -> tuple[int, int, int]:
    """How :func:`_crf` cuts an ``h`` x ``w`` image: ``(across, band, dim)``, bands of
    ``band`` lines (margins included) of ``across`` pixels each, cut along dimension ``dim``
    of an ``(N, H, W)`` tensor (1: bands of rows, 2: of columns). Bands run across the
    shorter side, so that a wide image's band holds as few pixels as a tall one's; a band
    keeps at least one line besides its margins, even where that passes the kernel bound."""
    k = (2 * p.crf_radius + 1) ** 2 - 1
    halo = p.crf_iterations * p.crf_radius
    across, along, dim = (w, h, 1) if h >= w else (h, w, 2)
    band = max(2 * halo + 1, CRF_KERNEL_BYTES // (4 * k * across))
    return across, min(band, along), dim


def _crf_band(images: Tensor, prob: Tensor, p: RefineParams) -> Tensor:
    n, h, w = images.shape
    r = p.crf_radius
    prob = prob.clamp(1e-4, 1 - 1e-4)
    # unary difference U_bg - U_fg = logit(p); the foreground marginal is a sigmoid
    # of the energy difference since there are two labels
    logit = torch.log(prob) - torch.log1p(-prob)

    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    padded = F.pad(images, (r, r, r, r))
    inside = F.pad(torch.ones_like(images), (r, r, r, r))
    kernel = torch.empty(len(offsets), n, h, w, dtype=images.dtype, device=images.device)
    for i, (dy, dx) in enumerate(offsets):
        neighbour = padded[:, r + dy : r + dy + h, r + dx : r + dx + w]
        d2 = float(dy * dy + dx * dx)
        appearance = torch.exp(
            -d2 / (2 * p.crf_appearance_xy**2) - (neighbour - images) ** 2 / (2 * p.crf_appearance_intensity**2)
        )
        smoothness = math.exp(-d2 / (2 * p.crf_smoothness_xy**2))
        kernel[i] = (p.crf_appearance_weight * appearance + p.crf_smoothness_weight * smoothness) * inside[
            :, r + dy : r + dy + h, r + dx : r + dx + w
        ]
    total = kernel.sum(0)  # the message when every neighbour is certain of one label

    q = torch.sigmoid(logit)
    for _ in range(p.crf_iterations):
        qp = F.pad(q, (r, r, r, r))
        to_fg = torch.zeros_like(q)
        for i, (dy, dx) in enumerate(offsets):
            to_fg.addcmul_(kernel[i], qp[:, r + dy : r + dy + h, r + dx : r + dx + w])
        # Potts: each label pays for the neighbours' mass on the other one,
        # E_fg - E_bg = -logit + (total - to_fg) - to_fg
        q = torch.sigmoid(logit + 2 * to_fg - total)
    return q >= 0.5


# ------------------------------------------------------------------ seeded methods
def _per_image(images: Tensor, heatmaps: Tensor, masks: Tensor, refiner: Refiner, p: RefineParams) -> Tensor:
    if refiner is Refiner.GRABCUT:
        _opencv()  # fail before any work
    fg, bg = seeds(heatmaps, masks, p)
    imgs = images.detach().float().cpu().numpy()
    fgs = fg.cpu().numpy()
    bgs = bg.cpu().numpy()
    originals = masks.cpu().numpy()
    out = originals.copy()
    for i in range(imgs.shape[0]):
        if not fgs[i].any() or not bgs[i].any():
            continue
        if refiner is Refiner.RANDOM_WALK:
            out[i] = _random_walk(imgs[i], fgs[i], bgs[i], p)
        elif refiner is Refiner.WATERSHED:
            out[i] = _watershed(imgs[i], fgs[i], bgs[i], p)
        else:
            out[i] = _grabcut(imgs[i], originals[i], fgs[i], bgs[i], p)
    return torch.from_numpy(out).to(masks.device)


def _smooth(image: FloatArray, sigma: float) -> FloatArray:
    if sigma <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma, mode="nearest").astype(np.float32)


def _markers(fg: BoolArray, bg: BoolArray) -> npt.NDArray[np.int32]:
    """Labels 1 = background seed, 2 = foreground seed, 0 = undecided."""
    markers = np.zeros(fg.shape, np.int32)
    markers[bg] = 1
    markers[fg] = 2
    return markers


def _random_walk(image: FloatArray, fg: BoolArray, bg: BoolArray, p: RefineParams) -> BoolArray:
    """Random walker (Grady 2006): a pixel is foreground when a walk from it reaches a
    foreground seed first. No undecided pixel: the foreground seeds themselves."""
    from skimage.segmentation import random_walker  # skimage.segmentation costs ~1 s to import: on first use

    markers = _markers(fg, bg)
    if (markers > 0).all():
        return fg.copy()
    with warnings.catch_warnings():
        # the iterative solver's probabilities may overshoot [0, 1] by its tolerance; the
        # labels (the most probable seed) are not affected
        warnings.filterwarnings("ignore", message="The probability range is outside", category=UserWarning)
        labels = random_walker(_smooth(image, p.smooth_sigma), markers, beta=p.rw_beta, mode=p.rw_mode, tol=1e-4)
    result: BoolArray = labels == 2
    return result


def _watershed(image: FloatArray, fg: BoolArray, bg: BoolArray, p: RefineParams) -> BoolArray:
    """Seeded watershed of the Sobel gradient magnitude of the smoothed image: the seeds
    flood until the fronts meet on the strongest edge between them."""
    # skimage.filters and .segmentation cost ~1 s to import: on first use
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    gradient = sobel(_smooth(image, p.smooth_sigma))
    result: BoolArray = watershed(gradient, _markers(fg, bg)) == 2
    return result


GMM_COMPONENTS = 5  # OpenCV's GrabCut models each side with a 5-component GMM


def _opencv() -> ModuleType:
    """OpenCV, imported on first use so that importing this module stays light."""
    try:
        import cv2
    except ImportError:
        raise UnsupportedError("the grabcut refiner needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def _grabcut(image: FloatArray, mask: BoolArray, fg: BoolArray, bg: BoolArray, p: RefineParams) -> BoolArray:
    """GrabCut (Rother et al. 2004) from the seeds: GC_FGD at foreground seeds,
    GC_PR_FGD in the rest of the mask, GC_PR_BGD between the mask and the background
    seeds, GC_BGD at the background seeds. Too few pixels on one side for the colour
    model (fewer than the GMM's components): the mask unchanged."""
    cv2 = _opencv()
    if mask.sum() < GMM_COMPONENTS or (~mask).sum() < GMM_COMPONENTS:
        return mask.copy()
    gc = np.full(mask.shape, cv2.GC_PR_BGD, np.uint8)
    gc[mask] = cv2.GC_PR_FGD
    gc[fg] = cv2.GC_FGD
    gc[bg] = cv2.GC_BGD
    gray = np.clip(np.rint(_smooth(image, p.smooth_sigma) * 255.0), 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(p.seed)  # GrabCut's k-means draws from OpenCV's per-thread RNG
    # the rectangle is ignored under GC_INIT_WITH_MASK
    cv2.grabCut(rgb, gc, (0, 0, 0, 0), bgd_model, fgd_model, p.grabcut_iterations, cv2.GC_INIT_WITH_MASK)
    result: BoolArray = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    return result
