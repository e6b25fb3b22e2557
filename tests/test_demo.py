"""camseg.app.demo: the whole method on a tiny synthetic set, with the service step handed in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camseg.core.settings import Settings


def test_demo_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    from camseg.app.demo import DemoConfig, run_demo
    from jobs.cli import demo_steps as job_steps
    from services.cli import demo_steps

    url = "redis://127.0.0.1:6379/13"  # a DB of this test's own, cleaned
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("CAMSEG_REDIS_URL", url)
    lines: list[str] = []
    try:
        report = run_demo(DemoConfig(out=tmp_path / "demo", n=120, size=32, epochs=1, archs=("densenet",),
                                     refiners=("crf",), distill_epochs=1, whole_images=10, whole_size=(160, 192)),
                          say=lines.append, steps=demo_steps(Settings()) + job_steps(Settings()))
    finally:
        redis.Redis.from_url(url).flushdb()
    text = report.read_text()
    assert "## Mean Dice" in text and "## Filtered retraining" in text and "keep-cold" in text
    # whole images: the classifier slid over full-field images, beside the floor and the slid ceiling
    assert "## Whole images" in text and "| ceiling |" in text and "| floor |" in text
    assert {"whole_froc.png", "whole_densenet.png"} <= {p.name for p in (tmp_path / "demo" / "figures").iterdir()}
    # where the heatmaps sit, measured for the paper's claim about DenseNet121
    assert "## The paper's finding" in text and "DenseNet121" in text
    assert "holds" in text or "does not hold" in text
    figs = {p.name for p in (tmp_path / "demo" / "figures").iterdir()}
    assert {"training.png", "filtered_retraining.png", "dice_vs_threshold_densenet.png",
            "overlays_densenet_paper.png", "overlays_densenet_best.png", "overlays_densenet_recipe.png",
            "heat_location.png"} <= figs
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    whole = res["whole"]["models"]["densenet"]
    assert whole["camseg"]["summary"]["images"] == len(whole["camseg"]["rows"]) > 0
    assert whole["ceiling"] is not None and whole["bounds"]["floor"] == whole["floor"]["dice"]
    # what a Dice is worth: the floor and the ceiling, once per data set, beside every ROI Dice table
    assert 0 < res["bounds"]["floor"] < 1 and (tmp_path / "demo" / "ceiling" / "ceiling.json").is_file()
    assert res["dice"]["densenet"]["bounds"] == res["bounds"]
    assert "floor | ceiling | position of the best |" in text and "recipe | floor | ceiling | position |" in text
    assert set(res["dice"]["densenet"]["by_method"]) == {"gradcam", "gradcam++", "hirescam", "layercam", "fused"}
    loc = {r["method"]: r for r in res["location"]["densenet"]}
    assert set(loc) == set(res["dice"]["densenet"]["by_method"])
    assert loc["gradcam"]["n"] == res["dice"]["densenet"]["n_report"] and 0 <= loc["gradcam"]["inside"] <= 1
    assert lines[0].startswith("[1/8]") and lines[-1].startswith("done")
    # the recipe: chosen on val, recorded with the model, its ablation in the report
    assert "## Recipes: each step chosen on val, reported on test" in text and "### Ablation: densenet" in text
    recipe = res["recipes"]["densenet"]
    assert (tmp_path / "demo" / "models" / "densenet" / "recipe.json").is_file()
    assert (tmp_path / "demo" / "models" / "densenet" / "student.onnx").is_file()
    assert any("distilled" in st["name"] for st in recipe["steps"])
    assert res["segment"]["densenet"]["options"]["method"] == recipe["options"]["method"]
    # the same masks through the real gRPC service
    assert "## Through the gRPC service" in text
    svc = res["steps"]["Through the gRPC service"]["densenet"]
    assert svc["images"] == res["dice"]["densenet"]["n_report"]
    assert svc["recipe"] is True  # asked nothing: the service applied the model's recipe
    assert svc["mean_dice"] == pytest.approx(svc["in_process_mean_dice"], abs=1e-4)
    # the same segmentation as a bulk job through a real worker
    assert "## Through the Celery workers" in text
    job = res["steps"]["Through the Celery workers"]["densenet"]
    assert job["images"] == res["segment"]["densenet"]["images"] and job["failed"] == 0
    assert job["mean_dice"] == pytest.approx(job["in_process_mean_dice"], abs=1e-6)
