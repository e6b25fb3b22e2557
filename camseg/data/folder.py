"""The folder layout: ``images/<id>.png|tif|jpg``, ``masks/<id>.png``, ``labels.csv``.

``labels.csv`` has the columns ``id,label[,split]``; a label is a class name or a
class index. A mask is optional (normal ROIs have none); non-zero mask pixels are
tumor. Images are 8- or 16-bit, grayscale or RGB; a mask must have its image's
height and width. ``dataset.json`` (optional) records ``classes`` and provenance.

Every problem stops with one :class:`~camseg.core.errors.InvalidInputError` whose message
names the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.core.limits import DEFAULT_MAX_WHOLE_PIXELS
from camseg.core.outdir import check_replaceable, mark
from camseg.core.types import BoolArray, FloatArray
from camseg.io.codecs import write_png
from camseg.io.guards import array_to_float, check_id, path_under
from camseg.io.inputs import decode_image, decode_mask, decode_pixels, mask_from_array

__all__ = ["CLASSES", "SPLITS", "BoolArray", "FloatArray", "FolderDataset", "Record", "Sample", "array_to_float",
           "atomic_directory", "decode_image", "decode_mask", "decode_pixels", "mask_from_array", "read_mask",
           "write_dataset"]

CLASSES: tuple[str, ...] = ("normal", "tumor")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".dcm")
SPLITS = ("train", "val", "test")



@dataclass(frozen=True)
class Record:
    """One ROI to write: pixel data in memory, written as ``images/<id>.png``.

    ``files`` are further files of the record, ``(path relative to the data set root,
    bytes)``. An image written as one of them (``images/<id>.dcm``) has ``png`` False.
    """

    id: str
    label: int
    split: str | None
    image: npt.NDArray[Any]
    mask: BoolArray | None
    files: tuple[tuple[str, bytes], ...] = ()
    png: bool = True


@dataclass(frozen=True)
class Sample:
    """One ROI of a data set on disk."""

    id: str
    label: int
    split: str | None
    image_path: Path
    mask_path: Path | None


def read_mask(path: Path) -> BoolArray:
    """A mask image: non-zero pixels (any channel) are tumor."""
    return decode_mask(path, name=str(path), max_pixels=DEFAULT_MAX_WHOLE_PIXELS)


def _find_image(images_dir: Path, sample_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for cand in (images_dir / f"{sample_id}{suffix}", images_dir / f"{sample_id}{suffix.upper()}"):
            if cand.is_file():
                return cand
    return None


class FolderDataset:
    """A data set in the folder layout, validated on open (no pixel data read)."""

    def __init__(self, root: Path, samples: Sequence[Sample], classes: Sequence[str], meta: dict[str, Any]):
        self.root = root
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.meta = meta

    def __len__(self) -> int:
        return len(self.samples)

    @classmethod
    def open(cls, root: Path | str, classes: Sequence[str] | None = None) -> FolderDataset:
        root = Path(root)
        if not root.is_dir():
            raise NotFoundError(f"{root}: no such data directory")
        meta: dict[str, Any] = {}
        meta_path = root / "dataset.json"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InvalidInputError(f"{meta_path}: not valid JSON ({exc})") from exc
        class_names = tuple(classes or meta.get("classes") or CLASSES)
        labels_path = root / "labels.csv"
        if not labels_path.is_file():
            raise InvalidInputError(f"{labels_path}: missing (columns id,label[,split])")
        samples: list[Sample] = []
        seen: set[str] = set()
        line = 1
        try:
            with labels_path.open(newline="") as fh:
                text = fh.read()
            physical = text.splitlines()
            reader = csv.DictReader(io.StringIO(text, newline=""))
            if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
                raise InvalidInputError(f"{labels_path}: header must have the columns id,label[,split]")
            while True:
                end = reader.line_num
                line = end + 1  # where the next record starts: after blank lines, the first line of a quoted field
                while line <= len(physical) and not physical[line - 1].strip():
                    line += 1
                try:
                    row = next(reader)
                except StopIteration:
                    break
                samples.append(cls._sample(root, labels_path, line, row, class_names, seen))
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{labels_path}: not a text CSV file") from exc
        except csv.Error as exc:
            raise InvalidInputError(f"{labels_path}:{line}: not a valid CSV row ({exc})") from None
        if not samples:
            raise InvalidInputError(f"{labels_path}: the data set is empty")
        return cls(root, samples, class_names, meta)

    @staticmethod
    def _sample(
        root: Path, labels_path: Path, line: int, row: dict[str, str], classes: Sequence[str], seen: set[str]
    ) -> Sample:
        sid = (row.get("id") or "").strip()
        where = f"{labels_path}:{line}"
        if not sid:
            raise InvalidInputError(f"{where}: empty id")
        check_id(sid, where)
        if sid in seen:
            raise InvalidInputError(f"{where}: duplicate id {sid!r}")
        seen.add(sid)
        raw = (row.get("label") or "").strip()
        if raw in classes:
            label = classes.index(raw)
        elif raw.isdigit() and int(raw) < len(classes):
            label = int(raw)
        else:
            raise InvalidInputError(f"{where}: label {raw!r} of {sid!r} is not one of {', '.join(classes)}")
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            raise InvalidInputError(f"{where}: split {split!r} of {sid!r} is not one of {', '.join(SPLITS)}")
        image_path = _find_image(root / "images", sid)
        if image_path is None:
            raise InvalidInputError(f"{root / 'images'}: no image for id {sid!r} ({'|'.join(IMAGE_SUFFIXES)})")
        path_under(root, image_path, where)  # a symlink out of the data set is refused
        mask_path = root / "masks" / f"{sid}.png"
        if mask_path.is_file():
            path_under(root, mask_path, where)
            return Sample(sid, label, split, image_path, mask_path)
        return Sample(sid, label, split, image_path, None)

    def load(self, index: int, *, max_pixels: int = DEFAULT_MAX_WHOLE_PIXELS) -> tuple[FloatArray, BoolArray | None]:
        """Pixel data of one sample (an image larger than ``max_pixels`` is refused before
        it is decoded: by default the whole-image limit, so a data set of full-field images
        reads); checks that its mask has the image's shape."""
        s = self.samples[index]
        image = decode_image(s.image_path, name=str(s.image_path), max_pixels=max_pixels)
        mask = None
        if s.mask_path is not None:
            mask = decode_mask(s.mask_path, name=str(s.mask_path), max_pixels=max_pixels)
            if mask.shape != image.shape[:2]:
                raise InvalidInputError(
                    f"{s.mask_path}: mask shape {mask.shape} differs from its image {image.shape[:2]}"
                )
        return image, mask

    def subset(self, split: str | None) -> list[int]:
        """Indices of a split; all samples when ``split`` is None or the set has no splits."""
        if split is None or all(s.split is None for s in self.samples):
            return list(range(len(self.samples)))
        return [i for i, s in enumerate(self.samples) if s.split == split]


@contextlib.contextmanager
def atomic_directory(out: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``out`` to fill; on success it replaces ``out`` in one
    rename, on any failure it is removed. ``out`` appears whole or not at all, marked as
    camseg's own (:mod:`camseg.core.outdir`); an existing non-empty ``out`` is replaced
    only with ``overwrite`` and only when it carries that mark."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        mark(tmp, out.name)
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_dataset(
    out: Path, records: Iterable[Record], meta: dict[str, Any], *, overwrite: bool = False
) -> Path:
    """Write ``records`` in the folder layout, atomically: all of it or nothing.

    The set is built in a sibling temporary directory and renamed into place, so an
    interrupted write leaves no half-written data set behind.
    """

    with atomic_directory(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        with (tmp / "labels.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "label", "split"])
            classes = meta.get("classes", CLASSES)
            for r in records:
                if r.png:
                    write_png(tmp / "images" / f"{r.id}.png", r.image)
                if r.mask is not None:
                    write_png(tmp / "masks" / f"{r.id}.png", r.mask)
                for name, data in r.files:
                    path = path_under(tmp, tmp / name, r.id)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                writer.writerow([r.id, classes[r.label], r.split or ""])
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return Path(out)
