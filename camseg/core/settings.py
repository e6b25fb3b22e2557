"""One settings tree for every entry point (environment prefix ``CAMSEG_``).

:class:`Settings` is the root: the sections :class:`CoreSection` (the library and the
command line), :class:`ServeSection` (``camseg serve``), :class:`JobsSection` (``camseg
worker``, ``beat`` and ``jobs``) and :class:`DicomSection` (``camseg dicom-listen``)
composed into one class, each field declared once. A field ``name`` is read from
``CAMSEG_NAME`` (any case), so the sections keep flat variable names. Each entry point
builds the tree once with :meth:`Settings.load` and passes it down; nothing reads the
environment at import time. Declaring the service's and the workers' fields here imports
no transport.

A ``CAMSEG_*`` variable that names no field is refused when the tree is built
(:class:`SettingsError`, naming the variable and the closest field): a misspelt setting
would otherwise be ignored without a word. The README's settings table is rendered from
these classes (:mod:`camseg.core.settings_doc`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from camseg.core.errors import InvalidInputError, shown
from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_WHOLE_PIXELS
from camseg.core.windowing import Windowing

PREFIX = "CAMSEG_"
MiB = 1024 * 1024
AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # DICOM AE: printable, no backslash, 16 at most


MEMORY_VALUES = 512 * 1024 * 1024
"""The default memory budgets (a request's, all calls in flight): 2 GiB as values of 4 bytes."""


class SettingsError(InvalidInputError):
    """A setting that cannot be used: an unknown ``CAMSEG_*`` variable or a bad value.
    The message is one line naming each variable and why."""


# ---------------------------------------------------------------------- sections
class CoreSection(BaseModel):
    """What the library and the ``camseg`` command read."""

    torch_threads: int = Field(0, ge=0, description="intra-op threads for torch (and ONNX Runtime in the server); "
                                                    "0 = torch default (workers: the cores split between processes)")
    device: str = Field("auto", description="torch device for training: auto (CUDA when torch sees a GPU)|cpu|cuda")
    ort_providers: str = Field(
        "auto", description="comma-separated ONNX Runtime providers, or auto (CUDA when it loads)")
    data_cache: Path = Field(Path.home() / ".cache" / "camseg", description="downloads and caches")
    log_level: str = Field("WARNING", description="logging level of the command-line entry point")
    dicom_window: str = Field(
        "auto", description="how DICOM values become [0, 1]: auto (CT soft-tissue, MR percentiles, else the "
                            "file's window), a preset (soft-tissue, lung, bone, brain, mediastinum, liver), "
                            "CENTER,WIDTH, percentiles:LO,HI, or dicom (the file's own window)")
    model_repo: Path = Field(Path("models"), description="DIR/<name>/<version>/ of exported models, for the server, "
                                                         "the workers and the DICOM listener")
    max_model_bytes: int = Field(
        DEFAULT_MAX_MODEL_BYTES, ge=1024,
        description="largest model file, and largest total of the tensors an ONNX graph declares (external data "
                    "included): a larger model is refused before it is loaded")

    @field_validator("dicom_window")
    @classmethod
    def _window(cls, v: str) -> str:
        try:
            return str(Windowing.parse(v))
        except InvalidInputError as exc:  # reported with the variable's name, as other bad values are
            raise ValueError(exc.message) from None


class ServeSection(BaseModel):
    """``camseg serve``: the gRPC service, its limits, pools and shutdown."""

    host: str = Field("127.0.0.1", description="address the server (and its metrics) listen on")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free port")
    metrics_port: int | None = Field(
        9100, ge=0, le=65535, description="the server's Prometheus port; none: no metrics (a variable of its own: one "
                                          "image and environment run the server and the workers side by side)")
    max_receive_bytes: int = Field(64 * MiB, ge=1024, description="largest request message")
    max_send_bytes: int = Field(64 * MiB, ge=1024, description="largest reply message")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="largest image accepted (height x width)")
    max_whole_pixels: int = Field(
        DEFAULT_MAX_WHOLE_PIXELS, ge=1,
        description="largest image accepted for whole-image inference (height x width); its sliding window "
                    "holds about 31 bytes a pixel at scale 1, counted in max_inflight_values")
    max_upload_bytes: int = Field(128 * MiB, ge=1024, description="largest image sent in pieces (SegmentUpload)")
    max_images: int = Field(256, ge=1, description="images per request")
    max_request_values: int = Field(
        MEMORY_VALUES, ge=1,
        description="memory one request's work may hold, in values of 4 bytes: each image charged from its header "
                    "what its whole path holds (decoding, heatmaps, TTA, refiners, sliding window, encodings; "
                    "camseg.pipeline.cost) before it is decoded")
    max_inflight_values: int = Field(
        MEMORY_VALUES, ge=1,
        description="memory all calls in flight may hold together, in values of 4 bytes (requests charged as "
                    "max_request_values says, uploads as bytes / 4); the default, 2 GiB, holds any one image the "
                    "pixel limits admit with any options")
    max_concurrent_rpcs: int = Field(64, ge=1, description="calls in progress at once; more are RESOURCE_EXHAUSTED")
    max_queue_images: int = Field(1024, ge=1, description="images waiting for a Classify batch, per model version")
    decode_workers: int = Field(2, ge=1, description="threads decoding Classify requests off the event loop")
    inline_decode_pixels: int = Field(
        128 * 128, ge=0, description="a call whose images (and truth masks) hold at most this many pixels "
                                     "together is decoded on the event loop (cheaper than the hop to a thread); "
                                     "0 = always a thread")
    inline_run_pixels: int = Field(
        128 * 128, ge=0, description="a lone Classify call (no other call in flight or overlapping in the last "
                                     "50 ms, no batch queued or running) whose images hold at most this many "
                                     "model-input pixels together runs ONNX Runtime on the event loop (cheaper than "
                                     "the hop to a thread); 0 = always a thread")
    batching: bool = Field(True, description="batch Classify calls of one model version together")
    max_batch: int = Field(32, ge=1, description="images per Classify batch")
    max_delay_ms: float = Field(2.0, ge=0, description="longest wait for a Classify batch to fill")
    ort_workers: int = Field(2, ge=1, description="threads running ONNX Runtime batches")
    ort_spinning: bool = Field(False, description="let ONNX Runtime's threads spin-wait between runs (faster "
                                                  "batch-1 runs on otherwise idle cores; off, they leave the cores "
                                                  "to decoding and the event loop)")
    cam_workers: int = Field(1, ge=1, description="threads for the Grad-CAM path (its own pool)")
    cam_chunk: int = Field(16, ge=1, description="images per Grad-CAM step; a gone call stops at the next step")
    poll_seconds: float = Field(2.0, gt=0, description="how often the server scans the model repository for new "
                                                       "versions")
    drain_delay_seconds: float = Field(
        5.0, ge=0, description="time NOT_SERVING is announced before the server stops taking calls (load balancers)")
    grace_seconds: float = Field(20.0, ge=0, description="drain time for in-flight calls on SIGTERM")
    tls_cert: Path | None = Field(None, description="the server's certificate (PEM)")
    tls_key: Path | None = Field(None, description="its private key (PEM)")
    tls_client_ca: Path | None = Field(None, description="require client certificates signed by this CA")
    plaintext: bool = Field(False, description="serve without TLS (loopback development only)")
    jobs: bool = Field(True, description="also serve camseg.v1.Jobs (needs the jobs extra and Redis)")


