"""camseg.io.dicom on pydicom's bundled test files and on small series written by tests.dicomdata.

Nothing is downloaded: pydicom's files come from its wheel (``get_testdata_file`` with
``download=False``); every other instance is written in ``tmp_path``.
"""

from __future__ import annotations

import io
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.pixels import apply_rescale
from pydicom.sr.codedict import codes
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from camseg.core import windowing as win
from camseg.core.errors import InvalidInputError, NotFoundError, ResourceExhaustedError, UnsupportedError
from camseg.core.windowing import Windowing
from camseg.io import dicom, guards
from camseg.io.dicom import Algorithm, Geometry
from camseg.io.guards import Budget
from camseg.io.volume import read_volume
from tests.dicomdata import normal, write_multiframe, write_series

with warnings.catch_warnings():  # nibabel warns on import that its DICOM readers are experimental
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import dicomwrappers

DCIODVFY = Path("/usr/bin/dciodvfy")
ALGORITHM = Algorithm(model="densenet", model_version="3", recipe="gradcam otsu gate")
# An oblique plane: row and column cosines orthogonal unit vectors, no axis-aligned component pattern.
ROW = (0.8, 0.6, 0.0)
COL = (-0.36, 0.48, -0.8)


def pydicom_file(name: str) -> Path:
    path = pydicom.data.get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not in the installed pydicom wheel"
    return Path(path)


def stored_volume(shape: tuple[int, int, int], seed: int = 0) -> npt.NDArray[np.int64]:
    return np.random.default_rng(seed).integers(0, 3000, size=shape)


def voxel_world(geometry: Geometry, i: float, j: float, k: float) -> npt.NDArray[np.float64]:
    return (geometry.affine @ np.array([i, j, k, 1.0]))[:3]


def load_nifti(path: Path) -> nib.nifti1.Nifti1Image:
    img = nib.load(str(path))
    assert isinstance(img, nib.nifti1.Nifti1Image)
    return img


def with_syntax(path: Path, uid: str) -> bytes:
    """``path``'s instance claiming transfer syntax ``uid``: its native pixel data wrapped in
    one fragment, written by hand because pydicom refuses to write syntaxes it does not know."""
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(uid)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    write_dataset(fp, ds)
    return fp.getvalue()


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's Error lines for ``path`` (it reports on stderr); the whole report printed."""
    if not DCIODVFY.is_file():  # a missing validator fails the SEG tests, never skips them
        pytest.fail("dciodvfy (dicom3tools) is not installed: `make tools` (deploy/ensure-tools.sh) installs it")
    out = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    report = out.stderr + out.stdout
    print(report)
    return [line for line in report.splitlines() if line.startswith("Error")]


# --------------------------------------------------------------------- pydicom's own files
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_files_decode_to_rescaled_stored_values(name: str) -> None:
    ds = pydicom.dcmread(pydicom_file(name))
    expected = apply_rescale(ds.pixel_array, ds).astype(np.float32)
    values = dicom.frames(dicom.read_dataset(pydicom_file(name).read_bytes(), name), name)
    assert values.shape == (1, *expected.shape) and values.dtype == np.float32
    np.testing.assert_array_equal(values[0], expected)
    if name == "CT_small.dcm":  # CT_small's rescale is -1024: HU differ from the stored values
        assert values.min() == ds.pixel_array.min() - 1024


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_lossless_compressed_variants_decode_to_the_uncompressed_values(name: str) -> None:
    reference = dicom.load_series([pydicom_file("MR_small.dcm")]).values
    series = dicom.load_series([pydicom_file(name)])
    assert str(pydicom.dcmread(pydicom_file(name)).file_meta.TransferSyntaxUID) != "1.2.840.10008.1.2.1"
    np.testing.assert_array_equal(series.values, reference)
    assert series.geometry == dicom.load_series([pydicom_file("MR_small.dcm")]).geometry


def test_jpeg2000_and_rgb_jpeg_decode_to_unit_range() -> None:
    gray = dicom.decode_instance(pydicom_file("JPEG2000.dcm"), name="JPEG2000.dcm")
    assert gray.shape == (1024, 256) and gray.dtype == np.float32
    assert gray.min() == 0.0 and gray.max() == 1.0  # NM, no VOI: percentiles of the image
    rgb = dicom.decode_instance(pydicom_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes(), name="sc")
    assert rgb.shape == (100, 100, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    values = dicom.frames(pydicom.dcmread(pydicom_file("SC_rgb_jpeg_dcmtk.dcm")), "sc")[0]
    # The file is YBR_FULL JPEG; its first band is red, the fifth blue once converted to RGB.
    np.testing.assert_allclose(values[5, 50], [255, 0, 0], atol=2)
    np.testing.assert_allclose(values[45, 50], [0, 0, 255], atol=2)


def test_rtdose_multiframe_loads_every_frame_with_grid_frame_offset_geometry() -> None:
    ds = pydicom.dcmread(pydicom_file("rtdose.dcm"))
    series = dicom.load_series([pydicom_file("rtdose.dcm")])
    assert series.values.shape == (15, 10, 10) and series.modality == "RTDOSE"
    np.testing.assert_allclose(series.values, ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)
    geometry = series.geometry
    assert geometry is not None
    assert geometry.spacing == pytest.approx((float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]), 5.0))
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    for k, offset in enumerate(ds.GridFrameOffsetVector):
        np.testing.assert_allclose(voxel_world(geometry, 0, 0, k), ipp + np.array([0, 0, float(offset)]),
                                   atol=1e-6)
    assert series.datasets[0].get("PixelData") is None and series.datasets[0].NumberOfFrames == 15


