"""``camseg dicom-listen``: a DICOM C-STORE receiver that segments each series it is sent.

A storage SCP (pynetdicom) writes every instance it accepts to a spool on disk before it
answers success; a series is *complete* when the association that sent it ends (release or
abort), or when no instance of it has arrived for ``dicom_quiet_seconds``. A complete series
becomes a bulk ``segment-series`` job (:func:`jobs.submit.submit_series`, run by the
``camseg worker`` processes); when the job succeeds, its DICOM SEG goes by C-STORE to
``dicom_destination``, or is filed under ``output_root/dicom-seg/<StudyUID>/<SeriesUID>.dcm``.
Nothing here segments: this module only moves files and follows job folders.

The spool is the truth, so a restarted listener loses nothing it acknowledged::

    spool/.incoming/                         partial writes (never acknowledged; cleared at start)
    spool/<SeriesUID>/<generation>/state.json
    spool/<SeriesUID>/<generation>/instances/<SOPInstanceUID>.dcm

``state.json`` holds ``{"state", "job_id", "reason", ...}``; a generation moves through

    receiving --complete--> queued --job succeeded--> sending --C-STORE 0x0000--> sent
                                                  \\--no destination--------------> filed
    receiving/queued --bad series, unknown model, job failed or cancelled--> failed

Edge cases, and what is done:

* An instance for a series whose latest generation is no longer ``receiving`` starts a new
  generation holding the earlier instances (hard links) plus the new one, so its SEG covers
  the whole series; the earlier generation goes on to its own end (a filed SEG of the
  newer generation replaces the older one's file). A SOP Instance UID names one content: an
  instance byte-identical (same transfer syntax) to one the latest generation holds is a
  sender's retry, acknowledged and dropped; other bytes under that UID are refused (0x0111,
  duplicate SOP instance) and the first kept. After ``failed``, any instance (a deliberate
  resend) starts a new generation, its content replacing: a failed series is never retried otherwise.
* Instances without valid Study/Series/SOP Instance UIDs are refused (0xC000, "cannot
  understand"): UIDs name folders, so only digits and dots, at most 64 characters. A data
  set whose SOP class is not the request's answers 0xA900; one that is not an image
  (:func:`camseg.io.dicom.read.is_image`: a report, a PDF, a presentation state, a SEG)
  0x0122, so it never reaches a worker. A full disk or the spool's quota answers 0xA700
  ("out of resources"). The SCP itself never stops on a bad instance.
* Limits (SECURITY.md, "DICOM receiver"): associations at once (more are rejected), PDU
  length (a longer one closes the connection before it is read), instance size (counted as
  its PDUs arrive; past it the association is aborted and nothing written).
* A broker that cannot take the job leaves the generation ``queued`` (not submitted) and the
  submission is retried with backoff; a bad series or an unknown model fails it at once.
* A failed send stays ``sending`` and is retried with exponential backoff and jitter (up to
  ``dicom_retry_max_seconds`` apart), forever, each failure logged; a restart retries at once.
* At start, a generation still ``receiving`` is complete after a quiet period (its sender's
  association died with the old process); submissions interrupted between writing the job
  folder and enqueueing it are resumed, not duplicated (the job id is chosen first).
* Senders that use one association per instance should set
  ``dicom_complete_on_release=false`` and rely on the quiet period.
* With ``dicom_tls_cert`` the listener speaks TLS only (optionally requiring client
  certificates), and with ``dicom_destination_tls_ca`` its sends do (:mod:`services.dicom_tls`).
* Generations are kept after they end (the spool is the record); pruning is left to the
  deployment.
"""

from __future__ import annotations

import errno
import filecmp
import ipaddress
import json
import logging
import os
import random
import re
import shutil
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from camseg.bulk import batch
from camseg.core.errors import CamsegError, InvalidInputError, shown
from camseg.core.settings import Destination, Settings
from camseg.io.dicom.read import is_image
from camseg.models.modeldir import atomic_write_bytes
from camseg.models.repository import ModelStore
from services import dicom_tls

logger = logging.getLogger(__name__)

UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
STATE_FILE = "state.json"
INSTANCES = "instances"
INCOMING = ".incoming"
FILED = "dicom-seg"

RECEIVING, QUEUED, SENDING, SENT, FILED_STATE, FAILED = "receiving", "queued", "sending", "sent", "filed", "failed"
FINAL = frozenset({SENT, FILED_STATE, FAILED})

# C-STORE statuses (PS3.4 B.2.3; 0x0111 and 0x0122 are PS3.7 C.4's general failures)
SUCCESS = 0x0000
DUPLICATE = 0x0111  # the SOP Instance UID is held with other content
NOT_SUPPORTED = 0x0122  # SOP class not supported: not an image camseg segments
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900  # the data set's SOP class is not the request's
CANNOT_UNDERSTAND = 0xC000

MAX_PDU = 1 << 20  # the largest P-DATA PDU the listener accepts, advertised at association
MEASURE_EVERY = 10.0  # seconds: how often a full spool is measured again (files may have been pruned)


def valid_uid(value: object) -> str | None:
    """``value`` as a UID safe for a path part (digits and dots, at most 64), else None."""
    if value is None:
        return None
    text = str(value).strip("\0 ")
    return text if len(text) <= 64 and UID.fullmatch(text) else None


class ListenerMetrics:
    """The listener's Prometheus metrics (a registry of its own)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.instances = Counter("camseg_dicom_instances_received", "C-STORE instances, by result",
                                 ["result"], registry=r)
        self.associations = Counter("camseg_dicom_associations", "associations requested, by result",
                                    ["result"], registry=r)
        self.series = Counter("camseg_dicom_series", "series generations that were queued, succeeded or failed",
                              ["state"], registry=r)
        self.sends = Counter("camseg_dicom_sends", "C-STORE sends of a SEG to the destination, by result",
                             ["result"], registry=r)
        self.pending = Gauge("camseg_dicom_series_pending", "series generations not yet sent, filed or failed",
                             registry=r)
        self.sends_pending = Gauge("camseg_dicom_sends_pending", "segmented series generations whose SEG waits "
                                   "to be sent (sending: a send failed, or is due)", registry=r)
        for result in ("stored", "refused"):
            self.instances.labels(result)
        for result in ("accepted", "rejected", "tls_refused"):
            self.associations.labels(result)
        for state in ("queued", "succeeded", "failed"):
            self.series.labels(state)
        for result in ("success", "failure"):
            self.sends.labels(result)


@dataclass(frozen=True)
class State:
    """One generation's ``state.json``."""

    state: str
    job_id: str = ""
    reason: str = ""
    study_uid: str = ""
    submitted: bool = False  # the job's tasks were enqueued (the job id is written before)
    attempts: int = 0
    next_try: float = 0.0  # wall-clock time of the next submission or send attempt
    updated: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


Key = tuple[str, int]  # (SeriesInstanceUID, generation)


