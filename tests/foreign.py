"""Classifiers camseg did not train, exported the way other teams export theirs.

Each is a plain torch module exported with the TorchScript-based ``torch.onnx`` exporter,
whose graphs look like tf2onnx's and timm's: a Transpose in front of an NHWC input, a
flatten through Shape/Gather/Unsqueeze/Concat/Reshape, a MatMul+Add dense head, a
Softmax output. Each is trained for a few epochs on camseg's synthetic ROIs (built once
per process, then shared: tests must not change them). :class:`Foreign` holds the
module, how to reach the same logits from a prepared batch, the config that declares it
and the names of its CAM layers both as torch submodules and as ONNX tensors.
"""

from __future__ import annotations

import functools
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn


class TfLike(nn.Module):
    """NHWC input, three conv blocks, NHWC flatten, MatMul+Add head, Softmax over 4
    classes (normal + 3 lesion classes)."""

    def __init__(self, size: int = 32):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.a2 = nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU()
        self.c3, self.a3 = nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU()
        side = size // 4
        self.w = nn.Parameter(torch.randn(side * side * 16, 4) * 0.05)
        self.b = nn.Parameter(torch.randn(4) * 0.1)

    def logits(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2)
        x = self.a3(self.c3(self.a2(self.c2(self.a1(self.c1(x))))))
        x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], -1)
        return x @ self.w + self.b

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.logits(x), dim=-1)


