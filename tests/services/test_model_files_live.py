"""A real ``camseg serve`` refuses versions whose ONNX external data leaves their folder,
or that declare more than ``CAMSEG_MAX_MODEL_BYTES``, while the good version keeps
serving every call; a refused version loads once its files are put right."""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path
from typing import Any

import grpc
import onnx

from camseg.models.modeldir import ONNX_FILE
from services.gen.camseg.v1 import camseg_pb2_grpc as pb_grpc
from tests.modelfiles import WEIGHTS, external, relocate
from tests.services.servers import Launcher, wait_until
from tests.services.test_repository_live import Caller, add_version, classify, code_of, listed, load_failures


def externalise(folder: Path) -> None:
    """The exported ``model.onnx`` saved again with its weights (tensors of 1 KiB and
    more, as exporters do) in ``weights.bin``."""
    model = onnx.load(str(folder / ONNX_FILE))
    onnx.save_model(model, str(folder / ONNX_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=WEIGHTS, size_threshold=1024)


def test_versions_that_leave_their_folder_are_refused_while_the_good_one_serves(
        exported: tuple[Path, dict[str, Any]], tumor_roi: tuple[bytes, bytes], launch: Launcher,
        tmp_path: Path) -> None:
    image, _ = tumor_roi
    root = tmp_path / "repo"
    add_version(exported, root, "good", "1", edit=externalise)  # external data inside: a good version
    assert (root / "good" / "1" / WEIGHTS).stat().st_size > 10_000
    outside = tmp_path / "outside"
    outside.mkdir()
    # the limit sits well above the model (about 0.1 MB) and below the padded version's 8 MiB
    server = launch(root, env={"CAMSEG_MAX_MODEL_BYTES": str(4 * 2**20)})
    stub = pb_grpc.SegmentationStub(server.channel())
    assert listed(stub) == {"good": (["1"], "1")}, server.serve.log.read_text()

    def escape_absolute(d: Path) -> None:
        externalise(d)
        shutil.move(d / WEIGHTS, outside / WEIGHTS)
        relocate(d / ONNX_FILE, str(outside / WEIGHTS))

    def escape_by_symlink(d: Path) -> None:
        externalise(d)
        shutil.copy(d / WEIGHTS, outside / "linked.bin")
        (d / WEIGHTS).unlink()
        (d / WEIGHTS).symlink_to(outside / "linked.bin")

    def too_large(d: Path) -> None:
        externalise(d)
        with (d / "pad.bin").open("wb") as fh:
            fh.truncate(8 * 2**20)
        model = onnx.load(str(d / ONNX_FILE), load_external_data=False)
        model.graph.initializer.append(external("pad", [2 * 2**20], "pad.bin"))
        (d / ONNX_FILE).write_bytes(model.SerializeToString())

    with Caller(server, image, "good") as caller:
        wait_until("first calls to good", lambda: len(caller.replies) >= 5 or caller.failures)
        add_version(exported, root, "good", "2", edit=escape_absolute)
        add_version(exported, root, "good", "3", edit=escape_by_symlink)
        add_version(exported, root, "good", "4", edit=too_large)
        wait_until("three versions refused", lambda: load_failures(server, "good") >= 3,
                   logs=lambda: server.serve.log.read_text())
        seen = len(caller.replies)
        time.sleep(1.0)  # more scans: a refused version is not tried again while its files stay the same
        assert load_failures(server, "good") == 3
        wait_until("calls after the refusals", lambda: len(caller.replies) >= seen + 5 or caller.failures)
        assert listed(stub) == {"good": (["1"], "1")}
        for v in ("2", "3", "4"):
            assert code_of(functools.partial(classify, stub, image, "good", v)) == grpc.StatusCode.NOT_FOUND
        lines = [ln for ln in server.serve.log.read_text().splitlines() if "refused model good version" in ln]
        assert len(lines) == 3, lines
        by_version = {ln.split("refused model good version ")[1].split(":")[0]: ln for ln in lines}
        assert f"{root}/good/2/{ONNX_FILE}: tensor" in by_version["2"]
        assert f"reads its data from '{outside / WEIGHTS}': an absolute path" in by_version["2"]
        assert f"{root}/good/3/{ONNX_FILE}: tensor" in by_version["3"]
        assert f"reads its data from '{WEIGHTS}': resolves outside the model's folder" in by_version["3"]
        assert f"{root}/good/4/{ONNX_FILE}: its tensors declare more than 4 MiB" in by_version["4"]
        assert "reached at tensor 'pad'" in by_version["4"]

        # put version 3 right (its weights copied in place of the link): it loads and serves
        (root / "good" / "3" / WEIGHTS).unlink()
        shutil.copy(outside / "linked.bin", root / "good" / "3" / WEIGHTS)
        wait_until("good/3 served after its fix", lambda: listed(stub)["good"] == (["1", "3"], "3"))
        assert classify(stub, image, "good", "3").model_version == "3"
        assert classify(stub, image, "good").model_version == "3"

    assert not caller.failures, caller.failures[:5]
    assert len(caller.replies) >= 10
    assert server.proc.poll() is None  # never crashed
    assert load_failures(server, "good") == 3