class JobsSection(BaseModel):
    """``camseg worker``, ``beat`` and ``jobs``: the queue, the job folders and the schedule."""

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker and result backend")
    data_roots: list[Path] = Field(default_factory=lambda: [Path("data")],
                                   description="job inputs must resolve under one of these")
    output_root: Path = Field(Path("jobs-out"), description="each job writes only to output_root/<job id>/")
    chunk_size: int = Field(64, ge=1, description="images per chunk task")
    worker_concurrency: int = Field(0, ge=0, description="worker processes per `camseg worker`; 0 = the cores")
    task_soft_time_limit: float = Field(900.0, gt=0, description="a chunk is asked to stop after this long")
    task_time_limit: float = Field(960.0, gt=0, description="a chunk's process is killed after this long")
    visibility_timeout: float = Field(
        0.0, ge=0, description="seconds before Redis redelivers an unacknowledged task; 0 = time limit + 60 s")
    reconcile_seconds: float = Field(300.0, gt=0, description="how often beat re-enqueues chunks of unfinished jobs")
    retrain_models: list[str] = Field(default_factory=list, description="models whose latest version beat retrains")
    retrain_data: Path = Field(Path("data/synth"), description="data set of the scheduled filtered retraining")
    retrain_thresholds: list[float] = Field(default_factory=lambda: [0.5],
                                            description="filter thresholds of the scheduled retraining")
    retrain_epochs: int | None = Field(None, ge=1, description="epochs per retraining (default: the model's)")
    retrain_cron: str = Field("0 3 * * 0", description="crontab (minute hour day month weekday) of the retraining")
    retrain_every_seconds: float | None = Field(None, gt=0, description="an interval instead of the crontab")
    worker_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="a worker's Prometheus port; none: no metrics (not metrics_port: the "
                                          "server and the workers share one image and environment)")
    worker_metrics_host: str = Field("127.0.0.1", description="address a worker's metrics listen on (0.0.0.0 where "
                                                               "Prometheus scrapes from another host)")

    @field_validator("retrain_cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError("retrain_cron needs five fields: minute hour day month weekday")
        return v

    @property
    def redelivery_seconds(self) -> float:
        return self.visibility_timeout or self.task_time_limit + 60.0

    def processes(self) -> int:
        return self.worker_concurrency or (os.cpu_count() or 1)


@dataclass(frozen=True)
class Destination:
    """Where the DICOM listener sends its SEGs: a C-STORE SCP."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AE@host:port`` (``AE@[::1]:104`` for IPv6); ValueError with the reason otherwise."""
    ae, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not (at and colon and host and port.isdigit()):
        raise ValueError(f"destination {shown(text)} is not AE@host:port")
    if not AE_TITLE.fullmatch(ae) or not ae.strip():
        raise ValueError(f"destination AE title {shown(ae)} is not 1-16 printable characters without a backslash")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"destination port {port} is out of range")
    return Destination(ae, host, int(port))


