"""Grad-CAM benchmark: camseg against torchcam and Captum on one model, layer and batch.

What is measured
----------------
One camseg classifier (``camseg.models.build(ModelSpec(arch, input_size=S))``, or a
trained one from ``--weights MODEL_DIR``), in eval mode, explains class 1 (tumor) for
every image of a batch with three Grad-CAM implementations (Selvaraju et al., ICCV
2017):

* camseg: ``camseg.heat.cam.compute_cam(..., size=(h, w), normalise=True)``; at the last
  stage it takes the closed-form gradient of the GAP + linear head (no backward pass),
  elsewhere it runs the stages before the layer without autograd and differentiates
  only the tail;
* torchcam: ``torchcam.methods.GradCAM`` on ``model.stages[layer]`` (forward hooks,
  ``model(x)``, then the extractor with ``normalized=False``);
* Captum: ``captum.attr.LayerGradCam(model, model.stages[layer]).attribute(x,
  target=1, relu_attributions=True)``.

Every call goes from images ``(N, C, S, S)`` in [0, 1] to heatmaps ``(N, h, w)`` at
the layer's own resolution, ReLU'd and min-max normalised per map with
``camseg.heat.cam.normalise_maps`` (camseg does both inside ``compute_cam``), so the timed
work and the compared output are the same for all three. ``model(x)`` normalises the
input inside ``forward``, so every library sees the same contract.

* Equality: max |difference| of the normalised maps, torchcam vs camseg and Captum vs
  camseg, at the default layer (the model's ``cam_layer``, the last stage) and at a
  second, non-last layer (``--compare-layer``, default ``stage3``) where camseg uses
  autograd; plus camseg's autograd path (``analytic=False``) vs its closed form.
  Computed on the largest batch. A map that is all zero after the ReLU (no positive
  evidence for the class) compares trivially; the table counts them ("all-zero").
* Throughput: images per second at each ``--batches`` size, with
  ``torch.set_num_threads(--threads)`` for all. Each timing sample runs a call enough
  times to last at least ``--min-sample-ms`` (``time.perf_counter``); the number is the
  median over ``--repeats`` samples after ``--warmup`` calls. Samples are taken in
  ``--rounds`` interleaved rounds (camseg, torchcam, Captum, camseg, ...) so a drift in
  clock speed hits every library alike. torchcam's hooks exist only inside its own
  section of a round (removed with ``remove_hooks()`` in ``finally``); Captum adds its
  hooks only inside ``attribute``; the model is checked to carry no hooks before and
  after every section. At the default layer camseg's autograd path is timed too, as
  "camseg (autograd)" (informative; not part of the goal).
* Baseline: the faster of torchcam and Captum at each (layer, batch), measured in the
  same process. Speedup = camseg images/s / baseline images/s.

Goals (stated in the table and the JSON, and reported whether met or not): max
|difference| <= 1e-5 for every comparison, camseg >= 2x the baseline at every layer
and batch.

How to run
----------
Install the ``bench`` extra (``pip install torchcam==0.5.0 captum==0.9.0``; neither
changes the installed torch), then from the repository root::

    python bench/cam_bench.py                       # resnet, 128 px, batches 1,32, 2 threads
    python bench/cam_bench.py --arch densenet --threads 4
    python bench/cam_bench.py --weights runs/resnet --data data/rois

It prints tables and writes ``bench/results/cam_bench.json`` (environment, settings,
every number, and whether the goals are met). A default run takes under a minute on
two otherwise idle cores. Other work on the machine skews every timing (one busy
process on two cores halves throughput and scatters it): the 1-minute load average at
start and end goes into the JSON, a warning is logged when it is 1 or more, and each
timing also records its fastest sample. This is a benchmark, not a test: it never
fails on a missed goal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from camseg.core.errors import CamsegError
from camseg.heat.cam import compute_cam, normalise_maps
from camseg.models import Classifier, ModelSpec, build

logger = logging.getLogger("cam_bench")

TARGET_CLASS = 1  # tumor
GOAL_MAX_ABS_DIFF = 1e-5
GOAL_SPEEDUP = 2.0
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "cam_bench.json"

Runner = Callable[[Tensor], Tensor]
"""Images ``(N, C, S, S)`` in [0, 1] to normalised heatmaps ``(N, h, w)``."""
Session = Callable[[Classifier, str], contextlib.AbstractContextManager[Runner]]
"""Opens a library on (model, layer); its hooks exist only while the context is open."""


# ------------------------------------------------------------------ the contenders
def _camseg_session(analytic: bool) -> Session:
    @contextlib.contextmanager
    def session(model: Classifier, layer: str) -> Iterator[Runner]:
        size = layer_size(model, layer)

        def run(x: Tensor) -> Tensor:
            return compute_cam(
                model,
                x,
                targets=TARGET_CLASS,
                layer=layer,
                size=size,
                normalise=True,
                analytic=analytic,
            ).heatmaps

        yield run

    return session


@contextlib.contextmanager
def _torchcam_session(model: Classifier, layer: str) -> Iterator[Runner]:
    from torchcam.methods import GradCAM

    extractor = GradCAM(model, target_layer=model.stages[layer])
    try:

        def run(x: Tensor) -> Tensor:
            scores = model(x)
            (cam,) = extractor(class_idx=TARGET_CLASS, scores=scores, normalized=False)
            return normalise_maps(cam)  # torchcam has already applied the ReLU

        yield run
    finally:
        extractor.remove_hooks()
        extractor.reset_hooks()  # drop the stored activations and graph


@contextlib.contextmanager
def _captum_session(model: Classifier, layer: str) -> Iterator[Runner]:
    from captum.attr import LayerGradCam

    explainer = LayerGradCam(model, model.stages[layer])

    def run(x: Tensor) -> Tensor:
        attr = explainer.attribute(x, target=TARGET_CLASS, relu_attributions=True)
        return normalise_maps(attr[:, 0].detach())

    yield run


@contextlib.contextmanager
def _camseg_onnx_session(model: Classifier, layer: str) -> Iterator[Runner]:
    """camseg's served path at the exported layer: one ONNX Runtime pass gives the
    probabilities and the layer's activations; the closed-form gradient of the GAP +
    linear head weighs them (``camseg.heat.cam.cam_from_activations``)."""
    import onnxruntime as ort

    from camseg.heat.cam import cam_from_activations
    from camseg.models.export import to_onnx

    if not model.has_linear_gap_head(layer):
        raise ValueError(f"the one-pass ONNX path exists only at the last stage, not {layer}")
    key = id(model)
    if key not in _ORT_CACHE:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.log_severity_level = 3
        # spinning worker threads would steal the CPU from the libraries timed next
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        _ORT_CACHE[key] = ort.InferenceSession(to_onnx(model), sess_options=opts,
                                               providers=["CPUExecutionProvider"])
    session = _ORT_CACHE[key]
    weight = model.fc.weight.detach().clone()
    size = layer_size(model, layer)

    def run(x: Tensor) -> Tensor:
        _, acts = session.run(["probabilities", "activations"], {"input": x.numpy()})
        targets = torch.full((x.shape[0],), TARGET_CLASS, dtype=torch.long)
        return cam_from_activations(torch.from_numpy(acts), weight, targets, size=size)

    yield run


_ORT_CACHE: dict[int, Any] = {}

CAMSEG = "camseg"
CAMSEG_ONNX = "camseg (onnx one-pass)"
CAMSEG_AUTOGRAD = "camseg (autograd)"
TORCHCAM = "torchcam"
CAPTUM = "captum"
BASELINES = (TORCHCAM, CAPTUM)
SESSIONS: dict[str, Session] = {
    CAMSEG: _camseg_session(analytic=True),
    CAMSEG_AUTOGRAD: _camseg_session(analytic=False),
    CAMSEG_ONNX: _camseg_onnx_session,
    TORCHCAM: _torchcam_session,
    CAPTUM: _captum_session,
}


# ------------------------------------------------------------------ helpers
def layer_size(model: Classifier, layer: str) -> tuple[int, int]:
    """Spatial size ``(h, w)`` of ``layer``'s output for the model's input size."""
    s = model.spec.input_size
    with torch.inference_mode():
        acts = model.run_until(torch.zeros(1, model.spec.in_channels, s, s), model.check_layer(layer))
    return int(acts.shape[2]), int(acts.shape[3])


def count_hooks(model: nn.Module) -> int:
    """Module hooks of every kind left on ``model``."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, kind, {})) for m in model.modules() for kind in kinds)


