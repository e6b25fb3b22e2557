"""Generate the Python code of ``protos/`` into ``services/gen/`` (``make protos``).

protoc names modules after the proto path (``camseg.v1``), which would shadow the
core ``camseg`` package, so each generated gRPC module's import of its messages is
rewritten to ``services.gen.<package>`` (``services.gen.camseg.v1``,
``services.gen.inference``). ``--check`` fails when the committed code differs from what
the protos generate.

``inference/grpc_predict_v2.proto`` is the Open Inference Protocol's (KServe v2) gRPC
definition, kept verbatim from ``docs/predict-api/v2/`` of github.com/kserve/kserve.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "services" / "gen"
PROTO_FILES = ("camseg/v1/camseg.proto", "inference/grpc_predict_v2.proto")
PACKAGES = sorted({str(Path(p).parent).replace("/", ".") for p in PROTO_FILES})


def generate(out: Path) -> list[Path]:
    """Run protoc (grpcio-tools) into ``out``; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *(str(PROTOS / p) for p in PROTO_FILES)]
    out.mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for grpc_file in out.rglob("*_pb2_grpc.py"):
        text = grpc_file.read_text()
        for package in PACKAGES:
            text = text.replace(f"from {package} import", f"from services.gen.{package} import")
        grpc_file.write_text(text)
    for pkg in {p.parent for p in out.rglob("*.py")} | {out}:
        while True:
            (pkg / "__init__.py").touch()
            if pkg == out:
                break
            pkg = pkg.parent
    return sorted(p for p in out.rglob("*") if p.is_file())


def differences(committed: Path = OUT) -> list[str]:
    """Files that differ between ``committed`` and a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        rel = {p.relative_to(tmp) for p in fresh}
        have = {p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        diff = sorted(str(r) for r in rel ^ have)
        diff += sorted(str(r) for r in rel & have if not filecmp.cmp(Path(tmp) / r, committed / r, shallow=False))
    return diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if services/gen is out of date")
    args = parser.parse_args()
    if args.check:
        diff = differences()
        if diff:
            print(f"services/gen is out of date ({', '.join(diff)}); run make protos", file=sys.stderr)
            return 1
        print("services/gen is up to date")
        return 0
    shutil.rmtree(OUT, ignore_errors=True)
    for path in generate(OUT):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
