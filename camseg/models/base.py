"""The classifier skeleton every architecture shares.

A classifier is an ordered set of named *stages* followed by a global-average-pool +
linear head. Grad-CAM addresses a stage by name; because the stages run in order, a
heatmap is computed without hooks: the stages before the target run without autograd,
the target's output becomes the leaf of a small graph, and only the tail is
differentiated. That keeps concurrent heatmap calls independent of one another.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from camseg.core.errors import NotFoundError


@dataclass(frozen=True)
class ModelSpec:
    """What builds a classifier: its architecture name and input contract."""

    arch: str
    in_channels: int = 1
    num_classes: int = 2
    input_size: int = 128
    width: int = 16
    extra: dict[str, int | float | str] = field(default_factory=dict)


class Classifier(nn.Module):
    """Stages in order, then GAP + dropout + linear; ``forward`` returns logits."""

    input_stats: Tensor  # (mean, std) of the training images, a buffer

    def __init__(self, spec: ModelSpec, stages: Sequence[tuple[str, nn.Module]], features: int,
                 cam_layer: str, dropout: float = 0.2):
        super().__init__()
        self.spec = spec
        self.stages = nn.ModuleDict(OrderedDict(stages))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features, spec.num_classes)
        if cam_layer not in self.stages:
            raise ValueError(f"default Grad-CAM layer {cam_layer!r} is not a stage")
        self.cam_layer = cam_layer
        # inputs arrive in [0, 1]; the data set's statistics are part of the model, so
        # the exported graph and every caller see the same contract
        self.register_buffer("input_stats", torch.tensor([0.0, 1.0]))

    def set_input_stats(self, mean: float, std: float) -> None:
        self.input_stats.copy_(torch.tensor([mean, max(std, 1e-6)]))

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.input_stats[0]) / self.input_stats[1]

    @property
    def layer_names(self) -> list[str]:
        return list(self.stages.keys())

    def check_layer(self, name: str) -> int:
        """Position of stage ``name``; NotFoundError names the valid stages otherwise."""
        names = self.layer_names
        if name not in names:
            raise NotFoundError(f"unknown layer {name!r}; this model has {', '.join(names)}")
        return names.index(name)

    def head(self, x: Tensor) -> Tensor:
        """Global average pool + linear: logits from the last stage's activations."""
        return self.fc(self.dropout(x.mean(dim=(2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalise(x)
        for stage in self.stages.values():
            x = stage(x)
        return self.head(x)

    def run_from(self, x: Tensor, start: int, capture: Sequence[int] = ()) -> tuple[Tensor, dict[int, Tensor]]:
        """Run stages ``start..`` on ``x`` and the head; return logits and the outputs of
        the stages listed in ``capture``."""
        captured: dict[int, Tensor] = {}
        if start == 0:
            x = self.normalise(x)
        for i, stage in enumerate(list(self.stages.values())[start:], start=start):
            x = stage(x)
            if i in capture:
                captured[i] = x
        return self.head(x), captured

    def run_until(self, x: Tensor, stop: int) -> Tensor:
        """Outputs of stage ``stop`` (inclusive)."""
        x = self.normalise(x)
        for stage in list(self.stages.values())[: stop + 1]:
            x = stage(x)
        return x

    def has_linear_gap_head(self, layer: str) -> bool:
        """True when ``layer`` is the last stage, so logits are linear in its GAP."""
        return self.check_layer(layer) == len(self.stages) - 1

    # ---- camseg.heat.cam.CamNetwork
    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def fused_layers(self, layer: str) -> list[str]:
        """``layer`` and the stage before it."""
        k = self.check_layer(layer)
        return self.layer_names[max(0, k - 1) : k + 1]

    def head_weight(self, layer: str) -> Tensor | None:
        return self.fc.weight if self.has_linear_gap_head(layer) else None

    def activations(self, x: Tensor, layers: Sequence[str], *, leaves: bool) -> tuple[Tensor, list[Tensor]]:
        """Stages before the first of ``layers`` run without autograd; with ``leaves`` that
        stage's output becomes a leaf and only the tail is recorded."""
        ks = sorted({self.check_layer(name) for name in layers})
        first = ks[0]
        if leaves:
            with torch.no_grad():
                leaf = self.run_until(x, first)
            leaf.requires_grad_(True)
        else:
            leaf = self.run_until(x, first)
        logits, captured = self.run_from(leaf, first + 1, capture=ks[1:])
        captured[first] = leaf
        return logits, [captured[self.check_layer(name)] for name in layers]


def conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(inplace=True) if act in (nn.ReLU, nn.ReLU6) else act(),
    )


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