class DicomSection(BaseModel):
    """``camseg dicom-listen``: the C-STORE receiver (it submits jobs with the job settings)."""

    dicom_ae_title: str = Field("CAMSEG", description="the listener's AE title")
    dicom_host: str = Field("127.0.0.1", description="address the SCP (and its metrics) listen on")
    dicom_port: int = Field(11112, ge=0, le=65535, description="0 picks a free port (printed at start)")
    dicom_allowed_aes: list[str] = Field(default_factory=list,
                                         description="calling AE titles accepted; empty: any")
    dicom_spool: Path = Field(Path("dicom-spool"), description="received instances; a data root of its jobs")
    dicom_quiet_seconds: float = Field(10.0, gt=0, description="a series with no new instance this long is "
                                                               "complete, its association ended or not")
    dicom_complete_on_release: bool = Field(True, description="a series is complete when its association ends")
    dicom_model: str = Field("", description="model name in the repository that segments (the listener needs one)")
    dicom_model_version: str = Field("", description="its version; empty: the latest")
    dicom_output: str = Field("seg", description="seg (or auto, the same for DICOM)")
    dicom_destination: str = Field("", description="AE@host:port that receives the SEGs; empty: file them under "
                                                   "output_root/dicom-seg/<StudyUID>/<SeriesUID>.dcm")
    dicom_metrics_port: int | None = Field(None, ge=0, le=65535, description="the listener's Prometheus port; "
                                                                             "none: no metrics")
    dicom_poll_seconds: float = Field(1.0, gt=0, description="how often the listener looks at its series and jobs")
    dicom_timeout_seconds: float = Field(30.0, gt=0, description="network, DIMSE and TLS handshake timeout of "
                                                                 "an incoming association and of a send")
    dicom_retry_max_seconds: float = Field(300.0, gt=0, description="longest wait between two send attempts")
    dicom_tls_cert: Path | None = Field(None, description="the listener's certificate (PEM); set with its key, "
                                                          "associations are TLS only")
    dicom_tls_key: Path | None = Field(None, description="its private key (PEM)")
    dicom_tls_client_ca: Path | None = Field(None, description="require client certificates signed by this CA")
    dicom_destination_tls_ca: Path | None = Field(
        None, description="send the SEGs over TLS, verifying the destination's certificate and host name "
                          "against this CA; none: plaintext")
    dicom_destination_tls_cert: Path | None = Field(
        None, description="a client certificate (PEM) for the destination, with its key (mutual TLS)")
    dicom_destination_tls_key: Path | None = Field(None, description="its private key (PEM)")
    dicom_max_associations: int = Field(10, ge=1, description="associations at once; more are rejected "
                                                              "(A-ASSOCIATE-RJ, local limit exceeded)")
    dicom_max_instance_bytes: int = Field(128 * MiB, ge=1024, description="largest instance received; a larger "
                                                                           "one aborts its association unwritten")
    dicom_max_inflight_bytes: int = Field(512 * MiB, ge=1024, description="instance bytes arriving over all "
                                                                           "associations at once; past it the "
                                                                           "association that arrives aborts")
    dicom_spool_max_bytes: int | None = Field(None, ge=0, description="the spool's quota; an instance past it is "
                                                                      "refused (0xA700); none: the disk's size")

    @field_validator("dicom_ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        if not AE_TITLE.fullmatch(v) or not v.strip():
            raise ValueError(f"AE title {shown(v)} is not 1-16 printable characters without a backslash")
        return v.strip()

    @field_validator("dicom_allowed_aes")
    @classmethod
    def _allowed(cls, v: list[str]) -> list[str]:
        return [cls._ae_title(a) for a in v]

    @field_validator("dicom_destination")
    @classmethod
    def _destination(cls, v: str) -> str:
        if v:
            parse_destination(v)
        return v

    @field_validator("dicom_output")
    @classmethod
    def _output(cls, v: str) -> str:
        if v not in ("seg", "auto"):
            raise ValueError(f"output {shown(v)}: the listener sends and files DICOM SEG (seg or auto)")
        return v

    @model_validator(mode="after")
    def _tls_pairs(self) -> DicomSection:
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise ValueError("dicom_tls_cert and dicom_tls_key (CAMSEG_DICOM_TLS_CERT, CAMSEG_DICOM_TLS_KEY) "
                             "go together")
        if self.dicom_tls_client_ca is not None and self.dicom_tls_cert is None:
            raise ValueError("dicom_tls_client_ca (CAMSEG_DICOM_TLS_CLIENT_CA) needs the listener's own "
                             "certificate and key (CAMSEG_DICOM_TLS_CERT, CAMSEG_DICOM_TLS_KEY)")
        if (self.dicom_destination_tls_cert is None) != (self.dicom_destination_tls_key is None):
            raise ValueError("dicom_destination_tls_cert and dicom_destination_tls_key "
                             "(CAMSEG_DICOM_DESTINATION_TLS_CERT, CAMSEG_DICOM_DESTINATION_TLS_KEY) go together")
        if self.dicom_destination_tls_cert is not None and self.dicom_destination_tls_ca is None:
            raise ValueError("a client certificate for the destination needs CAMSEG_DICOM_DESTINATION_TLS_CA "
                             "(the CA that signed the destination's certificate)")
        return self

    @property
    def destination(self) -> Destination | None:
        return parse_destination(self.dicom_destination) if self.dicom_destination else None


SECTIONS: dict[str, type[BaseModel]] = {
    "core": CoreSection, "serve": ServeSection, "jobs": JobsSection, "dicom": DicomSection}
"""The sections of :class:`Settings`, in the order the README lists them."""


# ---------------------------------------------------------------------- the root
def variable(field: str) -> str:
    """The environment variable of a field: ``model_repo`` -> ``CAMSEG_MODEL_REPO``."""
    return PREFIX + field.upper()


def unknown_variables(names: Iterable[str]) -> list[str]:
    """One message per ``CAMSEG_*`` name (any case) that names no field, with the closest
    variable where one is near (:func:`difflib.get_close_matches`); other names are not
    looked at. Empty when every one is known.

    >>> unknown_variables(["CAMSEG_PORTT", "CAMSEG_PORT", "HOME"])
    ['CAMSEG_PORTT names no setting (did you mean CAMSEG_PORT?)']
    """
    fields = list(Settings.model_fields)
    problems = []
    for name in sorted(names):
        if not name.upper().startswith(PREFIX) or (field := name[len(PREFIX):].lower()) in fields:
            continue
        close = difflib.get_close_matches(field, fields, n=1)
        hint = f"did you mean {variable(close[0])}?" if close else "see the settings table in README.md"
        problems.append(f"{name} names no setting ({hint})")
    return problems


def describe(exc: ValidationError) -> str:
    """A validation error as one line: ``field (CAMSEG_FIELD): why`` for each problem."""
    return "; ".join(f"{loc} ({variable(loc)}): {e['msg']}" if (loc := ".".join(map(str, e["loc"]))) else e["msg"]
                     for e in exc.errors())


class Settings(CoreSection, ServeSection, JobsSection, DicomSection, BaseSettings):
    """Every setting of every entry point; build once (:meth:`load`) and pass down.

    Building it reads the ``CAMSEG_*`` environment variables, then the keyword arguments
    (which win); a ``CAMSEG_*`` variable that names no field raises :class:`SettingsError`
    (not a pydantic ``ValidationError``) wherever the tree is built.
    """

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="forbid", env_parse_none_str="none")

    @model_validator(mode="before")
    @classmethod
    def _known_variables(cls, data: Any) -> Any:
        # the environment source reads only the fields' own variables, so a misspelt
        # one would be dropped without a word; read when built, never at import
        if problems := unknown_variables(os.environ):
            raise SettingsError("; ".join(problems))
        return data

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """The settings from the environment and ``overrides``; SettingsError (one line
        naming each variable) when one is unknown or a value is bad."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(describe(exc)) from None

    def updated(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (an entry point's flags) validated as the environment's
        values are; the environment is not read again. SettingsError when one is bad."""
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise SettingsError(describe(exc)) from None

    def threads_per_process(self) -> int:
        """Torch threads per worker process: ``torch_threads``, else the cores split
        between the worker's processes."""
        if self.torch_threads:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // self.processes())
