"""Explain and Segment with heatmaps at the CAM layer's resolution, over a real ``camseg
serve``: the layer map laid over its image by the returned grid equals the image-resolution
heatmap, the reply is smaller, and option combinations without a layer grid are refused."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from camseg.heat.cam import HeatGrid, normalise_maps
from services.client import SegmentationClient
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.services.servers import Server

FLOAT16_TOL = 2e-3  # float16 has 11 significant bits: 2^-10 relative, under 1e-3 in [0, 1]


def _heat(h: pb.Heatmap) -> np.ndarray:
    return np.frombuffer(h.data, np.float16).reshape(tuple(h.shape)).astype(np.float32)


def test_layer_map_laid_by_its_grid_equals_the_image_heatmap(stub: pb_grpc.SegmentationStub,
                                                             tumor_roi: tuple[bytes, bytes]) -> None:
    image = pb.Image(encoded=tumor_roi[0], id="a")
    full = stub.Explain(pb.ExplainRequest(images=[image]), timeout=60)
    cells = stub.Explain(pb.ExplainRequest(images=[image], heatmap_resolution=pb.HEATMAP_RESOLUTION_LAYER),
                         timeout=60)
    f, c = full.heatmaps[0], cells.heatmaps[0]
    assert not f.HasField("grid") and c.HasField("grid")
    assert c.layer == f.layer and list(c.classification.probabilities) == list(f.classification.probabilities)
    h, w = c.shape
    H, W = f.shape
    assert h * w < H * W
    assert (c.grid.scale_y * h, c.grid.scale_x * w, c.grid.offset_y, c.grid.offset_x) == (H, W, 0.0, 0.0)
    grid = HeatGrid(c.grid.scale_y, c.grid.scale_x, c.grid.offset_y, c.grid.offset_x)
    laid = normalise_maps(grid.to_image(torch.from_numpy(_heat(c))[None], (H, W)))[0].numpy()
    np.testing.assert_allclose(laid, _heat(f), atol=FLOAT16_TOL)
    # the reply is smaller by the float16 values not sent, less the grid's few bytes
    assert full.ByteSize() - cells.ByteSize() >= 2 * (H * W - h * w) - 64


def test_client_asks_for_layer_resolution(server: Server, tumor_roi: tuple[bytes, bytes]) -> None:
    with SegmentationClient(server.address, plaintext=True) as c:
        full = c.explain([tumor_roi[0]])[0]
        cells = c.explain([tumor_roi[0]], resolution="layer")[0]
    assert full.grid is None and cells.grid is not None
    assert cells.heatmap.size < full.heatmap.size
    np.testing.assert_allclose(cells.at_image(), full.heatmap, atol=FLOAT16_TOL)


def test_segment_returns_the_heatmap_it_was_asked_for(stub: pb_grpc.SegmentationStub,
                                                      tumor_roi: tuple[bytes, bytes]) -> None:
    image = pb.Image(encoded=tumor_roi[0])
    plain = stub.Segment(pb.SegmentRequest(images=[image], gate=False), timeout=60).masks[0]
    at_image = stub.Segment(pb.SegmentRequest(images=[image], gate=False,
                                              heatmap_resolution=pb.HEATMAP_RESOLUTION_IMAGE), timeout=60).masks[0]
    at_layer = stub.Segment(pb.SegmentRequest(images=[image], gate=False,
                                              heatmap_resolution=pb.HEATMAP_RESOLUTION_LAYER), timeout=60).masks[0]
    assert not plain.HasField("heatmap")
    assert plain.packed_bits == at_image.packed_bits == at_layer.packed_bits  # the mask is made as before
    assert list(at_image.heatmap.shape) == list(plain.shape) and not at_image.heatmap.HasField("grid")
    assert at_layer.heatmap.HasField("grid") and at_layer.ByteSize() < at_image.ByteSize()


@pytest.mark.parametrize("rpc, request_", [
    ("Explain", pb.ExplainRequest(options=pb.ExplainOptions(method=pb.CAM_METHOD_FUSED),
                                  heatmap_resolution=pb.HEATMAP_RESOLUTION_LAYER)),
    ("Explain", pb.ExplainRequest(tiling=pb.Tiling(mode=pb.WHOLE_MODE_ALWAYS, scale=1.0),
                                  heatmap_resolution=pb.HEATMAP_RESOLUTION_LAYER)),
    ("Explain", pb.ExplainRequest(heatmap_resolution=7)),  # type: ignore[arg-type]  # an unknown value
    ("Segment", pb.SegmentRequest(tta=4, heatmap_resolution=pb.HEATMAP_RESOLUTION_LAYER)),
    ("Segment", pb.SegmentRequest(options=pb.ExplainOptions(method=pb.CAM_METHOD_FUSED),
                                  heatmap_resolution=pb.HEATMAP_RESOLUTION_LAYER)),
])
def test_bad_combinations_get_invalid_argument(stub: pb_grpc.SegmentationStub, tumor_roi: tuple[bytes, bytes],
                                               rpc: str, request_: pb.ExplainRequest | pb.SegmentRequest) -> None:
    request_.images.add(encoded=tumor_roi[0])
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, rpc)(request_, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


def test_a_large_image_that_goes_whole_is_refused_at_layer_resolution(stub: pb_grpc.SegmentationStub) -> None:
    big = np.zeros((400, 400), np.uint8)
    image = pb.Image(raw=pb.RawArray(dtype="uint8", shape=[400, 400], data=big.tobytes()))
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(pb.ExplainRequest(images=[image], tiling=pb.Tiling(scale=1.0),
                                       heatmap_resolution=pb.HEATMAP_RESOLUTION_LAYER), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "goes whole" in (err.value.details() or "")
