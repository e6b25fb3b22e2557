"""Foreign ONNX classifiers served by a real ``camseg serve`` process: Classify equals
ONNX Runtime, Segment works over gRPC, an unsupported operator refuses Explain with its
name, and a bad config is refused while the rest of the repository keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from camseg.io.codecs import encode_png
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.foreign import BUILDERS, Foreign, cumsum_net
from tests.services.servers import Server, start_server, stop


@pytest.fixture(scope="module")
def foreign_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Foreign]]:
    root = tmp_path_factory.mktemp("foreign-repo")
    built = {name: build() for name, build in BUILDERS.items()}
    built["cumsum"] = cumsum_net()
    for name, f in built.items():
        f.write(root / name / "1")
    broken = built["tflike"]
    bad = json.loads(json.dumps(broken.config))
    bad["classes"] = ["normal", "mass"]  # two classes for a four-class output
    bad["lesion_classes"] = ["mass"]
    broken.write(root / "broken" / "1", config=bad)
    return root, built


@pytest.fixture(scope="module")
def foreign_server(foreign_repo: tuple[Path, dict[str, Foreign]]) -> Iterator[Server]:
    s = start_server(foreign_repo[0])
    yield s
    stop(s)


@pytest.fixture(scope="module")
def fstub(foreign_server: Server) -> pb_grpc.SegmentationStub:
    return pb_grpc.SegmentationStub(foreign_server.channel())


def _image(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_the_repository_serves_the_imported_models_and_refuses_the_bad_one(
        fstub: pb_grpc.SegmentationStub, foreign_server: Server) -> None:
    names = {m.name for m in fstub.ListModels(pb.ListModelsRequest(), timeout=30).models}
    assert names == {"tflike", "rgbnet", "graynet", "cumsum"}  # broken/1 is refused, the rest serve
    assert 'camseg_model_load_failures_total{name="broken"} 1.0' in foreign_server.metrics()
    log = foreign_server.serve.log.read_text()
    assert "broken/1/camseg-model.json: classes: 2 classes for the output probs" in log
    info = fstub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="tflike")), timeout=30)
    assert info.source == "imported" and info.architecture == "imported"
    assert list(info.classes) == ["normal", "mass", "calcification", "distortion"]
    config = json.loads(info.config)
    assert config["input"]["layout"] == "NHWC" and config["lesion_classes"] == ["mass", "calcification", "distortion"]
    assert info.gradcam_layer == "/a3/Relu_output_0" and not info.gradients_unavailable
    cum = fstub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="cumsum")), timeout=30)
    assert "CumSum" in cum.gradients_unavailable


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_classify_over_grpc_equals_onnx_runtime(fstub: pb_grpc.SegmentationStub,
                                                foreign_repo: tuple[Path, dict[str, Foreign]], name: str) -> None:
    import torch

    f = foreign_repo[1][name]
    cfg = f.config["input"]
    h, w, c = cfg["height"], cfg["width"], cfg["channels"]
    images = [_image(i, (h, w, 3) if c == 3 else (h, w)) for i in range(3)]
    # float32 raw arrays: the decoded values are exactly the arrays the session is given below
    raw_images = [pb.Image(raw=pb.RawArray(dtype="float32", shape=list(im.shape), data=im.tobytes()))
                  for im in images]
    reply = fstub.Classify(pb.ClassifyRequest(model=pb.ModelRef(name=name), images=raw_images), timeout=30)
    got = np.array([r.probabilities for r in reply.results])
    prepared = torch.stack([torch.from_numpy(im).reshape(h, w, -1).permute(2, 0, 1) for im in images])
    session = ort.InferenceSession(f.onnx_bytes, providers=["CPUExecutionProvider"])
    raw = session.run(None, {session.get_inputs()[0].name: f.to_input(prepared).numpy()})[0]
    want = raw if f.probabilities else np.exp(raw) / np.exp(raw).sum(1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert [r.label for r in reply.results] == [f.config["classes"][int(i)] for i in want.argmax(1)]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_segment_over_grpc(fstub: pb_grpc.SegmentationStub, name: str) -> None:
    img = encode_png((_image(7, (60, 50)) * 255).astype(np.uint8))
    truth = np.zeros((60, 50), bool)
    truth[20:40, 15:35] = True
    reply = fstub.Segment(pb.SegmentRequest(model=pb.ModelRef(name=name), images=[pb.Image(encoded=img)],
                                            truth_masks=[pb.Image(encoded=encode_png(truth))], gate=False,
                                            threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=80)),
                          timeout=60)
    m = reply.masks[0]
    assert list(m.shape) == [60, 50] and 0 < m.area < 60 * 50 and 0.0 <= m.dice <= 1.0
    assert reply.model_name == name
    heat = fstub.Explain(pb.ExplainRequest(model=pb.ModelRef(name=name), images=[pb.Image(encoded=img)],
                                           options=pb.ExplainOptions(method=pb.CAM_METHOD_GRADCAM_PP)), timeout=60)
    assert heat.engine == "torch" and list(heat.heatmaps[0].shape) == [60, 50]


def test_an_unsupported_operator_serves_classify_and_refuses_explain_by_name(
        fstub: pb_grpc.SegmentationStub) -> None:
    img = encode_png((_image(8, (32, 32)) * 255).astype(np.uint8))
    ref = pb.ModelRef(name="cumsum")
    assert len(fstub.Classify(pb.ClassifyRequest(model=ref, images=[pb.Image(encoded=img)]),
                              timeout=30).results[0].probabilities) == 2
    for call, request in ((fstub.Explain, pb.ExplainRequest(model=ref, images=[pb.Image(encoded=img)])),
                          (fstub.Segment, pb.SegmentRequest(model=ref, images=[pb.Image(encoded=img)]))):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CumSum" in str(info.value.details())
    score = fstub.Explain(pb.ExplainRequest(model=ref, images=[pb.Image(encoded=img)],
                                            options=pb.ExplainOptions(method=pb.CAM_METHOD_SCORECAM)), timeout=60)
    assert score.engine == "onnx" and list(score.heatmaps[0].shape) == [32, 32]
