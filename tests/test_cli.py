"""The ``camseg`` command end to end, in real processes, and its one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from camseg.app.cli import main


def camseg(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAMSEG_TORCH_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "camseg", "--no-progress", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"camseg {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_end_to_end(tmp_path: Path) -> None:
    data, model, seg = tmp_path / "data", tmp_path / "model", tmp_path / "seg"
    out = camseg("data", "synth", "--out", data, "--n", "80", "--size", "32", "--seed", "1").stdout
    assert "80 ROIs (40 tumor)" in out
    out = camseg("train", "--data", data, "--arch", "densenet", "--out", model, "--epochs", "2", "--width", "8").stdout
    assert "best epoch" in out
    meta = json.loads((model / "metadata.json").read_text())
    assert meta["architecture"] == "densenet" and meta["input"]["size"] == 32
    out = camseg("export", model).stdout
    assert (model / "model.onnx").is_file() and "parity" in out
    assert json.loads((model / "metadata.json").read_text())["onnx"]["parity"]["max_abs_diff_probabilities"] <= 1e-4
    camseg("segment", "--model", model, "--data", data, "--out", seg, "--split", "test", "--threshold", "p90",
           "--overlays", "--largest")
    with (seg / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and {"id", "probability", "predicted_label", "mask_area", "dice"} <= set(rows[0])
    assert len(list((seg / "masks").glob("*.png"))) == 12 and len(list((seg / "overlays").glob("*.png"))) == 12
    out = camseg("evaluate", "--model", model, "--data", data, "--methods", "gradcam", "--rules", "0.5", "otsu",
                 "--out", tmp_path / "eval").stdout
    assert "paper baseline" in out and "chosen on val" in out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert len(report["select_rows"]) == len(report["report_rows"]) == 3 * 2 * 2
    assert (report["select_split"], report["report_split"]) == ("val", "test")
    again = camseg("segment", "--model", model, "--data", data, "--out", seg, "--split", "test", "--threshold",
                   "p90", "--overlays", "--largest").stdout
    assert "reused" in again
    # the recipe: chosen on val and recorded; segment then takes it unless told otherwise
    out = camseg("recipe", "--model", model, "--data", data, "--refiners", "crf", "--distill-epochs", "1").stdout
    assert "recipe.json" in out and "label-free" in out
    recipe = json.loads((model / "recipe.json").read_text())
    assert (model / "student.onnx").is_file()
    out = camseg("segment", "--model", model, "--data", data, "--out", tmp_path / "seg-recipe", "--split",
                 "test").stdout
    assert "the model's recipe" in out
    used = json.loads((tmp_path / "seg-recipe" / "summary.json").read_text())["options"]
    assert used["method"] == recipe["options"]["method"] and used["refine"] == recipe["options"]["refine"]
    camseg("segment", "--model", model, "--data", data, "--out", tmp_path / "seg-own", "--split", "test",
           "--method", "distilled", "--threshold", "0.5", "--refine", "crf", "--tta", "1")
    used = json.loads((tmp_path / "seg-own" / "summary.json").read_text())["options"]
    assert (used["method"], used["threshold"], used["refine"]) == ("distilled", "0.5", "crf")
    out = camseg("distill", "--model", model, "--data", data, "--epochs", "1").stdout
    assert "student.onnx" in out
    out = camseg("filtered-retrain", "--model", model, "--data", data, "--epochs", "1", "--filters", "keep-hot",
                 "random", "--json", tmp_path / "f.json").stdout
    assert "keep-hot" in out
    assert [r["filter"] for r in json.loads((tmp_path / "f.json").read_text())] == ["none", "keep-hot", "random"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "/nonexistent/x", "--arch", "resnet", "--out", "m"], "no such data directory"),
        (["export", "/nonexistent/model"], "not a model directory"),
        (["data", "synth", "--out", "d", "--n", "1"], "--n must be at least 2"),
    ],
)
def test_errors_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str],
                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("camseg: error: ") and message in err and "\n" not in err


def test_bad_label_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d"
    assert main(["data", "synth", "--out", str(data), "--n", "10", "--size", "16"]) == 0
    lines = (data / "labels.csv").read_text().splitlines()
    lines[3] = lines[3].replace("tumor", "cyst").replace("normal", "cyst")
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--arch", "resnet", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "labels.csv:4" in err and "'cyst'" in err
    assert not (tmp_path / "m").exists()


LIGHT = [
    ["--help"],
    ["segment", "--help"],
    ["health", "--server", "127.0.0.1:1", "--plaintext", "--timeout", "0.2"],
    ["client", "classify", "--help"],
    ["client", "classify", "README.md", "--server", "127.0.0.1:1", "--plaintext"],
    ["jobs", "list", "--help"],
]


@pytest.mark.parametrize("argv", LIGHT, ids=lambda a: " ".join(a[:2]))
def test_help_health_and_client_load_neither_torch_nor_matplotlib(argv: list[str]) -> None:
    """The container's health probe and a client must not pay for the method's libraries:
    the command runs in a fresh interpreter and reports what it loaded. ``segment --help``
    is the control: its choices come from the model registry, so torch must show there."""
    code = (
        "import sys\n"
        "from camseg.app.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    loaded = [line for line in proc.stdout.splitlines() if line.startswith("LOADED")]
    assert loaded, proc.stderr
    if argv[0] == "segment":
        assert "'torch'" in loaded[-1]
    else:
        assert loaded[-1] == "LOADED []"
