"""``camseg serve``: the grpc.aio server with health, reflection, metrics and draining.

Health (``grpc.health.v1``) reports NOT_SERVING until every model version found at
start is loaded and warmed up, SERVING while it serves, and NOT_SERVING again as soon
as SIGTERM (or SIGINT) starts the drain; in-flight calls then get ``grace_seconds``
to finish before the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from camseg.core.settings import Settings
from services import oip
from services.gen.camseg.v1 import camseg_pb2, camseg_pb2_grpc
from services.interceptors import ErrorsAndMetrics
from services.metrics import ServiceMetrics
from services.repository import ModelRepository, ServedModel
from services.servicer import SegmentationServicer

logger = logging.getLogger(__name__)

SERVICE_NAME = camseg_pb2.DESCRIPTOR.services_by_name["Segmentation"].full_name
JOBS_SERVICE_NAME = camseg_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name


def server_credentials(s: Settings) -> grpc.ServerCredentials | None:
    """TLS (mutual when a client CA is set), or None for plaintext."""
    if s.plaintext:
        return None
    if not (s.tls_cert and s.tls_key):
        raise ValueError("TLS needs CAMSEG_TLS_CERT and CAMSEG_TLS_KEY (or --plaintext for loopback development)")
    ca = s.tls_client_ca.read_bytes() if s.tls_client_ca else None
    return grpc.ssl_server_credentials([(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
                                       root_certificates=ca, require_client_auth=ca is not None)


class DrainingHealth(health.aio.HealthServicer):
    """grpcio-health-checking's servicer whose Watch streams end (OK) once the server
    stops: an open Watch is a call in flight, and would otherwise hold every graceful
    stop for its whole grace period and then be cancelled with the calls still running."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        if self.closing.is_set():
            return
        watch = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({watch, closing}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done():
                watch.result()  # its error, if any, is the call's
        finally:
            for t in (watch, closing):
                t.cancel()
            await asyncio.gather(watch, closing, return_exceptions=True)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: DrainingHealth
    servicer: SegmentationServicer
    repo: ModelRepository
    metrics: ServiceMetrics
    metrics_port: int | None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _metrics_server: Any = None
    jobs: Any = None
    oip: oip.InferenceServicer | None = None

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)
        if self.jobs is not None:
            await self.health.set(JOBS_SERVICE_NAME, status)
        if self.oip is not None:
            await self.health.set(oip.SERVICE_NAME, status)
            self.oip.ready = serving
        self.metrics.serving.set(1 if serving else 0)

    async def drain_and_stop(self, grace: float, delay: float = 0.0) -> None:
        """NOT_SERVING at once; ``delay`` seconds for load balancers to see it while calls
        are still taken; then a graceful stop that lets in-flight calls finish within
        ``grace``."""
        await self.set_serving(False)
        for t in self.tasks:
            t.cancel()
        if delay > 0:
            await asyncio.sleep(delay)
        stopping = asyncio.ensure_future(self.server.stop(grace))
        await asyncio.sleep(0)  # new calls are refused from here: a watcher cannot come back
        self.health.closing.set()
        await stopping
        await self.servicer.close()
        if self.jobs is not None:
            await self.jobs.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()


async def start(settings: Settings) -> RunningServer:
    """Start serving (health NOT_SERVING), load the repository, then report SERVING."""
    metrics = ServiceMetrics()
    loop = asyncio.get_running_loop()
    servicers: list[SegmentationServicer] = []

    def loaded(s: ServedModel) -> None:
        metrics.model_info.labels(s.name, s.version).set(1)

    def unloaded(s: ServedModel) -> None:  # called from the scanning thread
        if s.version not in repo.snapshot.get(s.name, {}):  # gone, not replaced
            with contextlib.suppress(KeyError):
                metrics.model_info.remove(s.name, s.version)
        for sv in servicers:
            asyncio.run_coroutine_threadsafe(sv.unload(s), loop)

    repo = ModelRepository(settings.model_repo, providers=settings.ort_providers,
                           ort_threads=settings.torch_threads, ort_spinning=settings.ort_spinning,
                           max_model_bytes=settings.max_model_bytes, on_load=loaded, on_unload=unloaded,
                           on_failure=lambda n, v, r: metrics.load_failures.labels(n).inc())
    options = [("grpc.max_receive_message_length", settings.max_receive_bytes),
               ("grpc.max_send_message_length", settings.max_send_bytes),
               ("grpc.so_reuseport", 0)]
    # calls past the cap are answered RESOURCE_EXHAUSTED at once: load is shed, not queued
    servicer = SegmentationServicer(repo, settings, metrics)
    server = grpc.aio.server(interceptors=[ErrorsAndMetrics(metrics, servicer.plane.arrivals)], options=options,
                             maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
    servicers.append(servicer)
    camseg_pb2_grpc.add_SegmentationServicer_to_server(servicer, server)
    # the Open Inference Protocol (KServe v2) beside camseg.v1, over the same data plane
    inference = oip.InferenceServicer(repo, settings, servicer.plane)
    oip.add_to_server(inference, server)
    services = [SERVICE_NAME, oip.SERVICE_NAME]
    jobs_servicer = _jobs_servicer(settings)
    if jobs_servicer is not None:
        camseg_pb2_grpc.add_JobsServicer_to_server(jobs_servicer, server)
        services.append(JOBS_SERVICE_NAME)
    health_servicer = DrainingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    creds = server_credentials(settings)
    if creds is None and not _loopback(settings.host):
        logger.warning("serving plaintext on %s, which is not a loopback address: anyone on the network can read "
                       "the images; use TLS (--tls-cert, --tls-key) outside development", settings.host)
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    metrics_server, metrics_port = None, None
    if settings.metrics_port is not None:
        metrics_server, _thread = start_http_server(settings.metrics_port, addr=settings.host,
                                                    registry=metrics.registry)
        metrics_port = metrics_server.server_port
    running = RunningServer(server, port, health_servicer, servicer, repo, metrics, metrics_port,
                            _metrics_server=metrics_server, jobs=jobs_servicer, oip=inference)
    await running.set_serving(False)
    await server.start()
    logger.info("listening on %s:%d (%s); metrics on %s", settings.host, port, "TLS" if creds else "plaintext",
                metrics_port)
    await loop.run_in_executor(None, repo.refresh)
    if repo.snapshot:
        await running.set_serving(True)
    running.tasks.append(loop.create_task(_poll(running, settings.poll_seconds)))
    return running


def _jobs_servicer(settings: Settings) -> Any:
    """The Jobs service where it is on and the jobs extra is installed, else None."""
    if not settings.jobs:
        return None
    try:
        from services.jobs_servicer import JobsServicer
    except ImportError as exc:
        logger.info("camseg.v1.Jobs not served: %s", exc)
        return None
    return JobsServicer(settings)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _poll(running: RunningServer, every: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        try:
            await loop.run_in_executor(None, running.repo.refresh)
        except Exception:
            logger.exception("repository scan failed")
        await running.set_serving(bool(running.repo.snapshot))


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    running = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    print(f"camseg serving on {settings.host}:{running.port} (metrics on {running.metrics_port})", flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    logger.info("NOT_SERVING for %.1f s, then draining for up to %.1f s", settings.drain_delay_seconds,
                settings.grace_seconds)
    await running.drain_and_stop(settings.grace_seconds, settings.drain_delay_seconds)
