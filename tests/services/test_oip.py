"""The Open Inference Protocol (KServe v2 gRPC) of a real ``camseg serve`` process, driven
by ``tritonclient[grpc]`` in a process of its own (:mod:`tests.services.oip_calls`): its
answers equal camseg.v1 Classify and Explain on the same images, and bad requests get
the protocol's status codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from camseg.io.inputs import decode_image
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.services.servers import Server, start_server, stop

ROOT = Path(__file__).resolve().parents[2]
MAX_IMAGES = 6
N = 3
HEAT_ATOL = 1e-3  # camseg.v1 sends heatmaps as float16 (in [0, 1]: half a unit in the last place is under 2.5e-4)


@pytest.fixture(scope="module")
def oip_server(repo: Path) -> Iterator[Server]:
    s = start_server(repo, env={"CAMSEG_MAX_IMAGES": str(MAX_IMAGES), "CAMSEG_MAX_PIXELS": "1000000",
                                "CAMSEG_MAX_RECEIVE_BYTES": str(2 * 1024 * 1024)})
    yield s
    stop(s)


@pytest.fixture(scope="module")
def images(tiny_folder: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """``N`` ROIs of the tiny data set as FP32 ``[N, 1, 32, 32]`` in [0, 1], and ``N``
    UINT8 ``[N, 40, 48]`` images (another size than the model's)."""
    files = sorted((tiny_folder / "images").glob("*.png"))[:N]
    x = np.stack([decode_image(f.read_bytes(), name=f.name) for f in files]).astype(np.float32)[:, None]
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (N, 40, 48), dtype=np.uint8)
    u8[:, 10:30, 12:36] = (x[:, 0, :20, :24] * 255).astype(np.uint8)
    return x, u8


