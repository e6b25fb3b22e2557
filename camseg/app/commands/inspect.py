"""``camseg inspect``: an ONNX classifier's inputs, outputs and CAM layers, and a proposed
``camseg-model.json`` (bring your own model)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from camseg.core.settings import Settings
from camseg.models.imported import inspect_model, write_proposal


def add_arguments(ins: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    ins.add_argument("onnx_file", type=Path, metavar="MODEL.onnx")
    ins.add_argument("--write", action="store_true", help="write the proposed camseg-model.json beside the model")
    ins.add_argument("--overwrite", action="store_true", help="with --write, replace an existing config")
    ins.add_argument("--json", action="store_true", help="print the inspection as JSON")


def run(args: argparse.Namespace, settings: Settings, progress: bool) -> int:
    found = inspect_model(args.onnx_file, max_bytes=settings.max_model_bytes)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
    else:
        print(f"{found.path}")
        print("inputs:")
        for i in found.inputs:
            print(f"  {i.describe()}")
        print("outputs:")
        for o in found.outputs:
            print(f"  {o.describe()}")
        print("candidate CAM layers (last first):")
        for name, op, shape in found.layers:
            dims = "x".join(map(str, shape[1:])) if shape else "?"
            print(f"  {name:40s} {op:20s} {dims}")
        if found.unsupported:
            print(f"operators without a gradient path: {', '.join(found.unsupported)} "
                  "(Classify and Score-CAM still work)")
        print("proposed camseg-model.json:")
        print(found.proposal.to_json(), end="")
        for note in found.notes:
            print(f"note: {note}")
    if args.write:
        print(f"wrote {write_proposal(found, overwrite=args.overwrite)}")
    return 0
