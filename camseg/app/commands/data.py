"""``camseg data``: make, fetch or convert data sets."""

from __future__ import annotations

import argparse
from pathlib import Path

from camseg.app.console import progress_bars
from camseg.app.parsing import Subcommands
from camseg.core.settings import Settings
from camseg.data.folder import FolderDataset
from camseg.data.fullfield import FORMATS, FullFieldConfig, synthesize_fullfield
from camseg.data.real import build_real_dataset
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
    else:
        out = convert_volumes([tuple(p) for p in args.pair], args.out, axis=args.axis, overwrite=args.overwrite)
    ds = FolderDataset.open(out)
    tumor = sum(s.label == len(ds.classes) - 1 for s in ds.samples)
    print(f"{out}: {len(ds)} ROIs ({tumor} {ds.classes[-1]})")
    return 0
