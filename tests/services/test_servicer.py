"""The servicer in process: a grpc.aio server started in the test's own event loop, and
its answers compared with the core pipeline's on the same images (the servicer adds
transport, never numbers)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from camseg.core.settings import Settings
from camseg.data.folder import decode_image
from camseg.heat.methods import Segmenter
from camseg.heat.rules import parse_rule
from camseg.pipeline.options import Options
from camseg.pipeline.run import LoadedModel, run
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from services.server import start


def test_in_process_answers_equal_the_core_pipeline(repo: Path, tumor_roi: tuple[bytes, bytes]) -> None:
    image, mask = tumor_roi
    model = LoadedModel.load(repo / "tiny" / "1")
    decoded, truth = decode_image(image), decode_image(mask) > 0
    direct = run(model, [decoded], Options(threshold=parse_rule("p80"), gate=False), truths=[truth]).items[0]
    heat_direct = run(model, [decoded], Options(threshold=None)).items[0]

    async def main() -> tuple[pb.SegmentResponse, pb.ExplainResponse, pb.ClassifyResponse, grpc.StatusCode]:
        settings = Settings(model_repo=repo, port=0, metrics_port=None, plaintext=True, poll_seconds=60)
        running = await start(settings)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = pb_grpc.SegmentationStub(ch)
                seg = await stub.Segment(pb.SegmentRequest(
                    images=[pb.Image(encoded=image)], truth_masks=[pb.Image(encoded=mask)], gate=False,
                    threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=80),
                    mask_encodings=[pb.MASK_ENCODING_PNG]), timeout=30)
                exp = await stub.Explain(pb.ExplainRequest(images=[pb.Image(encoded=image)]), timeout=30)
                cls = await stub.Classify(pb.ClassifyRequest(images=[pb.Image(encoded=image, id="a")]), timeout=30)
                try:
                    await stub.Segment(pb.SegmentRequest(images=[pb.Image(encoded=image)],
                                                         options=pb.ExplainOptions(layer="nope")), timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    code = err.code()
        finally:
            await running.drain_and_stop(0)
        return seg, exp, cls, code

    seg, exp, cls, code = asyncio.run(main())
    m = seg.masks[0]
    assert direct.mask is not None
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(m.png))) > 0, direct.mask)
    assert m.area == direct.area and m.dice == pytest.approx(direct.dice)
    assert m.threshold_value == pytest.approx(direct.threshold_value)
    assert not m.packed_bits and not m.rle  # only the PNG was asked for
    h = exp.heatmaps[0]
    heat = np.frombuffer(h.data, np.float16).reshape(tuple(h.shape)).astype(np.float32)
    np.testing.assert_allclose(heat, heat_direct.heatmap.numpy(), atol=1e-3)
    assert exp.engine == "onnx" and h.layer == model.cam_layer
    np.testing.assert_allclose(cls.results[0].probabilities, direct.probabilities, atol=1e-5)
    assert cls.results[0].id == "a" and cls.results[0].label == model.classes[int(np.argmax(direct.probabilities))]
    assert code == grpc.StatusCode.NOT_FOUND


def test_segment_applies_the_models_recipe_unless_the_request_chooses(
        repo: Path, tumor_roi: tuple[bytes, bytes], tmp_path: Path, tiny_folder: Path) -> None:
    """A model with a recipe and a distilled student: Segment with no options gets the
    recipe (the core's masks under it), options in the request win, and the distilled
    method is served; ModelInfo tells both."""
    import shutil

    from camseg.heat.methods import CamMethod
    from camseg.heat.refine import Refiner
    from camseg.pipeline.recipe_record import Recipe, save_recipe
    from camseg.pipeline.student import DistillConfig
    from camseg.study.recipe import make_distiller

    shutil.copytree(repo / "tiny" / "1", tmp_path / "repo" / "tiny" / "1")
    model_dir = tmp_path / "repo" / "tiny" / "1"
    make_distiller(tiny_folder, DistillConfig(epochs=1, batch_size=8))(LoadedModel.load(model_dir), Options())
    recipe_opts = Options(method=CamMethod.LAYERCAM, threshold=parse_rule("p85"), largest=True, tta=4,
                          refine=Refiner.CRF, decision_threshold=0.3)
    save_recipe(model_dir, Recipe(recipe_opts, Options(method=Segmenter.DISTILLED, threshold=parse_rule("0.5"))))
    model = LoadedModel.load(model_dir)
    image, mask = tumor_roi
    decoded, truth = decode_image(image), decode_image(mask) > 0
    by_recipe = run(model, [decoded], recipe_opts, truths=[truth]).items[0]
    by_default = run(model, [decoded], Options(threshold=parse_rule("p85")), truths=[truth]).items[0]
    by_student = run(model, [decoded], Options(method=Segmenter.DISTILLED, threshold=parse_rule("0.5")),
                     truths=[truth]).items[0]

    async def main() -> tuple[pb.SegmentResponse, pb.SegmentResponse, pb.SegmentResponse, pb.ModelInfo]:
        settings = Settings(model_repo=tmp_path / "repo", port=0, metrics_port=None, plaintext=True,
                                 poll_seconds=60)
        running = await start(settings)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = pb_grpc.SegmentationStub(ch)
                img = [pb.Image(encoded=image)]
                truths = [pb.Image(encoded=mask)]
                plain = await stub.Segment(pb.SegmentRequest(images=img, truth_masks=truths), timeout=60)
                own = await stub.Segment(pb.SegmentRequest(
                    images=img, truth_masks=truths,
                    threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=85)), timeout=60)
                student = await stub.Segment(pb.SegmentRequest(
                    images=img, truth_masks=truths, options=pb.ExplainOptions(method=pb.CAM_METHOD_DISTILLED),
                    threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_FIXED, value=0.5)), timeout=60)
                info = await stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name="tiny")), timeout=30)
        finally:
            await running.drain_and_stop(0)
        return plain, own, student, info

    plain, own, student, info = asyncio.run(main())
    assert plain.recipe and not own.recipe and not student.recipe
    for reply, item in ((plain, by_recipe), (own, by_default), (student, by_student)):
        m = reply.masks[0]
        assert m.area == item.area and m.dice == pytest.approx(item.dice) and m.gated == item.gated
    assert info.distilled and '"refine": "crf"' in info.recipe and '"tta": 4' in info.recipe


@pytest.mark.parametrize("inline", [0, 1 << 20])
def test_classify_decodes_inline_or_in_the_pool_with_the_same_answers(repo: Path, tumor_roi: tuple[bytes, bytes],
                                                                      inline: int) -> None:
    """A small request is decoded on the event loop, a large one in the decode pool: the
    answers are the core pipeline's either way, and a bad image is refused either way."""
    image, _ = tumor_roi
    model = LoadedModel.load(repo / "tiny" / "1")
    want = model.classify([decode_image(image)])[0]

    async def main() -> tuple[pb.ClassifyResponse, grpc.StatusCode]:
        settings = Settings(model_repo=repo, port=0, metrics_port=None, plaintext=True, poll_seconds=60,
                                 inline_decode_pixels=inline)
        running = await start(settings)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = pb_grpc.SegmentationStub(ch)
                reply = await stub.Classify(pb.ClassifyRequest(images=[pb.Image(encoded=image)] * 3), timeout=30)
                try:
                    await stub.Classify(pb.ClassifyRequest(images=[pb.Image(encoded=b"\x89PNG broken")]), timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                return reply, code
        finally:
            await running.drain_and_stop(grace=1.0)

    reply, code = asyncio.run(main())
    for r in reply.results:
        np.testing.assert_allclose(r.probabilities, want, atol=1e-6)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
