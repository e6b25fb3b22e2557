"""The paper's filtered retraining (Guan & Loew, arXiv:2201.02771, Sec. III-C).

Heatmaps of the trained model filter the train, val and test images, a fresh
classifier is trained on each filtered set, and test accuracy and ROC AUC are compared
with the unfiltered baseline:

* ``keep-hot``: pixels with heat >= t kept, the rest set to the image mean;
* ``keep-cold``: the complement (only the dark regions kept);
* ``soft``: the image multiplied by its heatmap;
* ``random``: the same number of pixels as ``keep-cold`` removes (the hot area), removed
  at random — the ROAR control (Hooker et al., NeurIPS 2019), which separates "the
  heatmap found the evidence" from "any removal of that size hurts".

``keep-hot(x) + keep-cold(x) = x + mean(x)`` wherever the heat is split by ``t``.

With an output directory each run (filter x threshold) is written as it finishes,
keyed by its inputs, so a rerun after a crash or a stop resumes where it was and
repeats no finished run; ``results.json`` is written last.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camseg.core.errors import InvalidInputError
from camseg.core.progress import OnProgress, ShouldStop, Tracker
from camseg.data.folder import FolderDataset
from camseg.data.tensors import ArraySet, load_arrays
from camseg.heat.cam import cam_batches
from camseg.heat.methods import CamMethod, parse_method
from camseg.models import ModelSpec
from camseg.models.modeldir import atomic_write_bytes, load_model
from camseg.models.training import TrainConfig, evaluate, train
from camseg.pipeline.outputs import data_fingerprint, model_fingerprint, output_key
from camseg.study import figures

logger = logging.getLogger(__name__)

FILTERS: tuple[str, ...] = ("keep-hot", "keep-cold", "soft", "random")
RESULTS_FILE = "results.json"


def filter_images(images: Tensor, heat: Tensor, kind: str, threshold: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """Filtered copies of ``images`` ``(N, C, H, W)`` by heatmaps ``(N, H, W)``.

    Removed pixels are set to each image's (per-channel) mean intensity.
    """
    if kind not in FILTERS:
        raise InvalidInputError(f"unknown filter {kind!r}; choose one of {', '.join(FILTERS)}")
    if heat.shape != (images.shape[0], *images.shape[2:]):
        raise InvalidInputError(f"heatmaps {tuple(heat.shape)} do not match images {tuple(images.shape)}")
    mean = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    hot = (heat >= threshold)[:, None].expand_as(images)
    if kind == "keep-hot":
        return torch.where(hot, images, mean)
    if kind == "keep-cold":
        return torch.where(hot, mean, images)
    if kind == "soft":
        return images * heat[:, None]
    # random: remove as many pixels as the hot area, uniformly at random per image
    n, _, h, w = images.shape
    counts = (heat >= threshold).reshape(n, -1).sum(1)
    noise = torch.rand((n, h * w), generator=generator)
    ranks = noise.argsort(1).argsort(1)
    removed = (ranks < counts[:, None]).reshape(n, 1, h, w).expand_as(images)
    return torch.where(removed, mean, images)


@dataclass(frozen=True)
class FilterResult:
    filter: str
    threshold: float | None
    accuracy: float
    auc: float
    hot_fraction: float
    best_epoch: int


def filtered_retrain(
    model_dir: Path,
    data_dir: Path,
    out: Path | None = None,
    *,
    thresholds: Sequence[float] = (0.5,),
    filters: Sequence[str] = FILTERS,
    method: str | CamMethod = CamMethod.GRADCAM,
    layer: str | None = None,
    cfg: TrainConfig | None = None,
    arch: str | None = None,
    seed: int = 0,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    runs_dir: Path | None = None,
) -> list[FilterResult]:
    """Retrain a fresh classifier on each heatmap-filtered copy of the data.

    The first row is the unfiltered baseline: the trained model on the plain test set.
    With ``out``, finished runs are kept in ``out/runs/`` and reused by a rerun with the
    same inputs; ``out/results.json`` and ``out/filtered_retraining.png`` come last.
    ``runs_dir`` keeps the runs elsewhere (default ``out/runs``): a worker running one
    run at a time shares them with the one that writes the results.
    """
    m = parse_method(method)
    for f in filters:
        if f not in FILTERS:
            raise InvalidInputError(f"unknown filter {f!r}; choose one of {', '.join(FILTERS)}")
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise InvalidInputError(f"filter threshold {t} is outside [0, 1]")
    model, meta = load_model(model_dir)
    if layer is not None:
        model.check_layer(layer)
    ds = FolderDataset.open(data_dir)
    size, channels = model.spec.input_size, model.spec.in_channels
    splits = ("train", "val", "test")
    indices = {name: ds.subset(name) for name in splits}
    spec = ModelSpec(**{**asdict(model.spec), "arch": arch or model.spec.arch})
    cfg = cfg or TrainConfig(**meta.get("training", {}))
    key = output_key(model=model_fingerprint(Path(model_dir)), data=data_fingerprint(ds, sorted(
        {i for idx in indices.values() for i in idx})), method=m.value, layer=layer, cfg=asdict(cfg),
        spec=asdict(spec), seed=seed)
    runs = list(itertools.product(thresholds, filters))
    tracker = Tracker("filtered retraining", len(runs), on_progress=on_progress, should_stop=should_stop)
    sets = {name: load_arrays(ds, idx, size, channels) for name, idx in indices.items()}
    base = evaluate(model, sets["test"])
    results = [FilterResult("none", None, base["accuracy"], base["auc"], 1.0, 0)]
    heat: dict[str, Tensor] | None = None
    for t, kind in runs:
        folder = runs_dir or (Path(out) / "runs" if out is not None else None)
        run_file = folder / f"{kind}-t{t:g}.json" if folder is not None else None
        done = _finished(run_file, key)
        if done is not None:
            results.append(done)
            tracker.advance(1, f"{kind} t={t:g} (reused)")
            continue
        if heat is None:
            heat = {name: torch.cat([r.heatmaps for r in cam_batches(model, s.images, method=m, layer=layer)])
                    for name, s in sets.items()}
        # one generator per run, so a resumed run draws the same random filter
        gen = torch.Generator().manual_seed(seed)
        filtered = {name: _replace_images(s, filter_images(s.images, heat[name], kind, t, gen))
                    for name, s in sets.items()}
        res = train(spec, filtered["train"], filtered["val"], cfg, task=f"retrain {kind} t={t:g}",
                    on_progress=on_progress, should_stop=should_stop)
        scores = evaluate(res.model, filtered["test"])
        hot = float((heat["test"] >= t).float().mean())
        row = FilterResult(kind, t, scores["accuracy"], scores["auc"], hot, res.best_epoch)
        results.append(row)
        if run_file is not None:
            _write_json(run_file, {"key": key, "result": asdict(row)})
        logger.info("filter %s t=%.2f: test accuracy %.4f, auc %.4f", kind, t, scores["accuracy"], scores["auc"])
        tracker.advance(1, f"{kind} t={t:g}")
    if out is not None:
        rows = [asdict(r) for r in results]
        ts = ", ".join(f"{t:g}" for t in thresholds)
        figure = Path(out) / ".filtered_retraining.png"
        figures.filter_bars(figure, rows, f"filtered retraining ({spec.arch}, {m.value}, t={ts})")
        figure.replace(Path(out) / "filtered_retraining.png")
        _write_json(Path(out) / RESULTS_FILE, {"key": key, "model": str(model_dir), "data": str(data_dir),
                                               "method": m.value, "layer": layer or model.cam_layer,
                                               "results": rows})
    return results


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def _finished(path: Path | None, key: str) -> FilterResult | None:
    if path is None or not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    return FilterResult(**rec["result"]) if rec.get("key") == key else None


def _replace_images(s: ArraySet, images: Tensor) -> ArraySet:
    return ArraySet(s.ids, images, s.labels, s.masks, s.has_mask, s.sizes)
