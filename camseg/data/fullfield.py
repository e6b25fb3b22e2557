"""Synthetic full-field mammograms: a breast on a dark background, with exact tumor masks.

The field of view is a breast seen cranio-caudally: a half-ellipse against the left or
right edge (the chest wall; left edge = left breast), its outline perturbed by a few low
harmonics and a droop, with a smooth falloff to the background over a skin-line band.
Inside it is the ROI generator's tissue (:mod:`camseg.data.synth`) at the same pixel
scale: power-law texture and density fields of the same ``beta`` and standard deviations,
and the same quantum noise. A ROI's fields are normalised over the ROI, so they carry no
structure coarser than a ROI; here each field is made of ROI-sized tiles of
:func:`~camseg.data.synth.power_law_noise`, overlapping by half and blended with
sine windows whose squares sum to one (the variance is kept everywhere), then scaled so
that the mean variance within ROI-sized windows is one, as it is in every ROI.

A share of images is normal; the others hold 1 to ``max_masses`` masses drawn from the
ROI generator's own distribution (:func:`~camseg.data.synth.draw_mass`: radius as a
fraction of the ROI side ``roi_size``, lobulation, spicules, edge, contrast), each placed
uniformly at random where its whole mask lies in the tissue inside the skin-line band,
in the image and clear of the other masses. The mask is the union of the masses' masks.

Memory grows linearly with the image, not with ``n``: images are made one at a time and
written as they are made. Making one takes about 9 bytes a pixel (two float32 fields and
the mask; the skin line and the quantum noise go in bands of rows), writing it about 10
more (the 16-bit copy and its PNG; with DICOM, the inverted copy and the RLE bytes).
Measured at 4096 x 5120 on one core: 5.6 s and 0.25 GB peak RSS to make an image; with
its PNG, 7 s and 0.42 GB; with the DICOM instance too, 18 s and 0.49 GB (the RLE encoder
is pydicom's own). Everything is deterministic from the seed; image ``i`` depends on the
seed and ``i`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.uid import generate_uid

from camseg.core.errors import InvalidInputError
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.core.types import BoolArray, FloatArray
from camseg.data.folder import CLASSES, Record, write_dataset
from camseg.data.synth import Mass, SynthConfig, draw_mass, power_law_noise, split_ids
from camseg.io.dicom import MammogramIds, mammogram, to_bytes

MIN_SIDE = 128
MAX_SIDE = 5120
MAX_PIXELS = 4096 * 5120
FORMATS = ("png", "dicom", "both")
_ROI = SynthConfig()
_BAND_ROWS = 512  # rows of the skin-line weight and the quantum noise made at once


@dataclass(frozen=True)
class FullFieldConfig:
    """Parameters of the generator; recorded in ``dataset.json``.

    The tissue and mass parameters default to :class:`~camseg.data.synth.SynthConfig`'s:
    the whole-image task is the ROI task at the same scale, not an easier one. Mass radii
    are fractions of ``roi_size`` pixels. ``pixel_spacing_mm`` (0.2 mm, a downsampled
    digital mammogram: 1280 x 1024 pixels is 256 x 205 mm) only goes into the DICOM
    instances and ``dataset.json``.
    """

    n: int = 100
    height: int = 1280
    width: int = 1024
    seed: int = 0
    normal_fraction: float = 0.3
    max_masses: int = 3
    roi_size: int = 64
    pixel_spacing_mm: float = 0.2
    background: float = 0.03
    beta: float = _ROI.beta
    texture_std: float = _ROI.texture_std
    density_std: float = _ROI.density_std
    quantum_noise: float = _ROI.quantum_noise
    radius_range: tuple[float, float] = _ROI.radius_range
    contrast_range: tuple[float, float] = _ROI.contrast_range
    subtle_fraction: float = _ROI.subtle_fraction
    spiculated_fraction: float = _ROI.spiculated_fraction
    edge_width_range: tuple[float, float] = _ROI.edge_width_range
    split: tuple[float, float, float] = _ROI.split

    def validate(self) -> None:
        if self.n < 2:
            raise InvalidInputError(f"--n must be at least 2, got {self.n}")
        for name, side in (("height", self.height), ("width", self.width)):
            if not MIN_SIDE <= side <= MAX_SIDE:
                raise InvalidInputError(f"--size: {name} must be within {MIN_SIDE}..{MAX_SIDE} pixels, got {side}")
        if self.height * self.width > MAX_PIXELS:
            raise InvalidInputError(f"--size: {self.height}x{self.width} is more pixels than 4096x5120 ({MAX_PIXELS})")
        if not (16 <= self.roi_size <= 512 and self.roi_size % 2 == 0):
            raise InvalidInputError(f"--roi-size must be an even number within 16..512, got {self.roi_size}")
        if min(self.height, self.width) < 4 * self.roi_size:
            raise InvalidInputError(f"--size: {self.height}x{self.width} is too small for --roi-size "
                                    f"{self.roi_size} (each side at least 4 ROIs)")
        if not 0.0 <= self.normal_fraction <= 1.0:
            raise InvalidInputError(f"--normal-fraction must be within 0..1, got {self.normal_fraction}")
        if not 1 <= self.max_masses <= 10:
            raise InvalidInputError(f"--max-masses must be within 1..10, got {self.max_masses}")
        if not 0.0 < self.pixel_spacing_mm <= 1.0:
            raise InvalidInputError(f"--pixel-spacing must be within (0, 1] mm, got {self.pixel_spacing_mm}")

    def roi_config(self) -> SynthConfig:
        """The ROI generator's configuration whose masses and tissue these are."""
        shared = {f.name for f in fields(SynthConfig)} & {f.name for f in fields(self)}
        return SynthConfig(size=self.roi_size, **{k: getattr(self, k) for k in shared if k not in ("n", "seed")})


