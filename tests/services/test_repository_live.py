"""A real ``camseg serve`` whose repository changes under load: odd entries appear, a
version is deleted, one is replaced in place, a corrupt one is added. A client keeps
calling the good model the whole time; not one of its calls may fail."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import numpy_helper

from camseg.io.inputs import decode_image
from camseg.models.modeldir import METADATA_FILE, MODEL_FILE, ONNX_FILE
from camseg.pipeline.run import LoadedModel
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.services.servers import Launcher, Server, wait_until

Exported = tuple[Path, dict[str, Any]]
MIN_CALLS = 100
FILES = (ONNX_FILE, MODEL_FILE, METADATA_FILE)


# ---------------------------------------------------------------------- helpers
def add_version(exported: Exported, root: Path, name: str, version: str,
                edit: Callable[[Path], object] | None = None) -> Path:
    """A copy of the exported model staged under a hidden name, edited, then renamed into
    place: the server sees it whole or not at all."""
    staging = root / name / f".staging-{version}"
    shutil.copytree(exported[0], staging)
    if edit is not None:
        edit(staging)
    dest = root / name / version
    staging.rename(dest)
    return dest


def listed(stub: pb_grpc.SegmentationStub) -> dict[str, tuple[list[str], str]]:
    reply = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    return {m.name: (list(m.versions), m.latest) for m in reply.models}


def classify(stub: pb_grpc.SegmentationStub, image: bytes, name: str, version: str = "") -> pb.ClassifyResponse:
    reply: pb.ClassifyResponse = stub.Classify(
        pb.ClassifyRequest(model=pb.ModelRef(name=name, version=version), images=[pb.Image(encoded=image, id="r")]),
        timeout=30)
    return reply


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def load_failures(server: Server, name: str) -> float:
    m = re.search(rf'^camseg_model_load_failures_total\{{name="{re.escape(name)}"\}} (\S+)$', server.metrics(),
                  re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def local_probabilities(model_dir: Path, image: bytes) -> npt.NDArray[np.float32]:
    """What the server should answer, computed here from the same files."""
    model = LoadedModel.load(model_dir, onnx=True, providers="CPUExecutionProvider", threads=1)
    x = model.prepare([decode_image(image, name="roi")]).numpy()
    return model.classify_prepared(x)[0]


def edit_metadata(model_dir: Path, **metrics: float) -> None:
    path = model_dir / METADATA_FILE
    meta = json.loads(path.read_text())
    meta["name"] = f"{meta.get('name', 'model')}-replaced"
    meta["metrics"] = {**meta.get("metrics", {}), **metrics}
    path.write_text(json.dumps(meta, indent=2))


def shift_head_bias(model_dir: Path, shift: tuple[float, float]) -> None:
    """Other weights: the classifier head's bias moved by ``shift`` in both model.pt and
    model.onnx (found there by value), so the two stay consistent."""
    ckpt = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    old = ckpt["state_dict"]["fc.bias"].numpy().copy()
    new = old + np.asarray(shift, dtype=np.float32)
    ckpt["state_dict"]["fc.bias"] = torch.from_numpy(new)
    torch.save(ckpt, model_dir / MODEL_FILE)
    graph = onnx.load(str(model_dir / ONNX_FILE))
    hits = [t for t in graph.graph.initializer
            if tuple(t.dims) == old.shape and np.array_equal(numpy_helper.to_array(t), old)]
    assert len(hits) == 1, [t.name for t in hits]
    hits[0].CopyFrom(numpy_helper.from_array(new, hits[0].name))
    onnx.save(graph, str(model_dir / ONNX_FILE))


def replace_in_place(source: Path, dest: Path) -> None:
    """Overwrite each file of ``dest`` with ``source``'s (each file whole, one after the other)."""
    for name in FILES:
        tmp = dest / f".{name}.new"
        shutil.copyfile(source / name, tmp)
        os.replace(tmp, dest / name)


class Caller:
    """A thread calling Classify on one model back to back; records every outcome."""

    def __init__(self, server: Server, image: bytes, name: str):
        self.stub = pb_grpc.SegmentationStub(server.channel())
        self.image, self.name = image, name
        self.replies: list[pb.ClassifyResponse] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.replies.append(classify(self.stub, self.image, self.name))
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code()}: {exc.details()}")
            except Exception as exc:  # anything else is a failure too, never a silent end of the thread
                self.failures.append(repr(exc))

    def __enter__(self) -> Caller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


