"""services.metrics names, and services.interceptors through real grpc.aio servers: the
service itself (services.server.start) and a probe service with handlers that fail in
each way the interceptor maps."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.core.settings import Settings
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from services.interceptors import ErrorsAndMetrics
from services.metrics import ServiceMetrics
from services.server import start


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the registry's exposition text, keyed by name and labels."""
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return samples(registry).get((metric, frozenset(labels.items())))


# ------------------------------------------------------------------ metric names
def test_metric_names_follow_prometheus_conventions() -> None:
    m = ServiceMetrics()
    # labelled series appear once used
    m.requests.labels("Classify", "OK").inc()
    m.latency.labels("Classify").observe(0.01)
    m.in_flight.labels("Classify").inc()
    m.images.labels("Classify").inc(3)
    m.batch_size.observe(3)
    m.queue_time.observe(0.002)
    m.model_info.labels("tiny", "1").set(1)
    m.load_failures.labels("tiny").inc()
    text = generate_latest(m.registry).decode()
    # each counter and histogram also exposes a "<name>_created" gauge of its start time
    created = [f for f in text_string_to_metric_families(text) if f.name.endswith("_created")]
    families = [f for f in text_string_to_metric_families(text) if not f.name.endswith("_created")]
    assert created and all(f.type == "gauge" for f in created)
    assert {f.name for f in families} == {
        "camseg_grpc_requests", "camseg_grpc_request_duration_seconds", "camseg_grpc_in_flight_requests",
        "camseg_images", "camseg_batch_size_images", "camseg_batch_queue_seconds", "camseg_model_info",
        "camseg_model_load_failures", "camseg_serving", "camseg_batch_inline_runs"}
    for fam in families:
        assert fam.name.startswith("camseg_")
        for s in fam.samples:
            assert s.name.startswith("camseg_")
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
    counters = sorted(f.name for f in families if f.type == "counter")
    assert counters == ["camseg_batch_inline_runs", "camseg_grpc_requests", "camseg_images",
                        "camseg_model_load_failures"]
    assert "camseg_grpc_requests_total{code=\"OK\",rpc=\"Classify\"} 1.0" in text
    assert "camseg_images_total{rpc=\"Classify\"} 3.0" in text
    assert "camseg_model_load_failures_total{name=\"tiny\"} 1.0" in text
    # durations are histograms in seconds; the batch size histogram counts images, not time
    hist = {f.name for f in families if f.type == "histogram"}
    assert hist == {"camseg_grpc_request_duration_seconds", "camseg_batch_queue_seconds", "camseg_batch_size_images"}
    assert 'camseg_grpc_request_duration_seconds_bucket{le="0.01",rpc="Classify"} 1.0' in text
    assert 'camseg_batch_size_images_bucket{le="2.0"} 0.0' in text
    assert 'camseg_batch_size_images_bucket{le="4.0"} 1.0' in text
    assert 'camseg_model_info{name="tiny",version="1"} 1.0' in text
    assert 'camseg_grpc_in_flight_requests{rpc="Classify"} 1.0' in text


def test_each_server_has_a_registry_of_its_own() -> None:
    a, b = ServiceMetrics(), ServiceMetrics()  # the same names twice: no "duplicated timeseries"
    a.requests.labels("ListModels", "OK").inc(2)
    assert value(a.registry, "camseg_grpc_requests_total", rpc="ListModels", code="OK") == 2
    assert value(b.registry, "camseg_grpc_requests_total", rpc="ListModels", code="OK") is None
    shared = CollectorRegistry()
    ServiceMetrics(shared)
    with pytest.raises(ValueError, match="Duplicated"):
        ServiceMetrics(shared)


