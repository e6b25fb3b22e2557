"""Checks shared by the kinds when a job is planned: a job that cannot run is refused at
submission, not in a worker."""

from __future__ import annotations

from pathlib import Path

from camseg.core.errors import InvalidInputError
from camseg.data.folder import FolderDataset
from camseg.pipeline.options import Choices, Options
from camseg.pipeline.run import LoadedModel


def segmentation_options(model_dir: Path, options: Options | Choices | None) -> tuple[LoadedModel, Options]:
    """The model (torch, no ONNX session) and the options a segmenting job records:
    ``options`` as given, or a caller's :class:`Choices` (None: none) resolved against
    the model's recipe (:meth:`LoadedModel.options_for`). InvalidInputError without a
    threshold rule or when the model has no engine for them."""
    model = LoadedModel.load(model_dir, onnx=False)
    opts, _ = model.options_for(options)
    if opts.threshold is None:
        raise InvalidInputError("bulk segmentation needs a threshold rule")
    model.engine_for(opts)
    return model, opts


def check_model_and_data(model_dir: Path, data_dir: Path) -> None:
    """The model loads and the folder data set opens (its one-line errors otherwise)."""
    LoadedModel.load(model_dir, onnx=False)
    FolderDataset.open(data_dir)