# ---------------------------------------------------------------------- the live repository
def test_repository_changes_under_load_never_fail_the_good_model(
        exported: Exported, tumor_roi: tuple[bytes, bytes], launch: Launcher, tmp_path: Path) -> None:
    image, _ = tumor_roi
    root = tmp_path / "repo"
    for name, version in (("good", "1"), ("second", "1"), ("second", "2"), ("third", "1")):
        add_version(exported, root, name, version)
    server = launch(root)
    stub = pb_grpc.SegmentationStub(server.channel())
    assert listed(stub) == {"good": (["1"], "1"), "second": (["1", "2"], "2"), "third": (["1"], "1")}
    want = local_probabilities(root / "good" / "1", image)
    old_epoch = stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="third")), timeout=10).metrics
    assert "best_epoch" in old_epoch and old_epoch["best_epoch"] != 99.0

    with Caller(server, image, "good") as caller:
        wait_until("first calls to good", lambda: len(caller.replies) >= 5 or caller.failures)

        # 1. odd entries: never versions, never refused, nothing loaded from them
        for odd in ("²", "a b", ".hidden"):
            add_version(exported, root, odd, "1")  # complete model files under a name that is not one
            add_version(exported, root, "good", odd)
        add_version(exported, root, "good", "3", edit=lambda d: (d / ONNX_FILE).unlink())  # incomplete
        (root / "plain").write_text("a model folder that is a file\n")
        (root / "good" / "4").write_text("a version folder that is a file\n")
        seen = len(caller.replies)
        time.sleep(2.0)  # several scans
        wait_until("calls after the odd entries", lambda: len(caller.replies) >= seen + 5 or caller.failures)
        assert listed(stub) == {"good": (["1"], "1"), "second": (["1", "2"], "2"), "third": (["1"], "1")}
        assert "camseg_model_load_failures_total{" not in server.metrics()  # skipped, not refused

        # 2. a version deleted from disk is unloaded
        assert classify(stub, image, "second", "2").model_version == "2"
        shutil.rmtree(root / "second" / "2")
        wait_until("second/2 NOT_FOUND", lambda: code_of(lambda: classify(stub, image, "second", "2"))
                   == grpc.StatusCode.NOT_FOUND)
        assert listed(stub)["second"] == (["1"], "1")
        assert classify(stub, image, "second").model_version == "1"
        assert 'camseg_model_info{name="second",version="2"}' not in server.metrics()

        # 3. a version replaced in place serves its new metadata
        staged = tmp_path / "third-v1-new"
        shutil.copytree(exported[0], staged)
        edit_metadata(staged, best_epoch=99)
        replace_in_place(staged, root / "third" / "1")
        info = wait_until("third's new metadata", lambda: (
            lambda i: i if i.metrics.get("best_epoch") == 99.0 else None)(
            stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="third")), timeout=10)))
        assert info.version == "1" and list(info.classes) == list(exported[1]["classes"])
        assert listed(stub)["third"] == (["1"], "1")

        # 4. a corrupt version of good is refused; good/1 stays the latest served
        add_version(exported, root, "good", "2",
                    edit=lambda d: (d / ONNX_FILE).write_bytes((d / ONNX_FILE).read_bytes()[:1000]))
        wait_until("good/2 refused", lambda: load_failures(server, "good") > 0)
        assert listed(stub)["good"] == (["1"], "1")
        assert code_of(lambda: classify(stub, image, "good", "2")) == grpc.StatusCode.NOT_FOUND
        info = stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="good")), timeout=10)
        assert info.version == "1"

        wait_until(f"{MIN_CALLS} calls to good", lambda: len(caller.replies) >= MIN_CALLS or caller.failures,
                   within=30.0)
    assert not caller.thread.is_alive()
    assert caller.failures == []
    assert len(caller.replies) >= MIN_CALLS
    assert {(r.model_name, r.model_version) for r in caller.replies} == {("good", "1")}
    got = np.array([list(r.results[0].probabilities) for r in caller.replies], dtype=np.float32)
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), atol=1e-5)  # the right numbers, every time
    assert server.proc.poll() is None  # still serving
    assert listed(stub) == {"good": (["1"], "1"), "second": (["1"], "1"), "third": (["1"], "1")}
    assert load_failures(server, "good") == 1.0  # refused once, not retried while unchanged


