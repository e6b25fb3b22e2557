"""camseg.study.distill: pseudo-labels with an ignored band, a student that learns from them,
truth masks never read, and an ONNX student that matches torch."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from camseg.core.errors import InvalidInputError
from camseg.core.metrics import dice
from camseg.data.folder import FolderDataset, read_mask
from camseg.io.codecs import write_png
from camseg.models.export import ExportParityError
from camseg.models.unet import UNet
from camseg.pipeline.run import LoadedModel
from camseg.pipeline.student import DistillConfig, Student, load_student, student_heatmaps
from camseg.study.distill import (
    IGNORE,
    augment_pair,
    dilate,
    distill,
    distill_inputs,
    distill_loss,
    pseudo_labels,
    save_student,
    train_student,
)

SIZE = 32
CPU = "CPUExecutionProvider"
TINY = DistillConfig(epochs=2, batch_size=8, base=8, depth=2, seed=0)


# ---------------------------------------------------------------------- pseudo-labels
def ramp(n: int) -> torch.Tensor:
    """``n`` identical maps whose columns run 0, 0.1, ..., 0.9."""
    return torch.arange(10, dtype=torch.float32).div(10).expand(n, 4, 10).clone()


def test_pseudo_labels_three_regions_and_normal_images() -> None:
    heat = ramp(2)
    labels = pseudo_labels(heat, torch.tensor([True, False]), fg=0.6, bg=0.2)
    assert labels.dtype == torch.int8 and labels.shape == (2, 4, 10)
    # positive image: heat <= 0.2 background, >= 0.6 foreground, the band ignored
    assert labels[0, 0].tolist() == [0, 0, 0, -1, -1, -1, 1, 1, 1, 1]
    assert (labels[0] == labels[0, :1]).all()
    # an image the classifier calls normal is background everywhere, however hot
    assert (labels[1] == 0).all()


def test_pseudo_labels_from_refined_masks() -> None:
    heat = torch.full((2, 9, 9), 0.5)
    heat[0, 4, 4] = 0.1  # inside the mask but the heat calls it background: ignored
    heat[0, 0, 0] = 0.9  # outside the mask but confidently hot: ignored
    mask = torch.zeros(2, 9, 9, dtype=torch.bool)
    mask[:, 3:6, 3:6] = True
    labels = pseudo_labels(heat, torch.tensor([True, False]), fg=0.6, bg=0.2, masks=mask, margin=1)
    ring = dilate(mask[:1], 1)[0] & ~mask[0]
    expected = torch.zeros(9, 9, dtype=torch.int8)
    expected[mask[0]] = 1
    expected[ring] = IGNORE
    expected[4, 4] = IGNORE
    expected[0, 0] = IGNORE
    assert torch.equal(labels[0], expected)
    assert int(ring.sum()) == 5 * 5 - 3 * 3  # a 3x3 mask grown by one pixel
    assert (labels[1] == 0).all()  # the mask of a normal-called image is not used


def test_pseudo_labels_reject_bad_input() -> None:
    heat, pos = ramp(2), torch.tensor([True, False])
    with pytest.raises(InvalidInputError, match="bg < fg"):
        pseudo_labels(heat, pos, fg=0.3, bg=0.3)
    with pytest.raises(InvalidInputError, match="positive"):
        pseudo_labels(heat, pos[:1])
    with pytest.raises(InvalidInputError, match="NaN"):
        pseudo_labels(torch.full((1, 2, 2), float("nan")), pos[:1])
    with pytest.raises(InvalidInputError, match="masks"):
        pseudo_labels(heat, pos, masks=torch.zeros(2, 3, 3, dtype=torch.bool))
    with pytest.raises(InvalidInputError):
        DistillConfig(fg=0.2, bg=0.6)


# ---------------------------------------------------------------------- loss, augmentation
def test_loss_ignores_the_band() -> None:
    labels = torch.tensor([[[1, 0, IGNORE, IGNORE]]], dtype=torch.int8)
    logits = torch.zeros(1, 1, 1, 4, requires_grad=True)
    loss = distill_loss(logits, labels, dice_weight=0.0)
    assert loss.item() == pytest.approx(np.log(2.0))  # BCE of p = 0.5, over the two labelled pixels
    for w in (0.0, 0.5):
        (grad,) = torch.autograd.grad(distill_loss(logits, labels, dice_weight=w), logits)
        assert (grad[0, 0, 0, 2:] == 0).all() and (grad[0, 0, 0, :2] != 0).all()
    # what the ignored pixels predict changes nothing
    other = torch.tensor([[[[0.0, 0.0, 9.0, -9.0]]]])
    assert distill_loss(other, labels).item() == pytest.approx(distill_loss(logits.detach(), labels).item())
    assert distill_loss(logits, torch.full_like(labels, IGNORE)).item() == 0.0


def test_augment_pair_moves_image_and_label_together() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=gen)
    labels = (x[:, 0] > 0.5).to(torch.int8)
    ax, al = augment_pair(x, labels, gen)
    assert al.dtype == torch.int8
    assert torch.equal(al, (ax[:, 0] > 0.5).to(torch.int8))
    assert not torch.equal(ax, x)  # something moved


# ---------------------------------------------------------------------- truth never read
def _labels_csv(data: Path) -> list[dict[str, str]]:
    with (data / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_truth_masks_and_labels_are_never_read(
    exported: tuple[Path, dict[str, Any]], tiny_folder: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    model = LoadedModel.load(exported[0], providers=CPU)
    images, labels = distill_inputs(model, data, "train")
    assert images.shape == (16, 1, SIZE, SIZE) and labels.shape == (16, SIZE, SIZE)
    assert {-1, 0, 1} <= set(labels.unique().tolist())  # a real, three-valued set to compare

    # poison: every tumor mask inverted, a random mask for every normal ROI, labels swapped
    rows = _labels_csv(data)
    rng = np.random.default_rng(0)
    for row in rows:
        path = data / "masks" / f"{row['id']}.png"
        garbage = ~read_mask(path) if path.is_file() else rng.random((SIZE, SIZE)) < 0.5
        write_png(path, garbage)
        row["label"] = "normal" if row["label"] == "tumor" else "tumor"
    with (data / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    images2, labels2 = distill_inputs(model, data, "train")
    assert torch.equal(images, images2) and torch.equal(labels, labels2)

    # unreadable masks: decoding any one of them would raise
    for path in (data / "masks").glob("*.png"):
        path.write_bytes(b"not a png at all")
    with pytest.raises(InvalidInputError):
        FolderDataset.open(data).load(0)
    images3, labels3 = distill_inputs(model, data, "train")
    assert torch.equal(images, images3) and torch.equal(labels, labels3)


def test_custom_heat_source_and_refinement(exported: tuple[Path, dict[str, Any]], tiny_folder: Path) -> None:
    model = LoadedModel.load(exported[0], providers=CPU)

    def heat_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, 0], x[:, 0].mean(dim=(1, 2)) > 0.45  # bright is hot

    def refine(x: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
        return heat > 0.55

    cfg = DistillConfig(fg=0.6, bg=0.4, margin=1)
    images, labels = distill_inputs(model, tiny_folder, "val", cfg=cfg, heat_fn=heat_fn, refine=refine, chunk=3)
    heat, pos = heat_fn(images)
    assert torch.equal(labels, pseudo_labels(heat, pos, fg=0.6, bg=0.4, masks=heat > 0.55, margin=1))
    with pytest.raises(InvalidInputError, match="heat source"):
        distill_inputs(model, tiny_folder, "val", heat_fn=lambda x: (x[:, 0, :4], x[:, 0, 0, 0] > 0))
    with pytest.raises(InvalidInputError, match="split"):
        distill_inputs(model, tiny_folder, "holdout")


# ---------------------------------------------------------------------- the student
def disks(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images, half with a bright disk; the disks' exact masks."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centre = 8 + 16 * torch.rand(n, 2, generator=gen)
    radius = 4 + 4 * torch.rand(n, generator=gen)
    dist = ((yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2).sqrt()
    masks = (dist <= radius[:, None, None]) & (torch.arange(n) % 2 == 0)[:, None, None]
    images = 0.35 + 0.08 * torch.randn(n, SIZE, SIZE, generator=gen) + 0.3 * masks
    return images.clamp(0, 1)[:, None], masks


def exact_labels(masks: torch.Tensor) -> torch.Tensor:
    """1 on the disk, 0 outside, the one-pixel ring around the disk ignored."""
    labels = masks.to(torch.int8)
    labels[dilate(masks, 1) & ~masks] = IGNORE
    return labels


def test_student_learns_disks() -> None:
    images, masks = disks(48, seed=1)
    cfg = DistillConfig(epochs=12, batch_size=8, lr=1e-2, base=8, depth=2, seed=0)
    seen: list[Any] = []
    student = train_student(images, exact_labels(masks), cfg, on_progress=seen.append)
    assert not student.training
    assert seen[-1].done == seen[-1].total == 12 * 6 and seen[-1].task == "distill"
    test_images, test_masks = disks(16, seed=2)
    pred = student_heatmaps(student, test_images) >= 0.5
    scores = dice(pred[0::2], test_masks[0::2])
    assert float(scores.mean()) > 0.8, scores
    assert pred[1::2].float().mean() < 0.01  # disk-free images stay (almost) empty


def test_training_is_seeded() -> None:
    images, masks = disks(8, seed=3)
    labels = exact_labels(masks)
    a, b = (train_student(images, labels, TINY) for _ in range(2))
    c = train_student(images, labels, DistillConfig(**{**TINY.__dict__, "seed": 1}))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_flip_tta_is_equivariant_and_leaves_the_mode() -> None:
    torch.manual_seed(0)
    net = UNet(1, base=4, depth=2)
    net.train()
    x = torch.rand(3, 1, 16, 16)
    heat = student_heatmaps(net, x)
    assert heat.shape == (3, 16, 16) and net.training
    torch.testing.assert_close(student_heatmaps(net, x.flip(-1)), heat.flip(-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(student_heatmaps(net, x.flip(-2)), heat.flip(-2), rtol=0, atol=1e-6)
    plain = student_heatmaps(net, x, tta=False)
    assert not torch.allclose(plain, heat, atol=1e-4)  # the average is not the single pass
    with pytest.raises(InvalidInputError, match="multiple of 4"):
        student_heatmaps(net, torch.rand(1, 1, 18, 18))


# ---------------------------------------------------------------------- saving and ONNX
@pytest.fixture(scope="module")
def distilled(exported: tuple[Path, dict[str, Any]], tiny_folder: Path) -> Student:
    model = LoadedModel.load(exported[0], providers=CPU)
    return distill(model, tiny_folder, TINY)


def test_distill_save_load_onnx_parity(
    distilled: Student, exported: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    assert distilled.onnx is None and len(distilled.meta["training"]["losses"]) == TINY.epochs
    assert distilled.meta["pseudo_labels"]["heat_source"] == "classifier gradcam"
    model_dir = tmp_path / "m"
    shutil.copytree(exported[0], model_dir)
    record = save_student(model_dir, distilled.network, distilled.config, meta=distilled.meta, providers=CPU)
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []
    on_disk = json.loads((model_dir / "student.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    parity = on_disk["onnx"]["parity"]
    assert max(parity["max_abs_diff_probabilities"], parity["max_abs_diff_probabilities_batch1"]) <= 1e-4
    assert on_disk["onnx"]["tolerance"] == 1e-4 and on_disk["input"]["size"] == SIZE
    assert on_disk["pseudo_labels"]["fg"] == TINY.fg and on_disk["config"]["depth"] == TINY.depth

    loaded = load_student(model_dir, providers=CPU)
    assert loaded is not None and loaded.onnx is not None and loaded.config == TINY
    x = torch.rand(5, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    for tta in (True, False):
        ref = student_heatmaps(distilled.network, x, tta=tta)
        got = loaded.heatmaps(x, tta=tta)
        assert got.shape == (5, SIZE, SIZE)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
        torch.testing.assert_close(loaded.heatmaps(x, tta=tta, onnx=False), ref, rtol=0, atol=1e-6)
    assert load_student(model_dir, onnx=False).onnx is None  # type: ignore[union-attr]


def test_parity_failure_writes_nothing(
    distilled: Student, exported: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A student whose ONNX graph misses the tolerance is not saved, and a student saved
    before it stays byte for byte. A negative tolerance forces the failure, as
    tests/test_export.py forces the classifier's."""
    model_dir = tmp_path / "m"
    shutil.copytree(exported[0], model_dir)

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in model_dir.iterdir()}

    def fail() -> None:
        with pytest.raises(ExportParityError, match="student ONNX probabilities differ from torch"):
            save_student(model_dir, distilled.network, distilled.config, meta={}, tolerance=-1.0, providers=CPU)

    before = files()
    fail()
    assert files() == before  # no student, no candidate left
    save_student(model_dir, distilled.network, distilled.config, meta={}, providers=CPU)
    saved = files()
    assert set(saved) - set(before) == {"student.pt", "student.onnx", "student.json"}
    fail()
    assert files() == saved


def test_load_student_none_without_one(trained_dir: Path) -> None:
    assert load_student(trained_dir) is None
