"""Synthetic mammogram ROIs with exact tumor masks.

The background is power-law noise, P(f) ~ 1/f^beta with beta near 3, the standard
model of mammographic parenchyma (Burgess, Jacobson & Judy, Med. Phys. 28(4), 2001),
plus a smooth density field and mild quantum noise. Masses are lobulated blobs (a
radius perturbed by random harmonics), some spiculated, with a soft edge, a contrast
from subtle to obvious and a jittered centre. Normal ROIs are the same background
without a mass. Everything is deterministic from the seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import fft as sfft

from camseg.core.errors import InvalidInputError
from camseg.core.types import BoolArray, FloatArray
from camseg.data.folder import CLASSES, Record, write_dataset


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the generator; recorded in ``dataset.json``."""

    n: int = 2000
    size: int = 128
    seed: int = 0
    tumor_fraction: float = 0.5
    beta: float = 3.0
    texture_std: float = 0.085
    density_std: float = 0.06
    quantum_noise: float = 0.012
    radius_range: tuple[float, float] = (0.09, 0.22)  # fraction of the ROI side
    contrast_range: tuple[float, float] = (0.07, 0.32)  # added intensity at the core
    subtle_fraction: float = 0.3  # share of masses drawn from the low third of contrasts
    spiculated_fraction: float = 0.3
    edge_width_range: tuple[float, float] = (0.6, 3.0)  # pixels
    centre_jitter: float = 0.18  # fraction of the ROI side
    bit_depth: int = 8
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    extra: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.n < 2:
            raise InvalidInputError(f"--n must be at least 2, got {self.n}")
        if not 16 <= self.size <= 1024:
            raise InvalidInputError(f"--size must be within 16..1024, got {self.size}")
        if self.bit_depth not in (8, 16):
            raise InvalidInputError(f"--bit-depth must be 8 or 16, got {self.bit_depth}")
        if not 0.0 < self.tumor_fraction < 1.0:
            raise InvalidInputError("tumor_fraction must be within (0, 1)")


def power_law_noise(
    rng: np.random.Generator, n: int, size: int, beta: float, *, chunk: int = 256
) -> FloatArray:
    """``n`` zero-mean, unit-variance fields with power spectrum ~ 1/f^beta.

    Complex white noise is shaped in the frequency domain and brought back with one
    real inverse FFT per field, in chunks to stay in cache.
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radial = np.sqrt(fy**2 + fx**2)
    radial[0, 0] = np.inf  # no DC term: each field has zero mean
    amplitude = (radial ** (-beta / 2.0)).astype(np.float32)
    out = np.empty((n, size, size), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        spec = rng.standard_normal((m, size, size // 2 + 1), dtype=np.float32) + 1j * rng.standard_normal(
            (m, size, size // 2 + 1), dtype=np.float32
        )
        field_ = sfft.irfft2(spec * amplitude, s=(size, size), workers=-1)
        field_ -= field_.mean(axis=(1, 2), keepdims=True)
        field_ /= field_.std(axis=(1, 2), keepdims=True) + 1e-12
        out[start : start + m] = field_
    return out


@dataclass(frozen=True)
class Mass:
    """One mass's shape and contrast, drawn by :func:`draw_mass`, placed by :meth:`render`.

    Lengths are pixels. The boundary at angle ``t`` from the centre is
    ``radius * (1 + sum(a * cos(k * t + p)))`` over the lobulation harmonics ``(a, p)``,
    ``k = 2, 3, ...``; each spicule is a ray ``(angle, length)`` beyond it.
    """

    radius: float
    harmonics: tuple[tuple[float, float], ...]
    edge: float
    spicules: tuple[tuple[float, float], ...]
    contrast: float

    @property
    def spiculated(self) -> bool:
        return bool(self.spicules)

    @property
    def outer_radius(self) -> float:
        """The largest distance of the mask boundary from the centre."""
        return self.radius * (1.0 + sum(a for a, _ in self.harmonics))

    @property
    def reach(self) -> float:
        """A distance from the centre beyond which the profile is below ``exp(-10)`` of
        the contrast: the boundary, the longest spicule and ten edge widths."""
        return self.outer_radius + max((length for _, length in self.spicules), default=0.0) + 10.0 * self.edge

    def render(
        self, centre: tuple[float, float], rows: tuple[int, int], cols: tuple[int, int]
    ) -> tuple[FloatArray, BoolArray]:
        """The additive intensity profile and the exact mask over the pixel grid
        ``rows[0]:rows[1]`` x ``cols[0]:cols[1]`` (any size, the centre anywhere)."""
        yy = np.arange(*rows).astype(np.float32).astype(np.float64)[:, None]
        xx = np.arange(*cols).astype(np.float32).astype(np.float64)[None, :]
        dy, dx = np.broadcast_arrays(yy - float(centre[0]), xx - float(centre[1]))
        dist = np.hypot(dy, dx)
        theta = np.arctan2(dy, dx)
        boundary = np.ones_like(theta)
        for k, (amplitude, phase) in enumerate(self.harmonics, start=2):
            boundary += amplitude * np.cos(k * theta + phase)
        boundary *= self.radius
        body = 1.0 / (1.0 + np.exp(-(boundary - dist) / self.edge))
        dome = np.clip(1.0 - 0.35 * (dist / boundary) ** 2, 0.0, 1.0)
        profile = body * dome
        for angle, length in self.spicules:
            # distance of each pixel to the ray from the centre at this angle
            along = dx * math.cos(angle) + dy * math.sin(angle)
            across = np.abs(-dx * math.sin(angle) + dy * math.cos(angle))
            reach = (along > 0) & (along < boundary + length)
            fade = np.clip(1.0 - (along - boundary) / length, 0.0, 1.0)
            spicule = np.where(reach, np.exp(-(across**2) / 0.8) * fade, 0.0) * 0.55
            profile = np.maximum(profile, spicule)
        return (self.contrast * profile).astype(np.float32), dist <= boundary

    def info(self, centre: tuple[float, float]) -> dict[str, float]:
        return {
            "centre_y": float(centre[0]),
            "centre_x": float(centre[1]),
            "radius": float(self.radius),
            "contrast": float(self.contrast),
            "edge_width": float(self.edge),
            "spiculated": float(self.spiculated),
        }


def draw_mass(rng: np.random.Generator, cfg: SynthConfig) -> Mass:
    """A mass from the generator's distribution: radius a ``cfg.radius_range`` fraction of
    the ROI side ``cfg.size``, lobulation, edge width, spicules (``cfg.spiculated_fraction``
    of masses) and contrast (``cfg.subtle_fraction`` from the low third of the range)."""
    radius = rng.uniform(*cfg.radius_range) * cfg.size
    harmonics = []
    for k in range(2, 7):  # lobulation: a few random harmonics of the radius
        amplitude = rng.uniform(0.0, 0.16 / (k - 1) ** 0.5)
        harmonics.append((amplitude, rng.uniform(0, 2 * np.pi)))
    edge = rng.uniform(*cfg.edge_width_range)
    spicules = []
    if rng.random() < cfg.spiculated_fraction:
        for _ in range(int(rng.integers(6, 14))):
            angle = rng.uniform(0, 2 * np.pi)
            spicules.append((angle, radius * rng.uniform(0.6, 1.4)))
    lo, hi = cfg.contrast_range
    if rng.random() < cfg.subtle_fraction:
        contrast = rng.uniform(lo, lo + (hi - lo) / 3)
    else:
        contrast = rng.uniform(lo + (hi - lo) / 3, hi)
    return Mass(float(radius), tuple(harmonics), float(edge), tuple(spicules), float(contrast))


def _mass(
    rng: np.random.Generator, cfg: SynthConfig
) -> tuple[FloatArray, BoolArray, dict[str, float]]:
    """One mass near the ROI's centre: its additive intensity profile and its exact mask."""
    s = cfg.size
    cy, cx = (s - 1) / 2 + rng.uniform(-cfg.centre_jitter, cfg.centre_jitter, 2) * s
    mass = draw_mass(rng, cfg)
    profile, mask = mass.render((cy, cx), (0, s), (0, s))
    return profile, mask, mass.info((cy, cx))