def test_rgb_multiframe_loads_frames_without_geometry() -> None:
    series = dicom.load_series([pydicom_file("SC_rgb_rle_2frame.dcm")])
    assert series.values.shape == (2, 100, 100, 3) and series.geometry is None
    np.testing.assert_array_equal(series.values, pydicom.dcmread(pydicom_file("SC_rgb_rle_2frame.dcm")).pixel_array)


def test_header_reads_size_samples_and_frames_without_pixels() -> None:
    assert dicom.header(pydicom_file("CT_small.dcm"), "ct") == guards.Header("DICOM", 128, 128, 1, 1)
    assert dicom.header(pydicom_file("rtdose.dcm").read_bytes(), "dose") == guards.Header("DICOM", 10, 10, 1, 15)
    assert dicom.header(pydicom_file("SC_rgb_rle_2frame.dcm"), "sc") == guards.Header("DICOM", 100, 100, 3, 2)


def test_no_pixel_data_names_the_instance() -> None:
    path = pydicom_file("rtplan.dcm")
    with pytest.raises(InvalidInputError, match=r"rtplan\.dcm: no pixel data"):
        dicom.frames(dicom.read_dataset(path, "rtplan.dcm"), "rtplan.dcm")
    with pytest.raises(InvalidInputError, match=r"rtplan\.dcm: no pixel data"):
        dicom.load_series([path])
    with pytest.raises(InvalidInputError, match=r"plan: no pixel data"):
        dicom.decode_instance(path, name="plan")


@pytest.mark.parametrize(("uid", "label"), [("1.2.840.10008.1.2.4.110", "JPEG XL Lossless"),
                                             ("1.2.826.0.1.3680043.8.498.4242", "unknown to pydicom")])
def test_transfer_syntax_without_a_decoder_is_unsupported(tmp_path: Path, uid: str, label: str) -> None:
    data = with_syntax(pydicom_file("CT_small.dcm"), uid)
    with pytest.raises(UnsupportedError) as err:
        dicom.decode_instance(data, name="odd.dcm")
    assert err.value.message.startswith("odd.dcm: ") and uid in err.value.message and label in err.value.message
    path = tmp_path / "odd.dcm"
    path.write_bytes(data)
    with pytest.raises(UnsupportedError, match=str(path)):
        dicom.load_series([path])


# --------------------------------------------------------------------- reading hostile input
def test_is_dicom_reads_the_magic() -> None:
    raw = pydicom_file("CT_small.dcm").read_bytes()
    assert guards.is_dicom(raw) and guards.is_dicom(pydicom_file("CT_small.dcm"))
    assert not guards.is_dicom(raw[:131])
    assert not guards.is_dicom(b"\0" * 128 + b"DICX")
    assert not guards.is_dicom(Path("/nonexistent/file.dcm"))


def test_read_dataset_refuses_non_dicom_truncated_and_missing(tmp_path: Path) -> None:
    raw = pydicom_file("CT_small.dcm").read_bytes()
    with pytest.raises(InvalidInputError, match=r"^notes: not a DICOM file"):
        dicom.read_dataset(b"hello" * 40, "notes")
    for cut in (150, 700, len(raw) - 500):  # in the file meta, in the header, in the pixel data
        with pytest.raises(InvalidInputError, match=r"^cut: truncated DICOM file") as err:
            dicom.read_dataset(raw[:cut], "cut")
        assert "\n" not in err.value.message
    path = tmp_path / "cut.dcm"
    path.write_bytes(raw[: len(raw) - 20_000])  # inside CT_small's 32 KiB of pixel data
    with pytest.raises(InvalidInputError, match="truncated"):
        dicom.read_dataset(path, str(path), pixels=False)  # noticed from the declared length alone
    with pytest.raises(NotFoundError):
        dicom.read_dataset(tmp_path / "missing.dcm", "missing")
    assert dicom.read_dataset(raw, "whole", pixels=False).get("PixelData") is None
    whole = dicom.read_dataset(raw, "whole")
    assert len(whole.PixelData) == 128 * 128 * 2
    assert whole.buffer is None  # no hidden reference to the bytes once PixelData is dropped


