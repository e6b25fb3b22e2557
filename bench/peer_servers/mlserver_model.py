"""MLServer's custom runtime over the benchmark's ONNX file.

MLServer 1.7 ships no ONNX runtime of its own, so this is the ``MLModel`` subclass its
guide describes: ``load`` makes the session, ``predict`` decodes the v2 request with
``NumpyCodec`` and encodes the probabilities the same way. The benchmark writes
``settings.json`` (ports, ``parallel_workers: 0`` so inference runs in the one server
process, as in every other server here) and ``model-settings.json`` (this class as the
implementation) and runs ``mlserver start`` in MLServer's own virtual environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import OUTPUT, run, session
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxClassifier(MLModel):
    async def load(self) -> bool:
        self.session = session()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        y = run(self.session, NumpyCodec.decode_input(payload.inputs[0]))
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(OUTPUT, y)])