@pytest.fixture(scope="module")
def calls(oip_server: Server, images: tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]],
          tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Every call of :mod:`tests.services.oip_calls`, made once: answers and output tensors."""
    d = tmp_path_factory.mktemp("oip")
    np.savez(d / "in.npz", x=images[0], u8=images[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "tests.services.oip_calls", oip_server.address, "tiny", str(MAX_IMAGES),
                    str(d / "in.npz"), str(d / "out")], check=True, env=env, cwd=ROOT, timeout=120)
    answers = json.loads((d / "out.json").read_text())
    with np.load(d / "out.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return answers, arrays


@pytest.fixture(scope="module")
def stub(oip_server: Server) -> pb_grpc.SegmentationStub:
    return pb_grpc.SegmentationStub(oip_server.channel())


def raw_images(arrs: npt.NDArray[Any]) -> list[pb.Image]:
    return [pb.Image(raw=pb.RawArray(dtype=a.dtype.name, shape=list(a.shape), data=a.tobytes())) for a in arrs]


def classify(stub: pb_grpc.SegmentationStub, arrs: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    r = stub.Classify(pb.ClassifyRequest(model=pb.ModelRef(name="tiny"), images=raw_images(arrs)), timeout=30)
    return np.array([c.probabilities for c in r.results], np.float32)


def explain(stub: pb_grpc.SegmentationStub, arrs: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    r = stub.Explain(pb.ExplainRequest(model=pb.ModelRef(name="tiny"), images=raw_images(arrs),
                                       tiling=pb.Tiling(mode=pb.WHOLE_MODE_NEVER)), timeout=60)
    return np.stack([np.frombuffer(h.data, np.float16).reshape(h.shape).astype(np.float32) for h in r.heatmaps])


def test_liveness_readiness_and_metadata(calls: tuple[dict[str, Any], dict[str, Any]],
                                         stub: pb_grpc.SegmentationStub) -> None:
    a, _ = calls
    assert a["live"] is True and a["ready"] is True
    assert a["model_ready"] is True and a["model_ready_version"] is True
    assert a["model_ready_unknown"] is False
    assert a["server_metadata"]["name"] == "camseg" and a["server_metadata"]["version"]
    info = stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="tiny")), timeout=10)
    meta = a["model_metadata"]
    assert meta["name"] == "tiny" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    size = info.input_size
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32",
                               "shape": ["-1", str(info.input_channels), str(size), str(size)]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", str(len(info.classes))]},
                               {"name": "heatmap", "datatype": "FP32", "shape": ["-1", "-1", "-1"]}]
    assert a["model_metadata_unknown"]["error"] == "NOT_FOUND"


def test_infer_equals_classify_raw_and_typed(calls: tuple[dict[str, Any], dict[str, Any]],
                                             images: tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]],
                                             stub: pb_grpc.SegmentationStub) -> None:
    a, arr = calls
    x, u8 = images
    want = classify(stub, x[:, 0])  # camseg.v1 raw float32 (H, W) images
    assert a["raw"]["outputs"] == ["probabilities"] and a["raw"]["id"] == "r1"
    assert a["raw"]["model_name"] == "tiny" and a["raw"]["model_version"] == "1"
    assert a["raw"]["shapes"]["probabilities"] == [N, want.shape[1]]
    # the batcher may put the same images in other batches: ONNX Runtime rounding only
    np.testing.assert_allclose(arr["raw.probabilities"], want, atol=1e-5)
    np.testing.assert_allclose(arr["typed.probabilities"], want, atol=1e-5)
    np.testing.assert_allclose(arr["default_outputs.probabilities"], want, atol=1e-5)
    assert a["default_outputs"]["outputs"] == ["probabilities"]
    assert a["version"]["model_version"] == "1"
    want_u8 = classify(stub, u8)
    np.testing.assert_allclose(arr["typed_u8.probabilities"], want_u8, atol=1e-5)
    np.testing.assert_allclose(arr["u8_hwc.probabilities"], want_u8, atol=1e-5)
    assert not np.allclose(want_u8, want, atol=1e-3)  # the two sets of images are told apart


def test_heatmap_equals_explain(calls: tuple[dict[str, Any], dict[str, Any]],
                                images: tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]],
                                stub: pb_grpc.SegmentationStub) -> None:
    a, arr = calls
    x, u8 = images
    assert a["heat"]["outputs"] == ["probabilities", "heatmap"]
    assert a["heat_only"]["outputs"] == ["heatmap"]
    heat = arr["heat.heatmap"]
    assert heat.shape == (N, *x.shape[2:]) and heat.dtype == np.float32
    want = explain(stub, x[:, 0])
    np.testing.assert_allclose(heat, want, atol=HEAT_ATOL)
    np.testing.assert_allclose(arr["heat_only.heatmap"], heat, atol=1e-6)
    assert float(heat.std()) > 0.01  # a map, not a constant
    # the probabilities of the CAM pass are the classifier's
    np.testing.assert_allclose(arr["heat.probabilities"], classify(stub, x[:, 0]), atol=1e-4)
    u8_heat = arr["u8.heatmap"]
    assert u8_heat.shape == u8.shape
    np.testing.assert_allclose(u8_heat, explain(stub, u8), atol=HEAT_ATOL)


@pytest.mark.parametrize(("call", "code", "words"), [
    ("wrong_datatype", "INVALID_ARGUMENT", "datatype"),
    ("wrong_shape_nhw", "INVALID_ARGUMENT", "not the model's"),
    ("wrong_shape_size", "INVALID_ARGUMENT", "not the model's"),
    ("wrong_input_name", "INVALID_ARGUMENT", "unexpected input"),
    ("unknown_model", "NOT_FOUND", "unknown model"),
    ("unknown_version", "NOT_FOUND", "no version"),
    ("unknown_output", "INVALID_ARGUMENT", "unknown output"),
    ("too_many_images", "INVALID_ARGUMENT", "exceed the limit"),
    ("too_many_pixels", "INVALID_ARGUMENT", "exceeds the limit"),
    ("too_large_message", "RESOURCE_EXHAUSTED", ""),
    ("raw_size_mismatch", "INVALID_ARGUMENT", "needs"),
    ("typed_count", "INVALID_ARGUMENT", "needs"),
    ("typed_u8_over_255", "INVALID_ARGUMENT", "over 255"),
])
def test_bad_requests_get_the_protocols_codes(calls: tuple[dict[str, Any], dict[str, Any]], call: str, code: str,
                                              words: str) -> None:
    answer = calls[0][call]
    assert answer.get("error") == code, answer
    assert words in answer["message"]


def test_served_beside_camseg_v1_with_its_health_reflection_and_metrics(
        oip_server: Server, calls: tuple[dict[str, Any], dict[str, Any]]) -> None:
    ch = oip_server.channel()
    check = health_pb2_grpc.HealthStub(ch).Check
    status = check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    reply = next(iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                timeout=10)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"camseg.v1.Segmentation", "inference.GRPCInferenceService"} <= names
    # the one interceptor counted the calls and mapped their errors
    metrics = oip_server.metrics()
    for rpc, code in (("ModelInfer", "OK"), ("ModelInfer", "INVALID_ARGUMENT"), ("ModelInfer", "NOT_FOUND"),
                      ("ModelMetadata", "OK"), ("ServerLive", "OK")):
        assert f'camseg_grpc_requests_total{{code="{code}",rpc="{rpc}"}}' in metrics
