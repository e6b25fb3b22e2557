"""Tumor masks out: a DICOM SEG over a series' source instances, its Part 10 bytes, and
NIfTI or NRRD volumes written atomically; a mammogram as a DICOM MG instance."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

import camseg
from camseg.core.errors import InvalidInputError, UnsupportedError
from camseg.io.dicom.geometry import Geometry
from camseg.io.dicom.read import floats, reason
from camseg.io.dicom.series import Series

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Algorithm:
    """What made a segmentation, recorded in the SEG (AlgorithmIdentificationSequence)."""

    model: str
    model_version: str
    recipe: str
    version: str = camseg.__version__
    name: str = "camseg"


def segmentation(mask: npt.NDArray[np.bool_], series: Series, algorithm: Algorithm, *,
                 series_number: int = 900, label: str = "Tumor") -> Dataset:
    """A DICOM SEG (``highdicom.seg.Segmentation``, BINARY) of ``mask`` ``(N, R, C)`` over
    the series' source instances.

    One segment: category SCT "Morphologically abnormal structure", type SCT "Neoplasm",
    algorithm type AUTOMATIC with the algorithm identification (name, version, family
    Artificial Intelligence, parameters model / model_version / recipe). Manufacturer
    ``camseg``, model name the algorithm's name, software version its version. Every frame
    is kept, so an all-empty mask is a valid SEG too. Works for several single-frame
    instances, one instance, and one multi-frame instance (frame ``n`` of the mask is
    source frame ``n + 1``). Non-zero mask values are tumor.

    Raises:
        UnsupportedError: a series without DICOM instances (a volume file).
        InvalidInputError: a mask whose shape is not the series' ``(N, R, C)``; sources
            highdicom cannot reference (the message names the series).
    """
    if not series.datasets:
        where = series.source or series.name
        raise UnsupportedError(f"{where}: not a DICOM series, so a DICOM SEG has no instances to reference; write a "
                               "NIfTI/NRRD mask instead")
    m = np.asarray(mask)
    if m.shape != series.values.shape[:3]:
        raise InvalidInputError(f"{series.name}: mask shape {tuple(m.shape)} differs from the series' "
                                f"{tuple(series.values.shape[:3])} (N, R, C)")
    m = m != 0
    import highdicom as hd  # only here: heavy to import, and reading DICOM needs none of it
    from pydicom.sr.codedict import codes  # with highdicom: only a SEG needs the coded concepts

    sources = series.datasets
    if len(sources) == 1 and m.shape[0] > 1 and "SharedFunctionalGroupsSequence" not in sources[0]:
        sources = [_with_functional_groups(sources[0], series, m.shape[0])]

    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version, family=codes.cid7162.ArtificialIntelligence,
        parameters={"model": algorithm.model, "model_version": algorithm.model_version, "recipe": algorithm.recipe})
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=m, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=series_number,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="camseg",
            manufacturer_model_name=algorithm.name, software_versions=algorithm.version,
            device_serial_number="0", omit_empty_frames=False,
            series_description=f"{algorithm.name} {label}"[:64])
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InvalidInputError(f"{series.name}: cannot make a DICOM SEG of it ({reason(exc)})") from None
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" not in shared and "PatientOrientation" not in seg:
        # Type 2C where the image has no plane orientation (secondary capture): the source's, or empty.
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
    logger.info("SEG of %s: %d frames, %d tumor voxels", series.name, m.shape[0], int(m.sum()))
    return seg


def _with_functional_groups(ds: Dataset, series: Series, nframes: int) -> Dataset:
    """A copy of a legacy multi-frame instance (RT Dose: one IPP + GridFrameOffsetVector) with
    its geometry as the shared and per-frame functional groups highdicom reads; the SEG still
    references the original by its SOPInstanceUID."""
    geometry = series.geometry
    if geometry is None:
        raise UnsupportedError(f"{series.name}: a multi-frame instance without plane geometry; a DICOM SEG cannot "
                               "place its frames, write a NIfTI/NRRD mask instead")
    copy = Dataset()
    copy.update(ds)  # a shallow copy: the source's elements are not changed
    copy.file_meta = ds.file_meta
    direction = np.asarray(geometry.direction)
    measures = Dataset()
    measures.PixelSpacing = [_ds_text(geometry.spacing[1]), _ds_text(geometry.spacing[0])]
    thickness = floats(ds, "SliceThickness", 1, series.name)
    measures.SliceThickness = _ds_text(float(thickness[0]) if thickness is not None else geometry.spacing[2])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [_ds_text(v) for v in (*direction[:, 0], *direction[:, 1])]
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    copy.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames_groups = []
    for k in range(nframes):
        position = Dataset()
        position.ImagePositionPatient = [_ds_text(v) for v in (geometry.affine @ [0.0, 0.0, k, 1.0])[:3]]
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([position])
        frames_groups.append(item)
    copy.PerFrameFunctionalGroupsSequence = DicomSequence(frames_groups)
    return copy


def _ds_text(x: float) -> str:
    """A DICOM DS string (16 characters at most) of ``x``."""
    text = f"{float(x):.10g}"
    return text if len(text) <= 16 else f"{float(x):.8e}"[:16]


def to_bytes(ds: Dataset) -> bytes:
    """Part 10 bytes (preamble, file meta) of ``ds``; Explicit VR Little Endian where its
    file meta names no transfer syntax."""
    ds.ensure_file_meta()
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass(frozen=True)
class MammogramIds:
    """Who and what a mammogram instance belongs to."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    instance_number: int = 1
    date: str = "20000101"  # DICOM DA
    description: str = "camseg synthetic"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def mammogram(pixels: npt.NDArray[np.uint16], *, spacing_mm: float, laterality: str, ids: MammogramIds) -> Dataset:
    """A Digital Mammography X-Ray Image (For Presentation) instance, cranio-caudal view, of
    ``pixels`` (uint16 ``(R, C)``, high = dense), RLE Lossless.

    MONOCHROME1, 16 bits stored: the stored value is ``65535 - pixels`` (high = dark), with
    Presentation LUT Shape INVERSE and a VOI window over the whole range, so a reader that
    mirrors MONOCHROME1 (:func:`camseg.io.dicom.frames`) gets ``pixels`` back. PixelSpacing
    and ImagerPixelSpacing are ``spacing_mm``. ``laterality`` ``L`` puts the chest wall on
    the left edge (Patient Orientation A\\R), ``R`` on the right (P\\L). The encoded copy is
    held beside the array, so memory is about three times the pixel data's.

    Raises:
        InvalidInputError: not a 2-D uint16 array; laterality not L or R; spacing not > 0.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.dtype != np.uint16:
        raise InvalidInputError(f"a mammogram must be a 2-D uint16 array, got {arr.dtype} {tuple(arr.shape)}")
    if laterality not in ("L", "R"):
        raise InvalidInputError(f"laterality must be L or R, got {laterality!r}")
    if not spacing_mm > 0:
        raise InvalidInputError(f"pixel spacing must be > 0 mm, got {spacing_mm}")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.SOPInstanceUID = ids.sop_instance_uid
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = ids.date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "MG"
    ds.Manufacturer = "camseg"
    ds.ManufacturerModelName = "camseg.data.fullfield"
    ds.SoftwareVersions = camseg.__version__
    ds.InstitutionName = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = ds.SeriesDescription = ids.description[:64]
    ds.PatientName = f"SYNTHETIC^{ids.patient_id}"[:64]
    ds.PatientID = ids.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.StudyInstanceUID = ids.study_uid
    ds.SeriesInstanceUID = ids.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = ids.instance_number
    ds.PatientOrientation = ["A", "R"] if laterality == "L" else ["P", "L"]
    ds.ImageLaterality = laterality
    ds.BurnedInAnnotation = "NO"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.DetectorType = "DIRECT"
    ds.KVP = ""
    ds.DistanceSourceToDetector = ""
    ds.DistanceSourceToPatient = ""
    ds.PositionerPrimaryAngle = ""
    ds.BodyPartThickness = ""
    ds.CompressionForce = ""
    ds.EstimatedRadiographicMagnificationFactor = 1
    ds.ContrastBolusAgent = ""
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.AnatomicRegionSequence = DicomSequence([_code("76752008", "SCT", "Breast")])
    view = _code("399162004", "SCT", "cranio-caudal")
    view.ViewModifierCodeSequence = DicomSequence([])
    ds.ViewCodeSequence = DicomSequence([view])
    spacing = [_ds_text(spacing_mm), _ds_text(spacing_mm)]
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Rows, ds.Columns = (int(n) for n in arr.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE"
    ds.WindowCenter = "32767.5"
    ds.WindowWidth = "65535"
    ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.QualityControlImage = "NO"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    stored = np.subtract(np.uint16(65535), arr)
    ds.compress(RLELossless, stored, encoding_plugin="pydicom")
    return ds


_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


def write_volume(path: Path, array: npt.NDArray[Any], geometry: Geometry | None) -> Path:
    """Write an ``(N, R, C)`` array as NIfTI (``.nii``, ``.nii.gz``) or NRRD (``.nrrd``).

    Both store the array in ``(i, j, k)`` order (``transpose(2, 1, 0)``). NIfTI: sform
    (and, where the directions are orthogonal, qform) = ``geometry.ras_affine``, code
    scanner, units mm. NRRD: space ``left-posterior-superior``, space directions = the
    direction columns times the spacing, space origin = the origin, gzip encoded. Bool
    arrays are stored as uint8 0/1, floats as float32, 64-bit integers as 32-bit where they
    fit. ``geometry`` None writes the identity. Written under a temporary name and renamed
    into place, so a reader never sees a partial file.

    Raises:
        InvalidInputError: another suffix, or not a 3-D array.
    """
    path = Path(path)
    suffix = next((s for s in _VOLUME_SUFFIXES if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise InvalidInputError(f"{path}: unsupported volume suffix (expected {', '.join(_VOLUME_SUFFIXES)})")
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise InvalidInputError(f"{path}: expected an (N, R, C) array, got shape {tuple(arr.shape)}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    elif arr.dtype in (np.int64, np.uint64) and arr.size and arr.min() >= -(2**31) and arr.max() < 2**31:
        arr = arr.astype(np.int32)  # NIfTI readers often lack 64-bit integers
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(f"{path}: unsupported voxel type {arr.dtype}")
    geo = geometry or Geometry.make((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    data = np.asfortranarray(arr.transpose(2, 1, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".nrrd":
            directions = np.asarray(geo.direction) * np.asarray(geo.spacing)
            nrrd.write(str(tmp), data, {"space": "left-posterior-superior", "space directions": directions.T,
                                        "space origin": np.asarray(geo.origin), "kinds": ["domain"] * 3,
                                        "encoding": "gzip"})
        else:
            affine = geo.ras_affine
            img = nib.Nifti1Image(data, affine)
            img.set_sform(affine, code=1)  # scanner coordinates
            direction = np.asarray(geo.direction)
            orthogonal = np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)
            img.set_qform(affine if orthogonal else None, code=1 if orthogonal else 0)  # qform cannot shear
            img.header.set_xyzt_units("mm")
            nib.save(img, str(tmp))
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote %s: %s %s", path, tuple(arr.shape), arr.dtype)
    return path