# ------------------------------------------------------------------ the breast
@dataclass(frozen=True)
class Breast:
    """The breast's outline: chest wall on ``side`` (``L``: the left edge), centre row
    ``cy``, depth ``a`` and half-height ``b`` (pixels), outline harmonics ``(k, amplitude,
    phase)``, a droop of the tip (fraction of ``b``) and the skin-line band (fraction of
    the normalised radius)."""

    side: str
    width: int
    cy: float
    a: float
    b: float
    harmonics: tuple[tuple[int, float, float], ...]
    droop: float
    band: float

    @classmethod
    def draw(cls, rng: np.random.Generator, height: int, width: int) -> Breast:
        side = "L" if rng.random() < 0.5 else "R"
        cy = height * (0.5 + rng.uniform(-0.04, 0.04))
        a = width * rng.uniform(0.55, 0.85)
        b = height * rng.uniform(0.36, 0.46)
        harmonics = tuple((k, float(rng.uniform(0.0, 0.03)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 4))
        return cls(side, width, float(cy), float(a), float(b), harmonics, float(rng.uniform(0.0, 0.15)),
                   float(rng.uniform(0.05, 0.1)))

    def radius(self, rows: npt.NDArray[Any], cols: npt.NDArray[Any]) -> FloatArray:
        """The normalised radius at ``rows`` x ``cols`` (broadcast together): below 1
        inside the outline, float32."""
        depth = (cols + 0.5 if self.side == "L" else self.width - 0.5 - cols).astype(np.float32) / self.a
        dy = (rows.astype(np.float32) - self.cy) / self.b - self.droop * depth**2
        theta = np.arctan2(dy, depth)
        outline = np.ones_like(theta)
        for k, amplitude, phase in self.harmonics:
            outline += amplitude * np.cos(k * theta + phase)
        return np.asarray(np.hypot(depth, dy) / outline, dtype=np.float32)

    def weight(self, rows: npt.NDArray[Any], cols: npt.NDArray[Any]) -> FloatArray:
        """Tissue weight: 1 inside the skin-line band, falling smoothly to 0 at the outline."""
        t = np.clip((1.0 - self.radius(rows, cols)) / self.band, 0.0, 1.0)
        return np.asarray(t * t * (3.0 - 2.0 * t), dtype=np.float32)

    def info(self) -> dict[str, Any]:
        return {"side": self.side, "centre_row": self.cy, "depth": self.a, "half_height": self.b,
                "droop": self.droop, "skin_band": self.band}


# ------------------------------------------------------------------ tissue
def _window(size: int) -> FloatArray:
    """A 2-D sine window: tiles of this size at half-size steps have squared weights
    summing to one at every pixel."""
    w = np.sin(np.pi * (np.arange(size) + 0.5) / size).astype(np.float32)
    return w[:, None] * w[None, :]


def tiled_noise(rng: np.random.Generator, height: int, width: int, tile: int, beta: float) -> FloatArray:
    """A ``(height, width)`` power-law field made of ``tile``-sized fields of
    :func:`~camseg.data.synth.power_law_noise` at half-tile steps, sine-blended, scaled to
    a mean variance of one within ``tile``-sized windows. One row of tiles is made at a
    time: memory is the field (float32) plus one row of tiles."""
    half = tile // 2
    win = _window(tile)
    out = np.zeros((height, width), dtype=np.float32)
    xs = range(-half, width, half)
    for y0 in range(-half, height, half):
        tiles = power_law_noise(rng, len(xs), tile, beta)
        ya, yb = max(y0, 0), min(y0 + tile, height)
        for k, x0 in enumerate(xs):
            xa, xb = max(x0, 0), min(x0 + tile, width)
            out[ya:yb, xa:xb] += (tiles[k] * win)[ya - y0 : yb - y0, xa - x0 : xb - x0]
    ny, nx = height // tile, width // tile
    variances = [out[i * tile : (i + 1) * tile, : nx * tile].reshape(tile, nx, tile).var(axis=(0, 2), dtype=np.float64)
                 for i in range(ny)]
    out /= np.float32(math.sqrt(float(np.mean(variances))))
    return out


def local_std(image: FloatArray, window: int, inside: BoolArray | None = None) -> FloatArray:
    """Standard deviations of ``image`` in the non-overlapping ``window``-sized squares
    (all of whose pixels are ``inside``, where given)."""
    ny, nx = image.shape[0] // window, image.shape[1] // window
    blocks = image[: ny * window, : nx * window].reshape(ny, window, nx, window)
    stds = blocks.std(axis=(1, 3), dtype=np.float64)
    if inside is not None:
        full = inside[: ny * window, : nx * window].reshape(ny, window, nx, window).all(axis=(1, 3))
        stds = stds[full]
    return np.asarray(stds, dtype=np.float32).ravel()


# ------------------------------------------------------------------ masses
def _place(rng: np.random.Generator, mass: Mass, breast: Breast, shape: tuple[int, int], taken: BoolArray,
           tries: int = 2000) -> tuple[tuple[float, float], FloatArray, BoolArray, tuple[int, int, int, int]] | None:
    """A centre where the whole mask of ``mass`` lies in the image (one pixel in), in the
    tissue inside the skin-line band and two pixels clear of ``taken``; its profile, mask
    and patch ``(y0, y1, x0, x1)``. None when ``tries`` centres all fail."""
    height, width = shape
    outer = mass.outer_radius + 1.0
    reach = math.ceil(mass.reach) + 1
    for _ in range(tries):
        cy, cx = rng.uniform(outer, height - 1 - outer), rng.uniform(outer, width - 1 - outer)
        if breast.radius(np.array([round(cy)]), np.array([round(cx)]))[0] > 1.0 - breast.band:
            continue
        iy, ix = round(cy), round(cx)
        ring = math.ceil(outer) + 2  # the mask and two pixels around it
        y0, y1, x0, x1 = max(iy - ring, 0), min(iy + ring + 1, height), max(ix - ring, 0), min(ix + ring + 1, width)
        _, mask = mass.render((cy, cx), (y0, y1), (x0, x1))
        ys, xs = np.nonzero(mask)
        if breast.radius(ys + y0, xs + x0).max() > 1.0 - breast.band:
            continue
        if taken[y0:y1, x0:x1].any():
            near = np.hypot(*np.meshgrid(np.arange(y0, y1) - cy, np.arange(x0, x1) - cx, indexing="ij"))
            if taken[y0:y1, x0:x1][near <= outer + 2].any():
                continue
        y0, y1, x0, x1 = max(iy - reach, 0), min(iy + reach + 1, height), max(ix - reach, 0), min(ix + reach + 1, width)
        profile, mask = mass.render((cy, cx), (y0, y1), (x0, x1))
        return (float(cy), float(cx)), profile, mask, (y0, y1, x0, x1)
    return None


def make_image(cfg: FullFieldConfig, index: int, tumor: bool) -> tuple[FloatArray, BoolArray, dict[str, Any]]:
    """Image ``index`` of the set: float32 in [0, 1], its mask, and what is in it (the
    breast's outline and each mass: centre, radius, box ``[y0, x0, y1, x1]`` of its mask,
    contrast, edge width, spiculated)."""
    rng = np.random.default_rng([cfg.seed, index])
    h, w = cfg.height, cfg.width
    roi = cfg.roi_config()
    breast = Breast.draw(rng, h, w)
    image = tiled_noise(rng, h, w, cfg.roi_size, cfg.beta)
    image *= np.float32(cfg.texture_std)
    density = tiled_noise(rng, h, w, cfg.roi_size, cfg.beta + 1.5)  # smooth low-frequency density
    density *= np.float32(cfg.density_std)
    image += density
    del density
    image += np.float32(rng.uniform(0.35, 0.6))
    mask = np.zeros((h, w), dtype=bool)
    masses: list[dict[str, Any]] = []
    count = int(rng.integers(1, cfg.max_masses + 1)) if tumor else 0
    for m in range(count):
        placed = None
        for _ in range(20 if m == 0 else 1):  # the first mass must fit: a mass too big for this breast is redrawn
            mass = draw_mass(rng, roi)
            placed = _place(rng, mass, breast, (h, w), mask)
            if placed is not None:
                break
        if placed is None:
            if m == 0:
                raise InvalidInputError(f"image {index}: no place for a mass in a {h}x{w} breast with --roi-size "
                                        f"{cfg.roi_size}; use a larger image or a smaller --roi-size")
            continue  # the breast is full: fewer masses
        centre, profile, patch, (y0, y1, x0, x1) = placed
        image[y0:y1, x0:x1] += profile
        mask[y0:y1, x0:x1] |= patch
        ys, xs = np.nonzero(patch)
        info: dict[str, Any] = dict(mass.info(centre))
        info["box"] = [int(ys.min() + y0), int(xs.min() + x0), int(ys.max() + y0 + 1), int(xs.max() + x0 + 1)]
        info["area"] = int(patch.sum())
        masses.append(info)
    cols = np.arange(w)
    bg = np.float32(cfg.background)
    for r0 in range(0, h, _BAND_ROWS):
        r1 = min(r0 + _BAND_ROWS, h)
        band = image[r0:r1]
        band -= bg
        band *= breast.weight(np.arange(r0, r1)[:, None], cols[None, :])
        band += bg
        band += np.float32(cfg.quantum_noise) * rng.standard_normal(band.shape, dtype=np.float32)
    np.clip(image, 0.0, 1.0, out=image)
    return image, mask, {"breast": breast.info(), "masses": masses}


def _labels(cfg: FullFieldConfig) -> npt.NDArray[np.int64]:
    rng = np.random.default_rng([cfg.seed, 2**31])
    labels = np.ones(cfg.n, dtype=np.int64)
    labels[: round(cfg.n * cfg.normal_fraction)] = 0
    rng.shuffle(labels)
    return labels


def synthesize_fullfield(out: Path, cfg: FullFieldConfig, *, fmt: str = "png", overwrite: bool = False,
                         on_progress: OnProgress | None = None, should_stop: ShouldStop | None = None) -> Path:
    """Generate the set and write it in the folder layout at ``out``, one image at a time.

    ``fmt``: ``png`` (``images/<id>.png``, 16-bit), ``dicom`` (``images/<id>.dcm``, DICOM MG
    instances, :func:`camseg.io.dicom.mammogram`; one patient and study per image) or
    ``both`` (PNG images and the instances under ``dicom/``). Masks are ``masks/<id>.png``
    (tumor images only). ``dataset.json`` records the parameters, ``roi_size``,
    ``pixel_spacing_mm`` and, per image, the breast and its masses.
    """
    cfg.validate()
    if fmt not in FORMATS:
        raise InvalidInputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    labels = _labels(cfg)
    splits = split_ids(labels, cfg.split, cfg.seed)
    width = max(4, len(str(cfg.n - 1)))
    ids = [f"mammo-{i:0{width}d}" for i in range(cfg.n)]
    tracker = Tracker("fullfield", cfg.n, on_progress=on_progress, should_stop=should_stop)
    meta: dict[str, Any] = {
        "name": "camseg-synthetic-mammo-fullfield",
        "generator": "camseg.data.fullfield",
        "classes": list(CLASSES),
        "parameters": asdict(cfg),
        "format": fmt,
        "roi_size": cfg.roi_size,
        "pixel_spacing_mm": cfg.pixel_spacing_mm,
        "breasts": {},
        "masses": {},
    }

    def records() -> Iterator[Record]:
        # meta is filled as the images are made: write_dataset writes dataset.json last
        for i, sid in enumerate(ids):
            image, mask, info = make_image(cfg, i, bool(labels[i]))
            meta["breasts"][sid] = info["breast"]
            if info["masses"]:
                meta["masses"][sid] = info["masses"]
            pixels = np.round(image * 65535).astype(np.uint16)
            del image
            files: tuple[tuple[str, bytes], ...] = ()
            if fmt != "png":
                uids = [_uid(cfg.seed, i, part) for part in ("study", "series", "instance")]
                ds = mammogram(pixels, spacing_mm=cfg.pixel_spacing_mm, laterality=info["breast"]["side"],
                               ids=MammogramIds(sid, uids[0], uids[1], uids[2]))
                files = ((f"{'images' if fmt == 'dicom' else 'dicom'}/{sid}.dcm", to_bytes(ds)),)
                del ds
            yield Record(id=sid, label=int(labels[i]), split=splits[i], image=pixels,
                         mask=mask if labels[i] else None, files=files, png=fmt != "dicom")
            tracker.advance(status=sid)

    return write_dataset(out, records(), meta, overwrite=overwrite)


def _uid(seed: int, index: int, part: str) -> str:
    """A UID under the 2.25 (UUID-derived) root, deterministic from the seed, the image and
    ``part``."""
    return str(generate_uid(prefix=None, entropy_srcs=["camseg.data.fullfield", str(seed), str(index), part]))
