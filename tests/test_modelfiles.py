"""Model files stay in their folder: real ONNX files whose external data leaves the
version folder (an absolute path, ``..``, a symlink out, a missing file) are refused by
every loading path with the file and the location named, and a model that declares
more tensor bytes than the limit is refused before anything is loaded."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from camseg.app.cli import main
from camseg.models.imported import inspect_model
from camseg.models.modeldir import MODEL_FILE
from camseg.models.modelfiles import ModelFileError, check_onnx_file, check_onnx_model
from camseg.models.onnxgraph import convert
from camseg.models.runtime import make_session
from camseg.pipeline.run import LoadedModel
from tests.modelfiles import WEIGHTS, external, relocate, save_external, tiny_classifier

CPU = "CPUExecutionProvider"
IMAGES = np.random.default_rng(1).random((3, 1, 16, 16), dtype=np.float32)

Loader = Callable[[Path], Any]
LOADERS: dict[str, Loader] = {
    "onnxruntime": lambda folder: make_session(folder / "model.onnx", CPU),
    "onnxgraph": lambda folder: convert(folder / "model.onnx"),
    "import": lambda folder: LoadedModel.load(folder, providers=CPU),
    "inspect": lambda folder: inspect_model(folder / "model.onnx"),
}


def _absolute(folder: Path, outside: Path) -> tuple[str, str]:
    return str(outside / WEIGHTS), "an absolute path"


def _dotdot(folder: Path, outside: Path) -> tuple[str, str]:
    return f"../{outside.name}/{WEIGHTS}", "a '..' component"


def _symlink_out(folder: Path, outside: Path) -> tuple[str, str]:
    (folder / "linked.bin").symlink_to(outside / WEIGHTS)
    return "linked.bin", "resolves outside the model's folder"


def _dir_symlink_out(folder: Path, outside: Path) -> tuple[str, str]:
    (folder / "data").symlink_to(outside, target_is_directory=True)
    return f"data/{WEIGHTS}", "resolves outside the model's folder"


def _missing(folder: Path, outside: Path) -> tuple[str, str]:
    return "absent.bin", "no such file"


ESCAPES = {"absolute": _absolute, "dotdot": _dotdot, "symlink": _symlink_out, "dir-symlink": _dir_symlink_out,
           "missing": _missing}


@pytest.fixture
def escaping(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str, str]:
    """A version folder (model.onnx, camseg-model.json) whose weights are read from
    where the case says; the real weights lie beside it in ``outside/``."""
    folder = tmp_path / "repo" / "tiny" / "1"
    save_external(tiny_classifier(), folder)
    outside = tmp_path / "repo" / "tiny" / "outside"
    outside.mkdir()
    shutil.move(folder / WEIGHTS, outside / WEIGHTS)
    location, reason = ESCAPES[request.param](folder, outside)
    relocate(folder / "model.onnx", location)
    return folder, location, reason


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("escaping", ESCAPES, indirect=True)
def test_external_data_that_leaves_the_folder_is_refused_naming_file_and_location(
        escaping: tuple[Path, str, str], loader: str) -> None:
    folder, location, reason = escaping
    with pytest.raises(ModelFileError) as err:
        LOADERS[loader](folder)
    message = err.value.message
    assert f"{folder / 'model.onnx'}: tensor 'w' reads its data from {location!r}" in message, message
    assert reason in message and "\n" not in message


@pytest.mark.parametrize("loader", LOADERS)
def test_external_data_inside_the_folder_loads_and_computes_the_same(tmp_path: Path, loader: str) -> None:
    model = tiny_classifier()
    folder = tmp_path / "1"
    save_external(model, folder)
    assert sorted(os.listdir(folder)) == ["camseg-model.json", "model.onnx", WEIGHTS]
    assert LOADERS[loader](folder) is not None
    want = make_session(model, CPU).run(["logits"], {"x": IMAGES})[0]
    got = make_session(folder / "model.onnx", CPU).run(["logits"], {"x": IMAGES})[0]
    np.testing.assert_array_equal(got, want)
    with torch.inference_mode():
        conv = convert(folder / "model.onnx")(torch.from_numpy(IMAGES))
    np.testing.assert_allclose(conv.numpy(), want, atol=1e-5)
    loaded = LoadedModel.load(folder, providers=CPU)
    assert loaded.network is not None and loaded.onnx is not None  # gradients and ONNX Runtime both
    e = np.exp(want - want.max(axis=1, keepdims=True))
    np.testing.assert_allclose(loaded.classify_prepared(IMAGES), e / e.sum(axis=1, keepdims=True), atol=1e-5)


def test_a_symlink_to_data_inside_the_folder_is_refused_as_onnx_refuses_it(tmp_path: Path) -> None:
    """onnx reads external data from plain files only; camseg holds every path to that
    rule, so a version does not load in one path and fail in another."""
    folder = tmp_path / "1"
    save_external(tiny_classifier(), folder)
    (folder / "alias.bin").symlink_to(WEIGHTS)
    relocate(folder / "model.onnx", "alias.bin")
    for load in LOADERS.values():
        with pytest.raises(ModelFileError, match=r"'alias\.bin': a symlink"):
            load(folder)


def test_the_model_file_itself_must_resolve_inside_its_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    model_file = save_external(tiny_classifier(), elsewhere)
    folder = tmp_path / "1"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(model_file)
    shutil.copy(elsewhere / "camseg-model.json", folder)
    with pytest.raises(ModelFileError, match=r"model\.onnx: resolves outside its model folder"):
        LoadedModel.load(folder, providers=CPU)


def test_subgraph_and_attribute_tensors_are_walked(tmp_path: Path) -> None:
    """A Constant inside an If's branch reading external data from an absolute path."""
    const = helper.make_node("Constant", [], ["c"], value=external("secret", [4], "/etc/passwd"))
    branch = helper.make_graph([const], "then", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])])
    other = helper.make_graph([helper.make_node("Constant", [], ["d"], value_floats=[0.0] * 4)], "else", [],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, [4])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    path = tmp_path / "model.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    with pytest.raises(ModelFileError, match=r"model\.onnx: tensor 'secret' reads its data from '/etc/passwd': "
                                             "an absolute path"):
        make_session(path, CPU)


