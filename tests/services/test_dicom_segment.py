"""DICOM over the gRPC service, in a real ``camseg serve`` process: an ``Image.encoded``
that is a DICOM instance is windowed and answered like any image, and Segment returns
the mask as a DICOM SEG referencing it on request."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import highdicom as hd
import numpy as np
import pydicom
import pytest

from camseg.data.synth import SynthConfig, generate
from camseg.io import dicom
from camseg.io.codecs import unpack_bits
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.dicomdata import write_series

TINY = pb.ModelRef(name="tiny")


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Four CT instances of one series, each an ROI of the tiny model's size on the
    soft-tissue window."""
    images, _, _, _ = generate(SynthConfig(n=4, size=32, seed=7))
    values = np.round(864 + 400 * np.clip(images, 0, 1)).astype(np.uint16)
    files = write_series(tmp_path_factory.mktemp("dicom"), values)
    return [f.read_bytes() for f in sorted(files)]


def test_dicom_images_are_windowed_and_classified(stub: pb_grpc.SegmentationStub, instances: list[bytes]) -> None:
    raw = [dicom.decode_instance(b) for b in instances]
    by_dicom = stub.Classify(pb.ClassifyRequest(model=TINY, images=[pb.Image(encoded=b) for b in instances]))
    by_raw = stub.Classify(pb.ClassifyRequest(model=TINY, images=[
        pb.Image(raw=pb.RawArray(dtype="float32", shape=list(r.shape), data=r.tobytes())) for r in raw]))
    for a, b in zip(by_dicom.results, by_raw.results, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_segment_answers_a_dicom_seg_of_the_mask(stub: pb_grpc.SegmentationStub, instances: list[bytes]) -> None:
    reply = stub.Segment(pb.SegmentRequest(
        model=TINY, images=[pb.Image(encoded=b, id=f"slice{i}") for i, b in enumerate(instances)],
        threshold=pb.ThresholdRule(kind=pb.THRESHOLD_KIND_PERCENTILE, value=80), gate=False,
        mask_encodings=[pb.MASK_ENCODING_PACKED_BITS, pb.MASK_ENCODING_DICOM_SEG]))
    assert any(m.area for m in reply.masks)  # the comparison below is not of empty masks alone
    for m, data in zip(reply.masks, instances, strict=True):
        mask = unpack_bits(m.packed_bits, m.shape)
        source = pydicom.dcmread(io.BytesIO(data))
        seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(m.dicom_seg)))
        assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source.SOPInstanceUID],
                                                   ignore_spatial_locations=True)
        np.testing.assert_array_equal(pixels[0, ..., 0] > 0, mask)
        algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "camseg"
        assert "tiny" in str(algo.AlgorithmParameters)
    only_seg = stub.Segment(pb.SegmentRequest(model=TINY, images=[pb.Image(encoded=instances[0])],
                                              mask_encodings=[pb.MASK_ENCODING_DICOM_SEG]))
    assert only_seg.masks[0].dicom_seg and not only_seg.masks[0].packed_bits


def test_bad_dicom_requests_are_invalid_arguments(stub: pb_grpc.SegmentationStub, instances: list[bytes],
                                                  tumor_roi: tuple[bytes, bytes], tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Segment(pb.SegmentRequest(model=TINY, images=[pb.Image(encoded=tumor_roi[0], id="a-png")],
                                       mask_encodings=[pb.MASK_ENCODING_DICOM_SEG]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "a-png" in str(err.value.details())
    assert "DICOM instance" in str(err.value.details())
    ds = pydicom.dcmread(io.BytesIO(instances[0]))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(model=TINY, images=[pb.Image(encoded=buf.getvalue(), id="no-pixels")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no-pixels" in str(err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(model=TINY, images=[pb.Image(encoded=instances[0][:300], id="cut")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cut" in str(err.value.details())
