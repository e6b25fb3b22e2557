"""The same choices through the four adapters give the same options: ``camseg segment``,
``Segment`` over gRPC, ``camseg jobs submit`` and ``SubmitJob`` over gRPC, on one model
with a recipe, against a real server and a real Redis (:func:`camseg.pipeline.options.resolve`
decides for all of them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camseg.app.cli import main
from camseg.bulk import batch
from camseg.heat.methods import CamMethod
from camseg.heat.rules import parse_rule
from camseg.io import codecs
from camseg.io.inputs import decode_image
from camseg.pipeline.options import Options
from camseg.pipeline.recipe_record import Recipe, save_recipe
from camseg.pipeline.run import LoadedModel, run
from services import wire
from services.gen.camseg.v1 import camseg_pb2 as pb
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.jobs.conftest import JobEnv
from tests.services.servers import start_server, stop

RECIPE = Options(method=CamMethod.LAYERCAM, threshold=parse_rule("p80"), tta=4, gate=True, largest=False)

# each case: the caller's choices, and the options every adapter must run
CASES: list[tuple[dict[str, Any], Options, bool]] = [
    ({}, RECIPE, True),
    ({"largest": True}, Options(method=CamMethod.LAYERCAM, threshold=parse_rule("p80"), tta=4, largest=True), True),
    ({"largest": True, "no_gate": True},
     Options(method=CamMethod.LAYERCAM, threshold=parse_rule("p80"), tta=4, largest=True, gate=False), True),
    ({"threshold": "p90"}, Options(threshold=parse_rule("p90")), False),
    ({"method": "hirescam", "layer": "stage3", "no_gate": True},
     Options(method=CamMethod.HIRESCAM, layer="stage3", gate=False), False),
]


def _flags(chosen: dict[str, Any]) -> list[str]:
    """The choices as ``camseg segment`` / ``camseg jobs submit`` flags."""
    out: list[str] = []
    for name in ("method", "layer", "threshold"):
        if name in chosen:
            out += [f"--{name}", chosen[name]]
    return out + (["--largest"] if chosen.get("largest") else []) + (["--no-gate"] if chosen.get("no_gate") else [])


def _request_fields(chosen: dict[str, Any]) -> dict[str, Any]:
    """The choices as the fields that SegmentRequest and SubmitJobRequest share."""
    fields: dict[str, Any] = {}
    if "method" in chosen or "layer" in chosen:
        fields["options"] = pb.ExplainOptions(method=wire.method_to_pb(chosen["method"]) if "method" in chosen
                                              else pb.CAM_METHOD_UNSPECIFIED, layer=chosen.get("layer", ""))
    if "threshold" in chosen:
        fields["threshold"] = wire.rule_to_pb(parse_rule(chosen["threshold"]))
    if chosen.get("largest"):
        fields["largest_component"] = True
    if chosen.get("no_gate"):
        fields["gate"] = False
    return fields


def _ran(record: dict[str, Any]) -> Options:
    """The options a summary or a manifest records (less what belongs to one call: the
    encodings, the overlays, the pixel limit; the tiling is the default one here)."""
    return Options.from_record({k: v for k, v in record.items() if k not in ("encodings", "overlays", "max_pixels")},
                               tiling=True)


def test_the_same_choices_give_the_same_options_through_every_adapter(
        job_env: JobEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = job_env.repo / "tiny" / "1"
    save_recipe(model_dir, Recipe(RECIPE, Options()))
    model = LoadedModel.load(model_dir)
    rois = job_env.data_root / "rois"
    files = sorted((rois / "images").glob("*.png"))[:6]
    images = [decode_image(f.read_bytes()) for f in files]
    for name, value in job_env.env().items():
        monkeypatch.setenv(name, value)
    server = start_server(job_env.repo, env=job_env.env())
    try:
        segmentation, jobs = pb_grpc.SegmentationStub(server.channel()), pb_grpc.JobsStub(server.channel())
        for i, (chosen, expected, from_recipe) in enumerate(CASES):
            # camseg segment: the summary records the options it ran
            out = tmp_path / f"seg-{i}"
            assert main(["--no-progress", "segment", "--model", str(model_dir), "--data", str(rois), "--out",
                         str(out), "--split", "test", *_flags(chosen)]) == 0
            said = capsys.readouterr().out
            assert ("the model's recipe" in said) is from_recipe, (chosen, said)
            assert _ran(json.loads((out / "summary.json").read_text())["options"]) == expected, chosen

            # camseg jobs submit: the job's manifest records the options its workers will run
            assert main(["jobs", "submit", "--model", "tiny", "--data", str(rois), "--split", "test",
                         *_flags(chosen)]) == 0
            job_id = capsys.readouterr().out.split("\t")[0]
            assert _ran(batch.read_manifest(job_env.out / job_id).options) == expected, chosen

            # SubmitJob over gRPC: the same
            job = jobs.SubmitJob(pb.SubmitJobRequest(kind=pb.JOB_KIND_SEGMENT, model=pb.ModelRef(name="tiny"),
                                                     data=str(rois), split="test", **_request_fields(chosen)),
                                 timeout=60)
            assert _ran(batch.read_manifest(job_env.out / job.job_id).options) == expected, chosen

            # Segment over gRPC: the reply says whether the recipe ran, and its masks are the expected options'
            reply = segmentation.Segment(pb.SegmentRequest(
                model=pb.ModelRef(name="tiny"), images=[pb.Image(encoded=f.read_bytes()) for f in files],
                **_request_fields(chosen)), timeout=60)
            assert reply.recipe is from_recipe, chosen
            direct = run(model, images, expected).items
            assert any(r.threshold_value is not None for r in direct)  # not all flat maps
            for m, r in zip(reply.masks, direct, strict=True):
                assert r.mask is not None
                got = codecs.unpack_bits(m.packed_bits, tuple(m.shape))
                assert np.mean(got != r.mask) <= 0.01, chosen  # one ONNX Runtime or another: a pixel at most
                assert (m.threshold_value if m.HasField("threshold_value") else None) == (
                    pytest.approx(r.threshold_value, abs=1e-3) if r.threshold_value is not None else None), chosen
                assert wire.rule_from_pb(m.threshold) == expected.threshold
                assert m.gated == r.gated
    finally:
        stop(server)