def test_a_model_in_memory_may_not_reference_external_data(tmp_path: Path) -> None:
    """Serialised bytes or a parsed model have no folder: ONNX Runtime would resolve the
    reference against the working directory."""
    folder = tmp_path / "1"
    save_external(tiny_classifier(), folder)
    unread = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    with pytest.raises(ModelFileError, match="external data, in a model held in memory"):
        make_session(unread.SerializeToString(), CPU)
    with pytest.raises(ModelFileError, match="external data, in a model held in memory"):
        convert(unread)


def test_data_past_the_end_of_its_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "1"
    save_external(tiny_classifier(), folder)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    size = (folder / WEIGHTS).stat().st_size
    model.graph.initializer.append(external("extra", [size], WEIGHTS, length=4 * size))
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ModelFileError, match=f"tensor 'extra' reads its data from '{WEIGHTS}': declares bytes "
                                             f"0..{4 * size} of a {size}-byte file"):
        make_session(folder / "model.onnx", CPU)


# ---------------------------------------------------------------------- sizes, before loading
def test_a_huge_external_initializer_is_refused_before_loading(tmp_path: Path) -> None:
    """3 GiB of weights (a sparse file: nothing on disk) that ONNX Runtime would read in
    whole; the default limit (2 GiB) refuses them from the declaration alone."""
    folder = tmp_path / "1"
    save_external(tiny_classifier(), folder)
    big = 3 * 2**30
    with (folder / "big.bin").open("wb") as fh:
        fh.truncate(big)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    model.graph.initializer.append(external("huge", [big // 4], "big.bin", length=big))
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    for load in LOADERS.values():
        with pytest.raises(ModelFileError, match=r"model\.onnx: its tensors declare more than 2 GiB \(reached at "
                                                 r"tensor 'huge', 3 GiB\), over the limit \(CAMSEG_MAX_MODEL_BYTES\); "
                                                 "refused before loading"):
            load(folder)


def test_huge_declared_dims_are_refused_before_loading(tmp_path: Path) -> None:
    """An initializer declaring 2^20 x 2^20 floats (4 TiB) with no data at all."""
    model = tiny_classifier()
    model.graph.initializer.append(TensorProto(name="vast", data_type=TensorProto.FLOAT, dims=[2**20, 2**20]))
    folder = tmp_path / "1"
    save_external(model, folder)
    with pytest.raises(ModelFileError, match=r"reached at tensor 'vast', 4\.1e\+03 GiB"):
        LoadedModel.load(folder, providers=CPU)
    with pytest.raises(ModelFileError, match="reached at tensor 'vast'"):
        convert(model)  # a model in memory is held to the same limit


def test_the_limit_counts_tensors_and_the_file_itself(tmp_path: Path) -> None:
    folder = tmp_path / "1"
    path = save_external(tiny_classifier(), folder)
    parsed = check_onnx_file(path)
    declared = check_onnx_model(parsed, path, folder)
    assert declared == (36 + 4 + 8) * 4  # w, b and head as float32
    assert check_onnx_model(parsed, path, folder, max_bytes=declared) == declared  # exactly at the limit
    with pytest.raises(ModelFileError, match=f"its tensors declare more than {declared - 1} bytes"):
        check_onnx_model(parsed, path, folder, max_bytes=declared - 1)
    embedded = tmp_path / "embedded.onnx"
    onnx.save_model(tiny_classifier(), str(embedded))
    size = embedded.stat().st_size
    with pytest.raises(ModelFileError, match=f"embedded.onnx: {size} bytes, over the limit of {size - 1} bytes"):
        make_session(embedded, CPU, max_bytes=size - 1)


# ---------------------------------------------------------------------- checkpoints, the command line
def test_a_checkpoint_symlinked_out_of_its_folder_is_refused(exported: tuple[Path, dict[str, Any]],
                                                             tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(exported[0], folder)
    (tmp_path / "elsewhere.pt").write_bytes((folder / MODEL_FILE).read_bytes())
    (folder / MODEL_FILE).unlink()
    (folder / MODEL_FILE).symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(ModelFileError, match=rf"m/{MODEL_FILE}: resolves outside its model folder"):
        LoadedModel.load(folder, providers=CPU)
    (folder / MODEL_FILE).unlink()
    (folder / MODEL_FILE).symlink_to(Path("sub") / "inside.pt")  # a link that stays inside is fine
    (folder / "sub").mkdir()
    shutil.copy(tmp_path / "elsewhere.pt", folder / "sub" / "inside.pt")
    assert LoadedModel.load(folder, providers=CPU).network is not None


@pytest.mark.parametrize("escaping", ["dotdot"], indirect=True)
def test_the_command_line_refuses_in_one_line(escaping: tuple[Path, str, str], tmp_path: Path, tiny_folder: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder, location, _ = escaping
    for argv in (["inspect", str(folder / "model.onnx")],
                 ["segment", "--model", str(folder), "--data", str(tiny_folder), "--out", str(tmp_path / "seg"),
                  "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"camseg: error: {folder / 'model.onnx'}: tensor 'w' reads "
                                                       f"its data from {location!r}: a '..' component"), err
    relocate(folder / "model.onnx", WEIGHTS)
    shutil.copy(folder.parent / "outside" / WEIGHTS, folder / WEIGHTS)
    monkeypatch.setenv("CAMSEG_MAX_MODEL_BYTES", "1024")  # the setting reaches the loaders
    (folder / "pad.bin").write_bytes(bytes(2048))
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    model.graph.initializer.append(external("pad", [512], "pad.bin"))
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    assert main(["inspect", str(folder / "model.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reached at tensor 'pad'" in err and "CAMSEG_MAX_MODEL_BYTES" in err
    monkeypatch.delenv("CAMSEG_MAX_MODEL_BYTES")
    assert main(["inspect", str(folder / "model.onnx")]) == 0
