"""camseg.pipeline.run: loading, engine choice, and the one segmentation run of every caller."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from camseg.core.errors import CancelledError, InvalidInputError, NotFoundError, UnsupportedError
from camseg.core.metrics import dice
from camseg.core.progress import Progress
from camseg.core.types import BoolArray, FloatArray
from camseg.data.folder import FolderDataset, decode_image, read_mask
from camseg.heat.methods import CamMethod
from camseg.heat.rules import parse_rule
from camseg.io.codecs import from_run_lengths, unpack_bits
from camseg.models import Classifier
from camseg.pipeline.options import Encoding, Engine, Options
from camseg.pipeline.run import LoadedModel, run

CLASSES = ("normal", "tumor")
ALL_MASK_ENCODINGS = frozenset({Encoding.MASK_PNG, Encoding.MASK_BITS, Encoding.MASK_RLE})


@pytest.fixture(scope="module")
def onnx_model(exported: tuple[Path, dict[str, Any]]) -> LoadedModel:
    return LoadedModel.load(exported[0], providers="CPUExecutionProvider", threads=1)


@pytest.fixture(scope="module")
def torch_model(trained_dir: Path) -> LoadedModel:
    return LoadedModel.load(trained_dir)


@pytest.fixture(scope="module")
def rois(tiny_folder: Path) -> tuple[list[FloatArray], list[BoolArray | None]]:
    """The first 8 ROIs of the tiny data set with their truth masks (None where there is none)."""
    ds = FolderDataset.open(tiny_folder)
    samples = ds.samples[:8]
    images = [decode_image(s.image_path) for s in samples]
    truths = [read_mask(s.mask_path) if s.mask_path is not None else None for s in samples]
    return images, truths


SHAPES = [(32, 32), (20, 45), (32, 32), (64, 48), (20, 45), (17, 17), (50, 30)]


@pytest.fixture(scope="module")
def mixed(rois: tuple[list[FloatArray], list[BoolArray | None]]) -> list[FloatArray]:
    """ROIs resized to several sizes, gray and RGB, interleaved so one chunk holds several sizes."""
    out: list[FloatArray] = []
    for i, (h, w) in enumerate(SHAPES):
        gray = np.array(Image.fromarray(rois[0][[0, 2, 4, 7, 1, 2, 0][i]]).resize((w, h), Image.Resampling.BILINEAR),
                          dtype=np.float32)
        out.append(np.stack([gray, gray * 0.9, gray], axis=-1) if i == 3 else gray)
    return out


def _copy_with_meta(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


# ---------------------------------------------------------------- LoadedModel.load


def test_load_with_onnx(onnx_model: LoadedModel, exported: tuple[Path, dict[str, Any]]) -> None:
    assert onnx_model.onnx is not None
    assert onnx_model.onnx.cam_layer == exported[1]["gradcam_layer"] == "stage4"
    assert onnx_model.classes == CLASSES
    assert onnx_model.positives == (1,) and onnx_model.positive == 1
    assert (onnx_model.size, onnx_model.channels) == (32, 1)
    assert onnx_model.path == exported[0]


def test_load_without_onnx(torch_model: LoadedModel, trained_dir: Path) -> None:
    assert not (trained_dir / "model.onnx").exists()
    assert torch_model.onnx is None
    assert torch_model.classes == CLASSES and torch_model.positives == (1,)
    with pytest.raises(UnsupportedError):
        LoadedModel.load(trained_dir, onnx=True)


def test_load_can_skip_onnx(exported: tuple[Path, dict[str, Any]]) -> None:
    assert LoadedModel.load(exported[0], onnx=False).onnx is None


def test_load_refuses_a_class_count_mismatch(trained_dir: Path, tmp_path: Path) -> None:
    d = _copy_with_meta(trained_dir, tmp_path / "m", classes=["a", "b", "c"])
    with pytest.raises(InvalidInputError, match="3 classes"):
        LoadedModel.load(d)


def test_classify_agrees_between_onnx_and_torch(onnx_model: LoadedModel, torch_model: LoadedModel,
                                                rois: tuple[list[FloatArray], list[BoolArray | None]]) -> None:
    images, _ = rois
    p_onnx = onnx_model.classify(images)
    p_torch = torch_model.classify(images)
    assert p_onnx.shape == (len(images), 2)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5)
    np.testing.assert_allclose(p_onnx.sum(1), 1.0, atol=1e-5)


def _network_passes_of_warm_up(model: LoadedModel) -> int:
    """How many passes of its torch network ``model.warm_up()`` makes: every pass, whole
    or to a layer, enters the network's first stage."""
    assert isinstance(model.network, Classifier)
    calls: list[int] = []
    handle = next(iter(model.network.stages.values())).register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        model.warm_up()
    finally:
        handle.remove()
    return len(calls)


