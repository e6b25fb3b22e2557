"""Whole images over gRPC, in a real ``camseg serve`` process on a real port: Segment and
Explain slide the 32-px tiny model over a 300x400 16-bit image, SegmentUpload sends it in
pieces, and the limits and refusals are those of the settings and the core."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from camseg.core.errors import InvalidInputError
from camseg.io.codecs import encode_png, unpack_bits
from camseg.io.inputs import decode_image
from camseg.pipeline.run import LoadedModel, run
from services import codec
from services.client import SegmentationClient, Tiling
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.services.servers import Server, start_server, stop

H, W = 300, 400
MAX_WHOLE = 200_000  # pixels: 300x400 goes whole, 500x500 is refused
MAX_UPLOAD = 400_000  # bytes


def film(seed: int = 0) -> npt.NDArray[np.uint16]:
    """A 16-bit image: tissue (noise over a gradient) in the left 60 %, dark background to
    the right, with a few bright blobs."""
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W), np.float64)
    tissue = np.s_[:, : int(W * 0.6)]
    img[tissue] = 0.35 + 0.2 * rng.random((H, int(W * 0.6)))
    yy, xx = np.mgrid[:H, :W]
    for cy, cx in ((80, 60), (200, 150), (150, 200)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12**2] = 0.95
    return np.asarray(np.round(img * 65535), np.uint16)


@pytest.fixture(scope="module")
def whole_repo(exported: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported model three times: ``scaled`` at 1 source pixel per model pixel,
    ``mm`` at 0.2 mm per model pixel, and ``tiny`` with no recorded scale."""
    root = tmp_path_factory.mktemp("whole-repo")
    for name, scale in (("scaled", {"source_pixels_per_model_pixel": 1.0}), ("mm", {"mm_per_model_pixel": 0.2}),
                        ("tiny", None)):
        shutil.copytree(exported[0], root / name / "1")
        meta_path = root / name / "1" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta.pop("scale", None)
        if scale is not None:
            meta["scale"] = scale
        meta_path.write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def whole_server(whole_repo: Path) -> Iterator[Server]:
    s = start_server(whole_repo, env={"CAMSEG_MAX_WHOLE_PIXELS": str(MAX_WHOLE),
                                      "CAMSEG_MAX_UPLOAD_BYTES": str(MAX_UPLOAD)})
    yield s
    stop(s)


@pytest.fixture(scope="module")
def stub(whole_server: Server) -> pb_grpc.SegmentationStub:
    return pb_grpc.SegmentationStub(whole_server.channel())


@pytest.fixture(scope="module")
def image() -> bytes:
    return encode_png(film())


def segment(stub: pb_grpc.SegmentationStub, data: bytes, model: str = "scaled", **fields: Any) -> pb.SegmentResponse:
    return stub.Segment(pb.SegmentRequest(model=pb.ModelRef(name=model), images=[pb.Image(encoded=data, id="f")],
                                          **fields), timeout=60)


def mask_of(m: pb.Mask) -> np.ndarray:
    return unpack_bits(m.packed_bits, tuple(m.shape))


def core_result(repo: Path, request: pb.SegmentRequest, data: bytes) -> Any:
    """What the core gives for the request's options on the decoded image, in this process."""
    model = LoadedModel.load(repo / request.model.name / "1")
    opts = codec.segment_request(request, model, chunk=16).options
    return run(model, [decode_image(data)], opts).items[0]