def test_decode_instance_checks_header_and_budget_before_decoding() -> None:
    with pytest.raises(InvalidInputError, match=r"dose: DICOM with 15 pages"):
        dicom.decode_instance(pydicom_file("rtdose.dcm"), name="dose")
    with pytest.raises(InvalidInputError, match=r"ct: 128x128 pixels exceed the limit of 1000"):
        dicom.decode_instance(pydicom_file("CT_small.dcm"), name="ct", max_pixels=1000)
    with pytest.raises(ResourceExhaustedError):
        dicom.decode_instance(pydicom_file("CT_small.dcm"), name="ct", budget=Budget(128 * 128 - 1))
    budget = Budget(10**6)
    dicom.decode_instance(pydicom_file("CT_small.dcm"), name="ct", budget=budget)
    dicom.decode_instance(pydicom_file("SC_rgb_jpeg_dcmtk.dcm"), name="sc", budget=budget)
    assert budget.used == 128 * 128 + 100 * 100 * 3


# --------------------------------------------------------------------- windowing
def test_ct_auto_window_is_soft_tissue(tmp_path: Path) -> None:
    hu = np.array([[[40, -160, 240, -1000, 1000, 140]]])
    (path,) = write_series(tmp_path, hu + 1024, shuffle=False)
    out = dicom.decode_instance(path, name="ct")
    np.testing.assert_allclose(out[0], [0.5, 0.0, 1.0, 0.0, 1.0, 0.75], atol=1e-6)
    explicit = dicom.decode_instance(path, name="ct", windowing=Windowing.parse("0,200"))
    np.testing.assert_allclose(explicit[0], [0.7, 0.0, 1.0, 0.0, 1.0, 1.0], atol=1e-6)  # lo -100, hi 100
    lung = dicom.decode_instance(path, name="ct", windowing=Windowing.parse("lung"))
    np.testing.assert_allclose(lung[0], np.clip((hu[0, 0] + 1350) / 1500, 0, 1), atol=1e-6)  # lo -1350, hi 150