class Spool:
    """The on-disk layout (module docstring). Callers serialise :meth:`accept` and the
    receiving -> queued transition with one lock; every write is atomic.

    With ``max_bytes``, the spool's files (a hard-linked file once) may not pass that quota:
    :meth:`receive` raises ENOSPC instead. The count is kept as instances arrive, and taken
    again from the disk when the quota is reached (files pruned meanwhile count no more)."""

    def __init__(self, root: Path, max_bytes: int | None = None):
        self.root = Path(root).resolve()
        self.incoming = self.root / INCOMING
        self.root.mkdir(parents=True, exist_ok=True)
        if self.incoming.exists():  # partial writes of a previous process, never acknowledged
            shutil.rmtree(self.incoming)
        self.incoming.mkdir()
        self.max_bytes = max_bytes
        self._usage = threading.Lock()
        self._reserved = 0  # bytes being written, not yet accepted or dropped
        self._used = self.measure() if max_bytes is not None else 0
        self._measured = time.monotonic()

    def measure(self) -> int:
        """Bytes of the spool's files, each hard-linked file once, partial writes excepted."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d != INCOMING]
            for name in files:
                try:
                    st = os.lstat(os.path.join(folder, name))
                except FileNotFoundError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
        return total

    def _reserve(self, n: int) -> None:
        if self.max_bytes is None:
            return
        with self._usage:
            over = self._used + self._reserved + n > self.max_bytes
            if over and time.monotonic() - self._measured >= MEASURE_EVERY:
                self._used, self._measured = self.measure(), time.monotonic()
                over = self._used + self._reserved + n > self.max_bytes
            if over:
                raise OSError(errno.ENOSPC, f"spool quota of {self.max_bytes} bytes reached")
            self._reserved += n

    def _settle(self, n: int, kept: bool) -> None:
        if self.max_bytes is not None:
            with self._usage:
                self._reserved -= n
                self._used += n if kept else 0

    def generation_dir(self, key: Key) -> Path:
        return self.root / key[0] / str(key[1])

    def instances(self, key: Key) -> Path:
        return self.generation_dir(key) / INSTANCES

    def latest(self, series: str) -> int:
        d = self.root / series
        if not d.is_dir():
            return 0
        return max((int(g.name) for g in d.iterdir() if g.name.isdigit()), default=0)

    def read(self, key: Key) -> State | None:
        path = self.generation_dir(key) / STATE_FILE
        try:
            return State.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def write(self, key: Key, state: State) -> State:
        state = replace(state, updated=time.time())
        atomic_write_bytes(self.generation_dir(key) / STATE_FILE, (json.dumps(asdict(state)) + "\n").encode())
        return state

    def receive(self, data: bytes) -> Path:
        """``data`` written and synced to a temporary file of the spool's file system."""
        self._reserve(len(data))
        tmp = self.incoming / f"{uuid.uuid4().hex}.dcm"
        try:
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            self._settle(len(data), kept=False)
            raise
        return tmp

    def accept(self, tmp: Path, series: str, sop: str, study: str) -> tuple[Key, str]:
        """Move a received instance into its series' generation; returns the key and
        ``stored``, ``new`` (a new generation), ``duplicate`` (dropped: the same bytes are
        held) or ``conflict`` (dropped: other bytes are held under its SOP Instance UID);
        after a failed generation, a resend starts a new one, its content replacing."""
        size = tmp.stat().st_size
        how = "dropped"
        try:
            key, how = self._accept(tmp, series, sop, study)
        finally:
            self._settle(size, kept=how in ("stored", "new"))
        return key, how

    def _accept(self, tmp: Path, series: str, sop: str, study: str) -> tuple[Key, str]:
        g = self.latest(series)
        state = self.read((series, g)) if g else None
        held = self.instances((series, g)) / f"{sop}.dcm"
        if g and (state is None or state.state != FAILED) and held.is_file():
            same = filecmp.cmp(tmp, held, shallow=False)
            tmp.unlink()
            return (series, g), "duplicate" if same else "conflict"
        if g and (state is None or state.state == RECEIVING):
            os.replace(tmp, held)
            _sync_dir(held.parent)
            return (series, g), "stored"
        key = (series, g + 1)
        build = self.incoming / f"gen-{uuid.uuid4().hex}"
        (build / INSTANCES).mkdir(parents=True)
        if g:
            for f in self.instances((series, g)).glob("*.dcm"):
                os.link(f, build / INSTANCES / f.name)
        atomic_write_bytes(build / STATE_FILE,
                           (json.dumps(asdict(State(RECEIVING, study_uid=study))) + "\n").encode())
        (self.root / series).mkdir(exist_ok=True)
        os.rename(build, self.generation_dir(key))  # the generation appears whole, or not at all
        os.replace(tmp, self.instances(key) / f"{sop}.dcm")
        _sync_dir(self.instances(key))
        _sync_dir(self.root / series)
        return key, "new"

    def scan(self) -> Iterator[tuple[Key, State]]:
        """Every generation and its state (a generation without one is still receiving)."""
        for s in sorted(self.root.iterdir()):
            if not (s.is_dir() and valid_uid(s.name) == s.name):
                continue
            for g in sorted((d for d in s.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)):
                key = (s.name, int(g.name))
                yield key, self.read(key) or State(RECEIVING)


