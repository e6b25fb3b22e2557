"""How modality values become [0, 1]: DICOM's linear window, presets and percentiles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from camseg.core.errors import InvalidInputError, shown
from camseg.core.types import FloatArray

PRESETS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
    "liver": (60.0, 160.0),
}
DEFAULT_PERCENTILES = (0.5, 99.5)
KINDS = ("auto", "window", "percentiles", "dicom")
_WINDOW_FORMS = (f"auto, dicom, a preset ({', '.join(PRESETS)}), CENTER,WIDTH (e.g. 40,400) or "
                 "percentiles:LOW,HIGH (e.g. percentiles:1,99)")


# ---------------------------------------------------------------------- windowing
def _num(x: float) -> str:
    """The shortest text that parses back to ``x``."""
    text = f"{x:g}"
    return text if float(text) == x else repr(float(x))


def _check_window(kind: str, center: float | None, width: float | None, low: float | None, high: float | None,
                  what: str) -> None:
    if kind not in KINDS:
        raise InvalidInputError(f"windowing {what}: kind {shown(kind)} is not one of {', '.join(KINDS)}")
    if kind == "window" and (center is None or width is None):
        raise InvalidInputError(f"windowing {what}: a window needs a center and a width")
    if center is not None and not math.isfinite(center):
        raise InvalidInputError(f"windowing {what}: center must be finite")
    if width is not None and not (math.isfinite(width) and width > 0):
        raise InvalidInputError(f"windowing {what}: width must be > 0")
    if kind == "percentiles" and not (
        low is not None and high is not None and math.isfinite(low) and math.isfinite(high) and 0 <= low < high <= 100
    ):
        raise InvalidInputError(f"windowing {what}: percentiles need 0 <= LOW < HIGH <= 100")


@dataclass(frozen=True)
class Windowing:
    """How modality values become ``[0, 1]``.

    * ``auto``: per modality (:meth:`resolve`): CT the soft-tissue preset, MR the
      :data:`DEFAULT_PERCENTILES`, anything else the file's own VOI window or else the
      percentiles.
    * ``window``: DICOM's linear window ``center`` / ``width`` (``width > 0``).
    * ``percentiles``: ``low`` / ``high`` percent of the values given (a whole series when
      windowing a volume) map to 0 and 1.
    * ``dicom``: the file's VOI window (first WindowCenter/WindowWidth); percentiles where it
      has none. Once resolved it carries the window used in ``center`` / ``width``.

    >>> Windowing.parse("lung")
    Windowing(kind='window', center=-600.0, width=1500.0, low=None, high=None)
    >>> str(Windowing.parse("percentiles:1,99"))
    'percentiles:1,99'
    """

    kind: str
    center: float | None = None
    width: float | None = None
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        _check_window(self.kind, self.center, self.width, self.low, self.high, shown(self.kind))

    @classmethod
    def parse(cls, text: str) -> Windowing:
        """``auto``, ``dicom``, a preset name (:data:`PRESETS`), ``C,W`` (``40,400``,
        ``-600,1500``) or ``percentiles:LO,HI`` (``percentiles:1,99``); case and spaces
        around the parts do not matter. Presets come back as kind ``window``.

        Raises:
            InvalidInputError: anything else, or a width <= 0, or percentiles outside
                ``0 <= LO < HI <= 100``; the message names the text.
        """
        key = str(text).strip().lower()
        what = shown(text)
        if key in ("auto", "dicom"):
            return cls(key)
        if key in PRESETS:
            center, width = PRESETS[key]
            return cls("window", center=center, width=width)
        numbers = key.removeprefix("percentiles:") if key.startswith("percentiles:") else key
        parts = numbers.split(",")
        try:
            a, b = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
        except ValueError:
            a = b = math.nan
        if not (math.isfinite(a) and math.isfinite(b)):
            raise InvalidInputError(f"windowing {what}: expected {_WINDOW_FORMS}")
        if key.startswith("percentiles:"):
            _check_window("percentiles", None, None, a, b, what)
            return cls("percentiles", low=a, high=b)
        _check_window("window", a, b, None, None, what)
        return cls("window", center=a, width=b)

    def __str__(self) -> str:
        if self.kind == "window":
            return f"{_num(self.center or 0.0)},{_num(self.width or 0.0)}"
        if self.kind == "percentiles":
            return f"percentiles:{_num(self.low or 0.0)},{_num(self.high or 0.0)}"
        return self.kind

    def resolve(self, modality: str, voi: tuple[float, float] | None) -> Windowing:
        """The concrete windowing for an image of ``modality`` whose file has VOI window
        ``voi`` (:func:`voi`): ``auto`` per modality (see the class), ``dicom`` to the VOI
        (kept as kind ``dicom`` with its center and width filled in) or to the default
        percentiles where there is none; ``window`` and ``percentiles`` unchanged."""
        mod = modality.strip().upper()
        if self.kind == "auto":
            if mod == "CT":
                center, width = PRESETS["soft-tissue"]
                return Windowing("window", center=center, width=width)
            if mod == "MR":
                return Windowing("percentiles", low=DEFAULT_PERCENTILES[0], high=DEFAULT_PERCENTILES[1])
            return Windowing("dicom").resolve(mod, voi)
        if self.kind == "dicom" and self.center is None:
            if voi is None:
                return Windowing("percentiles", low=DEFAULT_PERCENTILES[0], high=DEFAULT_PERCENTILES[1])
            return Windowing("dicom", center=float(voi[0]), width=float(voi[1]))
        return self


def apply_window(values: npt.NDArray[Any], windowing: Windowing, *, modality: str = "",
                 voi: tuple[float, float] | None = None) -> FloatArray:
    """Modality values (any shape; float) -> float32 in ``[0, 1]``, clipped.

    The linear window is DICOM's without its half-unit offsets: ``lo = center - width/2``,
    ``hi = center + width/2``. Percentiles are taken over the whole array given (a whole
    series when called on a volume), finite values only. A flat array gives zeros under
    percentiles; NaN and infinite values give 0.

    >>> apply_window(np.array([-160.0, 40.0, 240.0]), Windowing("auto"), modality="CT").tolist()
    [0.0, 0.5, 1.0]
    """
    w = windowing.resolve(modality, voi)
    arr = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(arr)
    all_finite = bool(finite.all())
    if w.kind == "percentiles":
        pool = arr if all_finite else arr[finite]
        if pool.size == 0:
            return np.zeros(arr.shape, dtype=np.float32)
        lo, hi = (float(v) for v in np.percentile(pool, [w.low or 0.0, w.high or 100.0]))
    else:
        assert w.center is not None and w.width is not None  # resolve() leaves no other case
        lo, hi = w.center - w.width / 2.0, w.center + w.width / 2.0
    if not hi > lo:  # a flat array carries no contrast
        return np.zeros(arr.shape, dtype=np.float32)
    out = np.clip((arr - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32, copy=False)
    if not all_finite:
        out[~finite] = 0.0
    return out