def test_warm_up_runs_every_engine(onnx_model: LoadedModel, torch_model: LoadedModel) -> None:
    """A sound model warms up on each engine it has."""
    assert _network_passes_of_warm_up(torch_model) == 2  # its classification and its heatmap pass
    # the torch heatmap pass alone: ONNX Runtime classifies and makes the one-pass heatmaps
    assert _network_passes_of_warm_up(onnx_model) == 1


def test_warm_up_fails_where_torch_cannot_answer(trained_dir: Path) -> None:
    """A network whose probabilities are not finite fails at warm-up, not on a first call."""
    model = LoadedModel.load(trained_dir, onnx=False)
    assert isinstance(model.network, Classifier)
    with torch.no_grad():
        for param in model.network.parameters():
            param.fill_(float("nan"))
    with pytest.raises(InvalidInputError, match=r"warm-up gave probabilities of shape \(1, 2\)"):
        model.warm_up()


def test_warm_up_fails_where_onnx_cannot_answer(exported: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """An ONNX graph whose weights are not finite fails at warm-up though its torch
    network is sound: the exported model's classification is ONNX Runtime's."""
    model_dir = tmp_path / "m"
    shutil.copytree(exported[0], model_dir)
    graph = onnx.load(model_dir / "model.onnx")
    for init in graph.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(init).shape, np.nan, np.float32),
                                                  init.name))
    onnx.save(graph, model_dir / "model.onnx")
    model = LoadedModel.load(model_dir, providers="CPUExecutionProvider", threads=1)
    assert model.onnx is not None
    with pytest.raises(InvalidInputError, match="warm-up gave probabilities"):
        model.warm_up()


# ---------------------------------------------------------------- engine_for


def test_engine_for_with_onnx(onnx_model: LoadedModel) -> None:
    m = onnx_model
    assert m.engine_for(Options()) is Engine.ONNX
    assert m.engine_for(Options(layer="stage4")) is Engine.ONNX
    assert m.engine_for(Options(layer="")) is Engine.ONNX
    for method in (CamMethod.GRADCAM_PP, CamMethod.HIRESCAM, CamMethod.LAYERCAM):
        assert m.engine_for(Options(method=method)) is Engine.ONNX
    assert m.engine_for(Options(engine=Engine.ONNX)) is Engine.ONNX
    assert m.engine_for(Options(layer="stage3")) is Engine.TORCH
    assert m.engine_for(Options(method="fused")) is Engine.TORCH  # type: ignore[arg-type]
    assert m.engine_for(Options(engine=Engine.TORCH)) is Engine.TORCH
    assert m.engine_for(Options(engine="torch")) is Engine.TORCH  # type: ignore[arg-type]


def test_engine_for_forced_onnx_without_a_one_pass_form(onnx_model: LoadedModel, torch_model: LoadedModel) -> None:
    with pytest.raises(UnsupportedError, match="stage3"):
        onnx_model.engine_for(Options(engine=Engine.ONNX, layer="stage3"))
    with pytest.raises(UnsupportedError, match="fused"):
        onnx_model.engine_for(Options(engine=Engine.ONNX, method=CamMethod.FUSED))
    with pytest.raises(UnsupportedError):
        torch_model.engine_for(Options(engine=Engine.ONNX))
    assert torch_model.engine_for(Options()) is Engine.TORCH


def test_engine_for_bad_layer_and_target(onnx_model: LoadedModel, torch_model: LoadedModel) -> None:
    for m in (onnx_model, torch_model):
        with pytest.raises(NotFoundError, match="nope"):
            m.engine_for(Options(layer="nope"))
        for target in (2, -1, 100):
            with pytest.raises(InvalidInputError, match="out of range"):
                m.engine_for(Options(target=target))
        assert m.engine_for(Options(target=0)) in (Engine.ONNX, Engine.TORCH)


