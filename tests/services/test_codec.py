"""services.codec: protobuf values to the core's values, with real images and messages."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from camseg.core.errors import InvalidInputError
from camseg.heat.cam import CAMS
from camseg.heat.methods import CamMethod, Method, Segmenter
from camseg.heat.refine import Refiner
from camseg.heat.rules import ThresholdRule
from camseg.pipeline.options import Encoding, Options
from services import codec, wire
from services.gen.camseg.v1 import camseg_pb2 as pb

BIG = 1 << 20


def png(arr: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def raw(arr: npt.NDArray[Any], **kw: Any) -> pb.Image:
    return pb.Image(raw=pb.RawArray(dtype=str(arr.dtype), shape=list(arr.shape), data=arr.tobytes()), **kw)


def decode(*images: pb.Image, max_images: int = 8, max_pixels: int = BIG) -> list[npt.NDArray[np.float32]]:
    return codec.decode_images(list(images), max_images=max_images, max_pixels=max_pixels)


# ------------------------------------------------------------------ methods and rules
@pytest.mark.parametrize("method", [*CamMethod, *Segmenter])
def test_every_method_round_trips(method: Method) -> None:
    value = wire.method_to_pb(method)
    assert value != pb.CAM_METHOD_UNSPECIFIED
    assert wire.method_from_pb(value) is method
    assert wire.method_to_pb(method.value) == value  # the plain string of a command line


def test_method_names_match_the_proto() -> None:
    assert wire.method_to_pb("gradcam++") == pb.CAM_METHOD_GRADCAM_PP
    assert wire.method_to_pb("FUSED") == pb.CAM_METHOD_FUSED
    assert wire.method_from_pb(pb.CAM_METHOD_HIRESCAM) is CamMethod.HIRESCAM
    assert wire.method_from_pb(pb.CAM_METHOD_LAYERCAM) is CamMethod.LAYERCAM
    # every proto value except UNSPECIFIED names a distinct method: the registry's and the student
    values = [v for v in pb.CamMethod.values() if v != pb.CAM_METHOD_UNSPECIFIED]
    assert sorted({wire.method_from_pb(v) for v in values}) == sorted([*CAMS, *Segmenter])
    # the mapping is generated from the registry; the numbers on the wire stay as they were
    assert {m.value: int(v) for m, v in wire.METHOD_TO_PB.items()} == {
        "gradcam": 1, "gradcam++": 2, "hirescam": 3, "layercam": 4, "fused": 5, "distilled": 6, "scorecam": 7}
    assert wire.method_from_pb(pb.CAM_METHOD_DISTILLED) is Segmenter.DISTILLED


def test_unspecified_method_is_gradcam_and_unknown_is_refused() -> None:
    assert wire.method_from_pb(pb.CAM_METHOD_UNSPECIFIED) is CamMethod.GRADCAM
    with pytest.raises(InvalidInputError, match="unknown CAM method 99"):
        wire.method_from_pb(99)
    with pytest.raises(InvalidInputError, match="unknown CAM method"):
        wire.method_to_pb("saliency")


@pytest.mark.parametrize("rule", [ThresholdRule("otsu"), ThresholdRule("fixed", 0.25), ThresholdRule("fixed", 0.0),
                                  ThresholdRule("fixed", 1.0), ThresholdRule("percentile", 80.0),
                                  ThresholdRule("percentile", 100.0)])
def test_rules_round_trip(rule: ThresholdRule) -> None:
    msg = wire.rule_to_pb(rule)
    assert msg.value == rule.value
    assert wire.rule_from_pb(msg) == rule


def test_rule_kinds_on_the_wire() -> None:
    assert wire.rule_to_pb(ThresholdRule("fixed", 0.5)).kind == pb.THRESHOLD_KIND_FIXED
    assert wire.rule_to_pb(ThresholdRule("percentile", 90)).kind == pb.THRESHOLD_KIND_PERCENTILE
    assert wire.rule_to_pb(ThresholdRule("otsu")).kind == pb.THRESHOLD_KIND_OTSU
    # an unset rule (UNSPECIFIED, whatever its value) means Otsu
    assert wire.rule_from_pb(pb.ThresholdRule()) == ThresholdRule("otsu")
    assert wire.rule_from_pb(pb.ThresholdRule(value=0.7)) == ThresholdRule("otsu")


@pytest.mark.parametrize(("kind", "value", "message"), [
    (pb.THRESHOLD_KIND_FIXED, 2.0, r"fixed threshold 2\.0 is outside"),
    (pb.THRESHOLD_KIND_FIXED, -0.1, r"fixed threshold -0\.1 is outside"),
    (pb.THRESHOLD_KIND_FIXED, float("nan"), "fixed threshold nan is outside"),
    (pb.THRESHOLD_KIND_PERCENTILE, 101.0, r"percentile 101\.0 is outside"),
    (pb.THRESHOLD_KIND_PERCENTILE, -1.0, r"percentile -1\.0 is outside"),
    (7, 0.5, "unknown threshold kind 7"),
])
def test_rule_from_pb_refuses(kind: int, value: float, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        wire.rule_from_pb(pb.ThresholdRule(kind=kind, value=value))  # type: ignore[arg-type]


def test_encodings() -> None:
    assert codec.encodings_from_pb([]) == {Encoding.MASK_BITS}
    assert codec.encodings_from_pb([pb.MASK_ENCODING_PNG]) == {Encoding.MASK_PNG}
    assert codec.encodings_from_pb([pb.MASK_ENCODING_RLE, pb.MASK_ENCODING_PNG, pb.MASK_ENCODING_RLE]) == {
        Encoding.MASK_RLE, Encoding.MASK_PNG}
    all_three = [pb.MASK_ENCODING_PACKED_BITS, pb.MASK_ENCODING_PNG, pb.MASK_ENCODING_RLE]
    assert codec.encodings_from_pb(all_three) == {Encoding.MASK_BITS, Encoding.MASK_PNG, Encoding.MASK_RLE}
    for e, v in codec.ENCODING_TO_PB.items():
        assert codec.encodings_from_pb([v]) == {e}
    with pytest.raises(InvalidInputError, match="unknown mask encoding 42"):
        codec.encodings_from_pb([pb.MASK_ENCODING_PNG, 42])


# ------------------------------------------------------------------ images
def test_png_8_bit_gray() -> None:
    arr = np.array([[0, 51, 102], [153, 204, 255]], dtype=np.uint8)
    (out,) = decode(pb.Image(encoded=png(arr)))
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, [[0.0, 0.2, 0.4], [0.6, 0.8, 1.0]], atol=1e-6)


def test_png_16_bit_gray() -> None:
    arr = np.array([[0, 1, 32768], [65535, 257, 655]], dtype=np.uint16)
    (out,) = decode(pb.Image(encoded=png(arr)))
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, arr / 65535.0, rtol=1e-6, atol=1e-9)
    assert 0 < out[0, 1] < 1e-4  # the low bits survive: not squeezed to 8 bits


def test_png_rgb_keeps_channels() -> None:
    arr = np.zeros((2, 2, 3), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0)
    arr[1, 1] = (0, 51, 255)
    (out,) = decode(pb.Image(encoded=png(arr)))
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out[1, 1], [0.0, 0.2, 1.0], atol=1e-6)
    assert out[0, 1].sum() == 0


def test_png_rgba_drops_alpha() -> None:
    arr = np.full((2, 2, 4), 255, dtype=np.uint8)
    arr[..., 3] = 0
    arr[0, 0, :3] = (0, 0, 0)
    (out,) = decode(pb.Image(encoded=png(arr)))
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(out[1, 1], [1.0, 1.0, 1.0])


def test_raw_arrays() -> None:
    u8 = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    u16 = np.array([[0, 65535], [13107, 0]], dtype=np.uint16)
    f32 = np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32)
    f64 = np.array([[-2.0, 0.0], [2.0, 6.0]], dtype=np.float64)  # outside [0, 1]: min-max scaled
    f16 = np.array([[0.0, 0.125], [0.5, 0.75]], dtype=np.float16)
    rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    one = np.array([[[0], [255]]], dtype=np.uint8)  # (1, 2, 1) -> (1, 2)
    out = decode(raw(u8), raw(u16), raw(f32), raw(f64), raw(f16), raw(rgb), raw(one))
    np.testing.assert_allclose(out[0], [[0.0, 1.0], [0.2, 0.4]], atol=1e-6)
    np.testing.assert_allclose(out[1], [[0.0, 1.0], [0.2, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(out[2], f32)
    np.testing.assert_allclose(out[3], [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)
    np.testing.assert_allclose(out[4], f16.astype(np.float32))
    assert out[5].shape == (2, 2, 3)
    np.testing.assert_allclose(out[5], rgb / 255.0, atol=1e-6)
    assert out[6].shape == (1, 2)
    np.testing.assert_allclose(out[6], [[0.0, 1.0]])
    assert all(o.dtype == np.float32 for o in out)


def test_png_and_raw_of_the_same_pixels_agree(tumor_roi: tuple[bytes, bytes]) -> None:
    image, _ = tumor_roi
    arr = np.asarray(Image.open(io.BytesIO(image)))
    a, b = decode(pb.Image(encoded=image), raw(arr))
    np.testing.assert_array_equal(a, b)


def test_image_count_limits() -> None:
    img = raw(np.zeros((2, 2), dtype=np.uint8))
    assert len(decode(img, img, max_images=2)) == 2
    with pytest.raises(InvalidInputError, match="3 images exceed the limit of 2 per request"):
        decode(img, img, img, max_images=2)
    with pytest.raises(InvalidInputError, match="holds no images"):
        decode()


def test_errors_name_the_image() -> None:
    ok = raw(np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(InvalidInputError, match=r"^image 1 \(second\): carries neither encoded bytes nor a raw"):
        decode(ok, pb.Image(id="second"))
    with pytest.raises(InvalidInputError, match=r"^image 0: carries neither"):
        decode(pb.Image())
    short = pb.Image(raw=pb.RawArray(dtype="uint16", shape=[2, 2], data=b"\0" * 7), id="s")
    with pytest.raises(InvalidInputError, match=r"^image 2 \(s\): raw image data has 7 bytes; .* need 8"):
        decode(ok, ok, short)
    with pytest.raises(InvalidInputError, match=r"^image 0 \(junk\): not a readable image"):
        decode(pb.Image(encoded=b"definitely not a png", id="junk"))
    with pytest.raises(InvalidInputError, match=r"^image 0: raw image dtype 'int64'"):
        decode(raw(np.zeros((2, 2), dtype=np.int64)))
    with pytest.raises(InvalidInputError, match=r"^image 0: raw image shape \(2, 2, 2\)"):
        decode(raw(np.zeros((2, 2, 2), dtype=np.uint8)))


def test_pixel_limit_on_raw_and_decoded_images() -> None:
    arr = np.zeros((4, 5), dtype=np.uint8)
    assert decode(raw(arr), max_pixels=20)[0].shape == (4, 5)
    assert decode(pb.Image(encoded=png(arr)), max_pixels=20)[0].shape == (4, 5)
    with pytest.raises(InvalidInputError, match=r"^image 0 \(r\): image of 4x5 pixels exceeds the limit of 19"):
        decode(raw(arr, id="r"), max_pixels=19)
    with pytest.raises(InvalidInputError, match=r"^image 0: 5x4 pixels exceed the limit of 19"):
        decode(pb.Image(encoded=png(arr)), max_pixels=19)


def test_header_pixel_limit_refuses_before_decoding() -> None:
    """A PNG whose header claims 5000x5000 but whose pixel data is cut short: decoding it
    would fail as unreadable, so the size message proves the header check came first."""
    full = png(np.zeros((5000, 5000), dtype=np.uint8))
    cut = full[:200]
    with Image.open(io.BytesIO(cut)) as im:
        assert im.size == (5000, 5000)  # the header alone is readable
    with pytest.raises(InvalidInputError, match="not a readable PNG image"):
        decode(pb.Image(encoded=cut), max_pixels=5000 * 5000)  # within the limit the decoder runs, and fails
    with pytest.raises(InvalidInputError, match=r"^image 0 \(big\): 5000x5000 pixels exceed the limit of 1048576"):
        decode(pb.Image(encoded=cut, id="big"), max_pixels=BIG)


def test_decode_truths() -> None:
    gray = np.array([[0, 1], [255, 0]], dtype=np.uint8)
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 1, 2] = 1  # only blue
    rgb[1, 0, 0] = 200  # only red
    rgb[1, 1, 1] = 3  # only green
    wide = np.array([[0, 1], [0, 65535]], dtype=np.uint16)
    truths = codec.decode_truths([pb.Image(encoded=png(gray)), pb.Image(encoded=png(rgb)), raw(wide)], 3,
                                 max_images=8, max_pixels=BIG)
    assert truths is not None
    np.testing.assert_array_equal(truths[0], [[False, True], [True, False]])
    np.testing.assert_array_equal(truths[1], [[False, True], [True, True]])
    np.testing.assert_array_equal(truths[2], [[False, True], [False, True]])
    assert all(t.dtype == np.bool_ and t.shape == (2, 2) for t in truths)


def test_decode_truths_none_and_count_mismatch() -> None:
    mask = pb.Image(encoded=png(np.zeros((2, 2), dtype=np.uint8)))
    assert codec.decode_truths([], 3, max_images=8, max_pixels=BIG) is None
    with pytest.raises(InvalidInputError, match="1 truth masks for 2 images"):
        codec.decode_truths([mask], 2, max_images=8, max_pixels=BIG)
    with pytest.raises(InvalidInputError, match=r"^truth mask 1 \(m\): carries neither"):
        codec.decode_truths([mask, pb.Image(id="m")], 2, max_images=8, max_pixels=BIG)


def test_decode_truths_float_masks_keep_non_zero_as_tumor() -> None:
    everywhere = np.full((2, 2), 255.0, dtype=np.float32)
    signed = np.array([[-1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
    truths = codec.decode_truths([raw(everywhere), raw(signed)], 2, max_images=8, max_pixels=BIG)
    assert truths is not None
    np.testing.assert_array_equal(truths[0], np.ones((2, 2), dtype=bool))
    np.testing.assert_array_equal(truths[1], [[True, False], [False, True]])


# ------------------------------------------------------------------ options
def test_segment_options_map_every_field() -> None:
    req = pb.SegmentRequest(
        options=pb.ExplainOptions(method=pb.CAM_METHOD_LAYERCAM, target_class=0, layer="features.block2"),
        threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=85),
        gate=False, largest_component=True, overlay_png=True,
        mask_encodings=[pb.MASK_ENCODING_PNG, pb.MASK_ENCODING_RLE])
    o, _ = codec.segment_options(req, chunk=5)
    assert o.method is CamMethod.LAYERCAM
    assert o.target == 0  # set to 0 is not unset
    assert o.layer == "features.block2"
    assert o.threshold == ThresholdRule("percentile", 85.0)
    assert o.gate is False
    assert o.largest is True
    assert o.encodings == {Encoding.MASK_PNG, Encoding.MASK_RLE, Encoding.OVERLAY_PNG}
    assert o.chunk == 5
    assert o.fill_holes is False


def test_segment_options_defaults() -> None:
    o, recipe = codec.segment_options(pb.SegmentRequest(), chunk=16)
    assert recipe is False
    assert o.method is CamMethod.GRADCAM
    assert o.target is None
    assert o.layer is None
    assert o.threshold == ThresholdRule("otsu")
    assert o.gate is True  # unset gate means on
    assert o.largest is False
    assert o.encodings == {Encoding.MASK_BITS}
    assert o.chunk == 16
    assert codec.segment_options(pb.SegmentRequest(gate=True), chunk=1)[0].gate is True
    assert codec.segment_options(pb.SegmentRequest(overlay_png=True), chunk=1)[0].encodings == {
        Encoding.MASK_BITS, Encoding.OVERLAY_PNG}
    assert codec.segment_options(pb.SegmentRequest(options=pb.ExplainOptions(target_class=1)), chunk=1)[0].target == 1


def test_segment_options_take_the_recipe_unless_the_request_chooses() -> None:
    recipe = Options(method=CamMethod.LAYERCAM, threshold=ThresholdRule("percentile", 90), largest=True, tta=4,
                     refine=Refiner.CRF, decision_threshold=0.3)
    o, used = codec.segment_options(pb.SegmentRequest(gate=False, overlay_png=True), chunk=7, recipe=recipe)
    assert used and o.method is CamMethod.LAYERCAM and o.tta == 4 and o.refine.value == "crf"
    assert o.decision_threshold == 0.3 and o.largest and o.gate is False and o.chunk == 7
    assert Encoding.OVERLAY_PNG in o.encodings
    for chooses in (pb.SegmentRequest(threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_OTSU)),
                    pb.SegmentRequest(options=pb.ExplainOptions(layer="stage2")), pb.SegmentRequest(tta=4),
                    pb.SegmentRequest(options=pb.ExplainOptions(target_class=0)),
                    pb.SegmentRequest(refine=pb.REFINEMENT_CRF), pb.SegmentRequest(decision_threshold=0.4),
                    pb.SegmentRequest(no_recipe=True, largest_component=True)):
        o, used = codec.segment_options(chooses, chunk=1, recipe=recipe)
        assert not used and o.method is CamMethod.GRADCAM and o.refine.value in ("none", "crf"), chooses
    # modifiers keep the recipe; an empty options message chooses nothing
    for modifies in (pb.SegmentRequest(largest_component=True), pb.SegmentRequest(options=pb.ExplainOptions()),
                     pb.SegmentRequest(gate=True)):
        o, used = codec.segment_options(modifies, chunk=1, recipe=replace(recipe, largest=False, gate=False))
        assert used and o.method is CamMethod.LAYERCAM and o.tta == 4, modifies
        assert o.largest is modifies.largest_component and o.gate is False  # gate True leaves the recipe's off
    o, _ = codec.segment_options(pb.SegmentRequest(refine=pb.REFINEMENT_GRABCUT, tta=8, decision_threshold=0.25,
                                                   options=pb.ExplainOptions(method=pb.CAM_METHOD_DISTILLED)),
                                 chunk=1)
    assert (o.refine.value, o.tta, o.decision_threshold, o.method) == ("grabcut", 8, 0.25, Segmenter.DISTILLED)
    with pytest.raises(InvalidInputError, match="tta"):
        codec.segment_options(pb.SegmentRequest(tta=3), chunk=1)


def test_segment_options_refuse_bad_values() -> None:
    with pytest.raises(InvalidInputError, match=r"fixed threshold 1\.5"):
        codec.segment_options(pb.SegmentRequest(threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_FIXED, value=1.5)),
                              chunk=1)
    with pytest.raises(InvalidInputError, match="unknown mask encoding 9"):
        codec.segment_options(pb.SegmentRequest(mask_encodings=[9]), chunk=1)  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="unknown CAM method 17"):
        codec.segment_options(pb.SegmentRequest(options=pb.ExplainOptions(method=17)), chunk=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="chunk"):
        codec.segment_options(pb.SegmentRequest(), chunk=0)


def test_explain_options() -> None:
    o = codec.explain_options(pb.ExplainOptions(method=pb.CAM_METHOD_GRADCAM_PP, target_class=1, layer="x.y"),
                              overlay=True, chunk=3)
    assert (o.method, o.target, o.layer, o.chunk) == (CamMethod.GRADCAM_PP, 1, "x.y", 3)
    assert o.threshold is None  # heatmaps only
    assert o.encodings == {Encoding.OVERLAY_PNG}
    d = codec.explain_options(pb.ExplainOptions(), overlay=False, chunk=16)
    assert (d.method, d.target, d.layer, d.threshold, d.encodings) == (CamMethod.GRADCAM, None, None, None,
                                                                         frozenset())
    assert codec.explain_options(pb.ExplainOptions(target_class=0), overlay=False, chunk=1).target == 0


def test_mask_without_a_threshold_leaves_threshold_value_unset() -> None:
    """Otsu on a flat map finds no threshold: the field is absent, not a made-up 1.0."""
    import torch

    from camseg.pipeline.run import ImageResult, LoadedModel

    model = LoadedModel.__new__(LoadedModel)
    object.__setattr__(model, "classes", ("normal", "tumor"))
    flat = ImageResult(np.array([0.2, 0.8], np.float32), 1, 1, torch.zeros(4, 4), np.zeros((4, 4), bool), None)
    m = codec.mask(model, flat, "a", ThresholdRule("otsu"))
    assert not m.HasField("threshold_value") and m.area == 0
    found = ImageResult(np.array([0.2, 0.8], np.float32), 1, 1, torch.zeros(4, 4), np.ones((4, 4), bool), 0.25)
    m = codec.mask(model, found, "b", ThresholdRule("otsu"))
    assert m.HasField("threshold_value") and m.threshold_value == 0.25 and m.area == 16
