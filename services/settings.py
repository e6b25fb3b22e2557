"""Settings of ``camseg serve`` (environment prefix ``CAMSEG_``), built once at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from camseg.core.settings import Settings

MiB = 1024 * 1024


class ServeSettings(Settings):
    model_repo: Path = Field(Path("models"), description="DIR/<name>/<version>/ of exported models")
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    metrics_port: int | None = Field(9100, ge=0, le=65535, description="Prometheus port; None disables it")
    max_receive_bytes: int = Field(64 * MiB, ge=1024)
    max_send_bytes: int = Field(64 * MiB, ge=1024)
    max_pixels: int = Field(4096 * 4096, ge=1, description="largest image accepted (height x width)")
    max_images: int = Field(256, ge=1, description="images per request")
    max_request_values: int = Field(
        3 * 4096 * 4096, ge=1,
        description="decoded values (height x width x channels) of all images and masks of one request")
    max_inflight_values: int = Field(
        6 * 4096 * 4096, ge=1, description="decoded values of all calls in flight together (bounds memory)")
    max_concurrent_rpcs: int = Field(64, ge=1, description="calls in progress at once; more are RESOURCE_EXHAUSTED")
    max_queue_images: int = Field(1024, ge=1, description="images waiting for a Classify batch, per model version")
    decode_workers: int = Field(2, ge=1, description="threads decoding Classify requests off the event loop")
    inline_decode_pixels: int = Field(
        128 * 128, ge=0, description="a call whose images (and truth masks) hold at most this many pixels "
                                     "together is decoded on the event loop (cheaper than the hop to a thread); "
                                     "0 = always a thread")
    batching: bool = True
    max_batch: int = Field(32, ge=1)
    max_delay_ms: float = Field(2.0, ge=0)
    ort_workers: int = Field(2, ge=1, description="threads running ONNX Runtime batches")
    ort_spinning: bool = Field(False, description="let ONNX Runtime's threads spin-wait between runs (faster "
                                                  "batch-1 runs on otherwise idle cores; off, they leave the cores "
                                                  "to decoding and the event loop)")
    cam_workers: int = Field(1, ge=1, description="threads for the Grad-CAM path (its own pool)")
    cam_chunk: int = Field(16, ge=1, description="images per Grad-CAM step; a gone call stops at the next step")
    poll_seconds: float = Field(2.0, gt=0, description="how often the repository is scanned for new versions")
    drain_delay_seconds: float = Field(
        5.0, ge=0, description="time NOT_SERVING is announced before the server stops taking calls (load balancers)")
    grace_seconds: float = Field(20.0, ge=0, description="drain time for in-flight calls on SIGTERM")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = Field(None, description="require client certificates signed by this CA")
    plaintext: bool = Field(False, description="serve without TLS (loopback development only)")
    jobs: bool = Field(True, description="also serve camseg.v1.Jobs (needs the jobs extra and the workers' settings)")