def test_bad_options() -> None:
    with pytest.raises(InvalidInputError):
        Options(engine="gpu")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        Options(encodings=frozenset({"mask_jpeg"}))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        Options(chunk=0)


def test_run_checks_before_any_work(torch_model: LoadedModel) -> None:
    seen: list[Progress] = []
    img = [np.zeros((32, 32), np.float32)]
    with pytest.raises(NotFoundError):
        run(torch_model, img, Options(layer="nope"), on_progress=seen.append)
    with pytest.raises(InvalidInputError):
        run(torch_model, img, Options(target=5), on_progress=seen.append)
    with pytest.raises(InvalidInputError):
        run(torch_model, [], on_progress=seen.append)
    with pytest.raises(InvalidInputError):
        run(torch_model, [np.zeros((32, 32, 2), np.float32)], on_progress=seen.append)
    with pytest.raises(InvalidInputError):
        run(torch_model, [np.zeros(32, np.float32)], on_progress=seen.append)
    assert seen == []


# ---------------------------------------------------------------- run


@pytest.mark.parametrize("method", [CamMethod.GRADCAM, CamMethod.LAYERCAM])
@pytest.mark.parametrize("target", [None, 0])
def test_onnx_and_torch_give_the_same_heatmaps(
    onnx_model: LoadedModel, method: CamMethod, target: int | None,
    rois: tuple[list[FloatArray], list[BoolArray | None]], mixed: list[FloatArray],
) -> None:
    images = rois[0] + mixed
    common: dict[str, Any] = {"method": method, "target": target, "threshold": None, "chunk": 5}
    a = run(onnx_model, images, Options(engine=Engine.ONNX, **common))
    b = run(onnx_model, images, Options(engine=Engine.TORCH, **common))
    assert (a.engine, b.engine) == (Engine.ONNX, Engine.TORCH)
    assert a.layers == b.layers == ("stage4",)
    assert len(a.items) == len(b.items) == len(images)
    for ra, rb, img in zip(a.items, b.items, images, strict=True):
        assert ra.heatmap.shape == rb.heatmap.shape == img.shape[:2]
        torch.testing.assert_close(ra.heatmap, rb.heatmap, atol=1e-4, rtol=0)
        np.testing.assert_allclose(ra.probabilities, rb.probabilities, atol=1e-5)
        assert ra.label == rb.label
        assert ra.target == rb.target == (1 if target is None else target)
    assert sum(float(r.heatmap.max()) > 0 for r in a.items) >= len(images) // 2


def test_each_image_at_its_own_size(torch_model: LoadedModel, mixed: list[FloatArray]) -> None:
    images = mixed
    result = run(torch_model, images, Options(threshold=parse_rule("p50"), gate=False, chunk=3))
    assert result.engine is Engine.TORCH
    assert len(result.items) == len(images)
    for r, img in zip(result.items, images, strict=True):
        h, w = img.shape[:2]
        assert r.heatmap.shape == (h, w)
        assert r.mask is not None and r.mask.shape == (h, w) and r.mask.dtype == np.bool_
        assert float(r.heatmap.min()) >= 0.0 and float(r.heatmap.max()) <= 1.0
        assert r.probabilities.shape == (2,) and r.probabilities.dtype == np.float32
        assert r.label == int(np.argmax(r.probabilities))
        assert r.threshold_value is not None
        np.testing.assert_array_equal(r.mask, (r.heatmap.numpy() >= r.threshold_value) & (r.heatmap.numpy() > 0))
        assert r.area == int(r.mask.sum())
    assert sum(r.area > 0 for r in result.items) >= 4


def test_batched_results_keep_each_image_in_its_place(torch_model: LoadedModel, mixed: list[FloatArray]) -> None:
    images = mixed
    together = run(torch_model, images, Options(chunk=3, gate=False))
    for img, r in zip(images, together.items, strict=True):
        alone = run(torch_model, [img], Options(gate=False)).items[0]
        torch.testing.assert_close(r.heatmap, alone.heatmap, atol=1e-5, rtol=0)
        np.testing.assert_allclose(r.probabilities, alone.probabilities, atol=1e-6)
        assert r.mask is not None and alone.mask is not None
        assert np.mean(r.mask != alone.mask) < 0.01


