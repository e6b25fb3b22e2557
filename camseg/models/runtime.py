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

import onnxruntime as ort

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


def make_session(model: Path | str | bytes, providers: str = "auto", *, threads: int = 0,
                 spinning: bool = True) -> ort.InferenceSession:
    """A session over an ONNX file, or a serialised model.

    ``spinning`` False stops ONNX Runtime's intra-op threads from spin-waiting for work
    between runs: a process that shares its cores with other threads (a server's event
    loop, decoding, a client) loses less to them, for a little latency at batch 1."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings about unused initialisers are noise
    if threads:
        opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=select_providers(providers))
