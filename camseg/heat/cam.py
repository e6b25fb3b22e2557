"""Class activation maps: Grad-CAM, Grad-CAM++, HiResCAM and LayerCAM on one core.

Every method follows the same template (after pytorch-grad-cam's ``BaseCAM``):
forward to the target layer, score the target class, take the gradient of the score
with respect to the layer's activations ``A`` (``torch.autograd.grad``, so no
parameter ``.grad`` is touched), weigh, combine, ReLU, upsample to the input size and
normalise each map to [0, 1]. Each method is one small :class:`Cam` in the registry
:data:`CAMS`, overriding the one step in which it differs:

* Grad-CAM (Selvaraju et al., ICCV 2017): channel weights ``mean_ij(dy/dA_k)``, so
  ``ReLU(sum_k w_k A_k)``, the heatmap used by Guan & Loew (arXiv:2201.02771);
* Grad-CAM++ (Chattopadhay et al., WACV 2018): channel weights from second-order pixel
  weights of the positive gradients, with the exponential score's closed form;
* HiResCAM (Draelos & Carin, 2020): combined element-wise, ``ReLU(sum_k dy/dA_k * A_k)``;
* LayerCAM (Jiang et al., TIP 2021): combined element-wise, ``ReLU(sum_k ReLU(dy/dA_k) * A_k)``;
* fused: LayerCAM of the last two stages, multiplied;
* Score-CAM (Wang et al., CVPR-W 2020): gradient-free, weights from the classifier's
  score of channel-masked images (:func:`score_cam`).

There are no hooks: a :class:`~camseg.models.Classifier` runs its stages in order, so
the stages before the layer run without autograd and only the tail is
differentiated. Calls share no state, so any number of threads may compute heatmaps
with one model at once. Where the layer is the last stage and the head is global
average pooling + linear, ``dy/dA_k = W[c, k] / (H W)`` exactly, so the gradient is
known without a backward pass (and Grad-CAM equals CAM, Zhou et al., CVPR 2016, up to
scale); the same identity gives heatmaps from one ONNX pass.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.heat.methods import CamMethod, parse_method

FUSED_LAYERS = 2  # the fused map multiplies LayerCAM of the last two stages


class Cam:
    """One CAM method: how a layer's activations ``A`` ``(N, K, h, w)`` and the target
    score's gradients ``dy/dA`` (same shape) become maps ``(N, h, w)`` after ReLU, before
    upsampling and normalisation. The rest of the template (forward, target, gradient,
    upsample, normalise) is shared, so a method overrides one step, as pytorch-grad-cam's
    ``BaseCAM`` subclasses do: :meth:`weights` (one number per channel, combined as
    ``ReLU(sum_k w_k A_k)``), or :meth:`combine` itself.
    """

    method: ClassVar[CamMethod]
    gradients: ClassVar[bool] = True  # False: the classifier scores masked inputs instead (score_cam)
    layers: ClassVar[int] = 1  # the layers whose maps are multiplied, ending at the chosen one

    @property
    def one_pass(self) -> bool:
        """Whether maps follow from one layer's activations and the GAP + linear head's
        weight alone (:func:`analytic_grads`): the one-pass form of an exported model."""
        return self.gradients and self.layers == 1

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        """Channel weights ``(N, K)``."""
        raise NotImplementedError(type(self).__name__)

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        return F.relu(torch.einsum("nk,nkhw->nhw", self.weights(acts, grads), acts))


class GradCam(Cam):
    method = CamMethod.GRADCAM

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        return grads.mean(dim=(2, 3))


class GradCamPlusPlus(Cam):
    method = CamMethod.GRADCAM_PP

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        g2 = grads.pow(2)
        g3 = g2 * grads
        denom = 2 * g2 + (acts.sum(dim=(2, 3), keepdim=True) * g3)
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        return (alpha * F.relu(grads)).sum(dim=(2, 3))


class HiResCam(Cam):
    method = CamMethod.HIRESCAM

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        return F.relu((grads * acts).sum(1))


class LayerCam(Cam):
    method = CamMethod.LAYERCAM

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        return F.relu((F.relu(grads) * acts).sum(1))


class FusedCam(LayerCam):
    """LayerCAM maps of the last :data:`FUSED_LAYERS` stages, each upsampled and
    normalised, multiplied (:meth:`RawCam.render`): the deep layer's localisation at the
    shallower layer's resolution."""

    method = CamMethod.FUSED
    layers = FUSED_LAYERS


