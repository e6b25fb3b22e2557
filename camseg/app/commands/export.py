"""``camseg export``: export a trained model to ONNX with a parity check."""

from __future__ import annotations

import argparse
from pathlib import Path

from camseg.core.settings import Settings
from camseg.models.export import export_model


def add_arguments(e: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    e.add_argument("model_dir", type=Path)
    e.add_argument("--data", type=Path, default=None, help="images for the parity check (default: training data)")


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    meta = export_model(args.model_dir, data_dir=args.data, providers=settings.ort_providers)
    par = meta["onnx"]["parity"]
    print(f"{args.model_dir / 'model.onnx'}: parity max |dp| {par['max_abs_diff_probabilities']:.2e} "
          f"on {par['images']} images")
    return 0
