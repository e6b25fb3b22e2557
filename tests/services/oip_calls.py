"""The Open Inference Protocol calls of ``test_oip.py``, made by ``tritonclient[grpc]`` in a
process of their own: ``python -m tests.services.oip_calls ADDRESS MODEL MAX_IMAGES IN.npz OUT``.

tritonclient's ``inference`` messages and camseg's generated ``services.gen.inference``
cannot share a process (protobuf refuses the second definition of the same names), and
a caller of a v2 server is another process anyway. ``IN.npz`` holds ``x`` (FP32
``[N, C, H, W]``) and ``u8`` (UINT8 ``[N, H, W]``); ``OUT.json`` gets each call's answer
or its error (status code name and message), ``OUT.npz`` each call's output tensors
(``<call>.<output>``). Nothing here imports camseg.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

FP32 = "FP32"


def tensor(name: str, arr: npt.NDArray[Any], datatype: str) -> tc.InferInput:
    t = tc.InferInput(name, list(arr.shape), datatype)
    t.set_data_from_numpy(arr)
    return t


def outputs(*names: str) -> list[tc.InferRequestedOutput]:
    return [tc.InferRequestedOutput(n) for n in names]


def main(address: str, model: str, max_images: int, inputs: str, out: str) -> None:
    data = np.load(inputs)
    x: npt.NDArray[np.float32] = data["x"]
    u8: npt.NDArray[np.uint8] = data["u8"]
    client = tc.InferenceServerClient(address)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    answers: dict[str, Any] = {}
    arrays: dict[str, npt.NDArray[Any]] = {}

    def infer(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return result("", client.infer(*args, **kwargs))

    def result(call: str, r: tc.InferResult) -> dict[str, Any]:
        resp = r.get_response()
        names = [o.name for o in resp.outputs]
        for n in names:
            arrays[f"{call}.{n}"] = r.as_numpy(n)
        return {"outputs": names, "model_name": resp.model_name, "model_version": resp.model_version,
                "id": resp.id, "shapes": {o.name: list(o.shape) for o in resp.outputs}}

    def typed(datatype: str, arr: npt.NDArray[Any], field: str, shape: list[int] | None = None) -> dict[str, Any]:
        """A request with typed contents, made with tritonclient's own messages."""
        req = service_pb2.ModelInferRequest(model_name=model)
        t = req.inputs.add(name="input", datatype=datatype, shape=shape or list(arr.shape))
        getattr(t.contents, field).extend(arr.ravel().tolist())
        req.outputs.add(name="probabilities")
        try:
            return result("", tc.InferResult(stub.ModelInfer(req, timeout=30)))
        except grpc.RpcError as exc:
            return {"error": exc.code().name, "message": exc.details()}

    def raw_mismatch() -> dict[str, Any]:
        req = service_pb2.ModelInferRequest(model_name=model)
        req.inputs.add(name="input", datatype=FP32, shape=[2, *x.shape[1:]])
        req.raw_input_contents.append(x[:1].tobytes())
        try:
            stub.ModelInfer(req, timeout=30)
        except grpc.RpcError as exc:
            return {"error": exc.code().name, "message": exc.details()}
        return {"error": "OK"}

    s = x.shape
    big = np.zeros((1, 1500, 1500), np.uint8)  # 2.25 MB: over the test server's 2 MiB receive limit
    many = np.zeros((1, 1100, 1100), np.uint8)  # 1.21 Mpx: over its 1 Mpx image limit, under the receive limit
    calls: dict[str, Callable[[], Any]] = {
        "live": client.is_server_live,
        "ready": client.is_server_ready,
        "model_ready": lambda: client.is_model_ready(model),
        "model_ready_version": lambda: client.is_model_ready(model, "1"),
        "model_ready_unknown": lambda: client.is_model_ready("no-such-model"),
        "server_metadata": lambda: client.get_server_metadata(as_json=True),
        "model_metadata": lambda: client.get_model_metadata(model, as_json=True),
        "model_metadata_unknown": lambda: client.get_model_metadata("no-such-model", as_json=True),
        "raw": lambda: infer(model, [tensor("input", x, FP32)], outputs=outputs("probabilities"), request_id="r1"),
        "default_outputs": lambda: infer(model, [tensor("input", x, FP32)]),
        "heat": lambda: infer(model, [tensor("input", x, FP32)], outputs=outputs("probabilities", "heatmap")),
        "heat_only": lambda: infer(model, [tensor("input", x, FP32)], outputs=outputs("heatmap")),
        "version": lambda: infer(model, [tensor("input", x, FP32)], model_version="1"),
        "typed": lambda: typed(FP32, x, "fp32_contents"),
        "u8": lambda: infer(model, [tensor("input", u8, "UINT8")], outputs=outputs("probabilities", "heatmap")),
        "u8_hwc": lambda: infer(model, [tensor("input", u8[..., None], "UINT8")]),
        "typed_u8": lambda: typed("UINT8", u8, "uint_contents"),
        "typed_u8_over_255": lambda: typed("UINT8", u8.astype(np.uint32) + 200, "uint_contents"),
        "typed_count": lambda: typed(FP32, x[:, :, :-1], "fp32_contents", shape=list(s)),
        "wrong_datatype": lambda: infer(model, [tensor("input", x.astype(np.float64), "FP64")]),
        "wrong_shape_nhw": lambda: infer(model, [tensor("input", x[:, 0], FP32)]),
        "wrong_shape_size": lambda: infer(model, [tensor("input", np.zeros((1, s[1], s[2] + 1, s[3]), np.float32),
                                                         FP32)]),
        "wrong_input_name": lambda: infer(model, [tensor("images", x, FP32)]),
        "unknown_model": lambda: infer("no-such-model", [tensor("input", x, FP32)]),
        "unknown_version": lambda: infer(model, [tensor("input", x, FP32)], model_version="99"),
        "unknown_output": lambda: infer(model, [tensor("input", x, FP32)], outputs=outputs("logits")),
        "too_many_images": lambda: infer(model, [tensor("input", np.zeros((max_images + 1, *s[1:]), np.float32),
                                                        FP32)]),
        "too_many_pixels": lambda: infer(model, [tensor("input", many, "UINT8")]),
        "too_large_message": lambda: infer(model, [tensor("input", big, "UINT8")]),
        "raw_size_mismatch": raw_mismatch,
    }
    for current, call in calls.items():
        try:
            value = call()
        except InferenceServerException as exc:
            value = {"error": str(exc.status()).removeprefix("StatusCode."), "message": exc.message()}
        if isinstance(value, dict) and "outputs" in value:
            for k in [k for k in arrays if k.startswith(".")]:
                arrays[current + k] = arrays.pop(k)
        answers[current] = value
    with open(out + ".json", "w") as f:
        json.dump(answers, f)
    np.savez(out + ".npz", **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
