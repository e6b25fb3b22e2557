"""``inference.GRPCInferenceService``: the Open Inference Protocol (KServe v2 gRPC, the
protocol Triton, KServe and MLServer speak) beside ``camseg.v1``, on the same server.

A thin adapter, as :mod:`services.servicer` is: a ModelInfer request's tensor becomes
undecoded :class:`~camseg.io.sources.Source` raw arrays, one per image, which go to the
same data plane (:class:`services.dataplane.DataPlane`: the Classify batcher, the
pools, the budgets, the limits) that ``camseg.v1`` Classify and Explain call; the
results become output tensors. Errors are :class:`~camseg.core.errors.CamsegError`,
mapped to status codes by the server's interceptor: a bad tensor (datatype, shape,
size, an unknown input or output name) is INVALID_ARGUMENT, an unknown model or version
NOT_FOUND, no model loaded yet UNAVAILABLE, a reply over the send limit or a budget
spent RESOURCE_EXHAUSTED.

A model declares (ModelMetadata) one input and two outputs:

- ``input``: FP32 ``[-1, C, H, W]``, the model's own input tensor shape, holding image
  intensities in [0, 1] (an image with values outside is min-max scaled, as
  ``camseg.v1``'s raw float arrays are; the normalisation is the server's). UINT8 images
  of any size are taken on the same input too, ``[-1, H, W]`` (gray) or
  ``[-1, H, W, C]`` with C 1 or 3, resized to the model's input as Classify does.
- ``probabilities``: FP32 ``[N, classes]``, in the order of ``camseg.v1`` GetModelInfo's
  classes.
- ``heatmap``: FP32 ``[N, H, W]``, the CAM of the tumor class at the image's size (the
  model's default CAM method, every image an ROI), returned only when requested by name:
  it costs a CAM pass. With it, the probabilities are those of the same pass.

An inference request that names no outputs gets ``probabilities``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

import camseg
from camseg.core.errors import InvalidInputError, NotFoundError, UnavailableError, shown
from camseg.core.settings import Settings
from camseg.io.sources import Raw, Source
from camseg.models.repository import version_key
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel, Result
from camseg.pipeline.whole import Tiling, Whole
from services.dataplane import DataPlane
from services.gen.inference import grpc_predict_v2_pb2 as pb
from services.gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from services.repository import ModelRepository, ServedModel

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
INPUT = "input"
PROBABILITIES = "probabilities"
HEATMAP = "heatmap"
OUTPUTS = (PROBABILITIES, HEATMAP)
DTYPES: dict[str, type[np.generic]] = {"FP32": np.float32, "UINT8": np.uint8}
TYPED_FIELD = {"FP32": "fp32_contents", "UINT8": "uint_contents"}
"""Where each datatype's values sit in ``InferTensorContents``."""

Tensor = pb.ModelMetadataResponse.TensorMetadata


def platform(model: LoadedModel) -> str:
    """Triton's platform name of what runs the model."""
    return "onnxruntime_onnx" if model.onnx is not None else "pytorch"


def model_metadata(served: ServedModel, versions: Sequence[str]) -> pb.ModelMetadataResponse:
    """The model's tensors: ``input`` its own input shape, FP32; the two outputs."""
    m = served.model
    h, w = m.input_hw
    return pb.ModelMetadataResponse(
        name=served.name, versions=list(versions), platform=platform(m),
        inputs=[Tensor(name=INPUT, datatype="FP32", shape=[-1, m.channels, h, w])],
        outputs=[Tensor(name=PROBABILITIES, datatype="FP32", shape=[-1, len(m.classes)]),
                 Tensor(name=HEATMAP, datatype="FP32", shape=[-1, -1, -1])])


def requested_outputs(request: pb.ModelInferRequest) -> tuple[str, ...]:
    """The outputs asked for, in the request's order, each once; none: ``probabilities``."""
    names: list[str] = []
    for o in request.outputs:
        if o.name not in OUTPUTS:
            raise InvalidInputError(f"unknown output {shown(o.name)}; the model's outputs are "
                                    f"{', '.join(OUTPUTS)}")
        if o.name not in names:
            names.append(o.name)
    return tuple(names) or (PROBABILITIES,)


def tensor_images(request: pb.ModelInferRequest, model: LoadedModel, *, max_images: int) -> list[Source]:
    """The request's one input tensor as raw images, one per item of its first dimension,
    nothing decoded: FP32 ``[N, C, H, W]`` at the model's input shape, or UINT8
    ``[N, H, W]`` / ``[N, H, W, C]`` (C 1 or 3). Its values come from
    ``raw_input_contents`` or the typed contents (one or the other), whose size must be
    what the shape and datatype say. Their pixels are checked, and charged to the
    budgets, when the data plane decodes them."""
    if len(request.inputs) != 1:
        raise InvalidInputError(f"the model takes one input tensor, {INPUT!r}; the request has "
                                f"{len(request.inputs)}")
    t = request.inputs[0]
    if t.name != INPUT:
        raise InvalidInputError(f"unexpected input {shown(t.name)}; the model's input is {INPUT!r}")
    if t.datatype not in DTYPES:
        raise InvalidInputError(f"input {INPUT!r} datatype {shown(t.datatype)} is not one of {', '.join(DTYPES)}")
    shape = tuple(int(d) for d in t.shape)
    c = model.channels
    h, w = model.input_hw
    if t.datatype == "FP32" and (len(shape) != 4 or shape[1:] != (c, h, w)):
        raise InvalidInputError(f"FP32 input shape {list(shape)} is not the model's [-1, {c}, {h}, {w}]")
    if t.datatype == "UINT8" and not (len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))):
        raise InvalidInputError(f"UINT8 input shape {list(shape)} is not [-1, H, W] or [-1, H, W, C] (C 1 or 3)")
    if min(shape) < 1:
        raise InvalidInputError(f"input shape {list(shape)} has an empty or negative dimension")
    if shape[0] > max_images:
        raise InvalidInputError(f"{shape[0]} images exceed the limit of {max_images} per request")
    values = _values(request, t, shape)
    dtype = np.dtype(DTYPES[t.datatype]).name
    # FP32 NCHW to one (H, W) or (H, W, C) image each, as camseg.v1 raw arrays are
    per = values if t.datatype == "UINT8" else values[:, 0] if c == 1 else values.transpose(0, 2, 3, 1)
    return [Source(f"input {INPUT!r} image {i}", raw=Raw(dtype, tuple(img.shape), np.ascontiguousarray(img).tobytes()))
            for i, img in enumerate(per)]


