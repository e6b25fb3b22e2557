"""Hostile and careless callers against a real ``camseg serve``: every bad input gets its
status, load past the cap is shed, memory stays bounded and health checks keep
answering while the largest allowed request is being processed."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from camseg.io.codecs import encode_png
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.hostile import png_bomb, tiff_pages
from tests.services.servers import Launcher, Server, roi

# the largest ROI request the defaults allow: three 4096x4096 gray images (3 x 4096^2 decoded
# values), sent as ROIs (the tiny model has no scale for whole images)
BIG = 4096
AS_ROIS = pb.Tiling(mode=pb.WHOLE_MODE_NEVER)
RSS_BOUND_MIB = 2500


def vm_hwm_mib(server: Server) -> float:
    """The server process's peak resident memory."""
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def code_of(call: object, request: object, timeout: float = 120) -> grpc.StatusCode:
    try:
        call(request, timeout=timeout)  # type: ignore[operator]
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def big_pngs() -> list[bytes]:
    rng = np.random.default_rng(0)
    img = (rng.random((BIG, BIG)) * 255).astype(np.uint8)  # noise: a real decode, not a run of zeros
    return [encode_png(img)] * 3


def test_every_bad_input_gets_its_status_and_memory_stays_bounded(
        repo: Path, launch: Launcher, tiny_folder: Path, big_pngs: list[bytes]) -> None:
    s = launch(repo)
    stub = pb_grpc.SegmentationStub(s.channel())
    image, _ = roi(tiny_folder)
    arr = np.asarray(np.frombuffer(image, np.uint8))  # any bytes; only used as garbage below
    rng = np.random.default_rng(1)
    gray16 = encode_png((rng.random((40, 30)) * 65535).astype(np.uint16))
    rgb = encode_png((rng.random((40, 30, 3)) * 255).astype(np.uint8))
    zeros_4k = png_bomb(BIG, BIG)

    def classify(*images: pb.Image) -> pb.ClassifyRequest:
        return pb.ClassifyRequest(images=list(images))

    cases = [
        ("PNG bomb (60000x60000 claimed)", stub.Classify, classify(pb.Image(encoded=png_bomb(60000, 60000, rows=8))),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("multi-page TIFF bomb", stub.Classify, classify(pb.Image(encoded=tiff_pages(50, 2048))),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("256 large images in one call", stub.Classify, classify(*[pb.Image(encoded=zeros_4k)] * 256),
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("truncated file", stub.Classify, classify(pb.Image(encoded=image[: len(image) // 2])),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("random bytes", stub.Classify, classify(pb.Image(encoded=rng.bytes(5000))),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("garbage after a PNG signature", stub.Classify, classify(pb.Image(encoded=image[:8] + arr[::-1].tobytes())),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("a 16-bit image", stub.Classify, classify(pb.Image(encoded=gray16)), grpc.StatusCode.OK),
        ("an RGB image", stub.Segment, pb.SegmentRequest(images=[pb.Image(encoded=rgb)]), grpc.StatusCode.OK),
        ("heatmaps larger than the send limit", stub.Explain,
         pb.ExplainRequest(images=[pb.Image(encoded=zeros_4k)] * 3), grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("the largest allowed ROI request", stub.Segment,
         pb.SegmentRequest(images=[pb.Image(encoded=b) for b in big_pngs], tiling=AS_ROIS), grpc.StatusCode.OK),
    ]
    for name, call, request, expected in cases:
        got = code_of(call, request)
        assert got == expected, f"{name}: {got} (expected {expected})"
    assert s.proc.poll() is None
    peak = vm_hwm_mib(s)
    assert peak < RSS_BOUND_MIB, f"server peak RSS {peak:.0f} MiB"
    metrics = s.metrics()
    assert 'code="INTERNAL"' not in metrics


def test_health_answers_within_100_ms_during_the_largest_request(
        repo: Path, launch: Launcher, big_pngs: list[bytes]) -> None:
    s = launch(repo)
    ch = s.channel()
    stub = pb_grpc.SegmentationStub(ch)
    health = health_pb2_grpc.HealthStub(ch)
    check = health_pb2.HealthCheckRequest(service="")
    health.Check(check, timeout=10)  # connection and first-call costs out of the way
    request = pb.SegmentRequest(images=[pb.Image(encoded=b) for b in big_pngs], tiling=AS_ROIS)
    done = threading.Event()
    codes: list[grpc.StatusCode] = []

    def big() -> None:
        codes.append(code_of(stub.Segment, request))
        done.set()

    worker = threading.Thread(target=big)
    worker.start()
    time.sleep(0.3)
    latencies: list[float] = []
    while not done.is_set() and len(latencies) < 40:
        t0 = time.perf_counter()
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        latencies.append(time.perf_counter() - t0)
        time.sleep(0.05)
    worker.join(timeout=300)
    assert codes == [grpc.StatusCode.OK]
    assert len(latencies) >= 3, "the request finished before the health checks could overlap it"
    assert max(latencies) < 0.1, f"health Check latencies {sorted(latencies)[-3:]}"


def test_calls_past_the_cap_are_shed_not_queued(repo: Path, launch: Launcher, tiny_folder: Path) -> None:
    s = launch(repo, env={"CAMSEG_MAX_CONCURRENT_RPCS": "8"})
    stub = pb_grpc.SegmentationStub(s.channel())
    image, _ = roi(tiny_folder)
    slow = pb.SegmentRequest(images=[pb.Image(encoded=image)] * 24,
                             options=pb.ExplainOptions(method=pb.CAM_METHOD_FUSED))
    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(lambda _: code_of(stub.Segment, slow, timeout=120), range(200)))
    counts = {c: codes.count(c) for c in set(codes)}
    assert set(counts) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, counts
    assert counts.get(grpc.StatusCode.RESOURCE_EXHAUSTED, 0) > 0 and counts.get(grpc.StatusCode.OK, 0) > 0, counts
    # and the server serves normally afterwards
    assert code_of(stub.Classify, pb.ClassifyRequest(images=[pb.Image(encoded=image)])) == grpc.StatusCode.OK