def test_a_whole_image_is_segmented_whole_at_its_size(stub: pb_grpc.SegmentationStub, whole_repo: Path,
                                                      image: bytes) -> None:
    request = pb.SegmentRequest(model=pb.ModelRef(name="scaled"), images=[pb.Image(encoded=image, id="f")],
                                threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=90),
                                gate=False)
    reply = stub.Segment(request, timeout=60)
    m = reply.masks[0]
    mask = mask_of(m)
    assert mask.shape == (H, W) and m.area == int(mask.sum()) > 0
    assert m.HasField("whole")
    w = m.whole
    assert w.scale == 1.0 and w.tiles > 0 and w.skipped > 0  # the background tiles on the right were skipped
    assert 0.4 < w.tissue_fraction < 0.8 and not w.padded and w.note == ""
    # the lesion candidates are the mask's components, in the image's pixels
    assert w.lesions and sum(c.area for c in w.lesions) == m.area
    for c in w.lesions:
        assert 0 <= c.y0 < c.y1 <= H and 0 <= c.x0 < c.x1 <= W and c.y0 <= c.centroid_y < c.y1
        assert 0.0 <= c.score <= 1.0
    # the adapter adds nothing: the core's answer for the same options
    direct = core_result(whole_repo, request, image)
    assert direct.whole is not None and direct.whole.tiles == w.tiles and direct.whole.skipped == w.skipped
    np.testing.assert_array_equal(mask, direct.mask)
    assert w.score == pytest.approx(direct.whole.score, abs=1e-6)


def test_explain_of_a_whole_image(stub: pb_grpc.SegmentationStub, image: bytes) -> None:
    reply = stub.Explain(pb.ExplainRequest(model=pb.ModelRef(name="scaled"), images=[pb.Image(encoded=image)],
                                           encoding=pb.HEATMAP_ENCODING_UINT8), timeout=60)
    h = reply.heatmaps[0]
    heat = np.frombuffer(h.data, np.uint8).reshape(tuple(h.shape))
    assert heat.shape == (H, W) and h.whole.tiles > 0 and not h.whole.lesions
    assert heat[:, int(W * 0.7):].max() == 0  # no heat over the background


def test_mode_never_is_the_roi_path(stub: pb_grpc.SegmentationStub, whole_repo: Path, image: bytes) -> None:
    request = pb.SegmentRequest(model=pb.ModelRef(name="tiny"), images=[pb.Image(encoded=image)],
                                tiling=pb.Tiling(mode=pb.WHOLE_MODE_NEVER))
    m = stub.Segment(request, timeout=60).masks[0]
    assert not m.HasField("whole")  # a model without a scale is fine: nothing goes whole
    direct = core_result(whole_repo, request, image)
    assert direct.whole is None
    np.testing.assert_array_equal(mask_of(m), direct.mask)


def test_a_model_without_a_scale_refuses_whole_images_unless_the_request_gives_one(
        stub: pb_grpc.SegmentationStub, image: bytes) -> None:
    with pytest.raises(grpc.RpcError) as err:
        segment(stub, image, model="tiny")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model tiny version 1 has no recorded scale" in err.value.details()
    m = segment(stub, image, model="tiny", tiling=pb.Tiling(scale=2.0)).masks[0]
    assert m.whole.scale == 2.0 and m.whole.tiles > 0 and mask_of(m).shape == (H, W)


@pytest.mark.parametrize(("tiling", "message"), [
    (pb.Tiling(overlap=0.95), "overlap must be within 0..0.9, got 0.95"),
    (pb.Tiling(scale=-1), "scale must be within 0.05..64"),
    (pb.Tiling(mode=99), "unknown whole-image mode 99"),  # type: ignore[arg-type]
])
def test_bad_tiling_is_invalid_argument_with_the_cores_message(stub: pb_grpc.SegmentationStub, image: bytes,
                                                               tiling: pb.Tiling, message: str) -> None:
    for call in (lambda: segment(stub, image, tiling=tiling),
                 lambda: stub.Explain(pb.ExplainRequest(model=pb.ModelRef(name="scaled"),
                                                        images=[pb.Image(encoded=image)], tiling=tiling), timeout=60)):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_an_image_over_the_whole_image_limit_is_refused_from_its_header(stub: pb_grpc.SegmentationStub) -> None:
    """The PNG's pixel data is cut short: decoding it would fail as unreadable, so the limit
    message proves the header alone was read."""
    cut = encode_png(np.random.default_rng(0).integers(0, 255, (500, 500), np.uint8))[:200]
    with pytest.raises(grpc.RpcError) as err:
        segment(stub, cut)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"image 0 (f): 500x500 pixels exceed the whole-image limit of {MAX_WHOLE}"
    # as an ROI the same image is within max_pixels, so the decoder runs, and fails
    with pytest.raises(grpc.RpcError) as err:
        segment(stub, cut, tiling=pb.Tiling(mode=pb.WHOLE_MODE_NEVER))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a readable PNG" in err.value.details()


