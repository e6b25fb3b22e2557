"""The gRPC service over a real port, in a real ``camseg serve`` process."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from camseg.io.codecs import encode_png as png
from camseg.io.codecs import from_run_lengths
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.services.servers import Launcher, Server, roi, start_server, stop, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_and_reflection(server: Server) -> None:
    ch = server.channel()
    health = health_pb2_grpc.HealthStub(ch)
    for service in ("", "camseg.v1.Segmentation"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == SERVING
    first = next(iter(health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)))
    assert first.status == SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    reply = next(iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                timeout=10)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"camseg.v1.Segmentation", "grpc.health.v1.Health"} <= names


def test_classify_every_input_form(stub: pb_grpc.SegmentationStub, tiny_folder: Path) -> None:
    image, _ = roi(tiny_folder)
    arr = np.asarray(Image.open(io.BytesIO(image)))
    images = [
        pb.Image(encoded=image, id="png8"),
        pb.Image(encoded=png(arr.astype(np.uint16) * 257), id="png16"),
        pb.Image(encoded=png(np.stack([arr] * 3, -1)), id="rgb"),
        pb.Image(raw=pb.RawArray(dtype="uint8", shape=list(arr.shape), data=arr.tobytes()), id="raw"),
        pb.Image(raw=pb.RawArray(dtype="float32", shape=list(arr.shape),
                                 data=(arr / 255.0).astype(np.float32).tobytes()), id="rawf"),
    ]
    reply = stub.Classify(pb.ClassifyRequest(images=images), timeout=30)
    assert (reply.model_name, reply.model_version) == ("tiny", "1")
    probs = np.array([r.probabilities for r in reply.results])
    assert [r.id for r in reply.results] == ["png8", "png16", "rgb", "raw", "rawf"]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # the same pixels in every form give the same answer
    np.testing.assert_allclose(probs, np.repeat(probs[:1], 5, 0), atol=1e-4)
    assert reply.results[0].label in ("normal", "tumor")


def test_explain_one_pass_equals_torch_and_segment_dice(stub: pb_grpc.SegmentationStub, tiny_folder: Path) -> None:
    image, mask = roi(tiny_folder)
    one = stub.Explain(pb.ExplainRequest(images=[pb.Image(encoded=image)], overlay_png=True), timeout=30)
    torch_path = stub.Explain(pb.ExplainRequest(images=[pb.Image(encoded=image)],
                                                options=pb.ExplainOptions(layer="stage4", method=pb.CAM_METHOD_FUSED)),
                              timeout=30)
    assert one.engine == "onnx" and torch_path.engine == "torch"
    h = one.heatmaps[0]
    heat = np.frombuffer(h.data, np.float16).reshape(tuple(h.shape))
    assert heat.shape == (32, 32) and heat.min() >= 0.0 and heat.max() <= 1.0
    assert Image.open(io.BytesIO(h.overlay_png)).size == (32, 32)
    u8 = stub.Explain(pb.ExplainRequest(images=[pb.Image(encoded=image)], encoding=pb.HEATMAP_ENCODING_UINT8),
                      timeout=30).heatmaps[0]
    np.testing.assert_allclose(np.frombuffer(u8.data, np.uint8) / 255.0, heat.ravel(), atol=1 / 255 + 1e-3)
    seg = stub.Segment(pb.SegmentRequest(images=[pb.Image(encoded=image)], truth_masks=[pb.Image(encoded=mask)],
                                         threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=80),
                                         gate=False, mask_encodings=[pb.MASK_ENCODING_PNG, pb.MASK_ENCODING_RLE,
                                                                     pb.MASK_ENCODING_PACKED_BITS]), timeout=30)
    m = seg.masks[0]
    decoded = np.asarray(Image.open(io.BytesIO(m.png))) > 0
    assert decoded.sum() == m.area
    np.testing.assert_array_equal(from_run_lengths(list(m.rle), (32, 32)), decoded)
    np.testing.assert_array_equal(np.unpackbits(np.frombuffer(m.packed_bits, np.uint8))[: 32 * 32].reshape(32, 32),
                                  decoded)
    truth = np.asarray(Image.open(io.BytesIO(mask))) > 0
    expect = 2 * (decoded & truth).sum() / (decoded.sum() + truth.sum())
    assert m.dice == pytest.approx(expect) and seg.mean_dice == pytest.approx(expect)
    assert not m.gated and m.threshold.kind == pb.THRESHOLD_KIND_PERCENTILE
    # encodings come only when asked for: packed bits alone by default
    plain = stub.Segment(pb.SegmentRequest(images=[pb.Image(encoded=image)], gate=False,
                                           threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=80)),
                         timeout=30).masks[0]
    assert plain.packed_bits == m.packed_bits and not plain.png and not plain.rle and not plain.overlay_png


def test_models_and_stream(stub: pb_grpc.SegmentationStub, tiny_folder: Path) -> None:
    models = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert [(m.name, m.latest) for m in models][:1] == [("tiny", max(models[0].versions, key=int))]
    info = stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="tiny", version="1")), timeout=10)
    assert info.classes == ["normal", "tumor"] and info.gradcam_layer == "stage4" and info.input_size == 32
    assert info.one_pass_cam and "CPUExecutionProvider" in info.providers and "test.accuracy" in info.metrics
    image, _ = roi(tiny_folder)
    replies = list(stub.ClassifyStream(iter([pb.ClassifyRequest(images=[pb.Image(encoded=image, id=str(i))])
                                             for i in range(5)]), timeout=30))
    assert [r.results[0].id for r in replies] == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (pb.ClassifyRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no images"),
        (pb.ClassifyRequest(images=[pb.Image(encoded=b"\x89PNG garbage")]), grpc.StatusCode.INVALID_ARGUMENT,
         "not a readable image"),
        (pb.ClassifyRequest(images=[pb.Image(raw=pb.RawArray(dtype="int64", shape=[4, 4], data=b"0" * 128))]),
         grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
        (pb.ClassifyRequest(images=[pb.Image(raw=pb.RawArray(dtype="uint8", shape=[4, 4], data=b"0" * 15))]),
         grpc.StatusCode.INVALID_ARGUMENT, "15 bytes"),
        (pb.ClassifyRequest(images=[pb.Image(raw=pb.RawArray(dtype="uint8", shape=[4, 4, 2], data=b"0" * 32))]),
         grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        (pb.ClassifyRequest(model=pb.ModelRef(name="nope"), images=[pb.Image(encoded=b"x")]),
         grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        (pb.ClassifyRequest(model=pb.ModelRef(name="tiny", version="99"), images=[pb.Image(encoded=b"x")]),
         grpc.StatusCode.NOT_FOUND, "no version '99'"),
        (pb.ClassifyRequest(images=[pb.Image(id="empty")]), grpc.StatusCode.INVALID_ARGUMENT, "neither"),
    ],
)
def test_bad_input_gets_its_code(stub: pb_grpc.SegmentationStub, request_: pb.ClassifyRequest,
                                 code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(request_, timeout=10)
    assert err.value.code() == code and words in err.value.details()


def test_bad_explain_and_segment_options(stub: pb_grpc.SegmentationStub, tiny_folder: Path) -> None:
    image, _ = roi(tiny_folder)
    cases = [
        (stub.Explain, pb.ExplainRequest(images=[pb.Image(encoded=image)], options=pb.ExplainOptions(layer="fc9")),
         grpc.StatusCode.NOT_FOUND),
        (stub.Explain, pb.ExplainRequest(images=[pb.Image(encoded=image)], options=pb.ExplainOptions(target_class=7)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (stub.Segment, pb.SegmentRequest(images=[pb.Image(encoded=image)],
                                         threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_FIXED, value=2)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (stub.Segment, pb.SegmentRequest(images=[pb.Image(encoded=image)],
                                         truth_masks=[pb.Image(encoded=image), pb.Image(encoded=image)]),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, req, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=10)
        assert err.value.code() == code, err.value.details()
    # and the server keeps serving
    assert stub.Classify(pb.ClassifyRequest(images=[pb.Image(encoded=image)]), timeout=10).results


def test_oversized_image_refused_before_decoding(repo: Path, launch: Launcher) -> None:
    s = launch(repo, env={"CAMSEG_MAX_PIXELS": "1000"})
    stub = pb_grpc.SegmentationStub(s.channel())
    big = png(np.zeros((64, 64), np.uint8))
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(images=[pb.Image(encoded=big)]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "exceed" in err.value.details()


def test_expired_deadline(stub: pb_grpc.SegmentationStub, server: Server, tiny_folder: Path) -> None:
    image, _ = roi(tiny_folder)
    with pytest.raises(grpc.RpcError) as err:
        stub.Segment(pb.SegmentRequest(images=[pb.Image(encoded=image)] * 200,
                                       options=pb.ExplainOptions(method=pb.CAM_METHOD_FUSED)), timeout=0.01)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_abandoned_work_frees_the_gradcam_pool(repo: Path, tiny_folder: Path) -> None:
    """A call whose deadline passed stops its Grad-CAM work at the next chunk: the one
    Grad-CAM worker is free again for the next caller long before the abandoned work
    (thousands of fused heatmaps) would have finished."""
    s = start_server(repo, env={"CAMSEG_MAX_IMAGES": "20000", "CAMSEG_CAM_WORKERS": "1"})
    try:
        stub = pb_grpc.SegmentationStub(s.channel())
        image, _ = roi(tiny_folder)
        one = pb.ExplainRequest(images=[pb.Image(encoded=image)], options=pb.ExplainOptions(method=pb.CAM_METHOD_FUSED))
        start = time.perf_counter()
        stub.Explain(pb.ExplainRequest(images=[pb.Image(encoded=image)] * 500, options=one.options), timeout=60)
        per_image = (time.perf_counter() - start) / 500
        n = int(20 / per_image)  # about 20 s of Grad-CAM work
        huge = pb.SegmentRequest(images=[pb.Image(encoded=image)] * min(n, 20000), options=one.options)
        with pytest.raises(grpc.RpcError) as err:
            stub.Segment(huge, timeout=1.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        start = time.perf_counter()
        assert len(stub.Explain(one, timeout=10).heatmaps) == 1
        assert time.perf_counter() - start < 5.0
    finally:
        stop(s)


def test_concurrent_load_and_hot_swap(stub: pb_grpc.SegmentationStub, server: Server, tiny_folder: Path) -> None:
    image, _ = roi(tiny_folder)
    req = pb.ClassifyRequest(model=pb.ModelRef(name="tiny"), images=[pb.Image(encoded=image)])
    errors: list[BaseException] = []
    versions: set[str] = set()
    lock = threading.Lock()
    swap_done = threading.Event()

    def call(i: int) -> None:
        try:
            r = stub.Classify(req, timeout=30)
            with lock:
                versions.add(r.model_version)
        except BaseException as exc:
            errors.append(exc)

    def swap() -> None:
        time.sleep(0.2)
        staging = server.repo / "tiny" / ".staging-2"
        shutil.copytree(server.repo / "tiny" / "1", staging)
        staging.rename(server.repo / "tiny" / "2")  # a version appears whole
        # a broken version is refused and the serving one stays
        broken = server.repo / "tiny" / ".staging-3"
        shutil.copytree(server.repo / "tiny" / "1", broken)
        (broken / "model.onnx").write_bytes(b"not onnx")
        broken.rename(server.repo / "tiny" / "3")
        swap_done.set()

    t = threading.Thread(target=swap)
    t.start()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(call, range(400)))
        t.join()
        deadline = time.time() + 20
        while time.time() < deadline and "2" not in versions:
            list(pool.map(call, range(32)))
            time.sleep(0.1)
    assert not errors, errors[:3]
    assert "2" in versions
    assert stub.Classify(req, timeout=10).model_version == "2"
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=10).models[0]
    assert list(listed.versions) == ["1", "2"] and listed.latest == "2"
    text = server.metrics()
    assert 'camseg_model_load_failures_total{name="tiny"} 1.0' in text
    assert 'camseg_model_info{name="tiny",version="2"} 1.0' in text


def test_metrics_reflect_calls(server: Server) -> None:
    text = server.metrics()
    ok = re.search(r'camseg_grpc_requests_total\{code="OK",rpc="Classify"\} (\d+)', text)
    assert ok and int(ok.group(1)) >= 400
    assert re.search(r'camseg_grpc_requests_total\{code="NOT_FOUND",rpc="Classify"\} [1-9]', text)
    assert re.search(r'camseg_grpc_requests_total\{code="DEADLINE_EXCEEDED",rpc="Segment"\} [1-9]', text)
    assert "camseg_batch_size_images_bucket" in text and "camseg_grpc_request_duration_seconds_bucket" in text
    batches = re.search(r"camseg_batch_size_images_count (\d+)\.0", text)
    images = re.search(r"camseg_batch_size_images_sum (\d+)\.0", text)
    assert batches and images and int(images.group(1)) > int(batches.group(1))  # some calls were batched


def test_sigterm_drains_in_flight_calls(repo: Path, tiny_folder: Path) -> None:
    s = start_server(repo)
    try:
        stub = pb_grpc.SegmentationStub(s.channel())
        image, _ = roi(tiny_folder)
        slow = pb.SegmentRequest(images=[pb.Image(encoded=image)] * 150,
                                 options=pb.ExplainOptions(method=pb.CAM_METHOD_FUSED))
        health = health_pb2_grpc.HealthStub(s.channel())
        watch = health.Watch(health_pb2.HealthCheckRequest(service="camseg.v1.Segmentation"), timeout=60)
        seen: list[int] = []

        def follow() -> None:
            with contextlib.suppress(grpc.RpcError):  # the stream ends UNAVAILABLE when the server stops
                seen.extend(r.status for r in watch)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(stub.Segment, slow, timeout=60) for _ in range(4)]
            time.sleep(0.5)
            s.proc.send_signal(signal.SIGTERM)
            replies = [f.result() for f in futures]
        assert all(len(r.masks) == 150 for r in replies)
        assert s.proc.wait(timeout=30) == 0
        watcher.join(timeout=10)
        assert seen[:2] == [SERVING, NOT_SERVING]  # draining is announced before the stop
    finally:
        stop(s)


def test_health_not_serving_before_models_load(tmp_path: Path, exported: tuple[Path, dict[str, Any]]) -> None:
    (tmp_path / "empty").mkdir()
    s = start_server(tmp_path / "empty")
    try:
        ch = s.channel()
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == NOT_SERVING
        assert not pb_grpc.SegmentationStub(ch).ListModels(pb.ListModelsRequest(), timeout=10).models
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.SegmentationStub(ch).Classify(pb.ClassifyRequest(images=[pb.Image(encoded=b"x")]), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(iter(watch)).status == NOT_SERVING
        shutil.copytree(exported[0], tmp_path / "empty" / "tiny" / "7")
        assert next(iter(watch)).status == SERVING
    finally:
        stop(s)


def test_drain_announces_not_serving_then_keeps_answering_for_the_delay(repo: Path, tiny_folder: Path) -> None:
    s = start_server(repo, env={"CAMSEG_DRAIN_DELAY_SECONDS": "2"})
    try:
        ch = s.channel()
        stub = pb_grpc.SegmentationStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        image, _ = roi(tiny_folder)
        req = pb.ClassifyRequest(images=[pb.Image(encoded=image)])
        stub.Classify(req, timeout=10)
        t0 = time.perf_counter()
        s.proc.send_signal(signal.SIGTERM)
        while health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status != NOT_SERVING:
            assert time.perf_counter() - t0 < 1.0
            time.sleep(0.02)
        # load balancers now move away; calls that still arrive are answered
        assert stub.Classify(req, timeout=10).results
        assert s.proc.poll() is None
        assert s.proc.wait(timeout=30) == 0
        assert time.perf_counter() - t0 >= 2.0
    finally:
        stop(s)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                ("10.1.2.3", False), ("example.org", False)])
def test_plaintext_warning_knows_loopback(host: str, loopback: bool) -> None:
    from services.server import _loopback

    assert _loopback(host) is loopback


def test_sigterm_under_load_answers_ok_then_unavailable_and_exits_0(repo: Path, tiny_folder: Path) -> None:
    """Several threads keep calling Classify, Explain and Segment while the server gets
    SIGTERM, with two long Segment calls in flight. Every call ends OK or UNAVAILABLE:
    those begun before the signal OK (the long ones included: they finish within the
    drain), the first UNAVAILABLE only after health said NOT_SERVING, and the process
    exits 0, well before the grace, since the health Watch ends with the stop (the one
    exception, grpc core's, is named below)."""
    s = start_server(repo, env={"CAMSEG_DRAIN_DELAY_SECONDS": "0.5", "CAMSEG_GRACE_SECONDS": "20"})
    try:
        image, _ = roi(tiny_folder)
        one = [pb.Image(encoded=image)]
        requests: list[tuple[str, Any]] = [
            ("Classify", pb.ClassifyRequest(images=one)), ("Classify", pb.ClassifyRequest(images=one * 4)),
            ("Explain", pb.ExplainRequest(images=one)),
            ("Segment", pb.SegmentRequest(images=one, threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE,
                                                                                  value=80), gate=False))]
        slow = pb.SegmentRequest(images=one * 40, options=pb.ExplainOptions(method=pb.CAM_METHOD_FUSED))
        t0 = time.monotonic()
        health: list[tuple[float, int]] = []
        calls: list[tuple[float, float, str, grpc.StatusCode]] = []  # start, end, rpc, code
        lock = threading.Lock()
        halt, watch_ended = threading.Event(), threading.Event()

        def follow() -> None:
            watch = health_pb2_grpc.HealthStub(s.channel()).Watch(
                health_pb2.HealthCheckRequest(service="camseg.v1.Segmentation"), timeout=60)
            for r in watch:  # an error here is a Watch the stop cut instead of ending it
                health.append((time.monotonic() - t0, r.status))
            watch_ended.set()

        def hammer(rpc: str, req: Any) -> None:
            call = getattr(pb_grpc.SegmentationStub(s.channel()), rpc)  # a channel each, as separate clients
            while not halt.is_set():
                start = time.monotonic() - t0
                try:
                    call(req, timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                with lock:
                    calls.append((start, time.monotonic() - t0, rpc, code))
                if code != grpc.StatusCode.OK:
                    time.sleep(0.02)  # a stopped server refuses at once: do not spin

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        wait_until("health SERVING", lambda: health)
        threads = [threading.Thread(target=hammer, args=r, daemon=True) for r in requests]
        for t in threads:
            t.start()
        with ThreadPoolExecutor(2) as pool:
            long_calls = [pool.submit(pb_grpc.SegmentationStub(s.channel()).Segment, slow, timeout=60)
                          for _ in range(2)]
            wait_until("calls under load", lambda: len(calls) >= 20)
            time.sleep(0.3)  # the long calls are in flight
            signalled = time.monotonic() - t0
            s.proc.send_signal(signal.SIGTERM)
            replies = [f.result() for f in long_calls]  # an error here is a call the drain dropped
        assert s.proc.wait(timeout=30) == 0
        exited = time.monotonic() - t0
        time.sleep(0.5)  # calls after the exit: refused too
        halt.set()
        for t in threads:
            t.join(timeout=40)
        watcher.join(timeout=10)

        assert all(len(r.masks) == 40 for r in replies)
        # grpc core cancels the calls it has taken but not yet handed over at the instant the
        # server stops (grpc/grpc#41785): CANCELLED, one per client at most, and only then
        stopped_at = signalled + 0.5
        cancelled = [start for start, _, _, c in calls if c == grpc.StatusCode.CANCELLED]
        assert len(cancelled) <= len(requests) and all(start >= stopped_at for start in cancelled), cancelled
        codes = {c for *_, c in calls} - {grpc.StatusCode.CANCELLED}
        assert codes == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
        before = [c for start, _, _, c in calls if start < signalled]
        assert before and set(before) == {grpc.StatusCode.OK}  # begun before SIGTERM: finished
        assert {rpc for *_, rpc, c in calls if c == grpc.StatusCode.OK} == {"Classify", "Explain", "Segment"}
        first_refused = min(end for _, end, _, c in calls if c == grpc.StatusCode.UNAVAILABLE)
        assert [st for _, st in health][:2] == [SERVING, NOT_SERVING]
        not_serving = next(t for t, st in health if st == NOT_SERVING)
        assert signalled < not_serving < first_refused <= exited + 0.5
        # the Watch stream ended OK when the server stopped, so it did not hold the stop for the grace (20 s)
        assert watch_ended.is_set() and exited - signalled < 20.0
        assert any(start > exited for start, _, _, c in calls if c == grpc.StatusCode.UNAVAILABLE)
    finally:
        stop(s)


def test_a_lone_classify_runs_inline_and_a_long_explain_never_blocks_health(
        stub: pb_grpc.SegmentationStub, server: Server, tiny_folder: Path) -> None:
    """A lone small Classify runs on the event loop (counted); while a long Explain is in
    flight, Classify calls go through the pool and health keeps answering (each within
    a deadline shorter than the Explain work)."""
    image, _ = roi(tiny_folder)
    health = health_pb2_grpc.HealthStub(server.channel())

    def inline_runs() -> float:
        m = re.search(r"^camseg_batch_inline_runs_total (\S+)$", server.metrics(), re.M)
        assert m
        return float(m.group(1))

    classify = pb.ClassifyRequest(images=[pb.Image(encoded=image)])
    before = inline_runs()
    for _ in range(3):
        stub.Classify(classify, timeout=10)
    assert inline_runs() == before + 3
    fused = pb.ExplainOptions(method=pb.CAM_METHOD_FUSED)  # torch Grad-CAM: the longest work a call can ask for
    start = time.perf_counter()
    stub.Explain(pb.ExplainRequest(images=[pb.Image(encoded=image)] * 20, options=fused), timeout=60)
    n = max(1, round(3.0 / (time.perf_counter() - start) / (256 / 20)))  # calls of 256 images: about 3 s
    long = pb.ExplainRequest(images=[pb.Image(encoded=image)] * 256, options=fused)
    with ThreadPoolExecutor(max_workers=n) as pool:
        explains = [pool.submit(stub.Explain, long, timeout=120) for _ in range(n)]
        time.sleep(0.3)  # decoded, in the Grad-CAM pool or waiting for it
        during = inline_runs()
        answered = 0
        while not all(f.done() for f in explains):
            assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status == SERVING
            stub.Classify(classify, timeout=10)
            answered += 1
            if not all(f.done() for f in explains):
                assert inline_runs() == during  # another call in flight: no run on the loop
        assert all(len(f.result().heatmaps) == 256 for f in explains)
    assert answered >= 3
