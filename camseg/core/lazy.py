"""Modules imported on first use.

The ``onnx`` package parses model files with the protobuf runtime; camseg's core must
not pull protobuf in when it is merely imported (the adapters import the core, and
protobuf is the gRPC layer's), so modules that read ONNX graphs bind ``onnx`` through
:class:`LazyModule` and load it when a graph is first read.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name``; imports it at the first attribute access."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _load(self) -> ModuleType:
        return importlib.import_module(self._name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