def test_an_image_without_tissue_gets_an_empty_mask_and_the_note(stub: pb_grpc.SegmentationStub) -> None:
    m = segment(stub, encode_png(np.zeros((H, W), np.uint16))).masks[0]
    assert mask_of(m).shape == (H, W) and m.area == 0 and not mask_of(m).any()
    assert m.whole.note == "no tissue found: empty mask" and m.whole.tiles == 0 and m.whole.tissue_fraction == 0
    assert not m.whole.lesions


def test_model_info_gives_the_scale(stub: pb_grpc.SegmentationStub) -> None:
    def info(name: str) -> tuple[float, float]:
        i = stub.GetModelInfo(pb.GetModelInfoRequest(model=pb.ModelRef(name=name)), timeout=10)
        return i.scale, i.mm_per_model_pixel

    assert (info("scaled"), info("mm"), info("tiny")) == ((1.0, 0.0), (0.0, 0.2), (0.0, 0.0))


def test_a_scale_in_millimetres_needs_the_images_spacing(stub: pb_grpc.SegmentationStub, image: bytes) -> None:
    with pytest.raises(grpc.RpcError) as err:
        segment(stub, image, model="mm")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("model mm version 1: the scale is 0.2 mm per model pixel")
    m = segment(stub, image, model="mm", tiling=pb.Tiling(spacing_mm=0.1)).masks[0]
    assert m.whole.scale == pytest.approx(2.0) and mask_of(m).shape == (H, W)


def test_upload_in_pieces_equals_segment(whole_server: Server, stub: pb_grpc.SegmentationStub, image: bytes,
                                         tmp_path: Path) -> None:
    assert len(image) > 50_000  # many pieces
    path = tmp_path / "film.png"
    path.write_bytes(image)
    one = segment(stub, image).masks[0]
    with SegmentationClient(whole_server.address, plaintext=True, model="scaled") as c:
        up = c.segment_upload(path, chunk=7_000)
        assert up.whole is not None and up.whole.tiles == one.whole.tiles and up.classification.id == "film"
        np.testing.assert_array_equal(up.mask, mask_of(one))
        assert [(x.area, x.box) for x in up.whole.lesions] == [
            (x.area, (x.y0, x.x0, x.y1, x.x1)) for x in one.whole.lesions]
        # the client's own cap: nothing is sent
        with pytest.raises(InvalidInputError, match="over the upload limit of 1000"):
            c.segment_upload(image, max_bytes=1000)
        # the client's tiling reaches the server
        never = c.segment_upload(image, tiling=Tiling(mode="never"))
        assert never.whole is None


def test_upload_refusals(stub: pb_grpc.SegmentationStub, image: bytes) -> None:
    head = pb.SegmentRequest(model=pb.ModelRef(name="scaled"))

    def code(chunks: list[pb.SegmentChunk]) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as err:
            stub.SegmentUpload(iter(chunks), timeout=60)
        return err.value.code(), err.value.details()

    piece = b"\0" * 100_000
    assert code([pb.SegmentChunk(request=head)] + [pb.SegmentChunk(data=piece)] * 5) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, f"the uploaded image exceeds the limit of {MAX_UPLOAD} bytes")
    assert code([pb.SegmentChunk(data=image)]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "the first chunk of an upload must carry the request")
    assert code([pb.SegmentChunk(request=head, data=image), pb.SegmentChunk(request=head)]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "only the first chunk of an upload carries the request")
    assert code([])[0] == grpc.StatusCode.INVALID_ARGUMENT
    with_images = pb.SegmentRequest(images=[pb.Image(encoded=image)])
    assert code([pb.SegmentChunk(request=with_images)])[0] == grpc.StatusCode.INVALID_ARGUMENT
