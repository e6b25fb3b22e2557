"""The demo's service step: the exported models served by a real ``camseg serve`` and
the tumor ROIs of the test split segmented through it, Dice compared with in-process."""

from __future__ import annotations

import shutil
import time
import urllib.request
from typing import Any

from camseg.app.demo import DemoContext, StepResult
from camseg.data.folder import FolderDataset
from services.client import SegmentationClient
from services.process import spawn

TITLE = "Through the gRPC service"


def through_service(ctx: DemoContext) -> StepResult:
    """Start ``camseg serve`` on the exported models, segment the tumor ROIs of the
    report split through the real service with each model's chosen setting, and compare
    the mean Dice with the in-process number."""
    repo = ctx.out / "repo"
    for arch, path in ctx.models.items():
        shutil.copytree(path, repo / arch / "1")
    ds = FolderDataset.open(ctx.data)
    result: dict[str, Any] = {}
    server = spawn(repo)
    try:
        for arch, report in ctx.dice.items():
            tumor = [s for s in (ds.samples[i] for i in ds.subset(report.report_split)) if s.mask_path is not None]
            best = report.best
            # a model with a recipe is asked nothing: the service applies its recipe
            own: dict[str, Any] = {}
            if arch not in ctx.recipes:
                own = {"method": best.method, "layer": best.layer, "threshold": best.rule, "largest": best.largest}
            t0 = time.perf_counter()
            with SegmentationClient(server.address, plaintext=True, model=arch) as client:
                masks = []
                for i in range(0, len(tumor), 64):
                    chunk = tumor[i : i + 64]
                    masks += client.segment([s.image_path for s in chunk], **own,
                                            truth=[s.mask_path for s in chunk if s.mask_path is not None])
            dices = [r.dice for r in masks if r.dice is not None]
            result[arch] = {"images": len(masks), "mean_dice": sum(dices) / len(dices),
                            "in_process_mean_dice": ctx.segments[arch]["mean_dice"],
                            "recipe": arch in ctx.recipes, "seconds": round(time.perf_counter() - t0, 2)}
        with urllib.request.urlopen(f"http://{server.host}:{server.metrics_port}/metrics", timeout=10) as r:
            sample = [line for line in r.read().decode().splitlines() if line.startswith("camseg_grpc_requests_total")]
    finally:
        server.stop(timeout=60)
    lines = ["`camseg serve` on the exported models; the tumor ROIs of the test split sent as PNG files through "
             "`services.client` (`Segment` with the truth masks and no options: the service applies each model's "
             "recipe).", "",
             "| architecture | images | mean Dice (service) | mean Dice (in process) | seconds |",
             "|---|---:|---:|---:|---:|"]
    for arch, s in result.items():
        lines.append(f"| {arch} | {s['images']} | {s['mean_dice']:.3f} | {s['in_process_mean_dice']:.3f} | "
                     f"{s['seconds']} |")
    lines += ["", "```", *sample, "```"]
    return StepResult(TITLE, "\n".join(lines), {**result, "metrics_sample": sample})