def test_mr_auto_and_explicit_percentiles(tmp_path: Path) -> None:
    stored = np.arange(100).reshape(1, 10, 10)
    (path,) = write_series(tmp_path, stored, modality="MR", intercept=0.0, shuffle=False)
    values = stored[0].astype(np.float64)
    for windowing, (lo_p, hi_p) in ((None, (0.5, 99.5)), (Windowing.parse("percentiles:1,99"), (1.0, 99.0))):
        lo, hi = np.percentile(values, [lo_p, hi_p])
        out = dicom.decode_instance(path, name="mr", windowing=windowing)
        np.testing.assert_allclose(out, np.clip((values - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert dicom.decode_instance(path, name="mr")[0, 1] == pytest.approx((1 - 0.495) / (98.505 - 0.495), abs=1e-6)


def test_dicom_window_uses_the_files_voi(tmp_path: Path) -> None:
    (path,) = write_series(tmp_path, np.array([[[1124, 1074, 1174]]]), window=(100.0, 50.0), shuffle=False)
    out = dicom.decode_instance(path, name="ct", windowing=Windowing.parse("dicom"))
    np.testing.assert_allclose(out[0], [0.5, 0.0, 1.0], atol=1e-6)
    assert dicom.voi(pydicom.dcmread(path)) == (100.0, 50.0)


def test_windowing_resolve_per_modality() -> None:
    auto = Windowing("auto")
    assert auto.resolve("CT", (10.0, 20.0)) == Windowing("window", center=40.0, width=400.0)
    assert auto.resolve("MR", (10.0, 20.0)) == Windowing("percentiles", low=0.5, high=99.5)
    assert auto.resolve("US", (10.0, 20.0)) == Windowing("dicom", center=10.0, width=20.0)
    assert auto.resolve("US", None) == Windowing("percentiles", low=0.5, high=99.5)
    assert Windowing("dicom").resolve("CT", None) == Windowing("percentiles", low=0.5, high=99.5)
    fixed = Windowing.parse("1,2")
    assert fixed.resolve("MR", (10.0, 20.0)) is fixed


@pytest.mark.parametrize("text", ["auto", "dicom", "40,400", "-600,1500", " 0.25 , 1e3 ", "percentiles:1,99",
                                  "percentiles:0.5,99.5", "Lung", "soft-tissue", "liver", "0.1,0.30000000000000004"])
def test_windowing_parse_round_trips(text: str) -> None:
    w = Windowing.parse(text)
    assert Windowing.parse(str(w)) == w


def test_windowing_parse_values() -> None:
    assert Windowing.parse("-600,1500") == Windowing("window", center=-600.0, width=1500.0)
    assert Windowing.parse("brain") == Windowing("window", center=40.0, width=80.0)
    assert str(Windowing.parse("bone")) == "400,1800"
    assert Windowing.parse("PERCENTILES: 2, 98") == Windowing("percentiles", low=2.0, high=98.0)
    assert win.PRESETS["mediastinum"] == (50, 350) and win.DEFAULT_PERCENTILES == (0.5, 99.5)


@pytest.mark.parametrize(("text", "why"), [("", "expected auto"), ("bright", "expected auto"), ("40", "expected"),
                                           ("1,2,3", "expected"), ("nan,400", "expected"), ("40,0", "width"),
                                           ("40,-5", "width"), ("percentiles:99,1", "0 <= LOW < HIGH <= 100"),
                                           ("percentiles:-1,50", "0 <= LOW"), ("percentiles:1,101", "HIGH <= 100"),
                                           ("percentiles:a,b", "expected")])
def test_windowing_parse_errors_name_the_text(text: str, why: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        Windowing.parse(text)
    assert repr(text) in err.value.message and why in err.value.message and "\n" not in err.value.message


def test_apply_window_edges() -> None:
    flat = np.full((3, 4), 7.0)
    assert not win.apply_window(flat, Windowing.parse("percentiles:1,99")).any()
    np.testing.assert_array_equal(win.apply_window(flat, Windowing.parse("7,10")), 0.5)
    out = win.apply_window(np.array([np.nan, 0.0, 10.0, np.inf]), Windowing.parse("percentiles:0,100"))
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.0, 0.0])
    with pytest.raises(InvalidInputError):
        Windowing("window", center=1.0)


def test_monochrome1_is_mirrored_so_bright_is_dense() -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    mono2 = dicom.frames(ds, "m2")
    as_mono2 = win.apply_window(mono2, Windowing("dicom"), voi=dicom.voi(ds))
    ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = dicom.frames(ds, "m1")
    # int16 stored range [-32768, 32767] through the -1024 rescale: mirror -33792 + 31743 = -2049.
    np.testing.assert_array_equal(mono1, -2049.0 - mono2)
    stored = ds.pixel_array
    assert np.unravel_index(np.argmax(mono1[0]), stored.shape) == np.unravel_index(np.argmin(stored), stored.shape)
    assert dicom.voi(ds) == (-2049.0 - 40.0, 400.0)
    as_mono1 = win.apply_window(mono1, Windowing("dicom"), voi=dicom.voi(ds))
    np.testing.assert_allclose(as_mono1, 1.0 - as_mono2, atol=1e-6)  # the VOI window selects the same tissue
    data = io.BytesIO()
    ds.save_as(data, enforce_file_format=True)
    percent = dicom.decode_instance(data.getvalue(), name="m1", windowing=Windowing.parse("percentiles:1,99"))
    np.testing.assert_allclose(percent, 1.0 - win.apply_window(mono2, Windowing.parse("percentiles:1,99"))[0],
                               atol=1e-6)


# --------------------------------------------------------------------- series and geometry
@pytest.mark.parametrize(("row", "col"), [((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)), (ROW, COL)], ids=["axial", "oblique"])
def test_load_series_sorts_shuffled_files_by_geometry(tmp_path: Path, row, col) -> None:
    vol = stored_volume((5, 6, 7))
    paths = write_series(tmp_path, vol, row_cosines=row, column_cosines=col, slope=2.0, intercept=-1000.0)
    assert [p.name for p in sorted(paths)] != [p.name for p in paths]  # file order is not slice order
    series = dicom.load_series(sorted(paths))
    np.testing.assert_array_equal(series.values, vol * 2.0 - 1000.0)
    assert series.modality == "CT" and series.name == series.uid and series.voi is None
    geometry = series.geometry
    assert geometry is not None
    assert geometry.origin == pytest.approx((-100.0, -120.0, 50.0))
    assert geometry.spacing == pytest.approx((0.7, 0.8, 2.5))
    n = normal(row, col)
    np.testing.assert_allclose(np.array(geometry.direction), np.stack([row, col, n], axis=1), atol=1e-9)
    np.testing.assert_allclose(voxel_world(geometry, 6, 5, 4),
                               np.array([-100, -120, 50]) + 6 * 0.7 * np.array(row) + 5 * 0.8 * np.array(col)
                               + 4 * 2.5 * n, atol=1e-9)
    for k, (ds, path) in enumerate(zip(series.datasets, paths, strict=True)):
        source = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == source.SOPInstanceUID and "PixelData" not in ds
        np.testing.assert_allclose(voxel_world(geometry, 0, 0, k), np.array(source.ImagePositionPatient, float),
                                   atol=1e-6)
        # nibabel indexes (row, column, slice) and takes cross(column, row) as its slice axis: our first two
        # columns swapped, the third negated, the translation this slice's position.
        expected = geometry.affine[:, [1, 0, 2, 3]] * np.array([1.0, 1.0, -1.0, 1.0])
        expected[:3, 3] = voxel_world(geometry, 0, 0, k)
        np.testing.assert_allclose(dicomwrappers.wrapper_from_data(source).affine, expected, atol=1e-6)


def test_series_windowed_takes_percentiles_over_the_whole_series(tmp_path: Path) -> None:
    vol = np.stack([np.full((4, 4), 100), np.full((4, 4), 900)])
    vol[0, 0, 0], vol[1, 0, 0] = 0, 1000
    series = dicom.load_series(write_series(tmp_path, vol, modality="MR", intercept=0.0))
    out = series.windowed()
    assert out[0].max() < 0.11 and out[1].min() > 0.89  # per-slice percentiles would stretch each to [0, 1]
    np.testing.assert_allclose(series.windowed(Windowing.parse("500,1000")), vol / 1000.0, atol=1e-6)


def test_single_instance_geometry_and_its_absence() -> None:
    series = dicom.load_series([pydicom_file("CT_small.dcm")], name="small ct/../x")
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    assert series.name == "small_ct_.._x" and series.uid == ds.SeriesInstanceUID
    assert series.geometry is not None
    assert series.geometry.spacing == pytest.approx((float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]),
                                                     float(ds.SliceThickness)))
    np.testing.assert_allclose(series.geometry.origin, np.array(ds.ImagePositionPatient, dtype=float))
    assert dicom.load_series([pydicom_file("SC_rgb_jpeg_dcmtk.dcm")]).geometry is None


