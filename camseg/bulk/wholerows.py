"""What whole-image inference (:mod:`camseg.pipeline.whole`) adds to the tables bulk
segmentation writes: the image-level columns of a results row, and one row per lesion
candidate in ``lesions.csv``. ``camseg segment`` and the bulk jobs (folders and series)
write both through here.

Coordinates are the image's own pixels: ``box`` ``(y0, x0, y1, x1)`` with exclusive
ends, centroid ``(cy, cx)``; ``slice`` is the slice (frame) index within a series, empty
for a folder's image. An image segmented as an ROI has ``whole`` 0 and no lesion rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from camseg.models.modeldir import atomic_write_bytes
from camseg.pipeline.whole import WholeInfo

LESIONS = "lesions.csv"
WHOLE_COLUMNS = ["whole", "scale", "image_score", "tiles", "skipped", "lesions", "note"]
LESION_COLUMNS = ["id", "slice", "rank", "score", "area", "y0", "x0", "y1", "x1", "cy", "cx"]


def whole_values(info: WholeInfo | None) -> dict[str, Any]:
    """The :data:`WHOLE_COLUMNS` of one image (blank but ``whole`` 0 for an ROI)."""
    if info is None:
        return {**dict.fromkeys(WHOLE_COLUMNS, ""), "whole": 0}
    return {"whole": 1, "scale": info.scale, "image_score": round(info.score, 6), "tiles": info.tiles,
            "skipped": info.skipped, "lesions": len(info.lesions), "note": info.note}


def blank_values() -> dict[str, Any]:
    """The :data:`WHOLE_COLUMNS` of an image that failed before it was segmented."""
    return dict.fromkeys(WHOLE_COLUMNS, "")


def lesion_rows(image_id: str, info: WholeInfo | None, *, slice_index: int | None = None) -> list[dict[str, Any]]:
    """One :data:`LESION_COLUMNS` row per lesion candidate, the highest-scoring first
    (rank 1); none for an ROI."""
    if info is None:
        return []
    return [{"id": image_id, "slice": "" if slice_index is None else slice_index, "rank": k,
             "score": round(c.score, 6), "area": c.area, "y0": c.box[0], "x0": c.box[1], "y1": c.box[2],
             "x1": c.box[3], "cy": round(c.centroid[0], 2), "cx": round(c.centroid[1], 2)}
            for k, c in enumerate(info.lesions, start=1)]


def lesions_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=LESION_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def write_lesions(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as ``lesions.csv`` at ``path`` (header only where there are none), atomically."""
    atomic_write_bytes(path, lesions_csv(rows))
