"""Leave-one-case-out on a small stand-in of the sliced real data (ids ``<case>-s<n>``),
and fine-tuning from a base model (``train_from_folder(init_from=...)``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from camseg.core.errors import InvalidInputError
from camseg.data.folder import Record, write_dataset
from camseg.data.synth import SynthConfig, generate
from camseg.models.modeldir import load_model
from camseg.models.training import TrainConfig, train_from_folder
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel, run
from camseg.study.realeval import LocoReport, case_of, leave_one_case_out, means_of, val_case

# (case, lesion slices, normal slices, image size): caseC has no lesion, caseD is larger
CASES = (("caseA", 3, 7, 32), ("caseB", 5, 5, 32), ("caseC", 0, 8, 32), ("caseD", 4, 6, 48))


def _records(case: str, n_lesion: int, n_normal: int, size: int, seed: int) -> list[Record]:
    images, masks, labels, _ = generate(SynthConfig(n=3 * (n_lesion + n_normal) + 4, size=size, seed=seed))
    tumor, normal = np.flatnonzero(labels == 1)[:n_lesion], np.flatnonzero(labels == 0)[:n_normal]
    assert len(tumor) == n_lesion and len(normal) == n_normal
    # lesion slices in the middle of the volume, as in a real scan
    order = [*normal[: n_normal // 2], *tumor, *normal[n_normal // 2 :]]
    return [Record(f"{case}-s{k:03d}", int(labels[i]), "train", np.round(images[i] * 255).astype(np.uint8),
                   masks[i] if labels[i] else None) for k, i in enumerate(order)]


@pytest.fixture(scope="module")
def sliced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder data set of four 'volumes' sliced to ids ``<case>-s<n>``."""
    records = [r for k, c in enumerate(CASES) for r in _records(*c, seed=k)]
    return write_dataset(tmp_path_factory.mktemp("sliced") / "data", records, {"name": "stand-in"})


@pytest.fixture(scope="module")
def loco(sliced: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LocoReport]:
    out = tmp_path_factory.mktemp("loco") / "out"
    report = leave_one_case_out(sliced, out, arch="resnet", epochs=1, size=32, refiners=())
    return out, report


