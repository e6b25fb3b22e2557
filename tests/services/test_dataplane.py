"""services.dataplane.DataPlane without gRPC: the core's values in, the caller's reply out,
on a real exported model and real thread pools."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camseg.core.errors import InvalidInputError, ResourceExhaustedError
from camseg.core.settings import Settings
from camseg.data.folder import decode_image
from camseg.heat.rules import parse_rule
from camseg.io.codecs import encode_png
from camseg.io.sources import Raw, Source
from camseg.pipeline.cost import path_bytes
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel, Result, run
from camseg.pipeline.whole import Tiling, whole_bytes
from services.dataplane import SEG_HEADER_BYTES, DataPlane, reply_size
from services.metrics import ServiceMetrics
from services.repository import ServedModel


def never_gone(callback: Callable[[Any], None]) -> None:
    """A call that never ends while the test runs."""


def plane_of(repo: Path, **settings: Any) -> DataPlane:
    return DataPlane(Settings(model_repo=repo, metrics_port=None, plaintext=True, **settings), ServiceMetrics())


def test_explain_replies_in_the_worker_thread_with_the_cores_heatmaps(
        repo: Path, tumor_roi: tuple[bytes, bytes]) -> None:
    image, _mask = tumor_roi
    served = ServedModel("tiny", "1", LoadedModel.load(repo / "tiny" / "1"))
    direct = run(served.model, [decode_image(image)], Options(threshold=None)).items[0]
    plane = plane_of(repo)
    threads: list[str] = []

    def reply(res: Result) -> Result:
        threads.append(threading.current_thread().name)
        return res

    async def main() -> Result:
        try:
            return await plane.explain(served, Options(threshold=None), [Source("image 0", encoded=image)],
                                       heat_bytes=2, reply=reply, when_gone=never_gone)
        finally:
            await plane.close()

    res = asyncio.run(main())
    np.testing.assert_allclose(res.items[0].heatmap.numpy(), direct.heatmap.numpy(), atol=1e-6)
    assert len(threads) == 1 and threads[0].startswith("cam")  # off the event loop
    assert plane.inflight.used == 0  # the request's budget went back to the server's


def test_a_reply_over_the_send_limit_is_refused_before_decoding(repo: Path, tumor_roi: tuple[bytes, bytes]) -> None:
    image, _mask = tumor_roi
    served = ServedModel("tiny", "1", LoadedModel.load(repo / "tiny" / "1"))
    h, w = decode_image(image).shape[:2]
    limit = reply_size([(h, w)] * 3, heat_bytes=2) - 1  # two images fit, three do not
    plane = plane_of(repo, max_send_bytes=max(limit, 1024))
    replies: list[Result] = []

    async def explain(n: int) -> None:
        await plane.explain(served, Options(threshold=None), [Source(f"image {i}", encoded=image) for i in range(n)],
                            heat_bytes=2, reply=replies.append, when_gone=never_gone)

    async def main() -> None:
        try:
            await explain(2)
            with pytest.raises(ResourceExhaustedError, match="over the send limit"):
                await explain(3)
        finally:
            await plane.close()

    assert limit >= 1024, "the test image is too small for the smallest send limit"
    asyncio.run(main())
    assert len(replies) == 1 and plane.inflight.used == 0


def test_dicom_seg_needs_dicom_instances_and_sizes_its_header(repo: Path, tumor_roi: tuple[bytes, bytes]) -> None:
    image, _mask = tumor_roi
    served = ServedModel("tiny", "1", LoadedModel.load(repo / "tiny" / "1"))
    plane = plane_of(repo)

    async def main() -> None:
        try:
            await plane.segment(served, Options(threshold=parse_rule("otsu")), [Source("image 0 (a)", encoded=image)],
                                [], dicom_seg=True, reply=lambda res, segs: segs, when_gone=never_gone)
        finally:
            await plane.close()

    with pytest.raises(InvalidInputError, match=r"image 0 \(a\): a DICOM SEG mask needs a DICOM instance"):
        asyncio.run(main())
    assert reply_size([(16, 16)], dicom_seg=True) - reply_size([(16, 16)]) == SEG_HEADER_BYTES + 256 // 8


def test_a_whole_images_sliding_window_is_charged_to_the_budget_before_decoding(repo: Path) -> None:
    """A 300x400 image goes whole with a 32-px model at scale 1: its 120000 decoded values
    fit a budget that its sliding window (whole_bytes / 4, charged first) does not. The
    refusal comes before decoding (the PNG is cut short: a decode would fail as
    unreadable), and the budget holds the decoded values and the window while the call
    runs."""
    served = ServedModel("tiny", "1", LoadedModel.load(repo / "tiny" / "1"))
    opts = Options(threshold=parse_rule("otsu"), tiling=Tiling(scale=1.0))
    rng = np.random.default_rng(0)
    full = encode_png((rng.random((300, 400)) * 255).astype(np.uint8))
    window_bytes = whole_bytes((300, 400), 1.0, tile=served.model.input_hw, chunk=opts.chunk)
    window = math.ceil(window_bytes / 4)
    # the whole path: the sliding window and the other steps (camseg.pipeline.cost), decoded values included
    need = math.ceil(path_bytes((300, 400), opts, whole=window_bytes, model_space=(300, 400)) / 4)
    seen: list[int] = []

    async def segment(plane: DataPlane, data: bytes) -> Result:
        def reply(res: Result, segs: object) -> Result:
            seen.append(plane.inflight.used)
            return res

        try:
            return await plane.segment(served, opts, [Source("image 0", encoded=data)], [], dicom_seg=False,
                                       reply=reply, when_gone=never_gone)
        finally:
            await plane.close()

    assert window > 300 * 400
    short = plane_of(repo, max_inflight_values=window - 1)
    with pytest.raises(ResourceExhaustedError, match=r"^image 0 \(the memory of its path"):
        asyncio.run(segment(short, full[:200]))
    assert short.inflight.used == 0
    enough = plane_of(repo, max_inflight_values=need)
    res = asyncio.run(segment(enough, full))
    assert res.items[0].whole is not None and res.items[0].mask is not None and res.items[0].mask.shape == (300, 400)
    assert seen == [need] and enough.inflight.used == 0


def test_a_dicom_seg_reply_is_charged_to_the_budget(repo: Path, tmp_path: Path) -> None:
    """A Segment that answers a DICOM SEG holds, while it runs, the path with the SEG's
    making and its packed frame (camseg.pipeline.cost, dicom_seg) on the server's budget:
    more than the same path without it."""
    from camseg.pipeline.whole import Whole
    from tests.dicomdata import write_series

    rng = np.random.default_rng(0)
    (instance,) = write_series(tmp_path, (rng.random((1, 48, 40)) * 1000).astype(np.int16), shuffle=False)
    served = ServedModel("tiny", "1", LoadedModel.load(repo / "tiny" / "1"))
    opts = Options(threshold=parse_rule("otsu"), gate=False, tiling=Tiling(mode=Whole.NEVER))
    need = math.ceil(path_bytes((48, 40), opts, dicom_seg=True) / 4)
    assert need > math.ceil(path_bytes((48, 40), opts) / 4)
    plane = plane_of(repo)
    seen: list[int] = []

    def reply(res: Result, segs: list[bytes] | None) -> list[bytes] | None:
        seen.append(plane.inflight.used)
        return segs

    async def main() -> list[bytes] | None:
        try:
            return await plane.segment(served, opts, [Source("image 0", encoded=instance.read_bytes())], [],
                                       dicom_seg=True, reply=reply, when_gone=never_gone)
        finally:
            await plane.close()

    segs = asyncio.run(main())
    assert segs is not None and len(segs) == 1 and segs[0][128:132] == b"DICM"
    assert seen == [need] and plane.inflight.used == 0


def test_a_lone_small_classify_runs_on_the_event_loop(repo: Path) -> None:
    """No hand-off to a thread for a lone call whose batch is within ``inline_run_pixels``;
    a larger batch, or a server that turned it off, still runs in the ONNX Runtime pool.
    The probabilities are the same either way."""
    served = ServedModel("tiny", "1", LoadedModel.load(repo / "tiny" / "1"))
    h, w = served.model.input_hw
    rng = np.random.default_rng(0)
    images = [Source(f"image {i}", raw=Raw("float32", (h, w), rng.random((h, w), dtype=np.float32).tobytes()))
              for i in range(2)]

    def inline_runs(plane: DataPlane) -> float:
        value = plane.metrics.registry.get_sample_value("camseg_batch_inline_runs_total")
        assert value is not None
        return value

    async def classify(plane: DataPlane, imgs: list[Source]) -> np.ndarray:
        try:
            return await plane.classify(served, imgs, when_gone=never_gone)
        finally:
            await plane.close()

    plane = plane_of(repo, inline_run_pixels=h * w)
    one = asyncio.run(classify(plane, images[:1]))
    assert inline_runs(plane) == 1
    plane = plane_of(repo, inline_run_pixels=h * w)
    two = asyncio.run(classify(plane, images))  # two images: over the bound
    assert inline_runs(plane) == 0
    plane = plane_of(repo, inline_run_pixels=0)
    off = asyncio.run(classify(plane, images[:1]))
    assert inline_runs(plane) == 0
    sent = [np.frombuffer(images[0].raw.data, np.float32).reshape(h, w).copy()]  # type: ignore[union-attr]
    direct: np.ndarray = served.model.classify_prepared(served.model.prepare(sent).numpy())
    np.testing.assert_allclose(one, direct, atol=1e-6)
    np.testing.assert_allclose(two[:1], one, atol=1e-5)
    np.testing.assert_allclose(off, one, atol=1e-6)