def test_no_threshold_gives_no_masks(onnx_model: LoadedModel,
                                     rois: tuple[list[FloatArray], list[BoolArray | None]]) -> None:
    images, truths = rois
    opts = Options(threshold=None, encodings=ALL_MASK_ENCODINGS)
    result = run(onnx_model, images, opts, truths=truths)
    for r in result.items:
        assert r.mask is None and r.threshold_value is None and not r.gated and r.dice is None
        assert r.mask_png is None and r.mask_bits is None and r.mask_rle is None and r.overlay_png is None
        assert r.area == 0
        assert r.heatmap.shape == (32, 32)
    assert result.mean_dice is None


def test_no_encodings_unless_asked(onnx_model: LoadedModel, mixed: list[FloatArray]) -> None:
    result = run(onnx_model, mixed, Options(gate=False))
    for r in result.items:
        assert r.mask is not None
        assert r.mask_png is None and r.mask_bits is None and r.mask_rle is None and r.overlay_png is None


def test_encodings_round_trip(onnx_model: LoadedModel, mixed: list[FloatArray]) -> None:
    images = mixed
    opts = Options(gate=False, threshold=parse_rule("p70"), encodings=frozenset({"mask_png", "mask_bits", "mask_rle"}))  # type: ignore[arg-type]
    result = run(onnx_model, images, opts)
    assert sum(r.mask is not None and r.mask.any() and not r.mask.all() for r in result.items) >= 4
    for r, img in zip(result.items, images, strict=True):
        assert r.mask is not None
        shape = (int(img.shape[0]), int(img.shape[1]))
        assert r.mask_png is not None and r.mask_bits is not None and r.mask_rle is not None
        png = Image.open(io.BytesIO(r.mask_png))
        assert png.size == (shape[1], shape[0])
        arr = np.asarray(png)
        assert set(np.unique(arr)) <= {0, 255}
        np.testing.assert_array_equal(arr == 255, r.mask)
        np.testing.assert_array_equal(unpack_bits(r.mask_bits, shape), r.mask)
        np.testing.assert_array_equal(from_run_lengths(r.mask_rle, shape), r.mask)
        assert r.overlay_png is None


def test_overlay_encoding(torch_model: LoadedModel, mixed: list[FloatArray]) -> None:
    images = mixed[:3]
    for threshold in (parse_rule("otsu"), None):
        opts = Options(threshold=threshold, encodings=frozenset({Encoding.OVERLAY_PNG}))
        for r, img in zip(run(torch_model, images, opts).items, images, strict=True):
            assert r.overlay_png is not None and r.mask_png is None
            png = Image.open(io.BytesIO(r.overlay_png))
            assert png.mode == "RGB" and png.size == (img.shape[1], img.shape[0])


def test_dice_only_where_a_truth_is_given(onnx_model: LoadedModel,
                                          rois: tuple[list[FloatArray], list[BoolArray | None]]) -> None:
    images, truths = rois
    given = [t if i % 2 == 0 else None for i, t in enumerate(truths)]
    given[1] = np.zeros((32, 32), dtype=bool)  # an empty truth still counts
    result = run(onnx_model, images, Options(gate=False), truths=given)
    scores = []
    for r, t in zip(result.items, given, strict=True):
        if t is None:
            assert r.dice is None
            continue
        assert r.mask is not None and r.dice is not None
        want = float(dice(torch.from_numpy(r.mask), torch.from_numpy(t)))
        assert r.dice == pytest.approx(want, abs=1e-12)
        assert 0.0 <= r.dice <= 1.0
        scores.append(r.dice)
    assert len(scores) >= 2
    assert result.mean_dice == pytest.approx(float(np.mean(scores)))


def test_truth_of_the_wrong_shape_or_count(torch_model: LoadedModel, mixed: list[FloatArray]) -> None:
    images = mixed[:3]  # (32, 32), (20, 45), (32, 32)
    ok: list[BoolArray | None] = [None, np.zeros((20, 45), bool), None]
    assert len(run(torch_model, images, truths=ok).items) == 3
    with pytest.raises(InvalidInputError, match="truth mask 1"):
        run(torch_model, images, truths=[None, np.zeros((45, 20), bool), None])
    with pytest.raises(InvalidInputError, match="2 truth masks for 3 images"):
        run(torch_model, images, truths=[None, None])
    with pytest.raises(InvalidInputError):
        run(torch_model, images, truths=[None, None, None, None])


