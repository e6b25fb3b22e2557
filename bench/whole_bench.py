"""Whole-image inference: camseg's sliding window against MONAI's, in the same run.

What is measured
----------------
One small camseg classifier (resnet, 64 px, trained for ``--epochs`` on a few hundred
synthetic ROIs and exported to ONNX; or ``--weights MODEL_DIR``) is slid over whole
images at scale 1 (``Tiling(mode="always", scale=1.0)``; ``scale`` 1.0 is also written
into the trained model's metadata), tiles of the model's input side, overlap 0.5,
Gaussian blending (sigma 0.125 of the tile side), ``--chunk`` tiles per pass.

* **Tile rate** on a synthetic image with tissue everywhere (``--size``, power-law
  texture with a few bright masses), so both sides run every tile of the same grid:

  - MONAI (baseline): ``monai.inferers.sliding_window_inference`` driving the same torch
    network, forward only: a predictor wrapping the classifier returns each tile's
    tumour probability broadcast over the tile (roi_size = model input, overlap 0.5,
    ``mode="gaussian"``, ``sw_batch_size`` = the chunk);
  - camseg, engine auto on the exported model (one ONNX Runtime pass gives the
    probabilities and the activations; Grad-CAM in closed form) and engine torch (the
    classifier in torch, Grad-CAM through its closed-form head gradient); each with
    heatmaps only (``threshold=None``: tissue, tiles, blended probabilities and
    heatmaps) and with masks (the default Otsu rule per region, lesion candidates).

  Tiles per second = tiles run / wall seconds of one whole call. The tiles are counted
  by the predictor on MONAI's side and by ``WholeInfo.tiles`` on camseg's; both must
  agree. Every row runs ``--rounds`` times, rounds interleaved (MONAI, camseg ONNX, ...,
  MONAI, ...), and the median is reported. The blended probability's maximum on both
  sides is compared as a check that the grids and windows match.
* **Tissue skipping**: the same texture with its right 40% set to 0 (background); camseg
  (engine auto, masks) runs only the tiles touching tissue; MONAI runs them all.
* **Peak RSS**: each side once on the tissue-filled image, each in a fresh subprocess:
  RSS just before the image is loaded (the model loaded and warmed up), then the peak
  (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` before the image).
* **End to end**: a 4096 x 5120 (width x height) 16-bit PNG written to disk (the same
  texture, 40% background), in a fresh subprocess: ``camseg.io.inputs.decode_image``,
  ``run`` (engine auto, masks) and the mask encoded as PNG; the time of each step and
  the peak RSS above the RSS before the image. Goal: under 1.5 GB. MONAI's forward over
  the same decoded image is measured the same way, as a reference.

Torch threads and ONNX Runtime threads are both ``--threads`` (default:
``CAMSEG_TORCH_THREADS``, else 2); ONNX Runtime does not spin between runs (as served).

Goal (stated, reported whether met or not): camseg >= 1.0x MONAI's tiles per second,
i.e. heatmaps at no cost over forward-only inference.

How to run
----------
From the repository root, with the ``bench`` extra installed (MONAI)::

    python bench/whole_bench.py                 # 1024 px image, 3 rounds, 2 threads
    python bench/whole_bench.py --profile       # also cProfile one camseg call

It prints tables and writes ``bench/results/whole_bench.json``. Other work on the
machine skews the timings (the load average is recorded); it never fails on a missed goal.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from camseg.core.limits import DEFAULT_MAX_WHOLE_PIXELS
from camseg.core.settings import Settings
from camseg.core.types import FloatArray
from camseg.data.synth import SynthConfig, power_law_noise, synthesize
from camseg.io.codecs import encode_png, write_png
from camseg.io.inputs import decode_image
from camseg.models.export import export_model
from camseg.models.modeldir import ONNX_FILE, read_metadata
from camseg.models.training import TrainConfig, train_from_folder
from camseg.pipeline.options import Engine, Options
from camseg.pipeline.run import LoadedModel, Result, run
from camseg.pipeline.whole import Tiling, Whole

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "whole_bench.json"
GOAL_RATIO = 1.0
GOAL_E2E_BYTES = 1.5e9
E2E_SHAPE = (5120, 4096)  # height, width
BACKGROUND = 0.4
OVERLAP = 0.5

MONAI = "MONAI, torch forward (baseline)"
ONNX_HEAT = "camseg ONNX one-pass Grad-CAM, heatmaps"
ONNX_MASK = "camseg ONNX one-pass Grad-CAM, + masks"
TORCH_HEAT = "camseg torch Grad-CAM, heatmaps"
TORCH_MASK = "camseg torch Grad-CAM, + masks"


# ------------------------------------------------------------------ images and model
def texture(shape: tuple[int, int], *, background: float = 0.0, seed: int = 0) -> FloatArray:
    """A mammogram-like image in [0, 1]: power-law texture with a few bright masses,
    tissue everywhere (no value under 0.15) except the right ``background`` of the
    columns, which are 0."""
    h, w = shape
    rng = np.random.default_rng(seed)
    side = 1 << (max(h, w) - 1).bit_length()
    img = 0.5 + 0.085 * power_law_noise(rng, 1, side, 3.0)[0, :h, :w]
    yy, xx = np.ogrid[:h, :w]
    for _ in range(max(2, h * w // 400_000)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w * (1 - background)), rng.uniform(12, 40)
        img += 0.25 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)).astype(np.float32)
    np.clip(img, 0.15, 1.0, out=img)
    if background > 0:
        img[:, round(w * (1 - background)) :] = 0.0
    return np.ascontiguousarray(img, dtype=np.float32)


def make_model(args: argparse.Namespace, work: Path) -> Path:
    """A trained, exported camseg model directory (synthetic ROIs record scale 1)."""
    if args.weights is not None:
        return Path(args.weights)
    data = synthesize(work / "data", SynthConfig(n=args.train_images, size=64, seed=0))
    out = work / "model"
    train_from_folder(data, "resnet", out, TrainConfig(epochs=args.epochs, batch_size=32, seed=0),
                      input_size=64, channels=1, width=16)
    assert read_metadata(out)["scale"] == {"source_pixels_per_model_pixel": 1.0}
    if not (out / ONNX_FILE).is_file():
        export_model(out, n_images=8, providers="CPUExecutionProvider")
    return out


def load(model_dir: Path, threads: int) -> LoadedModel:
    torch.set_num_threads(threads)
    return LoadedModel.load(model_dir, providers="CPUExecutionProvider", threads=threads, spinning=False)


# ------------------------------------------------------------------ the two sides
def camseg_options(engine: Engine, masks: bool, chunk: int) -> Options:
    opts = Options(engine=engine, chunk=chunk, tiling=Tiling(mode=Whole.ALWAYS, scale=1.0, overlap=OVERLAP))
    return opts if masks else replace(opts, threshold=None)


def monai_forward(model: LoadedModel, image: FloatArray, chunk: int) -> tuple[torch.Tensor, int]:
    """MONAI's sliding window over ``image`` with the classifier's tumour probability
    broadcast over each tile; returns the blended map and the tiles run."""
    from monai.inferers import sliding_window_inference

    net = model.gradients()
    pos = list(model.positives)
    tiles = 0

    def predictor(x: torch.Tensor) -> torch.Tensor:
        nonlocal tiles
        tiles += x.shape[0]
        p = F.softmax(net(x), dim=1)[:, pos].sum(1)
        return p[:, None, None, None].expand(-1, 1, x.shape[2], x.shape[3]).contiguous()  # MONAI writes into it

    x = torch.from_numpy(image)[None, None]
    with torch.inference_mode():
        out = sliding_window_inference(x, roi_size=model.input_hw, sw_batch_size=chunk, predictor=predictor,
                                       overlap=OVERLAP, mode="gaussian", sigma_scale=0.125)
    assert isinstance(out, torch.Tensor)
    return out[0, 0], tiles


# ------------------------------------------------------------------ memory (Linux)
def _status() -> dict[str, int]:
    """VmRSS and VmHWM in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: RSS before the image, the peak after."""
    model = load(Path(spec["model"]), spec["threads"])
    warm = texture((192, 192), seed=1)  # lazy initialisation of both engines, outside the peak
    run(model, [warm], camseg_options(Engine.AUTO, True, spec["chunk"]))
    run(model, [warm], camseg_options(Engine.TORCH, True, spec["chunk"]))
    monai_forward(model, warm, spec["chunk"])
    before = _status()["VmRSS"]
    _reset_peak()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    path = Path(spec["image"])
    image = np.load(path) if path.suffix == ".npy" else decode_image(path, max_pixels=DEFAULT_MAX_WHOLE_PIXELS)
    times["decode_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    extra: dict[str, Any] = {}
    if spec["side"] == "monai":
        out, tiles = monai_forward(model, image, spec["chunk"])
        extra = {"tiles": tiles, "max_probability": float(out.max())}
    else:
        res = run(model, [image], camseg_options(Engine(spec["engine"]), spec["masks"], spec["chunk"]))
        item = res.items[0]
        assert item.whole is not None
        extra = {"tiles": item.whole.tiles, "skipped": item.whole.skipped, "engine": res.engine.value,
                 "lesions": len(item.whole.lesions)}
        times["run_s"] = time.perf_counter() - t1
        if item.mask is not None:
            t2 = time.perf_counter()
            png = encode_png(item.mask)
            times["encode_s"] = time.perf_counter() - t2
            extra["mask_png_bytes"] = len(png)
    times.setdefault("run_s", time.perf_counter() - t1)
    times["total_s"] = time.perf_counter() - t0
    peak = _status()["VmHWM"]
    return {"rss_before": before, "peak": peak, "above": peak - before, "shape": list(image.shape),
            "dtype": str(image.dtype), **times, **extra}


def in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {spec} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------ timing
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def tiles_of(result: Result) -> int:
    info = result.items[0].whole
    assert info is not None
    return info.tiles


def score_of(result: Result) -> float:
    info = result.items[0].whole
    assert info is not None
    return info.score


def profile(fn: Callable[[], Any], top: int = 18) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def mb(n: float) -> str:
    return f"{n / 1e6:.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--weights", type=Path, default=None, help="a camseg model directory instead of training one")
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--size", type=int, default=1024, help="side of the tissue-filled image")
    p.add_argument("--chunk", type=int, default=16, help="tiles per pass (MONAI's sw_batch_size)")
    p.add_argument("--threads", type=int, default=Settings.load().torch_threads or 2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-e2e", action="store_true", help="skip the 4096 x 5120 end-to-end run")
    p.add_argument("--profile", action="store_true", help="cProfile one camseg call (ONNX, masks)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    console = Console(width=max(Console().width, 150))
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="camseg-whole-bench-") as tmp:
        work = Path(tmp)
        model_dir = make_model(args, work)
        model = load(model_dir, args.threads)
        full = texture((args.size, args.size))
        part = texture((args.size, args.size), background=BACKGROUND)
        c = args.chunk
        rows: dict[str, Callable[[], Any]] = {
            MONAI: lambda: monai_forward(model, full, c),
            ONNX_HEAT: lambda: run(model, [full], camseg_options(Engine.AUTO, False, c)),
            ONNX_MASK: lambda: run(model, [full], camseg_options(Engine.AUTO, True, c)),
            TORCH_HEAT: lambda: run(model, [full], camseg_options(Engine.TORCH, False, c)),
            TORCH_MASK: lambda: run(model, [full], camseg_options(Engine.TORCH, True, c)),
        }
        skip_rows: dict[str, Callable[[], Any]] = {
            "MONAI, every tile": lambda: monai_forward(model, part, c),
            "camseg, ONNX one-pass, + masks, tissue skipped": lambda: run(
                model, [part], camseg_options(Engine.AUTO, True, c)),
        }
        engine = run(model, [full[:128, :128]], camseg_options(Engine.AUTO, False, c)).engine
        if engine is not Engine.ONNX:
            raise SystemExit(f"engine auto chose {engine.value}, not the one-pass ONNX path")
        samples: dict[str, list[float]] = {name: [] for name in [*rows, *skip_rows]}
        tiles: dict[str, int] = {}
        skipped: dict[str, int] = {}
        scores: dict[str, float] = {}
        for fn in rows.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for name, fn in [*rows.items(), *skip_rows.items()]:
                seconds, out = timed(fn)
                samples[name].append(seconds)
                if isinstance(out, Result):
                    tiles[name] = tiles_of(out)
                    scores[name] = score_of(out)
                    info = out.items[0].whole
                    assert info is not None
                    skipped[name] = info.skipped
                else:
                    tiles[name] = out[1]
                    scores[name] = float(out[0].max())
        grid = {tiles[name] for name in rows}
        if len(grid) != 1:
            raise SystemExit(f"the two sides ran different tile counts: {tiles}")
        n_tiles = grid.pop()
        per_s = {name: tiles[name] / statistics.median(s) for name, s in samples.items()}
        base = per_s[MONAI]
        score_diff = max(abs(scores[name] - scores[MONAI]) for name in rows)

        prof_text = profile(rows[ONNX_MASK]) if args.profile else ""
        if args.profile:
            prof_text += profile(rows[ONNX_HEAT])

        np.save(work / "full.npy", full)
        rss: dict[str, dict[str, Any]] = {}
        base_spec: dict[str, Any] = {"model": str(model_dir), "threads": args.threads, "chunk": c,
                                     "image": str(work / "full.npy")}
        sides: dict[str, dict[str, Any]] = {
            MONAI: {"side": "monai"},
            ONNX_HEAT: {"side": "camseg", "engine": "auto", "masks": False},
            ONNX_MASK: {"side": "camseg", "engine": "auto", "masks": True},
            TORCH_HEAT: {"side": "camseg", "engine": "torch", "masks": False},
        }
        for name, side in sides.items():
            rss[name] = in_subprocess({**base_spec, **side})
        e2e: dict[str, dict[str, Any]] = {}
        if not args.no_e2e:
            big = texture(E2E_SHAPE, background=BACKGROUND, seed=2)
            png = work / "big16.png"
            write_png(png, np.round(big * 65535).astype(np.uint16))
            del big
            spec = {**base_spec, "image": str(png)}
            e2e["camseg"] = in_subprocess({**spec, "side": "camseg", "engine": "auto", "masks": True})
            e2e["MONAI forward"] = in_subprocess({**spec, "side": "monai"})

    title = (f"Whole image {args.size} x {args.size}, tissue everywhere: {n_tiles} tiles of "
             f"{model.input_hw[0]} px, overlap {OVERLAP}, chunk {c}, {args.threads} torch / ONNX Runtime threads; "
             f"median of {args.rounds} interleaved runs")
    table = Table(title=title)
    for col in ("path", "tiles/s", "vs MONAI", "median s", "runs s", "peak RSS - RSS before (MB)"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name in rows:
        table.add_row(name, f"{per_s[name]:.0f}", f"{per_s[name] / base:.2f}x",
                      f"{statistics.median(samples[name]):.2f}",
                      " ".join(f"{s:.2f}" for s in samples[name]),
                      mb(rss[name]["above"]) if name in rss else "")
    console.print(table)
    console.print(f"max |blended probability's max, camseg - MONAI| = {score_diff:.2e} (same grid and window)")
    skip = Table(title=f"{args.size} x {args.size}, right {BACKGROUND:.0%} background")
    for col in ("path", "tiles run", "tiles skipped", "median s", "runs s", "vs MONAI time"):
        skip.add_column(col, justify="left" if col == "path" else "right")
    skip_base = statistics.median(samples["MONAI, every tile"])
    for name in skip_rows:
        med = statistics.median(samples[name])
        skip.add_row(name, str(tiles[name]), str(skipped.get(name, 0)), f"{med:.2f}",
                     " ".join(f"{s:.2f}" for s in samples[name]), f"{skip_base / med:.2f}x faster"
                     if name != "MONAI, every tile" else "")
    console.print(skip)
    if e2e:
        e = Table(title=f"End to end: {E2E_SHAPE[1]} x {E2E_SHAPE[0]} 16-bit PNG from disk, 40% background, "
                        "one fresh process each")
        for col in ("path", "tiles", "decode s", "run s", "encode mask s", "total s", "RSS before (MB)",
                    "peak (MB)", "peak - before (MB)"):
            e.add_column(col, justify="left" if col == "path" else "right")
        for name, r in e2e.items():
            e.add_row(name, str(r["tiles"]), f"{r['decode_s']:.2f}", f"{r['run_s']:.2f}",
                      f"{r['encode_s']:.2f}" if "encode_s" in r else "", f"{r['total_s']:.2f}", mb(r["rss_before"]),
                      mb(r["peak"]), mb(r["above"]))
        console.print(e)
    ratios = {name: per_s[name] / base for name in rows if name != MONAI}
    goal_rate = all(v >= GOAL_RATIO for v in ratios.values())
    goal_mem = bool(e2e) and e2e["camseg"]["above"] < GOAL_E2E_BYTES
    load_end = os.getloadavg()[0]
    console.print(f"goal camseg >= {GOAL_RATIO}x MONAI tiles/s: {'met' if goal_rate else 'NOT met'} "
                  f"({', '.join(f'{v:.2f}x' for v in ratios.values())}); end-to-end peak above the loaded model "
                  f"< 1.5 GB: {'met' if goal_mem else 'NOT met' if e2e else 'not measured'}")
    console.print(f"load average (1 min) {load_start:.1f} at start, {load_end:.1f} at end on {os.cpu_count()} "
                  "cores: timings from a shared machine are noisy, hence the median of interleaved runs")
    if prof_text:
        console.print(prof_text, markup=False, highlight=False)
    import monai

    report: dict[str, Any] = {
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
                        "cpu_count": os.cpu_count(), "load_average_start": load_start, "load_average_end": load_end},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "child"},
        "tiles": n_tiles, "tiles_by_row": tiles, "skipped_by_row": skipped,
        "tiles_per_second": per_s, "ratio_to_monai": ratios, "samples_seconds": samples,
        "max_abs_diff_blended_probability_max": score_diff,
        "peak_rss": rss, "end_to_end": e2e,
        "goals": {"ratio": GOAL_RATIO, "ratio_met": goal_rate, "e2e_bytes": GOAL_E2E_BYTES, "e2e_met": goal_mem},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
