"""DICOM in and out: instances and series to modality values with a plane geometry, windowing
to ``[0, 1]``, and tumor masks back out as DICOM SEG, NIfTI or NRRD.

Conventions
-----------
* **Arrays**: a volume is ``(N, R, C)`` = (slices or frames, rows, columns), as SimpleITK's
  ``GetArrayFromImage`` gives it; colour volumes are ``(N, R, C, 3)`` RGB.
* **Values** are modality values, float32: the stored values through the Modality LUT or
  Rescale Slope/Intercept (HU for CT), RT Dose's DoseGridScaling applied (Gy). MONOCHROME1
  images are mirrored within their value range so bright always means dense, and their
  VOI window centre is mirrored the same way (:func:`voi`). Colour (RGB, YBR converted to
  RGB, PALETTE COLOR through its LUT) keeps its stored values.
* **World** coordinates are DICOM patient LPS, mm. Voxel ``(i, j, k)`` = (column, row,
  slice) sits at ``origin + direction @ (spacing * [i, j, k])`` (:class:`Geometry`). DICOM's
  PixelSpacing is (row spacing, column spacing), so the column step ``i`` is
  ``PixelSpacing[1]`` and the row step ``j`` is ``PixelSpacing[0]``. NIfTI's RAS affine is
  ``diag(-1, -1, 1, 1) @ affine``.
* **Windowing** (:class:`~camseg.core.windowing.Windowing`) is DICOM's linear window without its half-unit
  offsets: ``lo = center - width / 2``, ``hi = center + width / 2``, clipped.
* **Input is not trusted**: a file must be DICOM Part 10 ('DICM' at byte 128); truncation is
  detected (pydicom itself reads a truncated file silently), headers are checked before
  any pixel is decoded, and every problem is one :class:`~camseg.core.errors.InvalidInputError`
  (or :class:`~camseg.core.errors.UnsupportedError` for a transfer syntax no installed decoder
  handles) whose one-line message names the instance.

Modules
-------
* :mod:`~camseg.io.dicom.read`: one Part 10 instance parsed, its image header.
* :mod:`~camseg.io.dicom.pixels`: frames to modality values, the VOI window, one instance
  decoded and windowed.
* :mod:`~camseg.io.dicom.geometry`: :class:`Geometry`, slice order and spacing checks.
* :mod:`~camseg.io.dicom.series`: series found under folders, loaded; volume files.
* :mod:`~camseg.io.dicom.write`: DICOM SEG, Part 10 bytes, NIfTI/NRRD volumes, a DICOM MG
  instance of a mammogram.

The names below are the package's API, importable from ``camseg.io.dicom``.
"""

from camseg.io.dicom.geometry import ORIENTATION_TOLERANCE, SPACING_TOLERANCE_MM, Geometry
from camseg.io.dicom.pixels import decode_instance, frames, voi
from camseg.io.dicom.read import dataset_header, header, read_dataset
from camseg.io.dicom.series import Series, SeriesFiles, load_series, load_volume, scan
from camseg.io.dicom.write import Algorithm, MammogramIds, mammogram, segmentation, to_bytes, write_volume

__all__ = [
    "ORIENTATION_TOLERANCE",
    "SPACING_TOLERANCE_MM",
    "Algorithm",
    "Geometry",
    "MammogramIds",
    "Series",
    "SeriesFiles",
    "dataset_header",
    "decode_instance",
    "frames",
    "header",
    "load_series",
    "load_volume",
    "mammogram",
    "read_dataset",
    "scan",
    "segmentation",
    "to_bytes",
    "voi",
    "write_volume",
]
