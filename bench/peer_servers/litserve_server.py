"""LitServe over the benchmark's ONNX file: HTTP only (LitServe speaks no gRPC).

The request is JSON: ``{"shape": [...], "data": base64 of float32 bytes}`` (base64
rather than a list of 16k numbers, as a caller minding speed would send it); the reply
``{"probabilities": [[...]]}``. One API server and one inference worker (LitServe runs
each as its own process), batching off unless PEER_MAX_BATCH > 1 (then up to that many
requests a batch, waiting at most PEER_BATCH_TIMEOUT seconds). Runs in its own virtual
environment (see bench/peers.py).
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import litserve as ls
import numpy as np
from common import run, session


class OnnxClassifier(ls.LitAPI):
    def setup(self, device: Any) -> None:
        self.session = session()

    # unannotated, as LitServe's guide writes them: LitServe reads the request's type off the
    # annotation (none: the JSON body) and the reply's off the return annotation
    def decode_request(self, request):
        return np.frombuffer(base64.b64decode(request["data"]), dtype=np.float32).reshape(request["shape"])

    def batch(self, inputs: list[Any]) -> Any:
        return np.concatenate(inputs)

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def predict(self, x: Any) -> Any:
        return run(self.session, x)

    def encode_response(self, output):
        return {"probabilities": output.tolist()}


if __name__ == "__main__":
    max_batch = int(os.environ.get("PEER_MAX_BATCH", "1"))
    api = OnnxClassifier(max_batch_size=max_batch,
                         batch_timeout=float(os.environ.get("PEER_BATCH_TIMEOUT", "0")) if max_batch > 1 else 0.0)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=int(os.environ["PEER_HTTP_PORT"]), num_api_servers=1,
               generate_client_file=False, log_level="warning")