def _values(request: pb.ModelInferRequest, t: pb.ModelInferRequest.InferInputTensor,
            shape: tuple[int, ...]) -> npt.NDArray[Any]:
    dtype = DTYPES[t.datatype]
    count = math.prod(shape)
    if request.raw_input_contents:
        if t.HasField("contents"):
            raise InvalidInputError("an input carries raw_input_contents or typed contents, not both")
        if len(request.raw_input_contents) != 1:
            raise InvalidInputError(f"{len(request.raw_input_contents)} raw_input_contents for one input")
        raw = request.raw_input_contents[0]
        need = count * np.dtype(dtype).itemsize
        if len(raw) != need:
            raise InvalidInputError(f"input {INPUT!r} raw contents hold {len(raw)} bytes; {t.datatype} "
                                    f"{list(shape)} needs {need}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    typed = getattr(t.contents, TYPED_FIELD[t.datatype])
    if len(typed) != count:
        raise InvalidInputError(f"input {INPUT!r} contents hold {len(typed)} {TYPED_FIELD[t.datatype]} values; "
                                f"{t.datatype} {list(shape)} needs {count}")
    if t.datatype == "UINT8":
        wide = np.asarray(typed, dtype=np.uint32)
        if wide.size and int(wide.max()) > 255:
            raise InvalidInputError(f"input {INPUT!r} UINT8 contents hold a value over 255")
        return wide.astype(np.uint8).reshape(shape)
    return np.asarray(typed, dtype=np.float32).reshape(shape)


def infer_reply(request: pb.ModelInferRequest, served: ServedModel, outputs: Sequence[str],
                arrays: dict[str, npt.NDArray[Any]]) -> pb.ModelInferResponse:
    """The requested ``outputs`` as FP32 tensors in ``raw_output_contents``, in the
    request's order."""
    reply = pb.ModelInferResponse(model_name=served.name, model_version=served.version, id=request.id)
    for name in outputs:
        a = np.ascontiguousarray(arrays[name], dtype=np.float32)
        reply.outputs.add(name=name, datatype="FP32", shape=list(a.shape))
        reply.raw_output_contents.append(a.tobytes())
    return reply


def explain_reply(request: pb.ModelInferRequest, served: ServedModel, outputs: Sequence[str],
                  res: Result) -> pb.ModelInferResponse:
    """The reply of an Explain pass: its probabilities and heatmaps, ``[N, classes]`` and
    ``[N, H, W]``."""
    probs = np.stack([np.asarray(r.probabilities, dtype=np.float32) for r in res.items])
    heat = np.stack([r.heatmap.numpy().astype(np.float32, copy=False) for r in res.items])
    return infer_reply(request, served, outputs, {PROBABILITIES: probs, HEATMAP: heat})


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six calls of the protocol over the repository and ``camseg.v1``'s data plane.
    ``ready`` is set by the server with its health (False until the models are loaded,
    and again from the start of a drain)."""

    def __init__(self, repo: ModelRepository, settings: Settings, plane: DataPlane):
        self.repo = repo
        self.settings = settings
        self.plane = plane
        self.ready = False

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready and bool(self.repo.snapshot))

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        """Ready where the version is loaded; an unknown model or version is not ready (as
        Triton answers), not an error."""
        try:
            self.repo.get(request.name, request.version)
        except (NotFoundError, UnavailableError):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="camseg", version=camseg.__version__, extensions=[])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        served = self.repo.get(request.name, request.version)
        versions = sorted(self.repo.snapshot.get(served.name, {}), key=version_key)
        return model_metadata(served, versions)

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        served = self.repo.get(request.model_name, request.model_version)
        outputs = requested_outputs(request)
        images = tensor_images(request, served.model, max_images=self.settings.max_images)
        if HEATMAP in outputs:
            options = Options(method=served.model.default_method, threshold=None, chunk=self.settings.cam_chunk,
                              tiling=Tiling(mode=Whole.NEVER))
            return await self.plane.explain(served, options, images, heat_bytes=4,
                                            reply=partial(explain_reply, request, served, outputs),
                                            when_gone=context.add_done_callback)
        probs = await self.plane.classify(served, images, when_gone=context.add_done_callback)
        return infer_reply(request, served, outputs, {PROBABILITIES: probs})


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
