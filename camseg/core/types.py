"""The array types of camseg's signatures, defined once."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
"""An image or heatmap: float32, values in ``[0, 1]`` unless said otherwise."""
BoolArray = npt.NDArray[np.bool_]
"""A mask: True is tumor."""
UInt16Array = npt.NDArray[np.uint16]
