"""ONNX Runtime sessions with quietly chosen execution providers.

onnxruntime-gpu lists the CUDA provider even on a machine without a GPU, and asking
for it there prints a loud error before falling back. CUDA is chosen only when the
driver and the provider library (with its CUDA and cuDNN dependencies) actually load.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES
from camseg.models.modelfiles import check_onnx_bytes, check_onnx_file, check_onnx_model

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@functools.cache
def cuda_available() -> bool:
    """True when the CUDA provider of onnxruntime-gpu can really be loaded."""
    if CUDA not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:  # loads CUDA/cuDNN from the nvidia-* wheels where installed
        try:
            preload(directory="")
        except Exception:
            logger.debug("onnxruntime.preload_dlls failed", exc_info=True)
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        logger.info("CUDA provider present but not loadable (%s); using the CPU", exc)
        return False
    return True


def select_providers(requested: str = "auto") -> list[str]:
    """``auto``: CUDA then CPU where CUDA loads, else CPU. Otherwise a comma list."""
    if requested.strip().lower() in ("", "auto"):
        return [CUDA, CPU] if cuda_available() else [CPU]
    names = [p.strip() for p in requested.split(",") if p.strip()]
    known = set(ort.get_available_providers())
    unknown = [p for p in names if p not in known]
    if unknown:
        raise ValueError(f"unknown ONNX Runtime providers {unknown}; available: {sorted(known)}")
    return names


def make_session(model: Path | str | bytes | onnx.ModelProto, providers: str = "auto", *, threads: int = 0,
                 spinning: bool = True, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> ort.InferenceSession:
    """A session over an ONNX file, a serialised model or a parsed one.

    The model is checked first (:mod:`camseg.models.modelfiles`): a file's external data
    must stay in its folder, a model in memory may have none, and the tensors it declares
    must fit ``max_bytes``; ModelFileError otherwise.

    ``spinning`` False stops ONNX Runtime's intra-op threads from spin-waiting for work
    between runs: a process that shares its cores with other threads (a server's event
    loop, decoding, a client) loses less to them, for a little latency at batch 1."""
    source: str | bytes
    if isinstance(model, bytes):
        check_onnx_bytes(model, max_bytes=max_bytes)
        source = model
    elif isinstance(model, Path | str):
        check_onnx_file(model, max_bytes=max_bytes)
        source = str(model)
    else:
        check_onnx_model(model, "a model in memory", None, max_bytes=max_bytes)
        source = model.SerializeToString()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initialisers are noise
    if threads:
        opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(source, sess_options=opts, providers=select_providers(providers))