# ------------------------------------------------------------------ the real service
def test_the_service_counts_calls_by_rpc_and_status(repo: Path, tumor_roi: tuple[bytes, bytes]) -> None:
    image, _ = tumor_roi

    async def main() -> tuple[CollectorRegistry, dict[str, Any]]:
        settings = Settings(model_repo=repo, port=0, metrics_port=None, plaintext=True, poll_seconds=60)
        running = await start(settings)
        seen: dict[str, Any] = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = pb_grpc.SegmentationStub(ch)
                reply = await stub.Classify(pb.ClassifyRequest(images=[pb.Image(encoded=image, id="a")] * 2),
                                            timeout=30)
                seen["labels"] = [r.id for r in reply.results]
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="nope")), timeout=30)
                seen["missing"] = (missing.value.code(), missing.value.details())
                with pytest.raises(grpc.aio.AioRpcError) as empty:
                    await stub.Classify(pb.ClassifyRequest(), timeout=30)
                seen["empty"] = (empty.value.code(), empty.value.details())
                replies = [r async for r in stub.ClassifyStream(
                    iter([pb.ClassifyRequest(images=[pb.Image(encoded=image)])] * 3), timeout=30)]
                seen["stream"] = len(replies)
                health = health_pb2_grpc.HealthStub(ch)
                seen["health"] = (await health.Check(health_pb2.HealthCheckRequest(), timeout=10)).status
        finally:
            await running.drain_and_stop(0)
        return running.metrics.registry, seen

    registry, seen = asyncio.run(main())
    assert seen["labels"] == ["a", "a"]
    assert seen["missing"][0] == grpc.StatusCode.NOT_FOUND
    assert "unknown model 'nope'" in seen["missing"][1]
    assert seen["empty"] == (grpc.StatusCode.INVALID_ARGUMENT, "the request holds no images")
    assert seen["stream"] == 3
    assert seen["health"] == health_pb2.HealthCheckResponse.SERVING

    got = {labels: v for (name, labels), v in samples(registry).items() if name == "camseg_grpc_requests_total"}
    assert got == {
        frozenset({("rpc", "Classify"), ("code", "OK")}): 1.0,
        frozenset({("rpc", "Classify"), ("code", "INVALID_ARGUMENT")}): 1.0,
        frozenset({("rpc", "GetModelInfo"), ("code", "NOT_FOUND")}): 1.0,
        frozenset({("rpc", "ClassifyStream"), ("code", "OK")}): 1.0,  # one stream, one count
    }  # health checks are not camseg RPCs: not counted
    assert value(registry, "camseg_grpc_request_duration_seconds_count", rpc="Classify") == 2
    assert value(registry, "camseg_grpc_request_duration_seconds_count", rpc="GetModelInfo") == 1
    for rpc in ("Classify", "GetModelInfo", "ClassifyStream"):
        assert value(registry, "camseg_grpc_in_flight_requests", rpc=rpc) == 0
    # 2 images in the unary call and 3 through the stream's Classify
    assert value(registry, "camseg_images_total", rpc="Classify") == 5
    assert value(registry, "camseg_model_info", name="tiny", version="1") == 1
    assert value(registry, "camseg_batch_size_images_sum") == 5


# ------------------------------------------------------------------ a probe service
async def _crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("secret detail /etc/passwd")


async def _refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise NotFoundError("no such thing")


async def _deny(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "go away")
    return b""