def test_should_stop_cancels(torch_model: LoadedModel, mixed: list[FloatArray]) -> None:
    images = mixed
    with pytest.raises(CancelledError):
        run(torch_model, images, should_stop=lambda: True)
    polls = 0

    def stop_after_first_chunk() -> bool:
        nonlocal polls
        polls += 1
        return polls > 1

    seen: list[Progress] = []
    with pytest.raises(CancelledError, match="2 of 7"):
        run(torch_model, images, Options(chunk=2), on_progress=seen.append, should_stop=stop_after_first_chunk)
    assert [p.done for p in seen] == [0, 2]


def test_progress_events(onnx_model: LoadedModel, mixed: list[FloatArray]) -> None:
    images = mixed
    seen: list[Progress] = []
    run(onnx_model, images, Options(chunk=3), on_progress=seen.append, should_stop=lambda: False, task="dice")
    assert [p.done for p in seen] == [0, 3, 6, 7]
    assert all(p.task == "dice" and p.total == 7 for p in seen)
    assert seen[-1].done == seen[-1].total


def test_load_refuses_an_unknown_positive_class(trained_dir: Path, tmp_path: Path) -> None:
    d = _copy_with_meta(trained_dir, tmp_path / "m", positive_class="cancer")
    with pytest.raises(InvalidInputError, match="cancer"):
        LoadedModel.load(d)


def test_first_class_positive_moves_the_target_and_the_gate(
    torch_model: LoadedModel, trained_dir: Path, tmp_path: Path,
    rois: tuple[list[FloatArray], list[BoolArray | None]], mixed: list[FloatArray],
) -> None:
    d = _copy_with_meta(trained_dir, tmp_path / "m", positive_class="normal")
    first = LoadedModel.load(d)
    assert first.positives == (0,) and first.positive == 0
    images = rois[0] + mixed
    empty = [np.zeros(img.shape[:2], dtype=bool) for img in images]
    mine = run(first, images, Options(threshold=parse_rule("p50")), truths=empty)
    last = run(torch_model, images, Options(threshold=parse_rule("p50")))
    explicit = run(torch_model, images, Options(threshold=parse_rule("p50"), target=0, gate=False))
    ungated = run(first, images, Options(threshold=parse_rule("p50"), gate=False))
    assert any(r.area > 0 for r in ungated.items)
    assert any(r.gated for r in mine.items)
    for a, b, c, u in zip(mine.items, last.items, explicit.items, ungated.items, strict=True):
        assert a.target == 0 and b.target == 1
        assert a.label == b.label
        assert a.gated == (a.label != 0)
        assert b.gated == (b.label != 1)
        assert a.gated != b.gated
        torch.testing.assert_close(a.heatmap, c.heatmap)  # same map as asking for class 0
        assert a.mask is not None and b.mask is not None and c.mask is not None and u.mask is not None
        if a.gated:
            assert not a.mask.any() and a.area == 0
            assert a.dice == 1.0  # an emptied mask against an empty truth
        else:
            np.testing.assert_array_equal(a.mask, c.mask)
        np.testing.assert_array_equal(u.mask, c.mask)  # ungated: the class-0 mask
        assert u.target == 0 and not u.gated


def test_first_class_positive_on_onnx(
    exported: tuple[Path, dict[str, Any]], tmp_path: Path, mixed: list[FloatArray]
) -> None:
    d = _copy_with_meta(exported[0], tmp_path / "m", positive_class="normal")
    first = LoadedModel.load(d, providers="CPUExecutionProvider", threads=1)
    result = run(first, mixed, Options(engine=Engine.ONNX))
    assert [r.target for r in result.items] == [0] * 7
    assert all(r.gated == (r.label != 0) for r in result.items)


def test_several_positive_classes_pick_the_most_probable(
    exported: tuple[Path, dict[str, Any]], tmp_path: Path, mixed: list[FloatArray]
) -> None:
    d = _copy_with_meta(exported[0], tmp_path / "m", positive_classes=["normal", "tumor"])
    both = LoadedModel.load(d, providers="CPUExecutionProvider", threads=1)
    assert both.positives == (0, 1)
    images = mixed
    for engine in (Engine.ONNX, Engine.TORCH):
        result = run(both, images, Options(engine=engine))
        for r in result.items:
            assert r.target == r.label == int(np.argmax(r.probabilities))
            assert not r.gated
