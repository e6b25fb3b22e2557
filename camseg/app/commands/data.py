"""``camseg data``: make, fetch or convert data sets."""

from __future__ import annotations

import argparse
from pathlib import Path

from camseg.app.console import progress_bars
from camseg.app.parsing import Subcommands
from camseg.core.errors import InvalidInputError
from camseg.core.scale import Scale
from camseg.core.settings import Settings
from camseg.data.folder import FolderDataset
from camseg.data.fullfield import FORMATS, FullFieldConfig, synthesize_fullfield
from camseg.data.real import build_real_dataset
from camseg.data.rois import DEFAULT_OFFSET, RoiConfig, dicom_cases, extract_rois, folder_cases, volume_cases
from camseg.data.synth import SynthConfig, synthesize
from camseg.data.volumes import convert_volumes


def add_arguments(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    data = Subcommands(p.add_subparsers(dest="data_cmd", required=True, metavar="SOURCE"), common)
    s = data.add_parser("synth", help="synthetic mammogram ROIs with exact masks")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--bit-depth", type=int, default=8, choices=(8, 16))
    s.add_argument("--overwrite", action="store_true")
    f = data.add_parser("fullfield", help="synthetic full-field mammograms (a breast, 0-3 masses) with exact masks")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--n", type=int, default=FullFieldConfig.n)
    f.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                   default=(FullFieldConfig.height, FullFieldConfig.width),
                   help="image height and width in pixels, each 128..5120, at most 4096x5120 pixels in all "
                        "(default: %(default)s)")
    f.add_argument("--roi-size", type=int, default=FullFieldConfig.roi_size,
                   help="the ROI side the mass sizes refer to, as in `camseg data synth --size` (default: %(default)s)")
    f.add_argument("--normal-fraction", type=float, default=FullFieldConfig.normal_fraction,
                   help="share of images without a mass (default: %(default)s)")
    f.add_argument("--pixel-spacing", type=float, default=FullFieldConfig.pixel_spacing_mm, metavar="MM",
                   help="pixel spacing recorded in dataset.json and the DICOM files (default: %(default)s mm)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--format", choices=FORMATS, default="png",
                   help="png: images/<id>.png (16-bit); dicom: images/<id>.dcm (DICOM MG, MONOCHROME1, RLE "
                        "Lossless); both: the PNGs and dicom/<id>.dcm")
    f.add_argument("--dicom", dest="format", action="store_const", const="dicom", help="same as --format dicom")
    f.add_argument("--overwrite", action="store_true")
    r = data.add_parser("real", help="pyradiomics' five real test cases, sliced to the folder layout")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--overwrite", action="store_true")
    v = data.add_parser("volumes", help="NRRD/NIfTI image+label pairs, sliced to the folder layout")
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--pair", nargs=2, action="append", metavar=("IMAGE", "LABEL"), required=True, type=Path)
    v.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    v.add_argument("--overwrite", action="store_true")
    r = data.add_parser("rois", help="lesion and normal ROIs for training, cut at a stated scale from whole images "
                                     "with truth masks")
    r.add_argument("--out", type=Path, required=True)
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", type=Path, help="a folder data set of whole images with masks")
    src.add_argument("--pair", nargs=2, action="append", metavar=("IMAGE", "LABEL"), type=Path,
                     help="an NRRD/NIfTI image + label volume (repeat for each case)")
    src.add_argument("--dicom", nargs=2, action="append", metavar=("SERIES_DIR", "SEG"), type=Path,
                     help="a DICOM series folder and its DICOM SEG (repeat for each case)")
    how = r.add_mutually_exclusive_group(required=True)
    how.add_argument("--scale", type=float, metavar="S", help="source pixels per model pixel")
    how.add_argument("--mm", type=float, metavar="M", help="millimetres per model pixel (needs the pixel spacing)")
    r.add_argument("--size", type=int, default=64, help="ROI side in model pixels (default 64)")
    r.add_argument("--per-lesion", type=int, default=2, metavar="K", help="ROIs per lesion (default 2)")
    r.add_argument("--offset", type=float, default=DEFAULT_OFFSET,
                   help=f"largest lesion-centre offset, a fraction of the ROI side (default {DEFAULT_OFFSET})")
    r.add_argument("--normal-ratio", type=float, default=1.0, help="normal ROIs per lesion ROI (default 1)")
    r.add_argument("--min-tissue", type=float, default=0.7, help="least tissue fraction of a normal ROI")
    r.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="slice axis of volumes")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--overwrite", action="store_true")


def _rois(args: argparse.Namespace, progress: bool) -> Path:
    scale = Scale(source_pixels_per_model_pixel=args.scale) if args.scale is not None \
        else Scale(mm_per_model_pixel=args.mm)
    cfg = RoiConfig(scale=scale, size=args.size, per_lesion=args.per_lesion, offset=args.offset,
                    normal_ratio=args.normal_ratio, min_tissue=args.min_tissue, seed=args.seed)
    cfg.validate()
    if args.source is not None:
        cases, provenance = folder_cases(args.source, scale)
    elif args.pair:
        cases, provenance = volume_cases([tuple(p) for p in args.pair], axis=args.axis)
    elif args.dicom:
        cases, provenance = dicom_cases([tuple(p) for p in args.dicom])
    else:  # pragma: no cover - argparse requires one
        raise InvalidInputError("give --source, --pair or --dicom")
    with progress_bars(progress) as bars:
        return extract_rois(cases, args.out, cfg, provenance=provenance, overwrite=args.overwrite,
                            on_progress=bars)


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    if args.data_cmd == "synth":
        out = synthesize(args.out, SynthConfig(n=args.n, size=args.size, seed=args.seed, bit_depth=args.bit_depth),
                         overwrite=args.overwrite)
    elif args.data_cmd == "fullfield":
        cfg = FullFieldConfig(n=args.n, height=args.size[0], width=args.size[1], seed=args.seed,
                              normal_fraction=args.normal_fraction, roi_size=args.roi_size,
                              pixel_spacing_mm=args.pixel_spacing)
        cfg.validate()
        with progress_bars(progress) as bars:
            out = synthesize_fullfield(args.out, cfg, fmt=args.format, overwrite=args.overwrite, on_progress=bars)
        ds = FolderDataset.open(out)
        tumor = sum(s.label == len(ds.classes) - 1 for s in ds.samples)
        print(f"{out}: {len(ds)} full-field images ({tumor} {ds.classes[-1]})")
        return 0
    elif args.data_cmd == "real":
        out = build_real_dataset(args.out, settings.data_cache, overwrite=args.overwrite)
    elif args.data_cmd == "rois":
        out = _rois(args, progress)
    else:
        out = convert_volumes([tuple(p) for p in args.pair], args.out, axis=args.axis, overwrite=args.overwrite)
    ds = FolderDataset.open(out)
    tumor = sum(s.label == len(ds.classes) - 1 for s in ds.samples)
    print(f"{out}: {len(ds)} ROIs ({tumor} {ds.classes[-1]})")
    return 0