class ScoreCam(Cam):
    """Gradient-free: one forward pass per channel (:func:`score_cam`), so it runs on
    ONNX Runtime alone, for any model."""

    method = CamMethod.SCORECAM
    gradients = False


# the registry: every CAM method, by name (the sweeps, the command lines and the proto mapping come from it)
CAMS: Mapping[CamMethod, Cam] = MappingProxyType(
    {c.method: c for c in (GradCam(), GradCamPlusPlus(), HiResCam(), LayerCam(), FusedCam(), ScoreCam())})
# the classifier's gradient CAM methods (the sweeps run these)
METHODS: tuple[str, ...] = tuple(m.value for m, c in CAMS.items() if c.gradients)

Targets = int | Sequence[int] | Tensor | None


@runtime_checkable
class CamNetwork(Protocol):
    """What heatmaps need of a network. camseg's :class:`~camseg.models.Classifier`,
    an imported ONNX graph (:class:`camseg.models.imported.ImportedNetwork`) and any torch
    module wrapped in :class:`TorchNetwork` provide it. Every one is an ``nn.Module``
    whose ``forward`` maps ``(N, C, H, W)`` images in [0, 1] to logits."""

    @property
    def in_channels(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def cam_layer(self) -> str: ...

    @property
    def layer_names(self) -> list[str]: ...

    def check_layer(self, name: str) -> int:
        """A position of ``name`` that orders layers shallow to deep; NotFoundError for
        an unknown layer."""
        ...

    def fused_layers(self, layer: str) -> list[str]:
        """The layers the fused map multiplies, shallow first, ending at ``layer``."""
        ...

    def head_weight(self, layer: str) -> Tensor | None:
        """The linear head's weight where the logits are linear in the global average of
        ``layer`` (so ``dy/dA`` is known in closed form), else None."""
        ...

    def activations(self, x: Tensor, layers: Sequence[str], *, leaves: bool) -> tuple[Tensor, list[Tensor]]:
        """Logits and the activations of ``layers``. With ``leaves`` (under
        ``torch.enable_grad()``) the activations are differentiable and only the network
        downstream of them is recorded, so ``torch.autograd.grad(score, acts)`` is cheap."""
        ...

    def modules(self) -> Iterator[nn.Module]: ...

    def __call__(self, x: Tensor) -> Tensor: ...

    def eval(self) -> nn.Module: ...


class TorchNetwork(nn.Module):
    """Any torch classifier (``forward`` gives logits) as a :class:`CamNetwork`, its CAM
    layers addressed by submodule name (``model.named_modules()``).

    Forward hooks are registered once, here, and read per-call state that is local to
    the calling thread, so concurrent calls do not see each other's activations.
    :meth:`remove` takes the hooks off again (twice is harmless).
    """

    def __init__(self, module: nn.Module, layers: Sequence[str], *, in_channels: int, num_classes: int,
                 cam_layer: str | None = None):
        super().__init__()
        if not layers:
            raise InvalidInputError("a torch network needs at least one layer name")
        named = dict(module.named_modules())
        unknown = [name for name in layers if name not in named]
        if unknown:
            raise NotFoundError(f"no submodule {', '.join(map(repr, unknown))} in {type(module).__name__}")
        self.module = module
        self._layers = list(layers)
        self._in_channels, self._num_classes = in_channels, num_classes
        self._cam_layer = cam_layer or self._layers[-1]
        self.check_layer(self._cam_layer)
        self._state = threading.local()
        self._handles = [named[name].register_forward_hook(self._hook(name)) for name in self._layers]

    def _hook(self, name: str) -> Callable[[nn.Module, object, Tensor], Tensor | None]:
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor | None:
            call = getattr(self._state, "call", None)
            if call is None or name not in call["layers"]:
                return None
            if call["leaves"] and not call["acts"]:
                # the first layer reached becomes the leaf; deeper ones stay in its graph
                output = output.detach().requires_grad_(True)
            call["acts"][name] = output
            return output
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def in_channels(self) -> int:
        return self._in_channels

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def cam_layer(self) -> str:
        return self._cam_layer

    @property
    def layer_names(self) -> list[str]:
        return list(self._layers)

    def check_layer(self, name: str) -> int:
        if name not in self._layers:
            raise NotFoundError(f"unknown layer {name!r}; this model has {', '.join(self._layers)}")
        return self._layers.index(name)

    def fused_layers(self, layer: str) -> list[str]:
        k = self.check_layer(layer)
        return self._layers[max(0, k - FUSED_LAYERS + 1): k + 1]

    def head_weight(self, layer: str) -> Tensor | None:
        return None

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.module(x)
        return out

    def activations(self, x: Tensor, layers: Sequence[str], *, leaves: bool) -> tuple[Tensor, list[Tensor]]:
        for name in layers:
            self.check_layer(name)
        self._state.call = {"layers": set(layers), "leaves": leaves, "acts": {}}
        try:
            logits = self.module(x)
            acts = self._state.call["acts"]
        finally:
            self._state.call = None
        return logits, [acts[name] for name in layers]


@dataclass(frozen=True)
class CamResult:
    """Heatmaps ``(N, H, W)`` in [0, 1] (or raw when not normalised), the logits
    ``(N, classes)``, the target class of each map and the layer(s) used."""

    heatmaps: Tensor
    logits: Tensor
    targets: Tensor
    layers: tuple[str, ...]

    @property
    def probabilities(self) -> Tensor:
        return F.softmax(self.logits, dim=1)


def cam_of(method: str | CamMethod) -> Cam:
    """The registry's :class:`Cam` of ``method``."""
    return CAMS[parse_method(method)]


def normalise_maps(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-map min-max scaling to [0, 1]; a constant map becomes all zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def _normalise_fresh(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """:func:`normalise_maps` in place, for maps nobody else holds (just upsampled): one
    pass for the extremes and one for the scaling, no temporaries of the maps' size."""
    flat = maps.reshape(maps.shape[0], -1)
    lo, hi = torch.aminmax(flat, dim=1, keepdim=True)
    span = hi - lo
    # a flat map's span is taken as infinite: it becomes all zeros, as normalise_maps makes it
    flat.sub_(lo).div_(torch.where(span > eps, span, torch.full_like(span, float("inf"))))
    return maps


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@dataclass(frozen=True)
class HeatGrid:
    """Where the cells of a heatmap at a layer's own resolution lie in its image: per
    axis, image pixels per cell (``scale``) and the image coordinate of the grid's first
    edge (``offset``).

    Coordinates are continuous, with image pixel ``(0, 0)`` covering ``[0, 1) x [0, 1)``:
    cell ``(r, c)`` covers rows ``[offset_y + r scale_y, offset_y + (r + 1) scale_y)`` and
    columns likewise, so its centre lies at pixel-centre coordinates
    ``offset + (r + 0.5) scale - 0.5``. An ROI is resized whole to the model's input
    (no padding, no crop; the aspect may change) and the layer's grid covers the input
    evenly, so for an ROI of ``H x W`` and a grid of ``h x w``: ``scale = (H / h, W / w)``,
    ``offset = (0, 0)``. Image pixel ``(y, x)`` samples the grid bilinearly at cell
    coordinates ``((y + 0.5 - offset_y) / scale_y - 0.5, ...)``, clamped to the edge
    cells (half-pixel centres: ``F.interpolate(align_corners=False)``, OpenCV's
    ``INTER_LINEAR``); :meth:`to_image` does exactly that.
    """

    scale_y: float
    scale_x: float
    offset_y: float = 0.0
    offset_x: float = 0.0

    @classmethod
    def covering(cls, grid: tuple[int, int], image: tuple[int, int]) -> HeatGrid:
        """The grid of ``grid`` (h, w) cells laid evenly over an ``image`` (H, W)."""
        return cls(image[0] / grid[0], image[1] / grid[1])

    def to_image(self, maps: Tensor, size: tuple[int, int]) -> Tensor:
        """Maps ``(n, h, w)`` on this grid sampled at the pixels of an image of ``size``
        (bilinear, half-pixel centres, edges clamped): ``(n, *size)``."""
        h, w = int(maps.shape[-2]), int(maps.shape[-1])
        rows = _taps(size[0], h, self.scale_y, self.offset_y)
        cols = _taps(size[1], w, self.scale_x, self.offset_x)
        m = maps[:, rows[0]] * rows[2][None, :, None] + maps[:, rows[1]] * (1 - rows[2])[None, :, None]
        return m[:, :, cols[0]] * cols[2][None, None, :] + m[:, :, cols[1]] * (1 - cols[2])[None, None, :]


def _taps(n: int, cells: int, scale: float, offset: float) -> tuple[Tensor, Tensor, Tensor]:
    """For ``n`` image pixels along an axis: the two cells each samples and the first's weight."""
    u = ((torch.arange(n, dtype=torch.float64) + 0.5 - offset) / scale - 0.5).clamp(0, cells - 1)
    lo = u.floor().long()
    hi = (lo + 1).clamp(max=cells - 1)
    return lo, hi, (1 - (u - lo)).to(torch.float32)


def analytic_grads(weight: Tensor, targets: Tensor, acts_shape: torch.Size) -> Tensor:
    """``dy_c/dA`` for a GAP + linear head: ``W[c, k] / (h w)`` at every position."""
    n, k, h, w = acts_shape
    g = weight[targets].to(torch.float32) / float(h * w)
    return g[:, :, None, None].expand(n, k, h, w)


@dataclass
class _ModeHold:
    """Calls in flight on a model switched to eval, and each submodule's own flag."""

    calls: int
    flags: list[tuple[nn.Module, bool]]


_MODE_LOCK = threading.Lock()
_HOLDS: weakref.WeakKeyDictionary[object, _ModeHold] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _eval_mode(model: CamNetwork) -> Iterator[None]:
    """Heatmaps need eval-mode BatchNorm and dropout. A model wholly in eval mode (every
    served model) is left untouched. Otherwise the first of concurrent calls switches it
    to eval and the last restores every submodule's own flag, so no call runs with
    train-mode BatchNorm (batch statistics, running averages updated) because another
    call restored the mode under it."""
    with _MODE_LOCK:
        hold = _HOLDS.get(model)
        if hold is None and any(m.training for m in model.modules()):
            hold = _HOLDS[model] = _ModeHold(0, [(m, m.training) for m in model.modules()])
            model.eval()
        if hold is not None:
            hold.calls += 1
    if hold is None:
        yield
        return
    try:
        yield
    finally:
        with _MODE_LOCK:
            hold.calls -= 1
            if hold.calls == 0:
                del _HOLDS[model]
                for m, flag in hold.flags:
                    m.training = flag


def resolve_targets(targets: Targets, n: int, num_classes: int, device: torch.device | str = "cpu") -> Tensor:
    """One class index per image: the last class when ``targets`` is None, one class for
    all, or one each; InvalidInputError for non-integers, a wrong count or a class out
    of range."""
    if targets is None:
        t = torch.full((n,), num_classes - 1, dtype=torch.long)
    elif isinstance(targets, int | np.integer) or (
        isinstance(targets, Tensor) and targets.ndim == 0
    ):
        t = torch.full((n,), int(targets), dtype=torch.long)
    else:
        t = torch.as_tensor(targets)
        if t.is_floating_point() or t.is_complex():
            raise InvalidInputError(f"targets must be integer class indices, got {t.dtype}")
        t = t.to(torch.long).reshape(-1)
        if t.numel() != n:
            raise InvalidInputError(f"{t.numel()} targets for {n} images")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise InvalidInputError(f"target class out of range 0..{num_classes - 1}")
    return t.to(device)


MIN_SIDE = 16  # every architecture downsamples 16x; densenet fails below 15 pixels


def _check_images(model: CamNetwork, images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != model.in_channels:
        raise InvalidInputError(
            f"images must be shaped (N, {model.in_channels}, H, W), got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise InvalidInputError(f"images must be floating point in [0, 1], got {images.dtype}")
    if images.shape[0] == 0:
        raise InvalidInputError("images: the batch is empty")
    if min(images.shape[2:]) < MIN_SIDE:
        raise InvalidInputError(
            f"images must be at least {MIN_SIDE}x{MIN_SIDE} (the networks downsample 16x), "
            f"got {tuple(images.shape[2:])}"
        )
    param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    if param is not None and param.is_floating_point() and images.dtype != param.dtype:
        raise InvalidInputError(f"images must be {param.dtype} like the model, got {images.dtype}")


def _check_size(size: tuple[int, int] | None) -> None:
    if size is not None and (len(size) != 2 or min(int(v) for v in size) < 1):
        raise InvalidInputError(f"size must be two positive integers (H, W), got {size!r}")


@dataclass(frozen=True)
class RawCam:
    """Heatmaps before upsampling: one ``(N, h, w)`` map per layer at the layer's own
    resolution (after ReLU), with the logits and targets of the pass.

    :meth:`render` brings them to any output size, so a caller with images of several
    sizes runs the network once and resizes each map once, straight to its image's size.
    """

    parts: tuple[Tensor, ...]
    logits: Tensor
    targets: Tensor
    layers: tuple[str, ...]
    calibrated: bool = False  # parts are probabilities already: resized, never rescaled

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def cells(self, *, index: Tensor | None = None) -> Tensor:
        """Maps ``(n, h, w)`` of the images ``index`` (all by default) at the layer's own
        resolution, in [0, 1]: min-max normalised over the cells (calibrated maps are
        only clamped). Laid over an image by :class:`HeatGrid`, they give :meth:`render`'s
        map: bilinear resampling is a weighted mean, so ``render(size)`` equals
        ``normalise_maps(grid.to_image(cells(), size))`` (float rounding aside; a
        calibrated map in [0, 1] needs no normalising).

        Raises:
            InvalidInputError: for a fused map, whose layers have different resolutions
                (it exists only at an image's size).
        """
        if len(self.parts) != 1:
            raise InvalidInputError(f"a map fused from {len(self.parts)} layers has no single layer resolution; "
                                    "ask for it at the image's resolution")
        part = self.parts[0] if index is None else self.parts[0][index]
        return part.clamp(0.0, 1.0) if self.calibrated else normalise_maps(part)

    def render(self, size: tuple[int, int], *, index: Tensor | None = None, normalise: bool = True) -> Tensor:
        """Maps ``(n, *size)`` of the images ``index`` (all by default).

        One layer: upsampled, then min-max normalised. Several (fused): each upsampled
        and normalised, multiplied, and the geometric mean taken, then normalised.
        """
        parts = self.parts if index is None else tuple(p[index] for p in self.parts)
        if self.calibrated:
            return upsample(parts[0], size).clamp(0.0, 1.0)
        if len(parts) == 1:
            maps = upsample(parts[0], size)
            if not normalise:
                return maps
            # a fresh tensor from upsampling is scaled in place (at the layer's size it is the caller's)
            return _normalise_fresh(maps) if maps.data_ptr() != parts[0].data_ptr() else normalise_maps(maps)
        fused = torch.ones((parts[0].shape[0], *size), device=parts[0].device)
        for p in parts:
            fused = fused * normalise_maps(upsample(p, size))
        maps = fused.sqrt() if len(parts) == 2 else fused.pow(1.0 / len(parts))
        return normalise_maps(maps) if normalise else maps


def raw_cam(
    model: CamNetwork,
    images: Tensor,
    *,
    method: str | CamMethod = CamMethod.GRADCAM,
    targets: Targets = None,
    layer: str | None = None,
    analytic: bool = True,
) -> RawCam:
    """The forward (and, where needed, backward) pass of :func:`compute_cam`, stopped
    before upsampling; same arguments, same checks."""
    cam = cam_of(method)
    if not cam.gradients:
        raise InvalidInputError(f"{cam.method.value} runs the classifier once per channel; run it through "
                                "camseg.pipeline.run or camseg.heat.cam.score_cam")
    _check_images(model, images)
    layer = layer or model.cam_layer
    model.check_layer(layer)
    t = resolve_targets(targets, images.shape[0], model.num_classes, images.device)
    layers = model.fused_layers(layer) if cam.layers > 1 else [layer]
    with _eval_mode(model):
        weight = model.head_weight(layer) if analytic and cam.one_pass else None
        if weight is not None:
            with torch.inference_mode():
                logits, (acts,) = model.activations(images, layers, leaves=False)
                maps = cam.combine(acts, analytic_grads(weight, t, acts.shape))
            return RawCam((maps,), logits, t, (layer,))
        with torch.enable_grad():
            logits, acts_list = model.activations(images, layers, leaves=True)
            score = logits.gather(1, t[:, None]).sum()
            grads = torch.autograd.grad(score, acts_list)
        with torch.no_grad():
            parts = tuple(cam.combine(a.detach(), g) for a, g in zip(acts_list, grads, strict=True))
    return RawCam(parts, logits.detach(), t, tuple(layers))


def compute_cam(
    model: CamNetwork,
    images: Tensor,
    *,
    method: str | CamMethod = CamMethod.GRADCAM,
    targets: Targets = None,
    layer: str | None = None,
    size: tuple[int, int] | None = None,
    normalise: bool = True,
    analytic: bool = True,
) -> CamResult:
    """Heatmaps of ``targets`` (default: the last class, tumor) for a batch of images.

    Args:
        model: the classifier; left exactly as it was.
        images: ``(N, C, H, W)`` floats in [0, 1] on the model's device.
        method: ``gradcam``, ``gradcam++``, ``hirescam``, ``layercam`` or ``fused``
            (the product of min-max-normalised LayerCAM maps of the last two stages,
            which keeps the deep layer's localisation at the shallower layer's
            resolution).
        targets: one class for all images, one per image, or None for the last class.
        layer: a stage name; default the model's Grad-CAM layer.
        size: output ``(H, W)``; default the input size. ``(h, w)`` of the layer
            itself skips upsampling.
        normalise: scale each map to [0, 1].
        analytic: use the closed-form gradient where the layer feeds the GAP + linear
            head directly (exact; no backward pass).

    Raises:
        TypeError / InvalidInputError / NotFoundError before any computation.
    """
    parse_method(method)
    _check_images(model, images)
    _check_size(size)
    raw = raw_cam(model, images, method=method, targets=targets, layer=layer, analytic=analytic)
    out_size = size or (int(images.shape[2]), int(images.shape[3]))
    return CamResult(raw.render(out_size, normalise=normalise), raw.logits, raw.targets, raw.layers)


def lesion_targets(model: CamNetwork, images: Tensor, positives: Sequence[int]) -> int | Tensor:
    """The class each heatmap of ``images`` explains: the one lesion class for all, or with
    several lesion classes (``positives``) each image's most probable of them."""
    pos = tuple(positives)
    if len(pos) == 1:
        return pos[0]
    with torch.inference_mode():
        probs = torch.cat([torch.softmax(model(images[i : i + 64]), dim=1) for i in range(0, len(images), 64)])
    lesion = torch.tensor(pos, device=probs.device)
    return lesion[probs[:, lesion].argmax(1)]


def cam_batches(
    model: CamNetwork, images: Tensor, *, batch_size: int = 64, method: str | CamMethod = CamMethod.GRADCAM,
    targets: Targets = None, layer: str | None = None,
) -> Iterator[CamResult]:
    """:func:`compute_cam` over a large set, ``batch_size`` images at a time, at the input
    size. ``targets`` is None, one class, or one per image of the whole set."""
    if batch_size < 1:
        raise InvalidInputError("batch size must be at least 1")
    per_image = targets is not None and not isinstance(targets, int | np.integer) and not (
        isinstance(targets, Tensor) and targets.ndim == 0)
    all_targets = torch.as_tensor(targets) if per_image else None
    for i in range(0, len(images), batch_size):
        t = all_targets[i : i + batch_size] if all_targets is not None else targets
        yield compute_cam(model, images[i : i + batch_size], method=method, layer=layer, targets=t)


Classify = Callable[[Tensor], Tensor]


def score_cam(acts: Tensor, images: Tensor, classify: Classify, targets: Tensor, *, batch: int = 64) -> Tensor:
    """Score-CAM maps ``(N, h, w)`` at the layer's resolution (Wang et al., "Score-CAM:
    Score-weighted visual explanations for CNNs", CVPR-W 2020), gradient-free.

    Each channel ``A_k`` of an image's activations is upsampled to the input, min-max
    scaled to [0, 1] and multiplied into the image; the weight of ``A_k`` is the target
    class's probability for that masked image (the authors' code), and the map is
    ``ReLU(sum_k w_k A_k)``. ``classify`` maps an input batch to probabilities; it is
    called on at most ``batch`` masked images at a time. A constant channel masks the
    image to zero, like the reference implementation.
    """
    if acts.ndim != 4 or images.ndim != 4 or acts.shape[0] != images.shape[0]:
        raise InvalidInputError(f"activations {tuple(acts.shape)} do not match images {tuple(images.shape)}")
    n, k = int(acts.shape[0]), int(acts.shape[1])
    size = (int(images.shape[2]), int(images.shape[3]))
    maps = torch.empty((n, *acts.shape[2:]), dtype=torch.float32)
    for i in range(n):
        up = normalise_maps(upsample(acts[i].float(), size))  # (K, H, W)
        weights = torch.empty(k, dtype=torch.float32)
        for s in range(0, k, batch):
            masked = images[i][None] * up[s : s + batch, None]
            weights[s : s + batch] = classify(masked)[:, int(targets[i])].float()
        maps[i] = F.relu(torch.einsum("k,khw->hw", weights, acts[i].float()))
    return maps


def raw_from_activations(acts: Tensor, weight: Tensor, targets: Tensor, *,
                         method: str | CamMethod = CamMethod.GRADCAM) -> Tensor:
    """Maps ``(N, h, w)`` at the layer's resolution from last-stage activations and the
    linear head's weight, as exported by ``camseg export`` (the one-pass path)."""
    cam = cam_of(method)
    if not cam.one_pass:
        raise InvalidInputError(f"the {cam.method.value} method has no one-pass form"
                                + (f" (it needs {cam.layers} layers)" if cam.layers > 1 else ""))
    return cam.combine(acts, analytic_grads(weight, targets, acts.shape))


def cam_from_activations(
    acts: Tensor, weight: Tensor, targets: Tensor, *, method: str | CamMethod = CamMethod.GRADCAM,
    size: tuple[int, int] | None = None,
) -> Tensor:
    """Normalised heatmaps from last-stage activations and the linear head's weight,
    as exported by ``camseg export``: the one-pass path, numerically the same as
    :func:`compute_cam` at the default layer."""
    maps = raw_from_activations(acts, weight, targets, method=method)
    out_size = size or (int(acts.shape[-2]), int(acts.shape[-1]))
    return normalise_maps(upsample(maps, out_size))


# ------------------------------------------------------------ test-time augmentation
TTA_SIZES = (1, 4, 8)


def dihedral(x: Tensor, k: int) -> Tensor:
    """Element ``k`` (0..7) of the dihedral group D4 applied to the last two axes:
    bit 4 transposes, then bit 1 flips columns, bit 2 flips rows. 0..3 are the four
    flips (a group of their own); 0..7 add the quarter turns and diagonal mirrors."""
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x


def undo_dihedral(x: Tensor, k: int) -> Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, k), k) == x``."""
    if k & 2:
        x = x.flip(-2)
    if k & 1:
        x = x.flip(-1)
    if k & 4:
        x = x.transpose(-1, -2)
    return x


def tta_cam(cam: Callable[[Tensor, Tensor | None], RawCam], images: Tensor, n: int) -> RawCam:
    """Heatmaps averaged over ``n`` (1, 4 or 8) dihedral transforms of square inputs.

    ``cam(x, targets)`` computes one :class:`RawCam` (``targets`` None: its own choice).
    Each transform's maps are rendered at the input size and normalised, mapped back
    and averaged; the logits are averaged too, and every transform explains the
    targets of the untransformed pass. Because the transforms form a group, the result
    is equivariant: the averaged map of a flipped image is the flipped averaged map.
    """
    if n not in TTA_SIZES:
        raise InvalidInputError(f"test-time augmentation takes 1, 4 or 8 transforms, not {n}")
    first = cam(images, None)
    if n == 1:
        return first
    if images.shape[-1] != images.shape[-2]:
        raise InvalidInputError("test-time augmentation needs square inputs")
    size = (int(images.shape[-2]), int(images.shape[-1]))
    total = first.render(size)
    logits = first.logits.clone()
    for k in range(1, n):
        r = cam(dihedral(images, k), first.targets)
        total += undo_dihedral(r.render(size), k)
        logits += r.logits
    return RawCam((total / n,), logits / n, first.targets, first.layers, calibrated=first.calibrated)
