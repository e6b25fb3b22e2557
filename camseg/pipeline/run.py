"""One segmentation pipeline for every caller: decoded images in; classes, heatmaps,
masks, thresholds and Dice out.

The command line (``camseg segment``), the demo, the gRPC service and the workers all
call :func:`run` on a :class:`LoadedModel`. Every domain decision lives here: which
engine computes the heatmaps (one ONNX pass where the method allows it at the exported
layer, else the torch path), how the work is chunked, the positive class(es) read from
the model's metadata, the classifier gate. Each input is checked once, each threshold
computed once, each heatmap resized once (straight from the layer's resolution to its
image's size) and each encoding made only when asked for.

>>> model = LoadedModel.load("models/resnet")  # doctest: +SKIP
>>> result = run(model, [image], Options(threshold=parse_rule("p90")), truths=[truth])  # doctest: +SKIP
>>> result.items[0].dice  # doctest: +SKIP
0.71
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from camseg.core.errors import InvalidInputError, UnsupportedError
from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES
from camseg.core.metrics import dice
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.core.types import BoolArray, FloatArray
from camseg.data.tensors import resize_image, to_channels
from camseg.heat.cam import CAMS, CamNetwork, HeatGrid, RawCam, raw_cam, raw_from_activations, score_cam, tta_cam
from camseg.heat.masks import Masks, segment_maps
from camseg.heat.methods import CamMethod, Segmenter, parse_method
from camseg.heat.overlay import overlay
from camseg.heat.refine import Refiner, refine_masks
from camseg.heat.rules import ThresholdRule
from camseg.io import codecs
from camseg.models.imported import load_imported
from camseg.models.inference import OnnxModel
from camseg.models.modelconfig import CONFIG_FILE, Colour, ModelConfig, Source, from_metadata
from camseg.models.modeldir import ONNX_FILE, load_model
from camseg.pipeline.options import Choices, Encoding, Engine, HeatResolution, Options, resolve
from camseg.pipeline.recipe_record import Recipe, load_recipe
from camseg.pipeline.student import Student, load_student
from camseg.pipeline.whole import WholeInfo, is_whole, segment_whole


@dataclass(frozen=True)
class LoadedModel:
    """A model version in memory: a camseg-trained one (the torch classifier, the ONNX
    session where exported, the metadata) or an imported ONNX classifier (the ONNX
    session and the converted graph). Both are described by one :class:`ModelConfig`.
    Safe to share between threads.

    ``network`` is None only for an imported graph whose gradients are unavailable
    (``unavailable`` says why: an unsupported operator, a parity failure); it still
    classifies and runs the gradient-free methods."""

    path: Path
    meta: dict[str, Any]
    network: CamNetwork | None
    onnx: OnnxModel | None
    classes: tuple[str, ...]
    positives: tuple[int, ...]
    student: Student | None = None  # the distilled segmentation network, where trained
    recipe: Recipe | None = None  # how this model's masks are made, where chosen
    config: ModelConfig | None = None
    source: Source = Source.CAMSEG
    unavailable: str | None = None

    @classmethod
    def load(cls, path: Path | str, *, onnx: bool | None = None, providers: str = "auto",
             threads: int = 0, spinning: bool = True, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> LoadedModel:
        """Load ``path``: a camseg model directory, or an imported ``model.onnx`` with its
        ``camseg-model.json``. For camseg models ``onnx`` True requires ``model.onnx``,
        False skips it, None loads it where present; the distilled student and the recipe
        come with it where the directory holds them. ``spinning`` False keeps ONNX
        Runtime's threads from spin-waiting between runs (:func:`camseg.models.runtime.make_session`).
        Every file read must stay in ``path`` and fit ``max_bytes``, an ONNX graph's external
        data and declared tensors included (:mod:`camseg.models.modelfiles`)."""

        path = Path(path)
        if (path / CONFIG_FILE).is_file():

            imp = load_imported(path, providers=providers, threads=threads, spinning=spinning, max_bytes=max_bytes)
            cfg = imp.config
            meta = {"architecture": "imported", "source": Source.IMPORTED.value,
                    "config": cfg.model_dump(mode="json", exclude_none=True), "layers": imp.layers,
                    "gradcam_layer": imp.onnx.cam_layer or "", "parity": imp.parity}
            return cls(path, meta, imp.network, imp.onnx, cfg.classes, cfg.lesion_indices, None, None,
                       config=cfg, source=Source.IMPORTED, unavailable=imp.unavailable)
        network, meta = load_model(path, max_bytes=max_bytes)
        session = None
        if onnx or (onnx is None and (path / ONNX_FILE).is_file() and meta.get("onnx")):
            session = OnnxModel(path, providers=providers, threads=threads, spinning=spinning, max_bytes=max_bytes)
        classes = tuple(meta.get("classes") or [str(i) for i in range(network.spec.num_classes)])
        if len(classes) != network.spec.num_classes:
            raise InvalidInputError(f"{path}: {len(classes)} classes in metadata for a "
                                    f"{network.spec.num_classes}-class network")
        cfg = from_metadata({**meta, "classes": list(classes)}, cam_layer=network.cam_layer)
        student = load_student(path, providers=providers, threads=threads, onnx=False if onnx is False else None,
                               spinning=spinning, max_bytes=max_bytes)
        return cls(path, meta, network, session, classes, cfg.lesion_indices, student, load_recipe(path),
                   config=cfg, source=Source.CAMSEG)

    @property
    def default_method(self) -> CamMethod:
        """The config's CAM method (``cam.method``), else Grad-CAM."""
        method = self.config.cam.method if self.config is not None else None
        return parse_method(method) if method else CamMethod.GRADCAM

    def require_trained(self, what: str) -> None:
        """FAILED_PRECONDITION for what only a camseg-trained model supports."""
        if self.source is Source.IMPORTED:
            raise UnsupportedError(f"{what} needs a camseg-trained model; {self.path} is an imported ONNX "
                                   f"classifier ({CONFIG_FILE}): segment, evaluate and bulk jobs take it")

    def gradients(self) -> CamNetwork:
        """The differentiable network; FAILED_PRECONDITION where the graph has none."""
        if self.network is None:
            raise UnsupportedError(f"{self.path.name}: gradient CAM methods are unavailable for this model: "
                                   f"{self.unavailable}; scorecam runs on ONNX Runtime alone")
        return self.network

    def default_options(self) -> Options:
        """The recipe's options where the model has one, else the defaults (with the
        config's CAM method)."""
        return self.options_for()[0]

    def options_for(self, request: Options | Choices | None = None) -> tuple[Options, bool]:
        """The options to run for a caller's ``request``, and whether they are the recipe's:
        :class:`Options` run as given; :class:`Choices` (None: nothing chosen) are resolved
        against this model's recipe and default method by :func:`camseg.pipeline.options.resolve`."""
        if isinstance(request, Options):
            return request, False
        return resolve(self.recipe.options if self.recipe is not None else None, request or Choices(),
                       default_method=self.default_method)

    @property
    def input_hw(self) -> tuple[int, int]:
        assert self.config is not None
        return self.config.size

    @property
    def size(self) -> int:
        """The input's side (its height where it is not square)."""
        return self.input_hw[0]

    @property
    def channels(self) -> int:
        assert self.config is not None
        return self.config.input.channels

    @property
    def cam_layer(self) -> str | None:
        """The default CAM layer."""
        if self.network is not None:
            return self.network.cam_layer
        return self.onnx.cam_layer if self.onnx is not None else None

    @property
    def positive(self) -> int:
        """The first positive class (the tumor class of a two-class model)."""
        return self.positives[0]

    def engine_for(self, options: Options) -> Engine:
        """The engine :func:`run` uses for ``options``; checks the layer and the target."""
        if isinstance(options.method, Segmenter):  # the distilled student, the one segmenter
            if self.student is None:
                raise UnsupportedError(f"{self.path.name}: this model has no distilled student "
                                       "(camseg distill trains one)")
            return Engine.ONNX if self.student.onnx is not None and options.engine is not Engine.TORCH \
                else Engine.TORCH
        if options.target is not None and not 0 <= options.target < len(self.classes):
            raise InvalidInputError(f"target class {options.target} is out of range 0..{len(self.classes) - 1}")
        cam = CAMS[options.method]
        if not cam.gradients:
            on_onnx = (self.onnx is not None and self.onnx.cam_layer is not None
                       and options.layer in (None, self.onnx.cam_layer))
            if on_onnx and options.engine is not Engine.TORCH:
                return Engine.ONNX
            if options.engine is Engine.ONNX:
                raise UnsupportedError(f"{options.method.value} at layer {options.layer} needs the torch engine")
            self.gradients().check_layer(options.layer or self.gradients().cam_layer)
            return Engine.TORCH
        network = self.gradients()
        if options.layer is not None:
            network.check_layer(options.layer)
        one_pass = (self.onnx is not None and self.onnx.cam_layer is not None and self.onnx.head_weight is not None
                    and cam.one_pass and options.layer in (None, self.onnx.cam_layer))
        if options.engine is Engine.ONNX and not one_pass:
            raise UnsupportedError(f"{options.method.value} at layer {options.layer or network.cam_layer} "
                                   "has no one-pass ONNX form for this model")
        if options.engine is Engine.TORCH:
            return Engine.TORCH
        return Engine.ONNX if one_pass else Engine.TORCH

    def prepare(self, images: Sequence[FloatArray]) -> Tensor:
        """Decoded images to the model's input batch ``(N, channels, height, width)``; an
        RGB image becomes luminance for a gray model (repeated where it takes 3 channels)."""
        if not images:
            raise InvalidInputError("no images")
        size, channels = self.input_hw, self.channels
        gray = self.config is not None and self.config.input.colour is Colour.GRAY
        batch = torch.empty((len(images), channels, *size), dtype=torch.float32)
        for i, img in enumerate(images):
            if gray and img.ndim == 3:
                img = _gray(img)
            batch[i] = resize_image(torch.from_numpy(to_channels(img, channels)), size)
        return batch

    def classify_prepared(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities ``(N, classes)`` of a prepared batch (ONNX where exported)."""
        if self.onnx is not None:
            return self.onnx.classify(x)
        network = self.gradients()
        with torch.inference_mode():
            probs: npt.NDArray[np.float32] = F.softmax(network(torch.from_numpy(x)), dim=1).numpy()
        return probs

    def classify(self, images: Sequence[FloatArray]) -> npt.NDArray[np.float32]:
        return self.classify_prepared(self.prepare(images).numpy())

    def _targets(self, options: Options, probs: Tensor | None) -> int | Tensor:
        if options.target is not None:
            return options.target
        if len(self.positives) == 1 or probs is None:
            return self.positive
        pos = torch.tensor(self.positives)
        return pos[probs[:, pos].argmax(1)]

    def raw_cam(self, engine: Engine, x: Tensor, options: Options) -> RawCam:
        """The heatmap pass of a prepared batch on ``engine`` (averaged over the
        transforms of ``options.tta``)."""
        return tta_cam(lambda xx, t: self._raw_once(engine, xx, options, t), x, options.tta)

    def decide(self, probs: Tensor, threshold: float | None) -> Tensor:
        """Each image's class: the most probable, or with ``threshold``, the most probable
        positive class where the positive classes hold at least ``threshold`` of the
        probability, else the most probable other class."""
        if threshold is None:
            return probs.argmax(1)
        pos = torch.tensor(self.positives)
        neg = torch.tensor([c for c in range(probs.shape[1]) if c not in self.positives])
        best_pos = pos[probs[:, pos].argmax(1)]
        if len(neg) == 0:
            return best_pos
        best_neg = neg[probs[:, neg].argmax(1)]
        return torch.where(probs[:, pos].sum(1) >= threshold, best_pos, best_neg)

    def _raw_once(self, engine: Engine, x: Tensor, options: Options, targets: Tensor | None) -> RawCam:
        if isinstance(options.method, Segmenter):
            assert self.student is not None
            p = torch.from_numpy(self.classify_prepared(x.numpy()))
            t = targets if targets is not None else torch.as_tensor(self._targets(options, p)).expand(
                x.shape[0]).clone()
            maps = self.student.heatmaps(x, onnx=engine is Engine.ONNX)
            return RawCam((maps,), torch.log(p.clamp_min(1e-30)), t, (options.method.value,), calibrated=True)
        if not CAMS[options.method].gradients:
            return self._score_cam(engine, x, options, targets)
        if engine is Engine.ONNX:
            assert self.onnx is not None and self.onnx.head_weight is not None and self.onnx.cam_layer is not None
            probs, acts = self.onnx.run(x.numpy())
            p = torch.from_numpy(probs)
            t = targets if targets is not None else torch.as_tensor(self._targets(options, p)).expand(
                x.shape[0]).clone()
            maps = raw_from_activations(torch.from_numpy(acts), self.onnx.head_weight, t, method=options.method)
            # the logits are not exported; log-probabilities differ from them by a per-row constant
            return RawCam((maps,), torch.log(p.clamp_min(1e-30)), t, (self.onnx.cam_layer,))
        if targets is None:
            probs_first = None
            if options.target is None and len(self.positives) > 1:
                probs_first = torch.from_numpy(self.classify_prepared(x.numpy()))
            targets = torch.as_tensor(self._targets(options, probs_first))
        return raw_cam(self.gradients(), x, method=options.method, layer=options.layer, targets=targets)

    def _score_cam(self, engine: Engine, x: Tensor, options: Options, targets: Tensor | None) -> RawCam:
        """Score-CAM: the layer's activations from one pass, then the classifier on each
        channel-masked image, all on ONNX Runtime where the engine is ONNX."""
        if engine is Engine.ONNX:
            assert self.onnx is not None and self.onnx.cam_layer is not None
            onnx_model = self.onnx
            probs, acts_np = onnx_model.run(x.numpy())
            p, acts, layer = torch.from_numpy(probs), torch.from_numpy(acts_np), str(onnx_model.cam_layer)

            def classify(b: Tensor) -> Tensor:
                return torch.from_numpy(onnx_model.classify(b.numpy()))
        else:
            network = self.gradients()
            layer = options.layer or network.cam_layer
            with torch.inference_mode():
                logits, (acts,) = network.activations(x, [layer], leaves=False)
            p = F.softmax(logits, dim=1)

            def classify(b: Tensor) -> Tensor:
                with torch.inference_mode():
                    return F.softmax(network(b), dim=1)
        t = targets if targets is not None else torch.as_tensor(self._targets(options, p)).expand(
            x.shape[0]).clone()
        maps = score_cam(acts, x, classify, t)
        return RawCam((maps,), torch.log(p.clamp_min(1e-30)), t, (layer,))

    def warm_up(self) -> None:
        """One pass of every engine on a blank image: a model that cannot answer fails
        here, and first calls do not pay for lazy initialisation."""
        x = np.zeros((1, self.channels, *self.input_hw), dtype=np.float32)
        probs = self.classify_prepared(x)
        if probs.shape != (1, len(self.classes)) or not np.isfinite(probs).all():
            raise InvalidInputError(f"{self.path}: warm-up gave probabilities of shape {probs.shape}")
        blank = [np.zeros(self.input_hw, dtype=np.float32)]
        if self.network is not None:
            run(self, blank, Options(engine=Engine.TORCH))
        if self.onnx is not None and self.onnx.head_weight is not None:
            run(self, blank, Options(engine=Engine.ONNX))
        if self.student is not None:
            run(self, blank, Options(method=Segmenter.DISTILLED))


@dataclass(frozen=True)
class ImageResult:
    """One image's answer. ``heatmap`` is at the image's own size, or where ``grid`` is
    set (layer resolution asked for) at the CAM layer's own resolution, ``grid`` placing
    its cells in the image; the mask fields are None when no threshold was asked for,
    the encodings None when not asked for."""

    probabilities: npt.NDArray[np.float32]
    label: int
    target: int
    heatmap: Tensor
    mask: BoolArray | None = None
    threshold_value: float | None = None  # None where the rule finds no threshold (a flat map)
    gated: bool = False
    dice: float | None = None
    mask_png: bytes | None = None
    mask_bits: bytes | None = None
    mask_rle: list[int] | None = None
    overlay_png: bytes | None = None
    whole: WholeInfo | None = None  # set where the image was segmented whole (the sliding window)
    grid: HeatGrid | None = None  # set where ``heatmap`` is at the layer's resolution

    @property
    def area(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else 0


@dataclass(frozen=True)
class Result:
    items: list[ImageResult]
    engine: Engine
    layers: tuple[str, ...]

    @property
    def mean_dice(self) -> float | None:
        """Mean Dice over the images sent with a truth mask; None when there were none."""
        d = [r.dice for r in self.items if r.dice is not None]
        return float(np.mean(d)) if d else None


def _check_inputs(images: Sequence[FloatArray], truths: Sequence[BoolArray | None] | None) -> None:
    if not images:
        raise InvalidInputError("no images")
    for i, img in enumerate(images):
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) or min(img.shape[:2]) < 1:
            raise InvalidInputError(f"image {i}: expected (H, W) or (H, W, 3), got {tuple(img.shape)}")
    if truths is None:
        return
    if len(truths) != len(images):
        raise InvalidInputError(f"{len(truths)} truth masks for {len(images)} images")
    for i, (t, img) in enumerate(zip(truths, images, strict=True)):
        if t is not None and t.shape != img.shape[:2]:
            raise InvalidInputError(f"truth mask {i}: shape {t.shape} differs from its image {img.shape[:2]}")


def run(
    model: LoadedModel,
    images: Sequence[FloatArray],
    options: Options | None = None,
    *,
    truths: Sequence[BoolArray | None] | None = None,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    task: str = "segment",
) -> Result:
    """Classify, explain and (with a threshold) segment ``images``, each at its own size.

    Args:
        model: the loaded model.
        images: decoded ``(H, W)`` or ``(H, W, 3)`` floats in [0, 1], any sizes.
        options: method, layer, target, threshold rule, gate, refinement, encodings,
            engine and chunk size.
        truths: optional truth masks, one per image (None for an image without one),
            each of its image's height and width; Dice is computed where given. Dice
            follows :func:`camseg.core.metrics.dice` (both masks empty -> 1).
        on_progress / should_stop: see :mod:`camseg.core.progress`; stopping raises
            :class:`~camseg.core.errors.CancelledError` between chunks.

    Raises:
        InvalidInputError / NotFoundError / UnsupportedError before any computation.
    """
    opts = options or Options()
    engine = model.engine_for(opts)
    _check_inputs(images, truths)
    tracker = Tracker(task, len(images), on_progress=on_progress, should_stop=should_stop)
    items: list[ImageResult | None] = [None] * len(images)
    layers: tuple[str, ...] = ()
    whole = [i for i, img in enumerate(images) if is_whole(model, img.shape, opts.tiling)]
    at_layer = opts.heat_resolution is HeatResolution.LAYER
    if at_layer and whole:
        i = whole[0]
        raise InvalidInputError(f"image {i} ({images[i].shape[1]}x{images[i].shape[0]}) goes whole (the sliding "
                                "window), whose heatmap exists only at the image's resolution: ask for that, or "
                                "send it as an ROI (tiling mode never)")
    # the image-sized map is rendered only where something needs it: the reply, a mask, an overlay
    image_heat = not at_layer or opts.threshold is not None or Encoding.OVERLAY_PNG in opts.encodings
    whole_set = set(whole)
    rois = [i for i in range(len(images)) if i not in whole_set]
    for start in range(0, len(rois), opts.chunk):
        chunk = rois[start : start + opts.chunk]
        part = [images[i] for i in chunk]
        raw = model.raw_cam(engine, model.prepare(part), opts)
        layers = raw.layers
        probs = F.softmax(raw.logits, dim=1)
        predicted = model.decide(probs, opts.decision_threshold)
        by_size: dict[tuple[int, int], list[int]] = {}
        for j, img in enumerate(part):
            by_size.setdefault((int(img.shape[0]), int(img.shape[1])), []).append(j)
        cells = raw.cells() if at_layer else None  # once a chunk, whatever its images' sizes
        for size, idx in by_size.items():
            index = torch.tensor(idx)
            heat = raw.render(size, index=index) if image_heat else None
            seg = None
            if opts.threshold is not None:
                assert heat is not None
                seg = make_masks(model, [part[j] for j in idx], heat, predicted[index], opts)
            grid = HeatGrid.covering((int(raw.parts[0].shape[-2]), int(raw.parts[0].shape[-1])), size) \
                if at_layer else None
            for k, j in enumerate(idx):
                i = chunk[j]
                mask = seg.masks[k].numpy() if seg is not None else None
                tk = float(seg.thresholds[k]) if seg is not None else math.nan
                items[i] = _finish(opts, images[i], heat[k] if heat is not None else None, probs[j],
                                   int(predicted[j]), int(raw.targets[j]), mask, tk if math.isfinite(tk) else None,
                                   bool(seg.gated[k]) if seg else False, truths[i] if truths is not None else None,
                                   cells=(cells[j], grid) if cells is not None and grid is not None else None)
        tracker.advance(len(part))
    for i in whole:
        probs_np, heat_np, mask, t, info = segment_whole(model, images[i], opts, engine, on_progress=on_progress,
                                                         should_stop=should_stop)
        p = torch.from_numpy(probs_np)[None]
        label = int(model.decide(p, opts.decision_threshold)[0])
        target = opts.target if opts.target is not None else model.positive
        gated = bool(opts.gate and label not in model.positives)
        items[i] = _finish(opts, images[i], torch.from_numpy(heat_np), p[0], label, target, mask, t, gated,
                           truths[i] if truths is not None else None, info)
        layers = layers or _layers(model, opts, engine)
        tracker.advance(1)
    return Result([r for r in items if r is not None], engine, layers)


def _layers(model: LoadedModel, opts: Options, engine: Engine) -> tuple[str, ...]:
    """The layer(s) a run's heatmaps came from, without running the network."""
    if isinstance(opts.method, Segmenter):
        return (opts.method.value,)
    layer = opts.layer or model.cam_layer
    return (layer,) if layer else ()


def make_masks(model: LoadedModel, images: Sequence[FloatArray], heat: Tensor, predicted: Tensor,
               opts: Options) -> Masks:
    """Heatmaps ``(N, H, W)`` of same-sized ``images`` to masks under ``opts``: the
    threshold rule, the classifier gate (``predicted`` classes), the refinement from the
    image, then the largest component and hole filling."""
    if opts.threshold is None:
        raise InvalidInputError("masks need a threshold rule")
    refining = opts.refine is not Refiner.NONE
    seg = segment_maps(heat, opts.threshold, predicted=predicted if opts.gate else None,
                       positive_class=model.positives, largest=opts.largest and not refining,
                       fill_holes=opts.fill_holes and not refining)
    if not refining:
        return seg
    gray = torch.stack([torch.from_numpy(_gray(img)) for img in images])
    masks = refine_masks(gray, heat, seg.masks, opts.refine)
    if opts.largest or opts.fill_holes:
        masks = segment_maps(masks.float(), ThresholdRule("fixed", 0.5), largest=opts.largest,
                             fill_holes=opts.fill_holes).masks
    return Masks(masks, seg.thresholds, seg.gated)


def _gray(image: FloatArray) -> npt.NDArray[np.float32]:
    """An image as one float32 channel (luminance of RGB)."""
    if image.ndim == 3:
        return np.ascontiguousarray(image @ np.array([0.299, 0.587, 0.114], dtype=np.float32), dtype=np.float32)
    return np.ascontiguousarray(image, dtype=np.float32)


def _finish(opts: Options, image: FloatArray, heat: Tensor | None, probs: Tensor, predicted: int, target: int,
            mask: BoolArray | None, t: float | None, gated: bool, truth: BoolArray | None,
            whole: WholeInfo | None = None, *, cells: tuple[Tensor, HeatGrid] | None = None) -> ImageResult:
    """One image's result; ``heat`` (at the image's size) is None only where ``cells``
    (the layer-resolution map and its grid, returned instead) is given and neither a
    mask nor an overlay needs it."""
    p = probs.numpy().astype(np.float32)
    want = opts.encodings
    out, grid = cells if cells is not None else (heat, None)
    assert out is not None
    if mask is None:
        return ImageResult(p, predicted, target, out,
                           overlay_png=codecs.encode_png(overlay(image, heat.numpy()))
                           if Encoding.OVERLAY_PNG in want and heat is not None else None, whole=whole, grid=grid)
    assert heat is not None
    d = float(dice(torch.from_numpy(mask), torch.from_numpy(truth))) if truth is not None else None
    return ImageResult(
        p, predicted, target, out, mask, t, gated, d,
        mask_png=codecs.encode_png(mask) if Encoding.MASK_PNG in want else None,
        mask_bits=codecs.packed_bits(mask) if Encoding.MASK_BITS in want else None,
        mask_rle=codecs.run_lengths(mask) if Encoding.MASK_RLE in want else None,
        overlay_png=codecs.encode_png(overlay(image, heat.numpy(), mask, truth))
        if Encoding.OVERLAY_PNG in want else None, whole=whole, grid=grid,
    )
