"""Bring your own classifier: foreign ONNX models (tests/foreign.py) served, explained and
segmented like camseg's own, each compared with plain ONNX Runtime and with the
original torch module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from camseg.app.cli import main
from camseg.bulk.segment import segment_folder
from camseg.core.errors import InvalidInputError, NotFoundError, UnsupportedError
from camseg.heat.cam import FUSED_LAYERS, TorchNetwork, compute_cam
from camseg.heat.methods import CamMethod
from camseg.models.imported import ImportedNetwork, candidate_layers, inspect_model
from camseg.models.modelconfig import CONFIG_FILE, Layout, OutputKind, Source
from camseg.pipeline.options import Engine, Options
from camseg.pipeline.run import LoadedModel, run
from camseg.study.evaluation import evaluate_dice
from tests.foreign import BUILDERS, Foreign, cumsum_net, gray_net, tf_like

GRADIENT_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Foreign, LoadedModel]]:
    root = tmp_path_factory.mktemp("foreign")
    out = {}
    for name, build in BUILDERS.items():
        f = build()
        out[name] = (f, LoadedModel.load(f.write(root / name), providers="CPUExecutionProvider"))
    return out


def _prepared(loaded: LoadedModel, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, loaded.channels, *loaded.input_hw), generator=g)


def _plain_ort(f: Foreign, model_input: torch.Tensor) -> np.ndarray:
    """The foreign graph in a bare ONNX Runtime session, no camseg in between."""
    session = ort.InferenceSession(f.onnx_bytes, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {session.get_inputs()[0].name: model_input.numpy()})[0]
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_classify_equals_onnx_runtime_on_the_same_tensor(foreign: dict[str, tuple[Foreign, LoadedModel]],
                                                         name: str) -> None:
    f, loaded = foreign[name]
    assert loaded.source is Source.IMPORTED and loaded.unavailable is None
    x = _prepared(loaded)
    raw = _plain_ort(f, f.to_input(x))  # the preprocessing written out by hand, in tests/foreign.py
    want = raw if f.probabilities else _softmax(raw)
    got = loaded.classify_prepared(x.numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.shape == (3, len(loaded.classes))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_the_converted_module_equals_onnx_runtime(foreign: dict[str, tuple[Foreign, LoadedModel]],
                                                  name: str) -> None:
    f, loaded = foreign[name]
    net = loaded.network
    assert isinstance(net, ImportedNetwork)
    x = _prepared(loaded, n=5, seed=1)
    with torch.inference_mode():
        got = net.raw_output(x).numpy()
    assert float(np.abs(got - _plain_ort(f, f.to_input(x))).max()) <= 1e-4
    assert max(loaded.meta["parity"].values()) <= 1e-4  # checked at load, on real images
    with torch.inference_mode():  # and the logits are the original module's
        torch.testing.assert_close(net(x), f.logits(x), rtol=0, atol=1e-4)


def _reference(f: Foreign, layers: list[str], num_classes: int, channels: int) -> TorchNetwork:
    """The original torch module behind the same preprocessing, logits out."""

    class Ref(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = f.module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return f.logits(x)

    return TorchNetwork(Ref().eval(), [f"net.{name}" for name in layers], in_channels=channels,
                        num_classes=num_classes)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradcam_of_the_imported_model_equals_the_original_module(
        foreign: dict[str, tuple[Foreign, LoadedModel]], name: str, method: str) -> None:
    f, loaded = foreign[name]
    assert loaded.network is not None
    layer = list(f.layers)[-1]
    ref = _reference(f, [layer], len(loaded.classes), loaded.channels)
    x = _prepared(loaded, n=4, seed=2)
    for target in range(len(loaded.classes)):
        got = compute_cam(loaded.network, x, method=method, layer=f.tensor(layer), targets=target)
        want = compute_cam(ref, x, method=method, layer=f"net.{layer}", targets=target)
        assert float((got.heatmaps - want.heatmaps).abs().max()) <= 1e-5, (method, target)
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-4)
    ref.remove()


def test_fused_maps_of_the_imported_model_equal_the_original_module(
        foreign: dict[str, tuple[Foreign, LoadedModel]]) -> None:
    """Fused multiplies LayerCAM of the layer and the last layer at a finer resolution."""
    f, loaded = foreign["graynet"]
    assert loaded.network is not None and FUSED_LAYERS == 2
    fine, coarse = f.tensor("act1"), f.tensor("act2")
    assert loaded.network.fused_layers(coarse) == [fine, coarse]
    ref = _reference(f, ["act1", "act2"], 2, 1)
    x = _prepared(loaded, n=3, seed=3)
    got = compute_cam(loaded.network, x, method="fused", layer=coarse)
    want = compute_cam(ref, x, method="fused", layer="net.act2")
    assert got.layers == (fine, coarse)
    assert float((got.heatmaps - want.heatmaps).abs().max()) <= 1e-5
    ref.remove()


def test_the_default_cam_layer_is_the_deepest_block_larger_than_1x1(
        foreign: dict[str, tuple[Foreign, LoadedModel]]) -> None:
    f, loaded = foreign["tflike"]
    assert loaded.cam_layer == f.tensor("a3")
    assert candidate_layers(__import__("onnx").load_from_string(f.onnx_bytes)) == [
        f.tensor("a1"), f.tensor("a2"), f.tensor("a3")]
    f, loaded = foreign["graynet"]
    assert loaded.cam_layer == f.config["cam"]["layer"]  # the config's choice


def test_the_heatmap_target_is_the_most_probable_lesion_class(
        foreign: dict[str, tuple[Foreign, LoadedModel]]) -> None:
    _, loaded = foreign["tflike"]
    assert loaded.positives == (1, 2, 3)
    images = [x.permute(1, 2, 0).numpy() for x in _prepared(loaded, n=6, seed=4)]
    res = run(loaded, images, Options(threshold=None))
    for item in res.items:
        assert item.target == 1 + int(np.argmax(item.probabilities[1:]))
    named = run(loaded, images, Options(threshold=None, target=0))
    assert {item.target for item in named.items} == {0}


def test_segment_runs_every_method_with_masks(foreign: dict[str, tuple[Foreign, LoadedModel]]) -> None:
    _, loaded = foreign["rgbnet"]
    rng = np.random.default_rng(5)
    images = [rng.random((50, 60, 3), dtype=np.float32), rng.random((32, 32), dtype=np.float32)]
    for method in (*GRADIENT_METHODS, "fused", "scorecam"):
        res = run(loaded, images, Options(method=CamMethod(method), gate=False, largest=True))
        assert [item.mask.shape for item in res.items if item.mask is not None] == [(50, 60), (32, 32)]
        assert all(float(item.heatmap.min()) >= 0.0 and float(item.heatmap.max()) <= 1.0 for item in res.items)
        assert res.engine is (Engine.ONNX if method == "scorecam" else Engine.TORCH)


def test_score_cam_on_onnx_runtime_equals_score_cam_on_the_converted_module(
        foreign: dict[str, tuple[Foreign, LoadedModel]]) -> None:
    _, loaded = foreign["tflike"]
    images = [x.permute(1, 2, 0).numpy() for x in _prepared(loaded, n=2, seed=6)]
    on_ort = run(loaded, images, Options(method=CamMethod.SCORECAM, threshold=None, engine=Engine.ONNX))
    on_torch = run(loaded, images, Options(method=CamMethod.SCORECAM, threshold=None, engine=Engine.TORCH))
    for a, b in zip(on_ort.items, on_torch.items, strict=True):
        assert float((a.heatmap - b.heatmap).abs().max()) <= 1e-4
        assert float(a.heatmap.max()) == pytest.approx(1.0)


def test_an_unsupported_operator_still_classifies_and_names_itself(tmp_path: Path) -> None:
    f = cumsum_net()
    loaded = LoadedModel.load(f.write(tmp_path / "cumsum"), providers="CPUExecutionProvider")
    assert loaded.network is None and loaded.unavailable is not None and "CumSum" in loaded.unavailable
    x = torch.rand(2, 1, 32, 32)
    np.testing.assert_allclose(loaded.classify_prepared(x.numpy()), _softmax(_plain_ort(f, x)), atol=1e-6)
    image = [x[0, 0].numpy()]
    with pytest.raises(UnsupportedError, match="CumSum"):
        run(loaded, image, Options(method=CamMethod.GRADCAM))
    res = run(loaded, image, Options(method=CamMethod.SCORECAM))  # gradient-free: ONNX Runtime alone
    assert res.engine is Engine.ONNX and res.items[0].mask is not None
    # a config that asks for the gradient-free method makes it the model's default
    cfg = {**f.config, "cam": {"method": "scorecam"}}
    chosen = LoadedModel.load(f.write(tmp_path / "cumsum-scorecam", config=cfg), providers="CPUExecutionProvider")
    assert chosen.default_options().method is CamMethod.SCORECAM
    assert run(chosen, image, chosen.default_options()).items[0].mask is not None


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"input": {"name": "pixels"}}, "input.name", "no input 'pixels'"),
        ({"input": {"layout": "NCHW"}}, "input.layout", "contradicts the graph's input image"),
        ({"input": {"height": 64}}, "input.height", "contradicts"),
        ({"classes": ["normal", "mass"], "lesion_classes": ["mass"]}, "classes", "2 classes for the output"),
        ({"output": {"name": "logits"}}, "output.name", "no output 'logits'"),
        ({"cam": {"layer": "/nowhere"}}, "cam.layer", "no tensor '/nowhere'"),
        ({"cam": {"method": "eigencam"}}, "cam.method", "unknown CAM method"),
    ],
)
def test_a_bad_config_is_refused_at_load_naming_the_file_and_field(tmp_path: Path, patch: dict[str, object],
                                                                   field: str, words: str) -> None:
    f = tf_like()
    cfg = json.loads(json.dumps(f.config))
    for key, value in patch.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
    folder = f.write(tmp_path / "m", config=cfg)
    with pytest.raises(InvalidInputError) as info:
        LoadedModel.load(folder, providers="CPUExecutionProvider")
    assert info.value.message.startswith(f"{folder / CONFIG_FILE}: {field}: "), info.value.message
    assert words in info.value.message


def test_unknown_layer_names_the_graph(foreign: dict[str, tuple[Foreign, LoadedModel]]) -> None:
    _, loaded = foreign["graynet"]
    with pytest.raises(NotFoundError, match="no tensor of this graph"):
        run(loaded, [np.zeros((40, 48), np.float32)], Options(layer="/c9/Conv_output_0"))


def test_inspect_proposes_a_config_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tf_like()
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(f.onnx_bytes)
    found = inspect_model(folder / "model.onnx")
    p = found.proposal
    assert (p.input.name, p.input.layout, p.size, p.input.channels) == ("image", Layout.NHWC, (32, 32), 3)
    assert p.output.name == "probs" and p.output.kind is OutputKind.PROBABILITIES  # a Softmax output
    assert len(p.classes) == 4 and p.cam.layer == f.tensor("a3")
    assert [name for name, _, _ in found.layers] == [f.tensor("a3"), f.tensor("a2"), f.tensor("a1")]  # last first
    assert found.layers[0][1:] == ("Relu", (1, 16, 8, 8))
    assert main(["inspect", str(folder / "model.onnx"), "--write"]) == 0
    printed = capsys.readouterr().out
    assert "candidate CAM layers (last first)" in printed and f.tensor("a3") in printed and "16x8x8" in printed
    loaded = LoadedModel.load(folder, providers="CPUExecutionProvider")  # the proposal loads as it is
    assert loaded.classes == p.classes and loaded.positives == (3,)
    assert main(["inspect", str(folder / "model.onnx"), "--write"]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "absent.onnx")]) == 2


def test_dice_evaluation_and_segment_of_an_imported_model(tiny_folder: Path, tmp_path: Path) -> None:
    """The same protocol and outputs as for camseg's own models; a two-class data set
    scores a model of other classes as lesion vs. not."""
    f = gray_net()
    loaded = LoadedModel.load(f.write(tmp_path / "gray"), providers="CPUExecutionProvider")
    report = evaluate_dice(loaded, tiny_folder, select="val", report="test", methods=("gradcam",),
                           rules=("otsu", "0.5"), largest=(False,), gate=False)
    assert report.default_layer == f.config["cam"]["layer"]
    assert all(0.0 <= r.mean_dice <= 1.0 for r in report.report_rows)
    summary = segment_folder(loaded, tiny_folder, tmp_path / "seg", Options(gate=False), split="test")
    assert summary["images"] > 0 and 0.0 <= summary["mean_dice"] <= 1.0
    four = LoadedModel.load(tf_like().write(tmp_path / "tf"), providers="CPUExecutionProvider")
    summary = segment_folder(four, tiny_folder, tmp_path / "seg4", Options(gate=False), split="test")
    assert 0.0 <= summary["accuracy"] <= 1.0


@pytest.mark.parametrize("command", ["recipe", "distill", "export", "filtered-retrain"])
def test_commands_that_need_camseg_training_refuse_an_imported_model_in_one_line(
        tmp_path: Path, tiny_folder: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    folder = tf_like().write(tmp_path / "m")
    args = {"recipe": ["--model", str(folder), "--data", str(tiny_folder)],
            "distill": ["--model", str(folder), "--data", str(tiny_folder)],
            "export": [str(folder)],
            "filtered-retrain": ["--model", str(folder), "--data", str(tiny_folder), "--out", str(tmp_path / "f")]}
    assert main([command, *args[command], "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "imported ONNX classifier" in err and "camseg-trained model" in err
