"""What every peer server shares: one ONNX Runtime session made the same way.

This file runs inside each peer's own virtual environment (it imports only onnxruntime
and numpy), so it must not import camseg. Its settings come from the environment the
benchmark sets: PEER_MODEL (the .onnx file), PEER_THREADS (intra-op threads),
PEER_SPINNING (1/0: ONNX Runtime's spin-wait between runs, its default is on).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort

INPUT = "input"
OUTPUT = "probabilities"
MODEL_NAME = "classifier"


def session() -> ort.InferenceSession:
    """A CPU session with the benchmark's intra-op threads and one inter-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ["PEER_THREADS"])
    options.inter_op_num_threads = 1
    if os.environ.get("PEER_SPINNING", "1") == "0":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.environ["PEER_MODEL"], options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: Any) -> np.ndarray:
    return sess.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]
