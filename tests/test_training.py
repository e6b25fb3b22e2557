"""camseg.models.training: it learns, it is deterministic, it writes a complete model directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import camseg
from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.data.folder import FolderDataset
from camseg.data.synth import SynthConfig, generate
from camseg.data.tensors import ArraySet, load_arrays
from camseg.models import ModelSpec
from camseg.models.modeldir import load_model
from camseg.models.training import TrainConfig, augment, evaluate, train, train_from_folder

SIZE = 32


def array_set(images: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> ArraySet:
    n = len(labels)
    return ArraySet(
        [f"r{i}" for i in range(n)],
        torch.from_numpy(images)[:, None],
        torch.from_numpy(labels),
        torch.from_numpy(masks),
        torch.from_numpy(labels == 1),
        [(SIZE, SIZE)] * n,
    )


@pytest.fixture(scope="module")
def easy_sets() -> tuple[ArraySet, ArraySet]:
    """240 high-contrast ROIs: 180 to train, 60 to validate."""
    cfg = SynthConfig(n=240, size=SIZE, seed=0, contrast_range=(0.3, 0.5), subtle_fraction=0.0)
    images, masks, labels, _ = generate(cfg)
    full = array_set(images, labels, masks)
    return full.select(range(180)), full.select(range(180, 240))


def test_learns_an_easy_task(easy_sets: tuple[ArraySet, ArraySet]) -> None:
    train_set, val_set = easy_sets
    spec = ModelSpec("resnet", input_size=SIZE, width=8)
    result = train(
        spec,
        train_set,
        val_set,
        TrainConfig(epochs=6, batch_size=16, seed=0, patience=6),

    )
    assert not result.model.training
    assert 1 <= result.best_epoch <= len(result.history) <= 6
    assert result.best.val_loss == min(h.val_loss for h in result.history)
    metrics = evaluate(result.model, val_set)
    assert metrics["accuracy"] > 0.75  # chance is 0.5; observed ~0.95
    assert metrics["auc"] > 0.85
    # the returned weights are the best epoch's, not the last one's
    assert metrics["loss"] == pytest.approx(result.best.val_loss, rel=1e-4)
    # the data's statistics became part of the model
    assert float(result.model.input_stats[0]) == pytest.approx(
        float(train_set.images.mean()), rel=1e-5
    )
    assert float(result.model.input_stats[1]) == pytest.approx(
        float(train_set.images.std()), rel=1e-5
    )


def test_same_seed_same_weights(easy_sets: tuple[ArraySet, ArraySet]) -> None:
    train_set, val_set = easy_sets
    small, val = train_set.select(range(48)), val_set.select(range(16))
    spec = ModelSpec("mobilenet", input_size=SIZE, width=8)
    cfg = TrainConfig(epochs=2, batch_size=16, seed=3)
    a = train(spec, small, val, cfg)
    b = train(spec, small, val, cfg)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h.val_loss for h in a.history] == [h.val_loss for h in b.history]
    c = train(spec, small, val, TrainConfig(epochs=2, batch_size=16, seed=4))
    assert any(
        not torch.equal(sa[k], c.model.state_dict()[k]) for k in sa if sa[k].is_floating_point()
    )


def test_single_class_train_split_is_refused(easy_sets: tuple[ArraySet, ArraySet]) -> None:
    train_set, val_set = easy_sets
    normals = train_set.select(torch.nonzero(train_set.labels == 0).flatten())
    with pytest.raises(InvalidInputError, match="single class"):
        train(
            ModelSpec("resnet", input_size=SIZE, width=8),
            normals,
            val_set,
            TrainConfig(epochs=1),

        )
    with pytest.raises(InvalidInputError, match="non-empty"):
        train(
            ModelSpec("resnet", input_size=SIZE, width=8),
            train_set,
            val_set.select([]),
            TrainConfig(epochs=1),

        )


def test_evaluate_restores_training_flag(easy_sets: tuple[ArraySet, ArraySet]) -> None:
    from camseg.models import build

    model = build(ModelSpec("resnet", input_size=SIZE, width=8)).train()
    m = evaluate(model, easy_sets[1].select(range(10)))
    assert model.training
    assert set(m) == {"loss", "accuracy", "auc"} and 0.0 <= m["accuracy"] <= 1.0


def test_augment_is_a_dihedral_transform() -> None:
    x = torch.rand(16, 1, 5, 5)
    out = augment(x, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(16):
        variants = [x[i].rot90(k, (-2, -1)) for k in range(4)]
        variants += [v.flip(-1) for v in variants]
        matches = [j for j, v in enumerate(variants) if torch.equal(out[i], v)]
        assert matches, f"image {i} is not a flip/rotation of its input"
        seen.add(matches[0])
    assert len(seen) > 1  # it does transform
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))


# ------------------------------------------------------------------ train_from_folder
def test_train_from_folder_writes_model_dir(trained_dir: Path, tiny_folder: Path) -> None:
    assert (trained_dir / "model.pt").is_file() and (trained_dir / "metadata.json").is_file()
    meta = json.loads((trained_dir / "metadata.json").read_text())
    assert meta["architecture"] == "densenet"
    assert meta["spec"]["input_size"] == SIZE and meta["spec"]["width"] == 8
    assert meta["input"] == {"size": SIZE, "channels": 1, "range": [0.0, 1.0], "layout": "NCHW"}
    assert meta["normalisation"]["applied_in_model"] is True
    assert meta["normalisation"]["std"] > 0
    assert meta["classes"] == ["normal", "tumor"] and meta["positive_class"] == "tumor"
    assert meta["gradcam_layer"] == "stage4"
    assert meta["metrics"]["best_epoch"] == 1
    assert {"val", "test"} <= set(meta["metrics"])
    assert 0.0 <= meta["metrics"]["val"]["val_accuracy"] <= 1.0
    assert meta["camseg_version"] == camseg.__version__
    assert meta["data"]["path"] == str(tiny_folder.resolve())

    ds = FolderDataset.open(tiny_folder)
    train_set = load_arrays(ds, ds.subset("train"), SIZE, 1)
    assert meta["data"]["sha256"] == train_set.digest()
    assert meta["data"]["n_train"] == len(ds.subset("train"))
    assert meta["data"]["n_val"] == len(ds.subset("val")) and meta["data"]["n_test"] == len(
        ds.subset("test")
    )

    model, loaded_meta = load_model(trained_dir)
    assert loaded_meta == meta
    assert float(model.input_stats[0]) == pytest.approx(meta["normalisation"]["mean"])
    val_set = load_arrays(ds, ds.subset("val"), SIZE, 1)
    assert evaluate(model, val_set)["accuracy"] == pytest.approx(
        meta["metrics"]["val"]["val_accuracy"], abs=1e-6
    )


def test_train_from_folder_errors(tmp_path: Path, tiny_folder: Path) -> None:
    with pytest.raises(NotFoundError, match="vgg"):
        train_from_folder(
            tiny_folder,
            "vgg",
            tmp_path / "m",
            TrainConfig(epochs=1),
            input_size=SIZE,

        )
    # no split column
    flat = tmp_path / "flat"
    shutil.copytree(tiny_folder, flat)
    lines = (flat / "labels.csv").read_text().splitlines()
    (flat / "labels.csv").write_text(
        "\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n"
    )
    with pytest.raises(InvalidInputError, match="no split column"):
        train_from_folder(
            flat, "resnet", tmp_path / "m", TrainConfig(epochs=1), input_size=SIZE
        )
    assert not (tmp_path / "m").exists()
