"""A small U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) for the distilled student.

Each level is two 3x3 conv-BN-ReLU blocks; the encoder halves the resolution by max
pooling, the decoder doubles it by bilinear upsampling and concatenates the encoder's
output of the same level (the skip). A 1x1 convolution gives one logit channel.
Inputs arrive in [0, 1], like a :class:`~camseg.models.Classifier`'s: the training
images' (mean, std) is a buffer of the model, so the exported graph and every caller
share one input contract.

>>> net = UNet(in_channels=1, base=8, depth=2)
>>> net(torch.rand(2, 1, 32, 32)).shape
torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camseg.core.errors import InvalidInputError
from camseg.models.base import conv_bn_act, init_weights


def _level(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_act(cin, cout), conv_bn_act(cout, cout))


class UNet(nn.Module):
    """``depth`` poolings, widths ``base * 2**level``; ``forward`` returns logits
    ``(N, 1, H, W)`` for inputs ``(N, in_channels, H, W)`` with H and W divisible by
    ``2**depth`` (see :meth:`check_input`)."""

    input_stats: Tensor  # (mean, std) of the training images, a buffer

    def __init__(self, in_channels: int = 1, base: int = 16, depth: int = 3):
        super().__init__()
        if in_channels < 1 or base < 1 or depth < 1:
            raise InvalidInputError(f"UNet needs in_channels, base and depth >= 1, got {in_channels}, {base}, {depth}")
        self.in_channels = in_channels
        self.base = base
        self.depth = depth
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(_level(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth))
        self.bottom = _level(widths[depth - 1], widths[depth])
        self.up = nn.ModuleList(_level(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.register_buffer("input_stats", torch.tensor([0.0, 1.0]))
        init_weights(self)
        # a near-zero head starts every pixel at p = 0.5 instead of at kaiming-sized logits
        assert self.head.bias is not None
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return int(2**self.depth)

    def set_input_stats(self, mean: float, std: float) -> None:
        self.input_stats.copy_(torch.tensor([mean, max(std, 1e-6)]))

    def check_input(self, x: Tensor) -> None:
        """InvalidInputError unless ``x`` is ``(N>0, in_channels, H, W)`` floats with H
        and W multiples of ``2**depth``."""
        if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] != self.in_channels or not x.is_floating_point():
            raise InvalidInputError(f"images must be float (N>0, {self.in_channels}, H, W), got "
                                    f"{x.dtype} {tuple(x.shape)}")
        h, w = int(x.shape[2]), int(x.shape[3])
        if h % self.multiple or w % self.multiple or h == 0 or w == 0:
            raise InvalidInputError(f"image size {h}x{w} is not a multiple of {self.multiple} (2**depth)")

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.input_stats[0]) / self.input_stats[1]
        skips = []
        for level in self.down:
            x = level(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for level, skip in zip(self.up, reversed(skips), strict=True):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = level(torch.cat([x, skip], dim=1))
        out: Tensor = self.head(x)
        return out
