"""Argument parsing shared by the commands: subcommands that take the common options too."""

from __future__ import annotations

import argparse
from typing import Any


class Subcommands:
    """Adds the common options to every sub-command, so they work after it too.
    Adapters receive one to add their own commands (``register(sub)``)."""

    def __init__(self, action: argparse._SubParsersAction, common: argparse.ArgumentParser):
        self.action, self.common = action, common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.action.add_parser(name, parents=[self.common], **kwargs)
        return parser


WHOLE_MODES = ("auto", "always", "never")
"""The values of :class:`camseg.pipeline.whole.Whole`, here without importing torch (the
adapters' commands are registered for every command)."""


def add_tiling_arguments(g: argparse.ArgumentParser) -> None:
    """The whole-image flags of ``camseg segment`` and ``camseg jobs submit``, read by
    :func:`camseg.pipeline.options.tiling_of`."""
    g.add_argument("--whole", default=None, choices=WHOLE_MODES,
                   help="whole-image inference (the classifier slid over the image at the model's scale): auto for "
                        "images larger than four fields of view of the model (default), always, or never (every "
                        "image resized to the model's input, as an ROI)")
    g.add_argument("--scale", type=float, default=None,
                   help="whole images: source pixels per model pixel (default: the model's recorded scale)")
    g.add_argument("--overlap", type=float, default=None,
                   help="whole images: the fraction of a tile shared with its neighbour, 0..0.9 (default 0.5)")