def test_missing_slice_is_inconsistent_spacing_naming_instances(tmp_path: Path) -> None:
    paths = write_series(tmp_path, stored_volume((5, 3, 3)))
    kept = [p for k, p in enumerate(paths) if k != 2]
    with pytest.raises(InvalidInputError) as err:
        dicom.load_series(kept)
    message = err.value.message
    assert "inconsistent slice spacing: 2.5 mm between" in message and ", 5 mm between" in message
    assert f"2.5 mm between {paths[0]} and {paths[1]}, 5 mm between {paths[1]} and {paths[3]}" in message
    assert "\n" not in message


def test_two_slices_at_one_position(tmp_path: Path) -> None:
    paths = write_series(tmp_path, stored_volume((3, 3, 3)))
    twin = pydicom.dcmread(paths[1])
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    twin_path = tmp_path / "twin.dcm"
    twin.save_as(twin_path, enforce_file_format=True)
    with pytest.raises(InvalidInputError, match="at one position") as err:
        dicom.load_series([*paths, twin_path], name="dup")
    assert err.value.message.startswith("series dup: ")
    assert str(paths[1]) in err.value.message and str(twin_path) in err.value.message


def test_mixed_series_and_disagreeing_instances(tmp_path: Path) -> None:
    a = write_series(tmp_path / "a", stored_volume((2, 3, 3)))
    b = write_series(tmp_path / "b", stored_volume((2, 3, 3)), prefix="B")
    with pytest.raises(InvalidInputError, match="mixed series") as err:
        dicom.load_series(a + b)
    for path in (a, b):
        assert pydicom.dcmread(path[0]).SeriesInstanceUID in err.value.message
    uid = pydicom.dcmread(a[0]).SeriesInstanceUID
    tilted = write_series(tmp_path / "c", stored_volume((1, 3, 3)), series_uid=uid, origin=(0, 0, 99),
                          row_cosines=ROW, column_cosines=COL)
    with pytest.raises(InvalidInputError, match="differ in ImageOrientationPatient") as err:
        dicom.load_series(a + tilted)
    assert str(tilted[0]) in err.value.message
    bigger = write_series(tmp_path / "d", stored_volume((1, 4, 3)), series_uid=uid, origin=(0, 0, 99))
    with pytest.raises(InvalidInputError, match=r"3x4x1.*3x3x1"):
        dicom.load_series(a + bigger)
    lost = pydicom.dcmread(a[1])
    del lost.ImagePositionPatient
    lost.save_as(a[1], enforce_file_format=True)
    with pytest.raises(InvalidInputError, match="no ImagePositionPatient") as err:
        dicom.load_series(a)
    assert str(a[1]) in err.value.message
    with pytest.raises(InvalidInputError, match="no files"):
        dicom.load_series([])


def test_scan_groups_series_and_reports_damaged_files(tmp_path: Path) -> None:
    ct = write_series(tmp_path, stored_volume((3, 4, 4)), prefix="CT")
    mr = write_series(tmp_path / "sub" / "deeper", stored_volume((2, 4, 4)), modality="MR", intercept=0.0,
                      prefix="MR")
    (tmp_path / "README.txt").write_text("not a DICOM file, and long enough to have 132 bytes. " * 5)
    raw = ct[0].read_bytes()
    (tmp_path / "cut_header.dcm").write_bytes(raw[:600])
    (tmp_path / "cut_pixels.dcm").write_bytes(raw[:-10])
    anonymous = pydicom.dcmread(mr[0])
    del anonymous.SeriesInstanceUID
    anonymous.save_as(tmp_path / "no_series.dcm", enforce_file_format=True)

    series, failures = dicom.scan(tmp_path)
    by_uid = {s.uid: s for s in series}
    ct_uid, mr_uid = (str(pydicom.dcmread(p[0]).SeriesInstanceUID) for p in (ct, mr))
    assert [s.uid for s in series] == sorted([ct_uid, mr_uid])
    assert by_uid[ct_uid].files == tuple(sorted(ct)) and by_uid[ct_uid].modality == "CT"
    assert by_uid[mr_uid].files == tuple(sorted(mr)) and by_uid[mr_uid].modality == "MR"
    reasons = dict(failures)
    assert set(reasons) == {tmp_path / "cut_header.dcm", tmp_path / "cut_pixels.dcm", tmp_path / "no_series.dcm"}
    assert "truncated" in reasons[tmp_path / "cut_header.dcm"]
    assert "truncated" in reasons[tmp_path / "cut_pixels.dcm"]
    assert "no SeriesInstanceUID" in reasons[tmp_path / "no_series.dcm"]
    assert all("\n" not in r for r in reasons.values())
    loaded = dicom.load_series(by_uid[mr_uid].files)
    assert loaded.values.shape == (2, 4, 4) and loaded.modality == "MR"
    only_ct, nothing = dicom.scan([ct[0], ct[1]])
    assert [s.files for s in only_ct] == [tuple(sorted(ct[:2]))] and nothing == []
    with pytest.raises(NotFoundError):
        dicom.scan(tmp_path / "missing")


