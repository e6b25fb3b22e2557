"""camseg: tumor segmentation from the class-activation heatmaps of CNN classifiers.

After Guan & Loew, "A Sneak Attack on Segmentation of Medical Images Using Deep
Neural Network Classifiers", IEEE AIPR 2021 (arXiv:2201.02771).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("camseg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
