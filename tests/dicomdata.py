"""Small, valid DICOM series for tests, written with pydicom (no downloads).

* :func:`write_series`: one single-frame CT or MR Image Storage instance per slice of an
  ``(N, R, C)`` array of stored values, with a known plane geometry.
* :func:`write_multiframe`: one Enhanced CT / Enhanced MR Image Storage instance holding the
  whole ``(N, R, C)`` array, its geometry in the per-frame functional groups.

Geometry conventions are DICOM's: ``spacing`` is ``(column step, row step, slice step)`` in mm,
``row_cosines`` is the LPS direction along a row (increasing column index) and
``column_cosines`` the direction down a column; slice ``k`` sits at
``origin + k * spacing[2] * cross(row_cosines, column_cosines)``.
Stored values are the array as given; modality values are ``stored * slope + intercept``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def normal(row_cosines: Sequence[float], column_cosines: Sequence[float]) -> npt.NDArray[np.float64]:
    """The slice normal, ``cross(row cosines, column cosines)``, as DICOM defines it."""
    return np.cross(np.asarray(row_cosines, dtype=float), np.asarray(column_cosines, dtype=float))


def _ds(n: float) -> str:
    """A DS string (at most 16 characters) for ``n``."""
    text = f"{n:.10g}"
    return text if len(text) <= 16 else f"{n:.6e}"


def _base(
    sop_class: UID,
    modality: str,
    *,
    rows: int,
    columns: int,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    transfer_syntax: UID,
) -> Dataset:
    """The modules every image here shares: patient, study, series, frame of reference,
    equipment, SOP common."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
    ds.AccessionNumber = "A1"
    ds.Modality = modality
    ds.Manufacturer = "camseg tests"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "PHANTOM1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "ABDOMEN"  # unpaired: no Laterality
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _stored(volume: npt.NDArray[np.integer]) -> tuple[npt.NDArray[np.integer], int]:
    """The volume as int16 (signed) or uint16, and its PixelRepresentation."""
    vol = np.asarray(volume)
    if vol.ndim != 3 or not np.issubdtype(vol.dtype, np.integer):
        raise ValueError(f"expected an (N, R, C) integer array, got {vol.shape} {vol.dtype}")
    if vol.min(initial=0) < 0:
        if vol.min() < -32768 or vol.max(initial=0) > 32767:
            raise ValueError("stored values out of int16 range")
        return vol.astype(np.int16), 1
    if vol.max(initial=0) > 65535:
        raise ValueError("stored values out of uint16 range")
    return vol.astype(np.uint16), 0


def _set_pixels(ds: Dataset, arr: npt.NDArray[np.integer], transfer_syntax: UID) -> None:
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    if transfer_syntax not in _UNCOMPRESSED:
        # Encoders in pydicom (RLE) or its plugins (JPEG-LS: pyjpegls, JPEG 2000: pylibjpeg-openjpeg).
        ds.compress(transfer_syntax, arr, generate_instance_uid=False)


def _modality_image(ds: Dataset, modality: str, slope: float, intercept: float) -> None:
    """CT Image / MR Image module attributes a scanner writes."""
    if modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleType = "HU"
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "20"
        ds.EchoTrainLength = "1"
        ds.AcquisitionNumber = 1
        if slope != 1.0 or intercept != 0.0:  # the MR Image module has no rescale; private scaling only
            ds.RescaleSlope = _ds(slope)
            ds.RescaleIntercept = _ds(intercept)