def test_compressed_series_round_trip(tmp_path: Path) -> None:
    vol = stored_volume((3, 40, 36), seed=3)  # OpenJPEG needs 32+ pixels for its resolutions
    for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        paths = write_series(tmp_path / syntax.name.replace(" ", "_"), vol, transfer_syntax=syntax)
        assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(dicom.load_series(paths).values, vol - 1024.0)


# --------------------------------------------------------------------- multi-frame
def test_multiframe_geometry_from_per_frame_functional_groups(tmp_path: Path) -> None:
    vol = stored_volume((4, 5, 6))
    path = write_multiframe(tmp_path / "mf.dcm", vol, row_cosines=ROW, column_cosines=COL, spacing=(0.5, 0.6, 3.0),
                            slope=1.0, intercept=-1024.0)
    series = dicom.load_series([path])
    np.testing.assert_array_equal(series.values, vol - 1024.0)
    geometry = series.geometry
    assert geometry is not None and geometry.spacing == pytest.approx((0.5, 0.6, 3.0))
    ds = pydicom.dcmread(path)
    for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(voxel_world(geometry, 0, 0, k), position, atol=1e-6)
    np.testing.assert_allclose(voxel_world(geometry, 1, 0, 0) - voxel_world(geometry, 0, 0, 0),
                               0.5 * np.array(ROW), atol=1e-9)
    np.testing.assert_allclose(voxel_world(geometry, 0, 1, 0) - voxel_world(geometry, 0, 0, 0),
                               0.6 * np.array(COL), atol=1e-9)
    # Frames stored against the normal keep their order; the slice axis points the other way.
    n = normal(ROW, COL)
    backwards = [np.array([10.0, 20.0, 30.0]) - k * 3.0 * n for k in range(4)]
    reverse = dicom.load_series([write_multiframe(tmp_path / "rev.dcm", vol, row_cosines=ROW, column_cosines=COL,
                                                  positions=backwards)])
    assert reverse.geometry is not None
    np.testing.assert_allclose(np.array(reverse.geometry.direction)[:, 2], -n, atol=1e-9)
    np.testing.assert_allclose(voxel_world(reverse.geometry, 0, 0, 3), backwards[3], atol=1e-6)
    uneven = [np.array([0.0, 0.0, z]) for z in (0.0, 3.0, 6.0, 12.0)]
    bad = write_multiframe(tmp_path / "gap.dcm", vol, positions=uneven)
    with pytest.raises(InvalidInputError, match=r"inconsistent slice spacing: 3 mm between frame 2 and frame 3, "
                                                r"6 mm between frame 3 and frame 4") as err:
        dicom.load_series([bad])
    assert str(bad) in err.value.message


# --------------------------------------------------------------------- DICOM SEG
def check_seg(path: Path, series: dicom.Series, mask: npt.NDArray[np.bool_]) -> pydicom.Dataset:
    """``path`` passes dciodvfy, records what made it, and reads back as ``mask`` over ``series``
    (with highdicom where the source has a plane geometry: its reader needs a slice thickness)."""
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    assert seg.SegmentationType == "BINARY" and seg.Manufacturer == "camseg"
    assert seg.SoftwareVersions == ALGORITHM.version
    segment = seg.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Neoplasm.value
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == \
        codes.SCT.MorphologicallyAbnormalStructure.value
    assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentLabel == "Tumor"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("camseg", ALGORITHM.version)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    for part in ("densenet", "gradcam otsu gate"):
        assert part in algorithm.AlgorithmParameters
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.uid
    assert seg.NumberOfFrames == mask.shape[0]  # empty frames are kept
    sources = series.datasets
    if series.geometry is None:
        np.testing.assert_array_equal(seg.pixel_array.reshape(mask.shape) != 0, mask)
        return seg
    reader = hd.seg.segread(path)
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1)) > 1:
        pixels = reader.get_pixels_by_source_frame(sources[0].SOPInstanceUID, list(range(1, mask.shape[0] + 1)))
    else:
        pixels = reader.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources])
    np.testing.assert_array_equal(pixels[..., 0] != 0, mask)
    return seg


