"""KServe's Python model server (``kserve.ModelServer``) over the benchmark's ONNX file.

A custom ``kserve.Model`` as KServe's guide writes one: ``load`` makes the session,
``predict`` takes the v2 ``InferRequest`` and answers an ``InferResponse``. One
worker process, gRPC on PEER_GRPC_PORT, REST on PEER_HTTP_PORT. Runs in its own
virtual environment (see bench/peers.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import MODEL_NAME, OUTPUT, run, session
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxClassifier(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        self.session = session()
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers: Any = None, response_headers: Any = None) -> InferResponse:
        y = run(self.session, payload.inputs[0].as_numpy())
        out = InferOutput(name=OUTPUT, shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=True)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out])


if __name__ == "__main__":
    ModelServer(http_port=int(os.environ["PEER_HTTP_PORT"]), grpc_port=int(os.environ["PEER_GRPC_PORT"]),
                workers=1, enable_latency_logging=False).start([OnnxClassifier(MODEL_NAME)])
