"""Checks shared by the kinds when a job is planned: a job that cannot run is refused at
submission, not in a worker; and how a segmenting job records its options."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from camseg.core.errors import InvalidInputError
from camseg.core.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_WHOLE_PIXELS
from camseg.data.folder import FolderDataset
from camseg.pipeline.options import Choices, Options
from camseg.pipeline.run import LoadedModel
from camseg.pipeline.whole import Tiling, Whole, check_scale, decode_limit

MAX_PIXELS = "max_pixels"
"""The key of a segmenting job's options that bounds the images it decodes."""


def segmentation_options(model_dir: Path, options: Options | Choices | None,
                         tiling: Tiling | None = None) -> tuple[LoadedModel, Options]:
    """The model (torch, no ONNX session) and the options a segmenting job records:
    ``options`` as given, or a caller's :class:`Choices` (None: none) resolved against
    the model's recipe (:meth:`LoadedModel.options_for`), with the call's ``tiling``
    where given. InvalidInputError without a threshold rule, when the model has no engine
    for them, or when every image is to go whole and the model has no scale for it."""
    model = LoadedModel.load(model_dir, onnx=False)
    opts, _ = model.options_for(options)
    if tiling is not None:
        opts = replace(opts, tiling=tiling)
    if opts.threshold is None:
        raise InvalidInputError("bulk segmentation needs a threshold rule")
    model.engine_for(opts)
    if opts.tiling.mode is Whole.ALWAYS:
        check_scale(model, opts.tiling)
    return model, opts


def pipeline_record(opts: Options, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_whole_pixels: int = DEFAULT_MAX_WHOLE_PIXELS) -> dict[str, Any]:
    """The options a segmenting job's manifest records: the pipeline's with the tiling,
    and the largest image its parts decode (:func:`camseg.pipeline.whole.decode_limit`)."""
    return {**opts.to_record(tiling=True), MAX_PIXELS: decode_limit(opts.tiling, max_pixels, max_whole_pixels)}


def read_pipeline(rec: dict[str, Any]) -> tuple[Options, int]:
    """:func:`pipeline_record`'s options and pixel limit (a job planned before either was
    recorded: the defaults)."""
    rest = dict(rec)
    limit = int(rest.pop(MAX_PIXELS, DEFAULT_MAX_PIXELS))
    return Options.from_record(rest, tiling=True), limit


def check_model_and_data(model_dir: Path, data_dir: Path) -> None:
    """The model loads and the folder data set opens (its one-line errors otherwise)."""
    LoadedModel.load(model_dir, onnx=False)
    FolderDataset.open(data_dir)