def some_mask(shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    mask = np.zeros(shape, dtype=bool)
    mask[0, 1:3, 2:5] = True
    mask[-1, -1, 0] = True  # the middle slices stay empty
    return mask


@pytest.mark.parametrize("empty", [False, True], ids=["mask", "empty"])
def test_seg_over_a_written_ct_series(tmp_path: Path, empty: bool) -> None:
    series = dicom.load_series(write_series(tmp_path / "ct", stored_volume((3, 6, 5))))
    mask = np.zeros((3, 6, 5), dtype=bool) if empty else some_mask((3, 6, 5))
    path = tmp_path / "seg.dcm"
    path.write_bytes(dicom.to_bytes(dicom.segmentation(mask, series, ALGORITHM)))
    seg = check_seg(path, series, mask)
    assert seg.SeriesNumber == 900
    if not empty:  # highdicom's own geometry puts the tumor voxels where ours does
        volume = hd.seg.segread(path).get_volume()
        hd_world = {tuple(np.round(volume.affine @ [*idx, 1], 4)[:3]) for idx in np.argwhere(volume.array[..., 0])}
        assert series.geometry is not None
        ours = {tuple(np.round(voxel_world(series.geometry, i, j, k), 4)) for k, j, i in np.argwhere(mask)}
        assert hd_world == ours


@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtdose.dcm"])
def test_seg_over_a_single_pydicom_instance(tmp_path: Path, name: str) -> None:
    """One CT slice; a secondary capture without plane geometry; RT Dose, a legacy multi-frame
    instance whose frames are placed by GridFrameOffsetVector rather than functional groups."""
    series = dicom.load_series([pydicom_file(name)])
    mask = some_mask(series.values.shape[:3])
    path = tmp_path / "seg.dcm"
    path.write_bytes(dicom.to_bytes(dicom.segmentation(mask, series, ALGORITHM)))
    check_seg(path, series, mask)
    assert "SharedFunctionalGroupsSequence" not in series.datasets[0]  # the source is left as it was


def test_seg_over_a_multiframe_instance(tmp_path: Path) -> None:
    series = dicom.load_series([write_multiframe(tmp_path / "mf.dcm", stored_volume((4, 5, 6)), row_cosines=ROW,
                                                 column_cosines=COL)])
    mask = some_mask((4, 5, 6))
    path = tmp_path / "seg.dcm"
    path.write_bytes(dicom.to_bytes(dicom.segmentation(mask, series, ALGORITHM, series_number=7)))
    assert check_seg(path, series, mask).SeriesNumber == 7


def test_seg_refuses_volume_files_and_wrong_shapes(tmp_path: Path) -> None:
    source = tmp_path / "vol.nrrd"
    nrrd.write(str(source), np.zeros((4, 3, 2), dtype=np.int16))
    volume = dicom.load_volume(source)
    with pytest.raises(UnsupportedError, match="write a NIfTI/NRRD mask instead"):
        dicom.segmentation(np.zeros((2, 3, 4), dtype=bool), volume, ALGORITHM)
    series = dicom.load_series([pydicom_file("CT_small.dcm")])
    with pytest.raises(InvalidInputError, match=r"mask shape \(1, 128, 127\) differs"):
        dicom.segmentation(np.zeros((1, 128, 127), dtype=bool), series, ALGORITHM)
    frames_only = dicom.load_series([pydicom_file("SC_rgb_rle_2frame.dcm")])
    with pytest.raises(UnsupportedError, match="without plane geometry"):
        dicom.segmentation(np.zeros((2, 100, 100), dtype=bool), frames_only, ALGORITHM)


# --------------------------------------------------------------------- NIfTI / NRRD
def oblique_series(tmp_path: Path) -> dicom.Series:
    return dicom.load_series(write_series(tmp_path / "ct", stored_volume((4, 5, 6)), row_cosines=ROW,
                                          column_cosines=COL, origin=(12.5, -30.0, 80.0), spacing=(0.6, 0.9, 3.0)))


def test_write_volume_nifti_and_nrrd_carry_the_dicom_geometry(tmp_path: Path) -> None:
    series = oblique_series(tmp_path)
    geometry = series.geometry
    assert geometry is not None
    mask = np.random.default_rng(5).random(series.values.shape) > 0.7

    nifti = dicom.write_volume(tmp_path / "out" / "mask.nii.gz", mask, geometry)
    img = load_nifti(nifti)
    np.testing.assert_allclose(img.affine, geometry.ras_affine, atol=1e-6)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, mask.transpose(2, 1, 0))

    path = dicom.write_volume(tmp_path / "out" / "mask.nrrd", mask, geometry)
    arr, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space directions"],
                               (np.array(geometry.direction) * np.array(geometry.spacing)).T, atol=1e-9)
    np.testing.assert_allclose(header["space origin"], geometry.origin, atol=1e-9)
    np.testing.assert_array_equal(arr, mask.transpose(2, 1, 0))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mask.nii.gz", "mask.nrrd"]  # no temp files

    for written in (nifti, path):  # and camseg's own reader agrees
        back = dicom.load_volume(written)
        np.testing.assert_array_equal(back.values, mask)
        assert back.geometry is not None
        np.testing.assert_allclose(back.geometry.affine, geometry.affine, atol=1e-5)