class RgbNet(nn.Module):
    """NCHW RGB with ImageNet-style normalisation outside the graph: conv-BN-ReLU6, a
    HardSwish block with a residual Add, max pooling, LeakyReLU, a mean over H and W
    (ReduceMean) and a Linear (Gemm) head; logits over 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish())
        self.pool = nn.MaxPool2d(2)
        self.head_conv = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.LeakyReLU(0.1))
        self.fc = nn.Linear(16, 3)

    def logits(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = x + self.block(x)
        x = self.head_conv(self.pool(x))
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x)


class GrayNet(nn.Module):
    """One channel taken as 0..255, 40x48 (not square): SiLU (Sigmoid+Mul), average
    pooling, Tanh, global average pooling, Flatten and Linear; logits over 2 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.act1 = nn.SiLU()
        self.pool = nn.AvgPool2d(2)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)
        self.act2 = nn.Tanh()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 2)

    def logits(self, x: Tensor) -> Tensor:
        x = self.act2(self.c2(self.pool(self.act1(self.c1(x / 255.0)))))
        return self.fc(torch.flatten(self.gap(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x)


class CumSumNet(nn.Module):
    """A graph with an operator outside the converter's set (CumSum)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.c1(x))
        x = torch.cumsum(x, dim=3) / x.shape[3]
        return self.fc(x.mean(dim=(2, 3)))


@dataclass
class Foreign:
    """A foreign classifier: the module, the config that declares it, the prepared batch
    (NCHW in [0, 1]) to model input, and its CAM layers (torch submodule -> ONNX node)."""

    name: str
    module: nn.Module
    config: dict[str, Any]
    to_input: Callable[[Tensor], Tensor]
    layers: dict[str, str]  # torch submodule name -> ONNX node name (its output is the tensor)
    probabilities: bool = False
    onnx_bytes: bytes = field(default=b"", repr=False)

    def logits(self, prepared: Tensor) -> Tensor:
        out: Tensor = self.module.logits(self.to_input(prepared))  # type: ignore[operator]
        return out

    def tensor(self, layer: str) -> str:
        """The ONNX tensor a torch submodule's output became."""
        node = self.layers[layer]
        model = onnx.load_from_string(self.onnx_bytes)
        for n in model.graph.node:
            if n.name == node:
                return str(n.output[0])
        raise KeyError(node)

    def write(self, folder: Path, *, config: dict[str, Any] | None = None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.onnx").write_bytes(self.onnx_bytes)
        (folder / "camseg-model.json").write_text(json.dumps(config or self.config))
        return folder


def export(module: nn.Module, example: Tensor, *, output: str = "output", input_name: str = "input") -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buf, input_names=[input_name],  # type: ignore[arg-type]
                          output_names=[output],
                          dynamic_axes={input_name: {0: "batch"}, output: {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return buf.getvalue()


def _train(f: Foreign, *, lesion: int, seed: int, epochs: int = 6, n: int = 192) -> None:
    """A few epochs on camseg's synthetic ROIs (tumor -> class ``lesion``, normal -> 0),
    so the heatmaps have something to find; then eval mode."""
    from camseg.data.synth import SynthConfig, generate

    cfg = f.config["input"]
    h, w, c = cfg["height"], cfg["width"], cfg["channels"]
    images, _, labels, _ = generate(SynthConfig(n=n, size=max(h, w), seed=seed))
    x = torch.nn.functional.interpolate(torch.from_numpy(images)[:, None], size=(h, w), mode="bilinear",
                                        align_corners=False).expand(-1, c, -1, -1).contiguous()
    y = torch.where(torch.from_numpy(labels) == 1, lesion, 0)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(f.module.parameters(), lr=3e-3)
    f.module.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, 32):
            idx = order[i : i + 32]
            loss = torch.nn.functional.cross_entropy(f.logits(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    f.module.eval()


def _randomise_bn(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@functools.cache
def tf_like(seed: int = 0) -> Foreign:
    torch.manual_seed(seed)
    m = TfLike().eval()
    f = Foreign(
        "tflike", m,
        {"input": {"name": "image", "layout": "NHWC", "height": 32, "width": 32, "channels": 3, "colour": "rgb",
                   "scaling": {"divide": 255}},
         "output": {"name": "probs", "kind": "probabilities"},
         "classes": ["normal", "mass", "calcification", "distortion"],
         "lesion_classes": ["mass", "calcification", "distortion"]},
        lambda x: x.permute(0, 2, 3, 1), {"a1": "/a1/Relu", "a2": "/a2/Relu", "a3": "/a3/Relu"}, probabilities=True)
    _train(f, lesion=1, seed=seed)
    f.onnx_bytes = export(m, torch.rand(2, 32, 32, 3), output="probs", input_name="image")
    return f


@functools.cache
def rgb_net(seed: int = 1) -> Foreign:
    torch.manual_seed(seed)
    m = RgbNet()
    _randomise_bn(m)
    m.eval()
    mean = torch.tensor(MEAN)[None, :, None, None]
    std = torch.tensor(STD)[None, :, None, None]
    f = Foreign(
        "rgbnet", m,
        {"input": {"layout": "NCHW", "height": 32, "width": 32, "channels": 3, "colour": "rgb",
                   "scaling": {"divide": 255, "mean": list(MEAN), "std": list(STD)}},
         "output": {"kind": "logits"},
         "classes": ["normal", "benign", "malignant"], "lesion_classes": ["benign", "malignant"]},
        lambda x: (x - mean) / std,
        {"block": "/block/block.2/HardSwish", "head_conv": "/head_conv/head_conv.1/LeakyRelu"})
    _train(f, lesion=2, seed=seed)
    f.onnx_bytes = export(m, torch.rand(2, 3, 32, 32))
    return f


@functools.cache
def gray_net(seed: int = 2) -> Foreign:
    torch.manual_seed(seed)
    m = GrayNet().eval()
    f = Foreign(
        "graynet", m,
        {"input": {"layout": "NCHW", "height": 40, "width": 48, "channels": 1, "colour": "gray",
                   "scaling": {"divide": None}},
         "output": {"kind": "logits"},
         "classes": ["normal", "tumor"], "lesion_classes": ["tumor"], "cam": {"layer": ""}},
        lambda x: x * 255.0, {"act1": "/act1/Mul", "act2": "/act2/Tanh"})
    _train(f, lesion=1, seed=seed)
    f.onnx_bytes = export(m, torch.rand(2, 1, 40, 48))
    f.config["cam"]["layer"] = f.tensor("act2")
    return f


def cumsum_net(seed: int = 3) -> Foreign:
    torch.manual_seed(seed)
    m = CumSumNet().eval()
    f = Foreign(
        "cumsum", m,
        {"input": {"layout": "NCHW", "height": 32, "width": 32, "channels": 1}, "output": {"kind": "logits"},
         "classes": ["normal", "tumor"], "lesion_classes": ["tumor"]},
        lambda x: x, {})
    f.onnx_bytes = export(m, torch.rand(2, 1, 32, 32))
    return f


BUILDERS: dict[str, Callable[[], Foreign]] = {"tflike": tf_like, "rgbnet": rgb_net, "graynet": gray_net}
