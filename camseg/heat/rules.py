"""Threshold rules, the text of one (otsu, p90, 0.5) and its parsed form; no torch, so
clients can check a rule before sending it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from camseg.core.errors import InvalidInputError

RuleKind = Literal["fixed", "percentile", "otsu"]


@dataclass(frozen=True)
class ThresholdRule:
    kind: RuleKind
    value: float = 0.0

    def __str__(self) -> str:
        if self.kind == "otsu":
            return "otsu"
        if self.kind == "percentile":
            return f"p{self.value:g}"
        return f"{self.value:g}"


def parse_rule(text: str | float | ThresholdRule) -> ThresholdRule:
    """``"otsu"``, ``"p90"`` or ``"0.5"`` to a :class:`ThresholdRule`."""
    if isinstance(text, ThresholdRule):
        return text
    s = str(text).strip().lower()
    try:
        if s == "otsu":
            return ThresholdRule("otsu")
        if s.startswith("p"):
            q = float(s[1:])
            if 0 <= q <= 100:
                return ThresholdRule("percentile", q)
        else:
            t = float(s)
            if 0 <= t <= 1:
                return ThresholdRule("fixed", t)
    except ValueError:
        pass
    raise InvalidInputError(f"bad threshold {text!r}: use otsu, a percentile like p90, or a number in [0, 1]")