async def _set_code(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    context.set_code(grpc.StatusCode.ALREADY_EXISTS)
    context.set_details("already there")
    return b""


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request[::-1]


async def _slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(10)
    return b""


async def _count(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
    async for r in request_iterator:
        if r == b"bad":
            raise InvalidInputError("bad item")
        yield r + b"!"


def _handlers(service: str) -> grpc.GenericRpcHandler:
    unary = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in
             {"Crash": _crash, "Refuse": _refuse, "Deny": _deny, "SetCode": _set_code, "Echo": _echo,
              "Slow": _slow}.items()}
    stream = {"Count": grpc.stream_stream_rpc_method_handler(_count)}
    return grpc.method_handlers_generic_handler(service, {**unary, **stream})


def test_the_interceptor_maps_every_outcome() -> None:
    metrics = ServiceMetrics()

    async def main() -> dict[str, tuple[grpc.StatusCode, str | None]]:
        server = grpc.aio.server(interceptors=[ErrorsAndMetrics(metrics)])
        server.add_generic_rpc_handlers((_handlers("camseg.v1.Probe"), _handlers("other.v1.Probe")))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out: dict[str, tuple[grpc.StatusCode, str | None]] = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                for service in ("camseg.v1.Probe", "other.v1.Probe"):
                    for name in ("Crash", "Refuse", "Deny", "SetCode", "Echo"):
                        call = ch.unary_unary(f"/{service}/{name}")
                        try:
                            reply = await call(b"abc", timeout=10)
                            out[f"{service}/{name}"] = (grpc.StatusCode.OK, reply.decode())
                        except grpc.aio.AioRpcError as exc:
                            out[f"{service}/{name}"] = (exc.code(), exc.details())
                stream = ch.stream_stream("/camseg.v1.Probe/Count")
                replies: list[bytes] = []
                try:
                    async for r in stream(iter([b"a", b"b", b"bad", b"c"]), timeout=10):
                        replies.append(r)
                except grpc.aio.AioRpcError as exc:
                    out["Count"] = (exc.code(), exc.details() + " after " + b",".join(replies).decode())
                ok = [r async for r in stream(iter([b"x", b"y"]), timeout=10)]
                out["Count ok"] = (grpc.StatusCode.OK, b",".join(ok).decode())
                try:
                    await ch.unary_unary("/camseg.v1.Probe/Slow")(b"", timeout=0.3)
                except grpc.aio.AioRpcError as exc:
                    out["Slow"] = (exc.code(), None)
                # the server counts the expired call once its handler is cancelled
                deadline = time.monotonic() + 10
                while (value(metrics.registry, "camseg_grpc_requests_total", rpc="Slow", code="DEADLINE_EXCEEDED")
                       is None and time.monotonic() < deadline):
                    await asyncio.sleep(0.05)
        finally:
            await server.stop(0)
        return out

    out = asyncio.run(main())
    p = "camseg.v1.Probe/"
    assert out[p + "Crash"] == (grpc.StatusCode.INTERNAL, "internal error")  # no detail leaks
    assert out[p + "Refuse"] == (grpc.StatusCode.NOT_FOUND, "no such thing")
    assert out[p + "Deny"] == (grpc.StatusCode.PERMISSION_DENIED, "go away")
    assert out[p + "SetCode"] == (grpc.StatusCode.ALREADY_EXISTS, "already there")
    assert out[p + "Echo"] == (grpc.StatusCode.OK, "cba")
    assert out["Count"] == (grpc.StatusCode.INVALID_ARGUMENT, "bad item after a!,b!")
    assert out["Count ok"] == (grpc.StatusCode.OK, "x!,y!")
    assert out["Slow"][0] == grpc.StatusCode.DEADLINE_EXCEEDED
    # other services pass through untouched: a plain exception is grpc's own UNKNOWN, never counted
    o = "other.v1.Probe/"
    assert out[o + "Crash"][0] == grpc.StatusCode.UNKNOWN
    assert out[o + "Echo"] == (grpc.StatusCode.OK, "cba")

    got = {tuple(sorted(labels)): v for (name, labels), v in samples(metrics.registry).items()
           if name == "camseg_grpc_requests_total"}
    assert got == {
        (("code", "INTERNAL"), ("rpc", "Crash")): 1.0,
        (("code", "NOT_FOUND"), ("rpc", "Refuse")): 1.0,
        (("code", "PERMISSION_DENIED"), ("rpc", "Deny")): 1.0,
        (("code", "ALREADY_EXISTS"), ("rpc", "SetCode")): 1.0,
        (("code", "OK"), ("rpc", "Echo")): 1.0,
        (("code", "INVALID_ARGUMENT"), ("rpc", "Count")): 1.0,
        (("code", "OK"), ("rpc", "Count")): 1.0,
        (("code", "DEADLINE_EXCEEDED"), ("rpc", "Slow")): 1.0,
    }
    for rpc in ("Crash", "Refuse", "Deny", "SetCode", "Echo", "Count", "Slow"):
        assert value(metrics.registry, "camseg_grpc_in_flight_requests", rpc=rpc) == 0
    assert value(metrics.registry, "camseg_grpc_request_duration_seconds_count", rpc="Count") == 2
