"""Small whole images for the whole-image tests: synthetic mammograms (a half-disc of
tissue on black with a bright blob) as a folder data set, and as a 16-bit MONOCHROME1
Digital Mammography instance (RLE Lossless) written with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, RLELossless, generate_uid

from camseg.data.folder import Record, write_dataset

MG_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.2")  # Digital Mammography X-Ray Image Storage - For Presentation


def mammogram(shape: tuple[int, int] = (300, 400), *, seed: int = 0, blob: tuple[int, int] | None = (150, 110),
              tissue: bool = True) -> npt.NDArray[np.float32]:
    """Values in [0, 1]: a half-disc of textured tissue against the left edge, a bright
    Gaussian blob inside it; all black without ``tissue``."""
    h, w = shape
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, dtype=np.float32)
    if not tissue:
        return img
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - h / 2) ** 2 + xx**2 < (0.45 * min(h, 2 * w)) ** 2
    img[disc] = 0.35 + 0.05 * rng.standard_normal(int(disc.sum())).astype(np.float32)
    if blob is not None:
        img += 0.6 * np.exp(-((yy - blob[0]) ** 2 + (xx - blob[1]) ** 2) / (2 * 12.0**2)).astype(np.float32) * disc
    return np.clip(img, 0.0, 1.0)


def whole_folder(out: Path, *, roi: bool = True) -> Path:
    """A folder data set of two 300x400 mammograms (one with a tumor mask), one without
    tissue and, with ``roi``, one 32-px ROI."""
    a = mammogram(seed=1)
    truth = np.zeros(a.shape, dtype=bool)
    truth[135:166, 95:126] = True
    records = [Record("mg-a", 1, None, (a * 255).astype(np.uint8), truth),
               Record("mg-b", 0, None, (mammogram(seed=2, blob=None) * 255).astype(np.uint8), None),
               Record("mg-empty", 0, None, np.zeros((300, 400), dtype=np.uint8), None)]
    if roi:
        records.append(Record("roi", 1, None, (mammogram((32, 32), seed=3, blob=(16, 8)) * 255).astype(np.uint8),
                              None))
    return write_dataset(out, records, {"classes": ["normal", "tumor"]})


def write_mammogram(path: Path, values: npt.NDArray[np.float32]) -> Path:
    """``values`` in [0, 1] (bright = dense) as one Digital Mammography For Presentation
    instance: 16 bits stored, MONOCHROME1 (so stored values are inverted), RLE Lossless,
    a VOI window, ImagerPixelSpacing 0.1 mm."""
    stored = np.round((1.0 - values) * 60000 + 1000).astype(np.uint16)
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = RLELossless
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = MG_STORAGE, sop
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber, ds.Modality, ds.Manufacturer, ds.ReferringPhysicianName = "A1", "MG", "camseg tests", ""
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "PHANTOM1", "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.BodyPartExamined, ds.Laterality, ds.ImageLaterality = "BREAST", "L", "L"
    ds.PatientOrientation = ["A", "R"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = ["0.1", "0.1"]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.WindowCenter, ds.WindowWidth = "31000", "60000"
    ds.PixelData = stored.tobytes()
    ds.compress(RLELossless, stored, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
