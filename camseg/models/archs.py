"""Compact versions of the paper's architecture families, in plain torch.

Guan & Loew compared Xception, InceptionV3, DenseNet121, ResNet50V2, NASNetMobile and
MobileNetV2 on mammogram ROIs; all six families are here. These keep each family's
defining block (pre-activation residuals, inverted residuals, dense connectivity,
depthwise-separable residual flows, multi-branch inception modules, NASNet-A normal and
reduction cells) at a size that trains on two CPU cores in minutes.

Every network downsamples 16x and keeps the last stage at that resolution (8x8 for a
128-pixel ROI), so the default Grad-CAM layer, the last stage, is as sharp as the
family allows. ``width`` scales every channel count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camseg.core.errors import NotFoundError
from camseg.models.base import Classifier, ModelSpec, conv_bn_act, init_weights


# ---------------------------------------------------------------- ResNet50V2-style
class PreActBlock(nn.Module):
    """BN-ReLU-conv x2 with an identity (or 1x1 projection) shortcut (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = x if self.proj is None else self.proj(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


def resnet(spec: ModelSpec) -> Classifier:
    w = spec.width
    stages = [
        ("stem", nn.Conv2d(spec.in_channels, w, 3, 2, 1, bias=False)),
        ("stage1", nn.Sequential(PreActBlock(w, w * 2, 2), PreActBlock(w * 2, w * 2))),
        ("stage2", nn.Sequential(PreActBlock(w * 2, w * 4, 2), PreActBlock(w * 4, w * 4))),
        ("stage3", nn.Sequential(PreActBlock(w * 4, w * 8, 2), PreActBlock(w * 8, w * 8))),
        # ResNetV2 ends with a post-activation BN-ReLU before pooling
        ("stage4", nn.Sequential(PreActBlock(w * 8, w * 8), nn.BatchNorm2d(w * 8), nn.ReLU(inplace=True))),
    ]
    return Classifier(spec, stages, w * 8, cam_layer="stage4")


# ---------------------------------------------------------------- MobileNetV2-style
class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, linear 1x1 project; residual when shapes allow
    (Sandler et al., 2018)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            conv_bn_act(cin, hidden, 1, act=nn.ReLU6),
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.residual else out


def mobilenet(spec: ModelSpec) -> Classifier:
    w = spec.width
    stages = [
        ("stem", conv_bn_act(spec.in_channels, w, 3, 2, act=nn.ReLU6)),
        ("stage1", nn.Sequential(InvertedResidual(w, w, 1, 1), InvertedResidual(w, w * 3 // 2, 2))),
        ("stage2", nn.Sequential(InvertedResidual(w * 3 // 2, w * 2, 2), InvertedResidual(w * 2, w * 2, 1))),
        ("stage3", nn.Sequential(InvertedResidual(w * 2, w * 4, 2), InvertedResidual(w * 4, w * 4, 1),
                                 InvertedResidual(w * 4, w * 6, 1))),
        # the 1x1 "last conv" of MobileNetV2 widens the features before pooling
        ("stage4", nn.Sequential(InvertedResidual(w * 6, w * 10, 1), conv_bn_act(w * 10, w * 16, 1, act=nn.ReLU6))),
    ]
    return Classifier(spec, stages, w * 16, cam_layer="stage4")


# ---------------------------------------------------------------- DenseNet121-style
class DenseLayer(nn.Module):
    """BN-ReLU-1x1 bottleneck, BN-ReLU-3x3; output concatenated to the input
    (Huang et al., 2017)."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def _dense_block(cin: int, growth: int, n: int) -> tuple[nn.Sequential, int]:
    layers = [DenseLayer(cin + i * growth, growth) for i in range(n)]
    return nn.Sequential(*layers), cin + n * growth


def _transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.AvgPool2d(2))


def densenet(spec: ModelSpec) -> Classifier:
    w, g = spec.width, max(4, spec.width // 2)
    stem = nn.Sequential(nn.Conv2d(spec.in_channels, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    b1, c1 = _dense_block(w, g, 3)
    b2, c2 = _dense_block(c1 // 2, g, 4)
    b3, c3 = _dense_block(c2 // 2, g, 6)
    b4, c4 = _dense_block(c3 // 2, g, 4)
    stages = [
        ("stem", stem),
        ("stage1", nn.Sequential(b1, _transition(c1, c1 // 2))),
        ("stage2", nn.Sequential(b2, _transition(c2, c2 // 2))),
        ("stage3", nn.Sequential(b3, nn.BatchNorm2d(c3), nn.ReLU(inplace=True), nn.Conv2d(c3, c3 // 2, 1, bias=False))),
        ("stage4", nn.Sequential(b4, nn.BatchNorm2d(c4), nn.ReLU(inplace=True))),
    ]
    return Classifier(spec, stages, c4, cam_layer="stage4")


# ---------------------------------------------------------------- Xception-style
class SeparableConv(nn.Sequential):
    """Depthwise k x k (strided when asked), pointwise 1x1, BN."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


class XceptionBlock(nn.Module):
    """ReLU-SepConv x2 (+ max-pool when strided) with a 1x1 residual (Chollet, 2017)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        layers: list[nn.Module] = [nn.ReLU(), SeparableConv(cin, cout), nn.ReLU(), SeparableConv(cout, cout)]
        if stride > 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.body = nn.Sequential(*layers)
        self.skip = (
            None if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + (x if self.skip is None else self.skip(x))


def xception(spec: ModelSpec) -> Classifier:
    w = spec.width
    stages = [
        ("stem", nn.Sequential(conv_bn_act(spec.in_channels, w, 3, 2), conv_bn_act(w, w * 2, 3))),
        ("stage1", XceptionBlock(w * 2, w * 4, 2)),
        ("stage2", XceptionBlock(w * 4, w * 8, 2)),
        ("stage3", nn.Sequential(XceptionBlock(w * 8, w * 8, 2), XceptionBlock(w * 8, w * 8, 1))),
        ("stage4", nn.Sequential(SeparableConv(w * 8, w * 12), nn.ReLU(inplace=True),
                                 SeparableConv(w * 12, w * 16), nn.ReLU(inplace=True))),
    ]
    return Classifier(spec, stages, w * 16, cam_layer="stage4")


# ---------------------------------------------------------------- InceptionV3-style
class InceptionModule(nn.Module):
    """Parallel 1x1, 3x3, double-3x3 (factorised 5x5) and pool branches, concatenated
    (Szegedy et al., 2016)."""

    def __init__(self, cin: int, b: int):
        super().__init__()
        self.b1 = conv_bn_act(cin, b, 1)
        self.b3 = nn.Sequential(conv_bn_act(cin, b, 1), conv_bn_act(b, b, 3))
        self.b5 = nn.Sequential(conv_bn_act(cin, b // 2, 1), conv_bn_act(b // 2, b, 3), conv_bn_act(b, b, 3))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), conv_bn_act(cin, b, 1))
        self.out_channels = 4 * b

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


class InceptionReduction(nn.Module):
    """Strided 3x3, strided double-3x3 and max-pool branches (grid-size reduction)."""

    def __init__(self, cin: int, b: int):
        super().__init__()
        self.b3 = conv_bn_act(cin, b, 3, 2)
        self.b5 = nn.Sequential(conv_bn_act(cin, b // 2, 1), conv_bn_act(b // 2, b, 3), conv_bn_act(b, b, 3, 2))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.out_channels = 2 * b + cin

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b3(x), self.b5(x), self.pool(x)], dim=1)


def inception(spec: ModelSpec) -> Classifier:
    w = spec.width
    stem = nn.Sequential(conv_bn_act(spec.in_channels, w, 3, 2), conv_bn_act(w, w * 2, 3), nn.MaxPool2d(3, 2, 1))
    m1 = InceptionModule(w * 2, w)
    r1 = InceptionReduction(m1.out_channels, w * 2)
    m2 = InceptionModule(r1.out_channels, w * 2)
    r2 = InceptionReduction(m2.out_channels, w * 2)
    m3 = InceptionModule(r2.out_channels, w * 3)
    stages = [
        ("stem", stem),
        ("stage1", nn.Sequential(m1, r1)),
        ("stage2", nn.Sequential(m2, r2)),
        ("stage3", m3),
        ("stage4", conv_bn_act(m3.out_channels, w * 16, 1)),
    ]
    return Classifier(spec, stages, w * 16, cam_layer="stage4")


# ---------------------------------------------------------------- NASNetMobile-style
# The NASNet-A cells (Zoph et al., 2018, Fig. 4; tensorflow/models research/slim
# nets/nasnet/nasnet_utils.py): ten ops and the hidden states they read, two per block.
# Hidden state 0 is the cell's adjusted input h, 1 the adjusted h_prev, 2.. the blocks.
NORMAL_OPS = ("sep5x5", "sep3x3", "sep5x5", "sep3x3", "avg3x3", "identity", "avg3x3", "avg3x3", "sep3x3",
              "identity")
NORMAL_INPUTS = (0, 1, 1, 1, 0, 1, 1, 1, 0, 0)
REDUCTION_OPS = ("sep5x5", "sep7x7", "max3x3", "sep7x7", "avg3x3", "sep5x5", "identity", "avg3x3", "sep3x3",
                 "max3x3")
REDUCTION_INPUTS = (0, 1, 0, 1, 0, 1, 3, 2, 2, 0)


class FactorizedReduction(nn.Module):
    """Halve the resolution without discarding pixels: two strided 1x1 convolutions, one on
    the even and one on the odd (shifted by one) pixel grid, concatenated, then BN
    (NASNet's ``factorized_reduction``). ReLU first, as NASNet applies to h_prev."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.path1 = nn.Conv2d(cin, cout // 2, 1, 2, bias=False)
        self.path2 = nn.Conv2d(cin, cout - cout // 2, 1, 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(x)
        # shift by one pixel, zero-padded at the bottom/right, so path2 samples the odd grid
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.path1(x), self.path2(shifted)], dim=1))


def _nasnet_op(name: str, channels: int, stride: int) -> nn.Module:
    if name.startswith("sep"):
        k = int(name[3])
        # NASNet stacks ReLU-sepconv-BN twice per separable op; only the first one strides.
        # The first ReLU must not be in place: the cell's hidden states feed several ops.
        return nn.Sequential(nn.ReLU(), SeparableConv(channels, channels, k, stride),
                             nn.ReLU(inplace=True), SeparableConv(channels, channels, k))
    if name == "avg3x3":  # TF's SAME average pooling ignores the padding
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "max3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "identity":
        if stride == 1:
            return nn.Identity()
        return nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1, stride, bias=False),
                             nn.BatchNorm2d(channels))
    raise ValueError(f"unknown NASNet op {name!r}")


class NasNetCell(nn.Module):
    """One NASNet-A cell (Zoph et al., "Learning Transferable Architectures for Scalable
    Image Recognition", CVPR 2018): h and h_prev are adjusted to ``channels`` with
    ReLU-1x1 conv-BN (a factorized reduction where h_prev has twice h's resolution), five
    blocks each add two ops of the hidden states, and the hidden states no block reads
    are concatenated. Ops reading the cell's inputs (states 0 and 1) use ``stride``.

    Use :class:`NormalCell` / :class:`ReductionCell`; ``out_channels`` is the width of the
    concatenation."""

    def __init__(self, ops: Sequence[str], inputs: Sequence[int], concat: Sequence[int], cin: int,
                 cin_prev: int, channels: int, stride: int, prev_reduced: bool):
        super().__init__()
        self.adjust: nn.Module = nn.Sequential(nn.ReLU(), nn.Conv2d(cin, channels, 1, bias=False),
                                               nn.BatchNorm2d(channels))
        self.adjust_prev: nn.Module
        if prev_reduced:
            self.adjust_prev = FactorizedReduction(cin_prev, channels)
        elif cin_prev != channels:
            self.adjust_prev = nn.Sequential(nn.ReLU(), nn.Conv2d(cin_prev, channels, 1, bias=False),
                                             nn.BatchNorm2d(channels))
        else:
            self.adjust_prev = nn.Identity()
        self.inputs = tuple(inputs)
        self.concat = tuple(concat)
        self.ops = nn.ModuleList(
            _nasnet_op(op, channels, stride if i < 2 else 1) for op, i in zip(ops, inputs, strict=True)
        )
        self.out_channels = len(self.concat) * channels

    def forward(self, h: Tensor, h_prev: Tensor) -> Tensor:
        states = [self.adjust(h), self.adjust_prev(h_prev)]
        for b in range(0, len(self.ops), 2):
            left, right = self.inputs[b], self.inputs[b + 1]
            states.append(self.ops[b](states[left]) + self.ops[b + 1](states[right]))
        return torch.cat([states[i] for i in self.concat], dim=1)


class NormalCell(NasNetCell):
    """The NASNet-A normal cell (Zoph et al., 2018): stride 1, output h_prev and the five
    blocks concatenated, ``6 * channels`` wide."""

    def __init__(self, cin: int, cin_prev: int, channels: int, prev_reduced: bool = False):
        super().__init__(NORMAL_OPS, NORMAL_INPUTS, (1, 2, 3, 4, 5, 6), cin, cin_prev, channels, 1, prev_reduced)


class ReductionCell(NasNetCell):
    """The NASNet-A reduction cell (Zoph et al., 2018): stride 2, output the four blocks no
    other block reads concatenated, ``4 * channels`` wide."""

    def __init__(self, cin: int, cin_prev: int, channels: int, prev_reduced: bool = False):
        super().__init__(REDUCTION_OPS, REDUCTION_INPUTS, (3, 4, 5, 6), cin, cin_prev, channels, 2, prev_reduced)


class NasNetStage(nn.Module):
    """Cells in sequence, each reading the two previous outputs; a stage starts from
    h_prev = h = its one input, so stages still pass a single tensor."""

    def __init__(self, cin: int, plan: Sequence[tuple[str, int]]):
        super().__init__()
        cells: list[nn.Module] = []
        prev, cur, reduced = cin, cin, False  # reduced: h_prev has twice h's resolution
        for kind, channels in plan:
            cell = (ReductionCell if kind == "reduction" else NormalCell)(cur, prev, channels, reduced)
            cells.append(cell)
            prev, cur, reduced = cur, cell.out_channels, kind == "reduction"
        self.cells = nn.ModuleList(cells)
        self.out_channels = cur

    def forward(self, x: Tensor) -> Tensor:
        h_prev, h = x, x
        for cell in self.cells:
            h_prev, h = h, cell(h, h_prev)
        return h


def nasnet(spec: ModelSpec) -> Classifier:
    w = spec.width
    f = max(2, w // 2)
    # NASNet-A Mobile's layout (stem conv, two stem reduction cells, then stacks of normal
    # cells separated by reduction cells, filters doubling at each reduction), with one
    # or two normal cells per stack instead of four
    s1 = NasNetStage(w, [("reduction", f)])
    s2 = NasNetStage(s1.out_channels, [("reduction", 2 * f), ("normal", 2 * f)])
    s3 = NasNetStage(s2.out_channels, [("reduction", 4 * f), ("normal", 4 * f)])
    s4 = NasNetStage(s3.out_channels, [("normal", 4 * f), ("normal", 4 * f)])
    stages = [
        ("stem", nn.Sequential(nn.Conv2d(spec.in_channels, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w))),
        ("stage1", s1),
        ("stage2", s2),
        ("stage3", s3),
        # NASNet ends with a ReLU before the global pool: the cells' outputs are BN outputs
        ("stage4", nn.Sequential(s4, nn.ReLU(inplace=True))),
    ]
    return Classifier(spec, stages, s4.out_channels, cam_layer="stage4")


ARCHITECTURES = {
    "resnet": resnet,
    "mobilenet": mobilenet,
    "densenet": densenet,
    "xception": xception,
    "inception": inception,
    "nasnet": nasnet,
}

PAPER_NAMES = {
    "resnet": "ResNet50V2",
    "mobilenet": "MobileNetV2",
    "densenet": "DenseNet121",
    "xception": "Xception",
    "inception": "InceptionV3",
    "nasnet": "NASNetMobile",
}


def build(spec: ModelSpec) -> Classifier:
    """A freshly initialised classifier for ``spec``."""

    try:
        factory = ARCHITECTURES[spec.arch]
    except KeyError:
        raise NotFoundError(
            f"unknown architecture {spec.arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        ) from None
    model = factory(spec)
    if spec.extra.get("dilated"):
        dilate_last_stage(model)
    init_weights(model)
    return model


def _stride(m: nn.Module) -> int:
    if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        s = m.stride
        return int(s[0] if isinstance(s, tuple) else s)
    return 1


def dilate_last_stage(model: Classifier) -> Classifier:
    """Trade the network's last downsampling for dilation (Yu & Koltun, 2016; DeepLab):
    the strided convolutions and pools of the last stage that downsamples keep stride 1,
    and every later spatial convolution is dilated by 2, so the receptive fields stay
    and the Grad-CAM layer keeps twice the resolution (8x instead of 16x). In place;
    the spec's ``extra={"dilated": 1}`` applies it in :func:`build`, so a saved model
    rebuilds the same graph."""
    stages = list(model.stages.values())
    last = max((i for i, st in enumerate(stages) if any(_stride(m) > 1 for m in st.modules())), default=None)
    if last is None:
        return model
    dilating = False
    for stage in stages[last:]:
        for m in stage.modules():
            if _stride(m) > 1:
                dilating = True
                if isinstance(m, nn.Conv2d):
                    m.stride = (1, 1)
                elif isinstance(m, nn.MaxPool2d):
                    m.stride = 1
                elif isinstance(m, nn.AvgPool2d):  # a 2x2 average becomes a 3x3 one that keeps the size
                    m.kernel_size, m.stride, m.padding, m.count_include_pad = 3, 1, 1, False
            elif dilating and isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1:
                k = m.kernel_size[0]
                m.dilation = (2, 2)
                m.padding = ((k // 2) * 2, (k // 2) * 2)
    return model