def _sync_dir(path: Path) -> None:
    """A rename into ``path`` made durable before the instance is acknowledged."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SendError(Exception):
    """A SEG could not be delivered (the reason is the message)."""


def c_store(files: list[Path], dest: Destination, *, ae_title: str, timeout: float,
            tls: ssl.SSLContext | None = None) -> None:
    """Send ``files`` to ``dest`` in one association (over TLS with ``tls``, the destination's
    host name verified); SendError unless each is stored (status 0x0000, or a 0xBxxx warning
    that the peer stored it anyway)."""
    datasets = [dcmread(f) for f in files]
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    for ds in datasets:
        syntaxes = list(dict.fromkeys([ds.file_meta.TransferSyntaxUID, ExplicitVRLittleEndian,
                                       ImplicitVRLittleEndian]))
        ae.add_requested_context(ds.SOPClassUID, syntaxes)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                         tls_args=(tls, dest.host) if tls is not None else None)
    if not assoc.is_established:
        how = "unreachable, TLS refused, or aborted" if tls else "unreachable, or aborted"
        what = "rejected" if assoc.is_rejected else f"not established ({how})"
        raise SendError(f"association with {dest} {what}")
    try:
        for f, ds in zip(files, datasets, strict=True):
            status: Dataset = assoc.send_c_store(ds)
            code = status.get("Status")
            if code is None:
                raise SendError(f"{f.name}: no C-STORE response from {dest} (timeout or abort)")
            if code != SUCCESS and code & 0xF000 != 0xB000:
                raise SendError(f"{f.name}: {dest} answered C-STORE status 0x{code:04X}")
            if code != SUCCESS:
                logger.warning("%s stored %s with warning status 0x%04X", dest, f.name, code)
    finally:
        if assoc.is_established:
            assoc.release()


class DicomListener:
    """The SCP, its spool and the thread that turns complete series into jobs and SEGs.

    ``start()`` returns the bound port; ``stop()`` shuts the SCP down (open associations
    are aborted: their unacknowledged instances were never accepted) and joins the thread.
    """

    def __init__(self, settings: Settings, *, metrics: ListenerMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic):
        from jobs.app import make_app

        if not settings.dicom_model:
            raise InvalidInputError("the DICOM listener needs a model: --model or CAMSEG_DICOM_MODEL")
        # an unknown model fails here, before anything is created
        ModelStore(settings.model_repo).resolve(settings.dicom_model, settings.dicom_model_version)
        self.settings = settings
        self.metrics = metrics or ListenerMetrics()
        self.destination = settings.destination
        # bad certificate files fail here, before anything is created
        self.server_tls = dicom_tls.server_context(settings)
        self.send_tls = dicom_tls.client_context(settings)
        if self.send_tls is not None and settings.destination is None:
            logger.warning("CAMSEG_DICOM_DESTINATION_TLS_CA is set but no destination: SEGs are filed, not sent")
        # its submissions read the spool, so the spool is one more data root of their jobs
        self.job_settings = settings.model_copy(
            update={"data_roots": [*settings.data_roots, settings.dicom_spool.resolve()]})
        self.app = make_app(self.job_settings)
        self.spool = Spool(settings.dicom_spool, settings.dicom_spool_max_bytes)
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[Key, State] = {}  # generations not yet final
        self._last: dict[Key, float] = {}  # when each receiving generation last got an instance
        self._active: dict[Key, set[int]] = {}  # associations sending into it
        self._ended: set[Key] = set()  # its associations ended: complete
        self._touched: dict[int, set[Key]] = {}  # association -> generations
        self._incoming: dict[int, int] = {}  # association -> bytes of the data set arriving
        self._incoming_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ae: AE | None = None
        self._metrics_server: Any = None
        self.port = 0
        self.metrics_port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> int:
        s = self.settings
        self._resume()
        ae = AE(ae_title=s.dicom_ae_title)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        ae.require_calling_aet = list(s.dicom_allowed_aes)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = s.dicom_timeout_seconds
        ae.maximum_pdu_size = MAX_PDU
        ae.maximum_associations = s.dicom_max_associations
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_RELEASED, self._on_end),
                    (evt.EVT_ABORTED, self._on_end), (evt.EVT_CONN_CLOSE, self._on_end),
                    (evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_PDU_RECV, self._on_pdu)]
        if self.server_tls is not None:
            handlers.append((evt.EVT_CONN_OPEN, self._on_connect))
        elif not _loopback(s.dicom_host):
            logger.warning("DICOM over plaintext on %s, which is not a loopback address: anyone on the network can "
                           "read the images; set CAMSEG_DICOM_TLS_CERT and CAMSEG_DICOM_TLS_KEY outside a "
                           "trusted network", s.dicom_host)
        if s.dicom_metrics_port is not None:
            self._metrics_server, _ = start_http_server(s.dicom_metrics_port, addr=s.dicom_host,
                                                        registry=self.metrics.registry)
            self.metrics_port = int(self._metrics_server.server_port)
        try:
            server = ae.start_server((s.dicom_host, s.dicom_port), block=False, evt_handlers=handlers,
                                     ssl_context=self.server_tls)
        except BaseException:
            self.stop()
            raise
        assert server is not None  # block=False returns the server
        self._ae = ae
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=self._run, name="dicom-listener-poll", daemon=True)
        self._thread.start()
        logger.info("listening as %s on %s:%d (%s); %d series generations pending", s.dicom_ae_title, s.dicom_host,
                    self.port, _tls_mode(s), len(self._open))
        return self.port

    def stop(self) -> None:
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.settings.dicom_timeout_seconds + 10)
            self._thread = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None

    def _resume(self) -> None:
        """Every generation not final, from the spool: receiving ones wait a quiet period
        from now (their senders may resend); pending sends are tried at once."""
        now = self._clock()
        counts: dict[str, int] = {}
        for key, st in self.spool.scan():
            counts[st.state] = counts.get(st.state, 0) + 1
            if st.state in FINAL:
                continue
            self._open[key] = replace(st, next_try=0.0)
            if st.state == RECEIVING:
                self._last[key] = now
        self._gauges()
        if counts:
            logger.info("spool %s: %s", self.spool.root, ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))

    # ------------------------------------------------------------------ SCP handlers
    def _on_connect(self, event: evt.Event) -> None:
        dicom_tls.handshake(event, self.settings.dicom_timeout_seconds,
                            self.metrics.associations.labels("tls_refused").inc)

    def _on_accepted(self, event: evt.Event) -> None:
        self.metrics.associations.labels("accepted").inc()

    def _on_rejected(self, event: evt.Event) -> None:
        req = event.assoc.requestor
        allowed = self.settings.dicom_allowed_aes
        busy = sum(a.is_acceptor for a in event.assoc.ae.active_associations) > self.settings.dicom_max_associations
        reason = ("calling AE not allowed" if allowed and req.ae_title not in allowed
                  else f"more than {self.settings.dicom_max_associations} associations" if busy
                  else "refused by the SCP")
        logger.warning("association from %s at %s rejected: %s", shown(req.ae_title), req.address, reason)
        self.metrics.associations.labels("rejected").inc()

    def _on_open(self, event: evt.Event) -> None:
        """Bound every PDU read to what the listener advertised: pynetdicom reads whatever
        length a peer claims into memory, so a longer one closes the connection unread."""
        sock = event.assoc.dul.socket
        if sock is None:
            return
        recv = sock.recv
        limit = MAX_PDU + 65536  # room for an A-ASSOCIATE-RQ's many presentation contexts

        def bounded(n: int) -> bytearray:
            if n > limit:
                logger.warning("connection from %s closed: a PDU of %d bytes (at most %d)",
                               event.assoc.requestor.address, n, limit)
                raise OSError(errno.EMSGSIZE, f"a PDU of {n} bytes")
            return recv(n)

        setattr(sock, "recv", bounded)  # noqa: B010 (an instance attribute over the method)

    def _on_pdu(self, event: evt.Event) -> None:
        """Count the data set bytes of the C-STORE arriving; past the instance limit, or past
        the listener's limit on bytes arriving over all associations at once, abort the
        association before the rest arrives (nothing of it was written)."""
        if not isinstance(event.pdu, P_DATA_TF):
            return
        s = self.settings
        aid = id(event.assoc)
        with self._incoming_lock:
            n = self._incoming.get(aid, 0)
            for item in event.pdu.presentation_data_value_items:
                value = item.presentation_data_value or b"\x01"
                n = 0 if value[0] & 1 else n + len(value) - 1  # a command fragment starts a message
            self._incoming[aid] = n
            total = sum(self._incoming.values())
        if event.assoc.is_aborted:
            return
        if n > s.dicom_max_instance_bytes:
            self._refuse(OUT_OF_RESOURCES, "association from %s aborted: an instance past %d bytes",
                         event.assoc.requestor.address, s.dicom_max_instance_bytes)
            event.assoc.abort(block=False)
        elif total > s.dicom_max_inflight_bytes:
            self._refuse(OUT_OF_RESOURCES, "association from %s aborted: instances arriving at once past %d bytes",
                         event.assoc.requestor.address, s.dicom_max_inflight_bytes)
            event.assoc.abort(block=False)

    def _on_end(self, event: evt.Event) -> None:
        with self._incoming_lock:
            self._incoming.pop(id(event.assoc), None)
        with self._lock:
            for key in self._touched.pop(id(event.assoc), set()):
                active = self._active.get(key, set())
                active.discard(id(event.assoc))
                if not active:
                    self._active.pop(key, None)
                    if self.settings.dicom_complete_on_release:
                        self._ended.add(key)

    def _refuse(self, status: int, why: str, *args: object) -> int:
        logger.warning("C-STORE refused (0x%04X): " + why, status, *args)
        self.metrics.instances.labels("refused").inc()
        return status

    def _on_store(self, event: evt.Event) -> int:
        try:
            return self._store(event)
        except Exception:  # the SCP must answer, whatever one instance holds
            logger.exception("C-STORE failed")
            return self._refuse(CANNOT_UNDERSTAND, "unexpected error")
        finally:  # its bytes are no longer arriving
            with self._incoming_lock:
                if id(event.assoc) in self._incoming:
                    self._incoming[id(event.assoc)] = 0

    def _store(self, event: evt.Event) -> int:
        if event.assoc.is_aborted:  # by _on_pdu, which counted the refusal
            return OUT_OF_RESOURCES
        try:
            ds = event.dataset
            uids = [valid_uid(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        except Exception as exc:  # deferred decoding raises whatever the bytes provoke
            return self._refuse(CANNOT_UNDERSTAND, "undecodable data set (%s)", shown(exc))
        study, series, sop = uids
        if study is None or series is None or sop is None:
            missing = [k for k, u in zip(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"), uids,
                                         strict=True) if u is None]
            return self._refuse(CANNOT_UNDERSTAND, "no valid %s", "/".join(missing))
        request = cast(C_STORE, event.request)
        if valid_uid(request.AffectedSOPInstanceUID) != sop:
            return self._refuse(CANNOT_UNDERSTAND, "SOPInstanceUID %s is not the request's affected instance", sop)
        if ds.get("SOPClassUID") != request.AffectedSOPClassUID:
            return self._refuse(DOES_NOT_MATCH, "instance %s: its SOP class is not the request's", sop)
        if not is_image(ds):
            return self._refuse(NOT_SUPPORTED, "instance %s: %s is not an image camseg segments", sop,
                                shown(ds.get("SOPClassUID")))
        data = event.encoded_dataset()
        if len(data) > self.settings.dicom_max_instance_bytes:  # when sent in one PDU
            return self._refuse(OUT_OF_RESOURCES, "instance %s: %d bytes", sop, len(data))
        with self._incoming_lock:
            others = sum(n for a, n in self._incoming.items() if a != id(event.assoc))
        if others + len(data) > self.settings.dicom_max_inflight_bytes:  # when sent in one PDU
            return self._refuse(OUT_OF_RESOURCES, "instance %s: instances arriving at once past %d bytes", sop,
                                self.settings.dicom_max_inflight_bytes)
        try:
            tmp = self.spool.receive(data)
        except OSError as exc:
            return self._refuse(OUT_OF_RESOURCES, "cannot write the spool (%s)", exc.strerror or exc)
        aid = id(event.assoc)
        with self._lock:
            try:
                key, how = self.spool.accept(tmp, series, sop, study)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                return self._refuse(OUT_OF_RESOURCES, "cannot write the spool (%s)", exc.strerror or exc)
            if how == "conflict":
                return self._refuse(DUPLICATE, "instance %s: series %s holds other content under its UID", sop,
                                    series)
            if how != "duplicate":
                if how == "new":
                    self._open[key] = State(RECEIVING, study_uid=study)
                    self.metrics.pending.set(len(self._open))
                    logger.info("series %s: generation %d receiving", series, key[1])
                self._last[key] = self._clock()
                self._active.setdefault(key, set()).add(aid)
                self._touched.setdefault(aid, set()).add(key)
                self._ended.discard(key)
        logger.debug("series %s: instance %s %s", series, sop, how)
        self.metrics.instances.labels("stored").inc()
        return SUCCESS

    # ------------------------------------------------------------------ the poll thread
    def _run(self) -> None:
        while not self._stop.wait(self.settings.dicom_poll_seconds):
            try:
                self.poll()
            except Exception:  # one bad pass must not end the thread; the next one retries
                logger.exception("poll failed")

    def poll(self) -> None:
        """One pass: complete series become jobs, jobs are followed, SEGs delivered."""
        self._complete()
        with self._lock:
            work = [(k, st) for k, st in self._open.items() if st.state != RECEIVING]
        wall = time.time()
        for key, st in work:
            if self._stop.is_set():
                return
            if st.next_try > wall:
                continue
            try:
                if st.state == QUEUED and not st.submitted:
                    self._submit(key, st)
                elif st.state == QUEUED:
                    self._follow(key, st)
                elif st.state == SENDING:
                    self._deliver(key, st)
            except CamsegError as exc:
                self._set(key, replace(st, state=FAILED, reason=exc.message))
                self.metrics.series.labels("failed").inc()
                logger.warning("series %s generation %d failed: %s", key[0], key[1], exc.message)
            except Exception:  # e.g. a job folder being written: this generation is looked at again next pass
                logger.exception("series %s generation %d: poll failed", key[0], key[1])
        with self._lock:
            self._gauges()

    def _gauges(self) -> None:
        """The pending gauges from the open generations (under the lock once serving)."""
        self.metrics.pending.set(len(self._open))
        self.metrics.sends_pending.set(sum(st.state == SENDING for st in self._open.values()))

    def _set(self, key: Key, st: State) -> State:
        st = self.spool.write(key, st)
        with self._lock:
            if st.state in FINAL:
                self._open.pop(key, None)
            else:
                self._open[key] = st
        return st

    def _complete(self) -> None:
        now = self._clock()
        with self._lock:  # no instance can join a generation while it leaves `receiving`
            for key, st in list(self._open.items()):
                if st.state != RECEIVING:
                    continue
                ended = key in self._ended and not self._active.get(key)
                if ended or now - self._last.get(key, now) >= self.settings.dicom_quiet_seconds:
                    n = len(list(self.spool.instances(key).glob("*.dcm")))
                    self._open[key] = self.spool.write(key, replace(st, state=QUEUED, job_id=batch.new_job_id()))
                    self._ended.discard(key)
                    self._last.pop(key, None)
                    logger.info("series %s generation %d complete: %d instances", key[0], key[1], n)

    def _backoff(self, attempts: int) -> float:
        return time.time() + min(self.settings.dicom_retry_max_seconds, 2.0 ** attempts) * random.uniform(0.75, 1.25)

    def _submit(self, key: Key, st: State) -> None:
        from jobs.submit import resume, submit_series

        s = self.settings
        job = self.job_settings.output_root / st.job_id
        try:
            if (job / batch.MANIFEST).is_file():  # written by a submission that could not enqueue
                resume(self.app, self.job_settings, st.job_id)
            else:
                submit_series(self.app, self.job_settings, model=s.dicom_model, version=s.dicom_model_version,
                              data=self.spool.instances(key), output=s.dicom_output, job_id=st.job_id)
        except CamsegError:
            raise
        except Exception as exc:  # the broker or the disk: transient, tried again
            logger.warning("series %s generation %d: job %s not enqueued yet (%s)", key[0], key[1], st.job_id,
                           shown(exc, 200))
            self._set(key, replace(st, attempts=st.attempts + 1, next_try=self._backoff(st.attempts + 1),
                                   reason=str(exc)[:500]))
            return
        self._set(key, replace(st, submitted=True, attempts=0, next_try=0.0, reason=""))
        self.metrics.series.labels("queued").inc()
        logger.info("series %s generation %d: job %s queued", key[0], key[1], st.job_id)

    def _follow(self, key: Key, st: State) -> None:
        js = batch.status(self.job_settings.output_root / st.job_id)
        if js.state in (batch.JobState.FAILED, batch.JobState.CANCELLED):
            raise _JobEnded(f"job {st.job_id} {js.state.value}" + (f": {js.reason}" if js.reason else ""))
        if js.state is not batch.JobState.SUCCEEDED:
            return
        self._outputs(st)  # a job that made no SEG fails here
        self.metrics.series.labels("succeeded").inc()
        st = self._set(key, replace(st, state=SENDING, attempts=0, next_try=0.0))
        logger.info("series %s generation %d: job %s succeeded", key[0], key[1], st.job_id)
        self._deliver(key, st)

    def _outputs(self, st: State) -> list[Path]:
        job = self.job_settings.output_root / st.job_id
        summary = json.loads((job / batch.SUMMARY).read_text())
        outputs = [batch.check_under([job], job / rel, "job output") for rel in summary.get("outputs", {}).values()]
        if not outputs:
            why = "; ".join(f"{f['id']}: {f['error']}" for f in summary.get("failures", [])[:3]) or "no output"
            raise _JobEnded(f"job {st.job_id} made no SEG: {why}")
        return outputs

    def _deliver(self, key: Key, st: State) -> None:
        files = self._outputs(st)
        if self.destination is None:
            self._file(key, st, files)
            return
        try:
            c_store(files, self.destination, ae_title=self.settings.dicom_ae_title,
                    timeout=self.settings.dicom_timeout_seconds, tls=self.send_tls)
        except (SendError, OSError, ValueError) as exc:
            self.metrics.sends.labels("failure").inc()
            st = self._set(key, replace(st, attempts=st.attempts + 1, next_try=self._backoff(st.attempts + 1),
                                        reason=str(exc)[:500]))
            logger.warning("series %s generation %d: send to %s failed (attempt %d, next in %.0f s): %s", key[0],
                           key[1], self.destination, st.attempts, st.next_try - time.time(), exc)
            return
        self.metrics.sends.labels("success").inc()
        self._set(key, replace(st, state=SENT, reason=""))
        logger.info("series %s generation %d: %d SEG sent to %s", key[0], key[1], len(files), self.destination)

    def _file(self, key: Key, st: State, files: list[Path]) -> None:
        study = valid_uid(st.study_uid) or "unknown-study"
        folder = self.job_settings.output_root / FILED / study
        for i, f in enumerate(files):
            atomic_write_bytes(folder / f"{key[0]}{'' if i == 0 else f'-{i + 1}'}.dcm", f.read_bytes())
        self._set(key, replace(st, state=FILED_STATE, reason=""))
        logger.info("series %s generation %d: %d SEG filed under %s", key[0], key[1], len(files), folder)


def _tls_mode(s: Settings) -> str:
    if s.dicom_tls_cert is None:
        return "plaintext"
    return "TLS, client certificates required" if s.dicom_tls_client_ca is not None else "TLS"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _JobEnded(CamsegError):
    """The job of a generation ended without a SEG: the generation fails with this."""


def serve(settings: Settings, stop: threading.Event) -> None:
    """Run the listener until ``stop`` is set (the entry point sets it on SIGTERM/SIGINT)."""
    listener = DicomListener(settings)
    port = listener.start()
    try:
        print(f"camseg dicom-listen: {settings.dicom_ae_title} on {settings.dicom_host}:{port} "
              f"(metrics on {listener.metrics_port})", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        listener.stop()
    logger.info("stopped")