def test_a_version_replaced_in_place_answers_with_its_new_weights(
        exported: Exported, tumor_roi: tuple[bytes, bytes], launch: Launcher, tmp_path: Path) -> None:
    image, _ = tumor_roi
    root = tmp_path / "repo"
    served = add_version(exported, root, "third", "1")
    staged = tmp_path / "third-v1-new"
    shutil.copytree(exported[0], staged)
    shift_head_bias(staged, (-3.0, 3.0))
    edit_metadata(staged, best_epoch=99)
    old, new = local_probabilities(served, image), local_probabilities(staged, image)
    assert abs(float(new[1] - old[1])) > 0.1  # the replacement really answers differently

    server = launch(root)
    stub = pb_grpc.SegmentationStub(server.channel())
    np.testing.assert_allclose(classify(stub, image, "third").results[0].probabilities, old, atol=1e-5)
    replace_in_place(staged, served)
    wait_until("third's new metadata", lambda: stub.GetModelInfo(
        pb.GetModelInfoRequest(model=pb.ModelRef(name="third")), timeout=10).metrics.get("best_epoch") == 99.0)
    reply = classify(stub, image, "third")
    assert (reply.model_name, reply.model_version) == ("third", "1")
    assert not np.allclose(reply.results[0].probabilities, old, atol=1e-5), "still the old weights"
    np.testing.assert_allclose(reply.results[0].probabilities, new, atol=1e-5)


REPLACEMENTS = 50


def test_a_version_replaced_50_times_under_load_fails_no_call(
        exported: Exported, tumor_roi: tuple[bytes, bytes], launch: Launcher, tmp_path: Path) -> None:
    """One version folder rewritten in place 50 times, alternating two sets of weights,
    while three clients call Classify back to back: each replacement is served (its
    metadata seen), no call fails, and every answer is one of the two models' own."""
    image, _ = tumor_roi
    root = tmp_path / "repo"
    served = add_version(exported, root, "swap", "1")
    other = tmp_path / "other"
    shutil.copytree(exported[0], other)
    shift_head_bias(other, (-3.0, 3.0))
    sources = (exported[0], other)
    want = [local_probabilities(s, image) for s in sources]
    assert abs(float(want[1][1] - want[0][1])) > 0.1  # the two answer differently

    server = launch(root, env={"CAMSEG_POLL_SECONDS": "0.1"})
    stub = pb_grpc.SegmentationStub(server.channel())

    def best_epoch() -> float | None:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="swap")), timeout=10)
        return info.metrics.get("best_epoch")

    callers = [Caller(server, image, "swap") for _ in range(3)]
    with contextlib.ExitStack() as stack:
        for c in callers:
            stack.enter_context(c)
        wait_until("first calls", lambda: all(len(c.replies) >= 3 for c in callers))
        for i in range(1, REPLACEMENTS + 1):
            staged = tmp_path / f"r{i}"
            shutil.copytree(sources[i % 2], staged)
            edit_metadata(staged, best_epoch=1000 + i)
            replace_in_place(staged, served)
            wait_until(f"replacement {i} served", lambda i=i: best_epoch() == 1000 + i)  # type: ignore[misc]
            shutil.rmtree(staged)
        calls = sum(len(c.replies) for c in callers)
        wait_until("calls after the last replacement",  # a call left in a closed batcher's queue hangs here
                   lambda: sum(len(c.replies) for c in callers) >= calls + 10,
                   logs=lambda: f"replies {[len(c.replies) for c in callers]}, "
                                f"failures {[c.failures[:3] for c in callers]}")
    assert [c.failures for c in callers] == [[], [], []]
    replies = [r for c in callers for r in c.replies]
    assert len(replies) >= 2 * REPLACEMENTS
    got = np.array([list(r.results[0].probabilities) for r in replies], dtype=np.float32)
    near = [np.abs(got - w).max(axis=1) <= 1e-5 for w in want]
    assert (near[0] | near[1]).all(), got[~(near[0] | near[1])][:3]  # never a third answer
    assert near[0].any() and near[1].any()  # both weights were served
    np.testing.assert_allclose(classify(stub, image, "swap").results[0].probabilities, want[0], atol=1e-5)
    assert server.proc.poll() is None