@contextlib.contextmanager
def open_session(name: str, model: Classifier, layer: str) -> Iterator[Runner]:
    """A library's runner; fails loudly if any hook is present before or left after."""
    if (n := count_hooks(model)) != 0:
        raise RuntimeError(f"{n} hooks on the model before the {name} section")
    with SESSIONS[name](model, layer) as run:
        yield run
    if (n := count_hooks(model)) != 0:
        raise RuntimeError(f"{name} left {n} hooks on the model")


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(threads: int) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torchcam": version("torchcam"),
        "captum": version("captum"),
        "camseg": version("camseg"),
        "threads": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "load_average_1min_at_start": _load_average(),
    }


def _load_average() -> float | None:
    """Other work on the machine skews every timing; recorded so a reader can tell."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ------------------------------------------------------------------ inputs
def load_model(args: argparse.Namespace) -> Classifier:
    if args.weights is not None:
        from camseg.models.modeldir import load_model as load_dir

        model, _ = load_dir(args.weights)
        if model.spec.arch != args.arch or model.spec.input_size != args.size:
            logger.info("using the trained model's spec %s (ignoring --arch/--size)", model.spec)
    else:
        torch.manual_seed(args.seed)
        model = build(ModelSpec(args.arch, input_size=args.size))
    return model.eval()


def load_images(args: argparse.Namespace, model: Classifier, n: int) -> Tensor:
    """``n`` images at the model's input size: from ``--data`` (cycled if the set is
    smaller) or uniform noise in [0, 1] from ``--seed``."""
    s, c = model.spec.input_size, model.spec.in_channels
    if args.data is None:
        gen = torch.Generator().manual_seed(args.seed + 1)
        return torch.rand((n, c, s, s), generator=gen)
    from camseg.data.folder import FolderDataset
    from camseg.data.tensors import load_arrays

    ds = FolderDataset.open(args.data)
    indices = ds.subset(None)
    images = load_arrays(ds, indices[: min(n, len(indices))], s, c).images
    logger.info("loaded %d images from %s", images.shape[0], args.data)
    reps = math.ceil(n / images.shape[0])
    return images.repeat(reps, 1, 1, 1)[:n].contiguous()


# ------------------------------------------------------------------ measurements
@dataclass(frozen=True)
class Equality:
    layer: str
    comparison: str
    max_abs_diff: float
    maps: int
    degenerate_maps: int  # all-zero after ReLU in the reference (camseg) output
    note: str = ""

    @property
    def met(self) -> bool:
        return self.max_abs_diff <= GOAL_MAX_ABS_DIFF


@dataclass(frozen=True)
class Timing:
    layer: str
    batch: int
    library: str
    median_s: float
    p25_s: float
    p75_s: float
    best_s: float
    calls_per_sample: int
    samples: int

    @property
    def images_per_s(self) -> float:
        return self.batch / self.median_s


@dataclass(frozen=True)
class Speedup:
    layer: str
    batch: int
    engine: str  # the faster of camseg's engines at this layer and batch
    camseg_torch_images_per_s: float
    camseg_images_per_s: float
    baseline: str
    baseline_images_per_s: float
    best_speedup: float  # from each library's fastest sample: less sensitive to other load

    @property
    def speedup(self) -> float:
        return self.camseg_images_per_s / self.baseline_images_per_s

    @property
    def met(self) -> bool:
        return self.speedup >= GOAL_SPEEDUP


def heatmaps(name: str, model: Classifier, layer: str, images: Tensor) -> Tensor:
    with open_session(name, model, layer) as run:
        return run(images).detach().clone()


def compare(model: Classifier, layer: str, images: Tensor, default_layer: str) -> list[Equality]:
    ref = heatmaps(CAMSEG, model, layer, images)
    degenerate = int((ref.flatten(1).amax(1) == 0).sum())
    out: list[Equality] = []
    for other in (TORCHCAM, CAPTUM):
        diff = float((heatmaps(other, model, layer, images) - ref).abs().max())
        out.append(Equality(layer, f"{other} vs {CAMSEG}", diff, ref.shape[0], degenerate))
    if layer == default_layer:
        note = "" if model.has_linear_gap_head(layer) else "no closed form at this layer: both use autograd"
        diff = float((heatmaps(CAMSEG_AUTOGRAD, model, layer, images) - ref).abs().max())
        out.append(Equality(layer, "camseg autograd vs analytic", diff, ref.shape[0], degenerate, note))
        if model.has_linear_gap_head(layer):
            diff = float((heatmaps(CAMSEG_ONNX, model, layer, images) - ref).abs().max())
            out.append(Equality(layer, "camseg onnx one-pass vs torch", diff, ref.shape[0], degenerate))
    return out


def time_layer(
    model: Classifier,
    layer: str,
    images: Tensor,
    batches: Sequence[int],
    libraries: Sequence[str],
    args: argparse.Namespace,
) -> list[Timing]:
    """Interleaved rounds: in each, every library opens its session, warms up and takes
    its share of the samples, then closes (removing its hooks)."""
    min_sample_s = args.min_sample_ms / 1000.0
    rounds = min(args.rounds, args.repeats)
    per_round = math.ceil(args.repeats / rounds)
    out: list[Timing] = []
    for batch in batches:
        x = images[:batch].contiguous()
        samples: dict[str, list[float]] = {lib: [] for lib in libraries}
        calls: dict[str, int] = {}
        for r in range(rounds):
            for lib in libraries:
                with open_session(lib, model, layer) as run:
                    for _ in range(args.warmup):
                        run(x)
                    if lib not in calls:  # calibrate once: enough calls to last min_sample_s
                        t0 = time.perf_counter()
                        run(x)
                        one = time.perf_counter() - t0
                        calls[lib] = max(1, math.ceil(min_sample_s / max(one, 1e-9)))
                    need = max(0, min(per_round, args.repeats - r * per_round))
                    for _ in range(need):
                        t0 = time.perf_counter()
                        for _ in range(calls[lib]):
                            run(x)
                        samples[lib].append((time.perf_counter() - t0) / calls[lib])
        for lib in libraries:
            s = samples[lib]
            q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0], s[0], s[0]]
            t = Timing(layer, batch, lib, statistics.median(s), q[0], q[2], min(s), calls[lib], len(s))
            logger.info(
                "%s batch %d %s: %.1f images/s (%d samples x %d calls)",
                layer,
                batch,
                lib,
                t.images_per_s,
                t.samples,
                t.calls_per_sample,
            )
            out.append(t)
    return out


def speedups(timings: Sequence[Timing]) -> list[Speedup]:
    out: list[Speedup] = []
    keys = list(dict.fromkeys((t.layer, t.batch) for t in timings))  # in measured order
    for layer, batch in keys:
        by_lib = {t.library: t for t in timings if t.layer == layer and t.batch == batch}
        base = max((by_lib[b] for b in BASELINES), key=lambda t: t.images_per_s)
        best_base = min(by_lib[b].best_s for b in BASELINES)
        engines = [by_lib[e] for e in (CAMSEG, CAMSEG_ONNX) if e in by_lib]
        ours = max(engines, key=lambda t: t.images_per_s)
        out.append(
            Speedup(
                layer,
                batch,
                ours.library,
                by_lib[CAMSEG].images_per_s,
                ours.images_per_s,
                base.library,
                base.images_per_s,
                best_base / min(e.best_s for e in engines),
            )
        )
    return out


# ------------------------------------------------------------------ report
def _yes(ok: bool) -> str:
    return "[green]yes[/green]" if ok else "[red]no[/red]"


def render(
    console: Console,
    report: dict[str, Any],
    equal: Sequence[Equality],
    timings: Sequence[Timing],
    speed: Sequence[Speedup],
) -> None:
    env, cfg = report["environment"], report["config"]
    console.print(
        f"[bold]Grad-CAM benchmark[/bold]: {cfg['arch']} {cfg['input_size']}px, target class "
        f"{TARGET_CLASS}, {env['threads']} threads, torch {env['torch']}, {env['cpu']}",
        soft_wrap=True,
    )
    t = Table(title=f"Equality (normalised maps at layer resolution; goal max |diff| <= {GOAL_MAX_ABS_DIFF:g})")
    numeric = ("maps", "all-zero", "max |diff|")
    for col in ("layer", "comparison", *numeric, "goal met", "note"):
        t.add_column(col, justify="right" if col in numeric else "left")
    for e in equal:
        t.add_row(
            e.layer,
            e.comparison,
            str(e.maps),
            str(e.degenerate_maps),
            f"{e.max_abs_diff:.2e}",
            _yes(e.met),
            e.note,
        )
    console.print(t)

    t = Table(title="Throughput (median over samples; IQR of ms per call)")
    for col in ("layer", "batch", "library", "images/s", "ms/call", "IQR ms", "best ms"):
        t.add_column(col, justify="left" if col in ("layer", "library") else "right")
    for x in timings:
        iqr = f"{1e3 * x.p25_s:.1f}-{1e3 * x.p75_s:.1f}"
        t.add_row(
            x.layer,
            str(x.batch),
            x.library,
            f"{x.images_per_s:.1f}",
            f"{1e3 * x.median_s:.2f}",
            iqr,
            f"{1e3 * x.best_s:.2f}",
        )
    console.print(t)

    t = Table(
        title=f"Speedup of camseg over the faster library (goal >= {GOAL_SPEEDUP:g}x on medians; best: fastest samples)"
    )
    cols = ("layer", "batch", "camseg engine", "camseg img/s", "torch path img/s", "baseline", "baseline img/s",
            "speedup", "best")
    for col in (*cols, "goal met"):
        t.add_column(col, justify="left" if col in ("layer", "camseg engine", "baseline", "goal met") else "right")
    for sp in speed:
        t.add_row(
            sp.layer,
            str(sp.batch),
            sp.engine,
            f"{sp.camseg_images_per_s:.1f}",
            f"{sp.camseg_torch_images_per_s:.1f}",
            sp.baseline,
            f"{sp.baseline_images_per_s:.1f}",
            f"{sp.speedup:.2f}x",
            f"{sp.best_speedup:.2f}x",
            _yes(sp.met),
        )
    console.print(t)
    g = report["goals"]
    console.print(f"equality goal met: {_yes(g['equality_met'])}   speed goal met: {_yes(g['speed_met'])}")
    console.print(f"JSON: {report['output']}", soft_wrap=True)


# ------------------------------------------------------------------ entry point
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--arch", default="resnet", help="architecture for a fresh model (default resnet)")
    p.add_argument("--size", type=int, default=128, help="input size S (default 128)")
    p.add_argument("--layer", default=None, help="stage to explain (default the model's cam_layer)")
    p.add_argument(
        "--compare-layer",
        default="stage3",
        help="a second, non-last stage, timed and compared too ('' to skip; default stage3)",
    )
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--repeats", type=int, default=30, help="timing samples per library and batch")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before each round's samples")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the samples are split into")
    p.add_argument("--min-sample-ms", type=float, default=25.0, help="shortest timing sample (calls repeat)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh model's weights and the images")
    p.add_argument("--weights", type=Path, default=None, help="a trained model directory (camseg.models.modeldir)")
    p.add_argument("--data", type=Path, default=None, help="a folder data set to take images from")
    p.add_argument(
        "--no-autograd-row",
        action="store_true",
        help="skip timing camseg's autograd path (analytic=False) at the default layer",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    try:
        args.batch_list = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    except ValueError:
        p.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if not args.batch_list or min(args.batch_list) < 1:
        p.error("--batches needs at least one positive size")
    for name in ("repeats", "rounds", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return run(args)
    except CamsegError as exc:  # a bad --arch, --layer, --weights or --data: say which, no traceback
        logger.error("%s", exc)
        return 2


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    env = environment(args.threads)
    load = env["load_average_1min_at_start"]
    if load is not None and load >= 1.0:
        logger.warning("1-minute load average is %.2f: other processes share the CPU", load)

    model = load_model(args)
    default_layer = args.layer or model.cam_layer
    layers = [model.layer_names[model.check_layer(default_layer)]]
    if args.compare_layer and args.compare_layer != default_layer:
        layers.append(model.layer_names[model.check_layer(args.compare_layer)])
    images = load_images(args, model, max(args.batch_list))
    logger.info(
        "model %s (%s), layers %s, images %s",
        model.spec.arch,
        default_layer,
        layers,
        tuple(images.shape),
    )

    equal: list[Equality] = []
    timings: list[Timing] = []
    for layer in layers:
        equal += compare(model, layer, images, default_layer)
        libs = [CAMSEG, TORCHCAM, CAPTUM]
        if layer == default_layer and model.has_linear_gap_head(layer):
            libs.insert(1, CAMSEG_ONNX)
            if not args.no_autograd_row:
                libs.insert(2, CAMSEG_AUTOGRAD)
        timings += time_layer(model, layer, images, args.batch_list, libs, args)
    speed = speedups(timings)

    report: dict[str, Any] = {
        "benchmark": "Grad-CAM: camseg.heat.cam.compute_cam vs torchcam.methods.GradCAM vs captum.attr.LayerGradCam",
        "environment": env,
        "config": {
            "arch": model.spec.arch,
            "input_size": model.spec.input_size,
            "in_channels": model.spec.in_channels,
            "weights": str(args.weights) if args.weights else None,
            "data": str(args.data) if args.data else None,
            "images": "folder data set" if args.data else f"uniform [0, 1], seed {args.seed + 1}",
            "model_seed": None if args.weights else args.seed,
            "target_class": TARGET_CLASS,
            "default_layer": default_layer,
            "layers": {name: list(layer_size(model, name)) for name in layers},
            "batches": args.batch_list,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "min_sample_ms": args.min_sample_ms,
            "equality_batch": int(images.shape[0]),
        },
        "goals": {
            "max_abs_diff": GOAL_MAX_ABS_DIFF,
            "speedup_vs_faster_library": GOAL_SPEEDUP,
            "equality_met": all(e.met for e in equal),
            "speed_met": all(s.met for s in speed),
        },
        "equality": [{**asdict(e), "met": e.met} for e in equal],
        "throughput": [{**asdict(t), "images_per_s": t.images_per_s} for t in timings],
        "speedup": [{**asdict(s), "speedup": s.speedup, "met": s.met} for s in speed],
        "output": str(args.out),
    }
    report["goals"]["all_met"] = report["goals"]["equality_met"] and report["goals"]["speed_met"]
    report["environment"]["load_average_1min_at_end"] = _load_average()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console = Console()
    if not console.is_terminal:  # piped or redirected: rich would wrap at 80 columns
        console = Console(width=120)
    render(console, report, equal, timings, speed)
    logger.info("done in %.1f s", report["wall_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
