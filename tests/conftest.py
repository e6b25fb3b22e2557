"""Shared, session-scoped fixtures: a tiny synthetic folder data set and tiny models.

Everything here is small enough for a 2-core CPU: 32-pixel ROIs, width-8 networks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from camseg.data.synth import SynthConfig, synthesize
from camseg.models import Classifier, ModelSpec, build

# One intra-op thread: these networks are tiny, so OpenMP's fork/join costs more than it
# saves, and on a shared 2-core machine a descheduled worker thread stalls every
# parallel region (measured: a 64-px densenet forward 1.4 s with 2 threads under load,
# 7 ms with 1).
torch.set_num_threads(1)

TINY_SIZE = 32

ModelFactory = Callable[..., Classifier]


def _make_model(
    arch: str = "densenet",
    *,
    in_channels: int = 1,
    num_classes: int = 2,
    size: int = TINY_SIZE,
    width: int = 8,
    seed: int = 0,
) -> Classifier:
    """A freshly initialised eval-mode model with non-trivial BatchNorm statistics and head.

    ``init_weights`` draws the head from N(0, 0.01) with zero bias and leaves BatchNorm
    at identity; random affine parameters, running statistics and a unit-scale head
    make the numerical comparisons meaningful.
    """
    torch.manual_seed(seed)
    model = build(
        ModelSpec(
            arch=arch,
            in_channels=in_channels,
            num_classes=num_classes,
            input_size=size,
            width=width,
        )
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.fc.weight.normal_(0.0, 1.0)
        model.fc.bias.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def make_model() -> ModelFactory:
    """Factory for fresh tiny models (see :func:`_make_model`)."""
    return _make_model


@pytest.fixture(scope="session")
def tiny_model() -> Classifier:
    """A shared eval-mode densenet (1 channel, 2 classes, 32 px). Tests must not mutate it."""
    return _make_model()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-ROI synthetic data set (32 px, 8-bit) in the folder layout, with splits."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    return synthesize(out, SynthConfig(n=24, size=TINY_SIZE, seed=3))


@pytest.fixture(scope="session")
def trained_dir(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory from one epoch of ``train_from_folder`` on :func:`tiny_folder`.

    Shared: tests that write into a model directory copy it first.
    """
    from camseg.models.training import TrainConfig, train_from_folder

    out = tmp_path_factory.mktemp("models") / "tiny-densenet"
    train_from_folder(
        tiny_folder,
        "densenet",
        out,
        TrainConfig(epochs=1, batch_size=8, seed=0),
        input_size=TINY_SIZE,
        width=8,

    )
    return out


@pytest.fixture(scope="session")
def exported(trained_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A copy of :func:`trained_dir` exported to ONNX, with the metadata export wrote."""
    import shutil

    from camseg.models.export import export_model

    model_dir = tmp_path_factory.mktemp("export") / "m"
    shutil.copytree(trained_dir, model_dir)
    meta = export_model(model_dir, n_images=8, providers="CPUExecutionProvider")
    return model_dir, meta