def generate(cfg: SynthConfig) -> tuple[FloatArray, BoolArray, npt.NDArray[np.int64], list[dict[str, float]]]:
    """Make ``cfg.n`` ROIs: images in [0, 1], masks, labels (1 = tumor), per-ROI info."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    n, s = cfg.n, cfg.size
    labels = np.zeros(n, dtype=np.int64)
    labels[: round(n * cfg.tumor_fraction)] = 1
    rng.shuffle(labels)
    texture = power_law_noise(rng, n, s, cfg.beta)
    density = power_law_noise(rng, n, s, cfg.beta + 1.5)  # smooth low-frequency density
    base = rng.uniform(0.35, 0.6, size=(n, 1, 1)).astype(np.float32)
    images = base + cfg.texture_std * texture + cfg.density_std * density
    masks = np.zeros((n, s, s), dtype=bool)
    infos: list[dict[str, float]] = []
    for i in range(n):
        if labels[i]:
            profile, mask, info = _mass(rng, cfg)
            images[i] += profile
            masks[i] = mask
            infos.append(info)
        else:
            infos.append({})
    images += cfg.quantum_noise * rng.standard_normal(images.shape, dtype=np.float32)
    np.clip(images, 0.0, 1.0, out=images)
    return images, masks, labels, infos


def split_ids(labels: npt.NDArray[np.int64], fractions: tuple[float, float, float], seed: int) -> list[str]:
    """A stratified train/val/test assignment, deterministic from ``seed``."""
    rng = np.random.default_rng(seed + 7919)
    out = [""] * len(labels)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_train = round(len(idx) * fractions[0])
        n_val = round(len(idx) * fractions[1])
        for j, i in enumerate(idx):
            out[i] = "train" if j < n_train else "val" if j < n_train + n_val else "test"
    return out


def synthesize(out: Path, cfg: SynthConfig, *, overwrite: bool = False) -> Path:
    """Generate the data set and write it in the folder layout at ``out``."""
    images, masks, labels, infos = generate(cfg)
    splits = split_ids(labels, cfg.split, cfg.seed)
    scale = 255 if cfg.bit_depth == 8 else 65535
    dtype = np.uint8 if cfg.bit_depth == 8 else np.uint16
    width = max(5, len(str(cfg.n - 1)))
    records = [
        Record(
            id=f"roi-{i:0{width}d}",
            label=int(labels[i]),
            split=splits[i],
            image=np.round(images[i] * scale).astype(dtype),
            mask=masks[i] if labels[i] else None,
        )
        for i in range(cfg.n)
    ]
    meta = {
        "name": "camseg-synthetic-mammo-roi",
        "generator": "camseg.data.synth",
        "classes": list(CLASSES),
        "parameters": asdict(cfg),
        # ROIs at the source's own pixel scale: a model trained on them slides over
        # whole images of the same scale (camseg.data.fullfield) at one pixel per pixel
        "scale": {"source_pixels_per_model_pixel": 1.0},
        "roi_size": cfg.size,
        "masses": {r.id: info for r, info in zip(records, infos, strict=True) if info},
    }
    return write_dataset(out, records, meta, overwrite=overwrite)
