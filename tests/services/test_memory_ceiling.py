"""The largest image the pixel limit admits (16-bit, 4096 x 4096), sent to a real
``camseg serve`` with the heaviest options and with a recipe of TTA and the dense CRF:
answered, and the server's peak RSS stays under the ceiling SECURITY.md states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.memory import CEILING_MIB, big_image16, vm_hwm_mib, with_recipe
from tests.services.servers import Launcher

SEND = 128 * 1024 * 1024  # every encoding of a 4096 x 4096 mask and overlay at once needs more than 64 MiB
ALL = [pb.MASK_ENCODING_PNG, pb.MASK_ENCODING_PACKED_BITS, pb.MASK_ENCODING_RLE]


@pytest.fixture(scope="module")
def image16() -> bytes:
    return big_image16()


def test_the_largest_image_with_the_heaviest_options_stays_under_the_ceiling(
        exported: tuple[Path, dict[str, Any]], tmp_path: Path, launch: Launcher, image16: bytes) -> None:
    repo = tmp_path / "repo"
    with_recipe(exported[0], repo / "tiny" / "1")
    s = launch(repo, env={"CAMSEG_MAX_SEND_BYTES": str(SEND)})
    ch = grpc.insecure_channel(s.address, options=[("grpc.max_receive_message_length", SEND),
                                                    ("grpc.max_send_message_length", SEND)])
    stub = pb_grpc.SegmentationStub(ch)
    image = pb.Image(encoded=image16, id="big")
    heaviest = dict(images=[image], tta=8, refine=pb.REFINEMENT_CRF, gate=False,
                    overlay_png=True, mask_encodings=ALL)
    requests = {
        "ROI": pb.SegmentRequest(**heaviest, tiling=pb.Tiling(mode=pb.WHOLE_MODE_NEVER)),  # type: ignore[arg-type]
        "whole": pb.SegmentRequest(**heaviest, tiling=pb.Tiling(mode=pb.WHOLE_MODE_ALWAYS)),  # type: ignore[arg-type]
        "recipe": pb.SegmentRequest(images=[image]),
    }
    for name, request in requests.items():
        reply = stub.Segment(request, timeout=240)
        (mask,) = reply.masks
        assert list(mask.shape) == [4096, 4096] and mask.packed_bits and mask.area > 0, name
        assert bool(mask.png and mask.overlay_png and mask.rle) == (name != "recipe"), name
        assert reply.recipe == (name == "recipe"), name
    peak = vm_hwm_mib(s.proc.pid)
    print(f"server peak RSS {peak:.0f} MiB")
    assert peak < CEILING_MIB, f"server peak RSS {peak:.0f} MiB"
