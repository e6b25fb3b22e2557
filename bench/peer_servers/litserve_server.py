"""LitServe over the benchmark's ONNX file: HTTP only (LitServe speaks no gRPC).

The request is JSON: ``{"shape": [...], "data": base64 of float32 bytes}`` (base64
rather than a list of 16k numbers, as a caller minding speed would send it); the reply
``{"probabilities": [[...]]}``. One API server and one inference worker (LitServe runs
each as its own process), batching off unless PEER_MAX_BATCH > 1. Runs in its own virtual
environment (see bench/peers.py).
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import litserve as ls  # noqa: E402
import numpy as np  # noqa: E402
from common import run, session  # noqa: E402


class OnnxClassifier(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: Any) -> None:
        self.session = session()

    def decode_request(self, request: Any) -> Any:
        return np.frombuffer(base64.b64decode(request["data"]), dtype=np.float32).reshape(request["shape"])

    def predict(self, x: Any) -> Any:
        return run(self.session, x)

    def encode_response(self, output: Any) -> Any:
        return {"probabilities": output.tolist()}


if __name__ == "__main__":
    server = ls.LitServer(OnnxClassifier(), accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=int(os.environ["PEER_HTTP_PORT"]), num_api_servers=1,
               generate_client_file=False, log_level="warning")
