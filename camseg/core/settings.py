"""One settings object for every entry point (environment prefix ``CAMSEG_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from camseg.core.windowing import Windowing


class Settings(BaseSettings):
    """Runtime settings; build once per entry point and pass down."""

    model_config = SettingsConfigDict(env_prefix="CAMSEG_", extra="ignore")

    torch_threads: int = Field(0, ge=0, description="intra-op threads for torch; 0 = torch default")
    device: str = Field("auto", description="torch device for training: auto (CUDA when torch sees a GPU)|cpu|cuda")
    ort_providers: str = Field(
        "auto", description="comma-separated ONNX Runtime providers, or auto (CUDA when it loads)"
    )
    data_cache: Path = Field(Path.home() / ".cache" / "camseg", description="downloads and caches")
    log_level: str = Field("WARNING", description="logging level of the command-line entry point")
    dicom_window: str = Field(
        "auto", description="how DICOM values become [0, 1]: auto (CT soft-tissue, MR percentiles, else the "
                            "file's window), a preset (soft-tissue, lung, bone, brain, mediastinum, liver), "
                            "CENTER,WIDTH, percentiles:LO,HI, or dicom (the file's own window)")

    @field_validator("dicom_window")
    @classmethod
    def _window(cls, v: str) -> str:

        return str(Windowing.parse(v))