def test_write_volume_types_identity_and_bad_suffix(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7
    path = dicom.write_volume(tmp_path / "v.nii", values, None)
    img = load_nifti(path)
    np.testing.assert_allclose(img.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(img.dataobj), values.transpose(2, 1, 0), rtol=1e-6)
    with pytest.raises(InvalidInputError, match=r"v\.mha: unsupported volume suffix"):
        dicom.write_volume(tmp_path / "v.mha", values, None)
    with pytest.raises(InvalidInputError, match="expected an"):
        dicom.write_volume(tmp_path / "v.nrrd", values[0], None)


def lps_to_ras(affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def test_volume_sources_round_trip_their_geometry(tmp_path: Path) -> None:
    data = np.random.default_rng(9).integers(0, 100, size=(5, 4, 3)).astype(np.int16)  # (i, j, k)
    rotation = np.array([[0.8, -0.36, -0.48], [0.6, 0.48, 0.64], [0.0, -0.8, 0.6]])  # columns: unit i, j, k
    directions = (rotation * [0.7, 1.1, 2.5]).T  # NRRD: one row per index axis
    source_nrrd = tmp_path / "src.nrrd"
    nrrd.write(str(source_nrrd), data, {"space": "left-posterior-superior", "space directions": directions,
                                        "space origin": np.array([-20.0, 35.5, 7.25])})
    ras = np.eye(4)
    ras[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ directions.T
    ras[:3, 3] = [14.0, -3.5, 60.0]
    source_nifti = tmp_path / "src.nii.gz"
    nib.save(nib.Nifti1Image(data, ras), str(source_nifti))

    for source in (source_nrrd, source_nifti):
        series = dicom.load_volume(source)
        assert series.modality == "" and series.datasets == [] and series.source == source
        assert series.uid == "src" and series.name == "src"
        np.testing.assert_array_equal(series.values, data.transpose(2, 1, 0))
        nrrd_out = dicom.write_volume(tmp_path / f"{source.name}.out.nrrd", series.values, series.geometry)
        nifti_out = dicom.write_volume(tmp_path / f"{source.name}.out.nii.gz", series.values, series.geometry)
        _, header = nrrd.read(str(nrrd_out))
        written_lps = np.eye(4)
        written_lps[:3, :3] = np.asarray(header["space directions"]).T
        written_lps[:3, 3] = header["space origin"]
        if source == source_nrrd:
            _, src_header = nrrd.read(str(source))
            np.testing.assert_allclose(header["space directions"], src_header["space directions"], atol=1e-6)
            np.testing.assert_allclose(header["space origin"], src_header["space origin"], atol=1e-6)
        else:
            np.testing.assert_allclose(lps_to_ras(written_lps), load_nifti(source).affine, atol=1e-6)
        source_ras = load_nifti(source).affine if source == source_nifti else lps_to_ras(written_lps)
        np.testing.assert_allclose(load_nifti(nifti_out).affine, source_ras, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(load_nifti(nifti_out).dataobj), data)


def test_read_volume_reports_the_origin_in_lps(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 2), dtype=np.uint8)
    nrrd.write(str(tmp_path / "lps.nrrd"), arr, {"space": "left-posterior-superior", "space directions": np.eye(3),
                                                 "space origin": np.array([1.0, 2.0, 3.0])})
    nrrd.write(str(tmp_path / "ras.nrrd"), arr, {"space": "right-anterior-superior", "space directions": np.eye(3),
                                                 "space origin": np.array([1.0, 2.0, 3.0])})
    nrrd.write(str(tmp_path / "plain.nrrd"), arr)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [4.0, 5.0, 6.0]
    nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / "v.nii"))
    assert read_volume(tmp_path / "lps.nrrd")[1]["origin"] == [1.0, 2.0, 3.0]
    assert read_volume(tmp_path / "ras.nrrd")[1]["origin"] == [-1.0, -2.0, 3.0]
    assert read_volume(tmp_path / "plain.nrrd")[1]["origin"] == [0.0, 0.0, 0.0]
    assert read_volume(tmp_path / "v.nii")[1]["origin"] == [-4.0, -5.0, 6.0]


def test_geometry_affine_round_trip() -> None:
    geometry = Geometry.make((1.0, 2.0, 3.0), (0.5, 0.7, 2.0), np.stack([ROW, COL, normal(ROW, COL)], axis=1))
    again = Geometry.from_affine(geometry.affine)
    np.testing.assert_allclose(again.affine, geometry.affine, atol=1e-12)
    assert again.spacing == pytest.approx(geometry.spacing)
    np.testing.assert_allclose(geometry.ras_affine, lps_to_ras(geometry.affine))
    with pytest.raises(InvalidInputError, match="zero step"):
        Geometry.from_affine(np.diag([1.0, 0.0, 1.0, 1.0]))


def test_dciodvfy_is_clean_on_written_ct_instances(tmp_path: Path) -> None:
    (path,) = write_series(tmp_path, stored_volume((1, 4, 4)))
    assert dciodvfy_errors(path) == []