def _labels(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_case_ids_and_the_rotating_val_case() -> None:
    assert case_of("brain1-s012") == "brain1"
    assert case_of("a-s1-s002") == "a-s1"  # the last -s<n> ends the id
    assert case_of("roi-00012") is None and case_of("brain1-s") is None
    cases = ["a", "b", "c", "d"]
    lesion = {"a": True, "b": True, "c": False, "d": True}
    assert [val_case(cases, c, lesion) for c in cases] == ["b", "d", "d", "a"]


def test_means_weight_by_lesion_slices_and_skip_cases_without() -> None:
    m = means_of([0.2, 0.8, math.nan], [1, 3, 0])
    assert m.over_slices == pytest.approx((0.2 * 1 + 0.8 * 3) / 4)
    assert m.over_cases == pytest.approx(0.5)
    assert (m.n_slices, m.n_cases) == (4, 2)
    assert math.isnan(means_of([math.nan], [0]).over_slices)


def test_every_case_is_held_out_once_and_never_trained_or_chosen_on(loco: tuple[Path, LocoReport]) -> None:
    out, report = loco
    names = [c[0] for c in CASES]
    assert [c.case for c in report.cases] == names
    assert [c.val_case for c in report.cases] == ["caseB", "caseD", "caseD", "caseA"]
    for c in report.cases:
        rows = _labels(out / "folds" / c.case / "data" / "labels.csv")
        held = {r["id"] for r in rows if case_of(r["id"]) == c.case}
        assert {r["split"] for r in rows if r["id"] in held} == {"test"}
        assert {case_of(r["id"]) for r in rows if r["split"] == "test"} == {c.case}
        assert {case_of(r["id"]) for r in rows if r["split"] == "val"} == {c.val_case}
        assert {case_of(r["id"]) for r in rows if r["split"] == "train"} == set(c.train_cases)
        assert sorted([c.case, c.val_case, *c.train_cases]) == names
        assert len(rows) == sum(n + m for _, n, m, _ in CASES)
        # the fold model's training data: the train cases only
        meta = json.loads((out / "folds" / c.case / "model" / "metadata.json").read_text())
        assert meta["data"]["n_train"] == sum(n + m for name, n, m, _ in CASES if name in c.train_cases)


def test_report_rows_means_and_files(loco: tuple[Path, LocoReport]) -> None:
    out, report = loco
    for c, (name, n_lesion, n_normal, _) in zip(report.cases, CASES, strict=True):
        assert (c.case, c.n_lesion, c.n_normal) == (name, n_lesion, n_normal)
        assert (c.recipe.n_tumor, c.recipe.n_normal) == (n_lesion, n_normal)
        assert c.options["tta"] in (1, 4)
    no_lesion = report.cases[2]
    assert math.isnan(no_lesion.recipe.all_tumors) and 0.0 <= no_lesion.recipe.specificity <= 1.0
    assert no_lesion.figure is None and no_lesion.notes
    with_lesion = [c for c in report.cases if c.n_lesion]
    dice = [c.recipe.all_tumors for c in with_lesion]
    n = [c.n_lesion for c in with_lesion]
    assert report.means["recipe"].over_slices == pytest.approx(sum(d * k for d, k in zip(dice, n, strict=True)) / 12)
    assert report.means["recipe"].over_cases == pytest.approx(float(np.mean(dice)))
    assert (report.means["recipe"].n_slices, report.means["recipe"].n_cases) == (12, 3)
    assert report.means["paper"].over_slices == pytest.approx(
        sum(c.paper.all_tumors * c.n_lesion for c in with_lesion) / 12)
    assert report.pooled["sensitivity"] == pytest.approx(
        sum(c.recipe.sensitivity * c.n_lesion for c in with_lesion) / 12)
    for name in ("report.md", "report.json"):
        assert (out / name).is_file()
    for c in with_lesion:
        assert c.figure == f"figures/{c.case}.png"
        assert (out / c.figure).read_bytes().startswith(b"\x89PNG")
    md = (out / "report.md").read_text()
    assert all(f"| {c.case} | {c.n_lesion} | {c.n_normal} |" in md for c in report.cases)
    assert "12 with lesion" in md
    again = LocoReport.from_dict(json.loads((out / "report.json").read_text()))
    assert [c.case for c in again.cases] == [c.case for c in report.cases]
    assert again.means["recipe"].over_cases == pytest.approx(report.means["recipe"].over_cases)


def test_a_case_dice_is_the_pipeline_dice_at_each_slice_size(loco: tuple[Path, LocoReport], sliced: Path) -> None:
    from camseg.data.folder import FolderDataset

    out, report = loco
    ds = FolderDataset.open(sliced)
    for c in report.cases:
        if not c.n_lesion:
            continue
        model = LoadedModel.load(out / "folds" / c.case / "model")
        pairs = [ds.load(i) for i, s in enumerate(ds.samples) if case_of(s.id) == c.case and s.mask_path]
        res = run(model, [p[0] for p in pairs], Options.from_record(c.options), truths=[p[1] for p in pairs])
        assert all(r.mask is not None and r.mask.shape == p[0].shape for r, p in zip(res.items, pairs, strict=True))
        assert c.recipe.all_tumors == pytest.approx(float(np.mean([r.dice for r in res.items])))
    assert {ds.load(i)[0].shape for i, s in enumerate(ds.samples) if case_of(s.id) == "caseD"} == {(48, 48)}


def test_ids_without_a_case_are_refused(tmp_path: Path) -> None:
    img = np.zeros((16, 16), dtype=np.uint8)
    data = write_dataset(tmp_path / "d", [Record(f"roi-{i:03d}", 0, None, img, None) for i in range(4)], {})
    with pytest.raises(InvalidInputError, match=r"<case>-s<slice>.*'roi-000', 'roi-001', 'roi-002' and 1 more"):
        leave_one_case_out(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fewer_than_three_cases_are_refused(tmp_path: Path) -> None:
    img = np.zeros((16, 16), dtype=np.uint8)
    recs = [Record(f"{c}-s{i:03d}", 0, None, img, None) for c in ("p", "q") for i in range(3)]
    data = write_dataset(tmp_path / "d", recs, {})
    with pytest.raises(InvalidInputError, match=r"at least 3 cases.*found 2: p, q"):
        leave_one_case_out(data, tmp_path / "out")


def test_a_non_empty_out_and_a_base_of_another_size_are_refused(sliced: Path, trained_dir: Path,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="already exists and is not empty"):
        leave_one_case_out(sliced, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(InvalidInputError, match="base model's size is 32, not 64"):
        leave_one_case_out(sliced, tmp_path / "other", base_model=trained_dir, size=64)


def test_fine_tuning_starts_from_the_base_weights(tiny_folder: Path, trained_dir: Path, tmp_path: Path) -> None:
    base, _ = load_model(trained_dir)
    # a learning rate of ~0: the weights stay the base's, so they were loaded
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-12, weight_decay=0.0, seed=5, balanced=True)
    meta = train_from_folder(tiny_folder, "densenet", tmp_path / "ft", cfg, input_size=32, width=8,
                             init_from=trained_dir)
    tuned, _ = load_model(tmp_path / "ft")
    assert torch.allclose(tuned.fc.weight, base.fc.weight, atol=1e-6)
    assert meta["fine_tuned_from"] == str(trained_dir.resolve())
    fresh = train_from_folder(tiny_folder, "densenet", tmp_path / "fresh", cfg, input_size=32, width=8)
    assert fresh.get("fine_tuned_from") is None
    assert not torch.allclose(load_model(tmp_path / "fresh")[0].fc.weight, base.fc.weight, atol=1e-3)
    with pytest.raises(InvalidInputError, match=r"spec differs \(width 8 vs 16\)"):
        train_from_folder(tiny_folder, "densenet", tmp_path / "bad", cfg, input_size=32, width=16,
                          init_from=trained_dir)