def write_series(
    folder: Path,
    volume: npt.NDArray[np.integer],
    *,
    modality: str = "CT",
    origin: Sequence[float] = (-100.0, -120.0, 50.0),
    spacing: Sequence[float] = (0.7, 0.8, 2.5),
    row_cosines: Sequence[float] = (1.0, 0.0, 0.0),
    column_cosines: Sequence[float] = (0.0, 1.0, 0.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    shuffle: bool = True,
    prefix: str = "IM",
    window: tuple[float, float] | None = None,
) -> list[Path]:
    """Write one single-frame instance per slice of ``volume`` (stored values, ``(N, R, C)``).

    File names are ``{prefix}{n:04d}.dcm`` with ``n`` a shuffled (seeded) permutation of the
    slice numbers when ``shuffle``, so a reader must order slices by geometry. Instance
    numbers follow the file names, not the slices, for the same reason.

    Returns:
        The paths in slice order: ``paths[k]`` holds slice ``k``.
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored, representation = _stored(volume)
    n, rows, columns = stored.shape
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    along = normal(row_cosines, column_cosines)
    order = np.random.default_rng(n * 7919 + rows).permutation(n) if shuffle else np.arange(n)
    paths = []
    for k in range(n):
        ds = _base(CTImageStorage if modality == "CT" else MRImageStorage, modality, rows=rows, columns=columns,
                   study_uid=study_uid, series_uid=series_uid, frame_of_reference_uid=frame_of_reference_uid,
                   transfer_syntax=transfer_syntax)
        ds.PixelRepresentation = representation
        _modality_image(ds, modality, slope, intercept)
        ds.InstanceNumber = int(order[k]) + 1
        ds.PatientOrientation = ""
        position = np.asarray(origin, dtype=float) + k * float(spacing[2]) * along
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_cosines, *column_cosines)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (row spacing, column spacing)
        ds.SliceThickness = _ds(spacing[2])
        ds.SliceLocation = _ds(float(position @ along))
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
        _set_pixels(ds, stored[k], transfer_syntax)
        path = folder / f"{prefix}{int(order[k]) + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_multiframe(
    path: Path,
    volume: npt.NDArray[np.integer],
    *,
    modality: str = "CT",
    origin: Sequence[float] = (-100.0, -120.0, 50.0),
    spacing: Sequence[float] = (0.7, 0.8, 2.5),
    row_cosines: Sequence[float] = (1.0, 0.0, 0.0),
    column_cosines: Sequence[float] = (0.0, 1.0, 0.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    positions: Sequence[npt.ArrayLike] | None = None,
    series_uid: str | None = None,
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> Path:
    """Write ``volume`` (stored values, ``(N, R, C)``) as one Enhanced CT / MR instance.

    Shared functional groups carry the pixel measures, the plane orientation and (CT) the
    rescale; each frame's PlanePositionSequence carries its position, frame ``k`` at
    ``origin + k * spacing[2] * normal`` unless ``positions`` gives them.
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    stored, representation = _stored(volume)
    n, rows, columns = stored.shape
    along = normal(row_cosines, column_cosines)
    if positions is None:
        positions = [np.asarray(origin, dtype=float) + k * float(spacing[2]) * along for k in range(n)]
    if len(positions) != n:
        raise ValueError(f"{len(positions)} positions for {n} frames")
    ds = _base(EnhancedCTImageStorage if modality == "CT" else EnhancedMRImageStorage, modality, rows=rows,
               columns=columns, study_uid=generate_uid(), series_uid=series_uid or generate_uid(),
               frame_of_reference_uid=generate_uid(), transfer_syntax=transfer_syntax)
    ds.PixelRepresentation = representation
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    del ds.AcquisitionDate, ds.AcquisitionTime  # not in the enhanced IODs (AcquisitionDateTime is)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = n
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionDateTime = "20240102120000"
    ds.AcquisitionDuration = 1.0
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.ManufacturerModelName = "phantom"
    ds.DeviceSerialNumber = "1"
    ds.SoftwareVersions = "1"
    if modality == "MR":
        ds.PixelPresentation = "MONOCHROME"
        ds.VolumetricProperties = "VOLUME"
        ds.VolumeBasedCalculationTechnique = "NONE"
        ds.ComplexImageComponent = "MAGNITUDE"
        ds.AcquisitionContrast = "T1"
        ds.MagneticFieldStrength = 1.5
        ds.ResonantNucleus = "1H"
        ds.ImagingFrequency = 63.9
        ds.KSpaceFiltering = "NONE"
        ds.ApplicableSafetyStandardAgency = "IEC"
    else:
        ds.PixelPresentation = "MONOCHROME"
        ds.VolumetricProperties = "VOLUME"
        ds.VolumeBasedCalculationTechnique = "NONE"

    measures = Dataset()
    measures.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    measures.SliceThickness = _ds(spacing[2])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [_ds(v) for v in (*row_cosines, *column_cosines)]
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    if modality == "CT":
        transform = Dataset()
        transform.RescaleSlope = _ds(slope)
        transform.RescaleIntercept = _ds(intercept)
        transform.RescaleType = "HU"
        shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    dimension_uid = generate_uid()
    index = Dataset()
    index.DimensionOrganizationUID = dimension_uid
    index.DimensionIndexPointer = 0x00200032  # ImagePositionPatient
    index.FunctionalGroupPointer = 0x00209113  # PlanePositionSequence
    organization = Dataset()
    organization.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = DicomSequence([organization])
    ds.DimensionIndexSequence = DicomSequence([index])

    per_frame = []
    for k in range(n):
        item = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [_ds(float(v)) for v in np.asarray(positions[k], dtype=float).reshape(3)]
        item.PlanePositionSequence = DicomSequence([plane])
        content = Dataset()
        content.DimensionIndexValues = [k + 1]
        content.FrameAcquisitionDateTime = "20240102120000"
        content.FrameReferenceDateTime = "20240102120000"
        content.FrameAcquisitionDuration = 1.0
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _set_pixels(ds, stored, transfer_syntax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
