"""Argument parsing shared by the commands: subcommands that take the common options too."""

from __future__ import annotations

import argparse
from typing import Any


class Subcommands:
    """Adds the common options to every sub-command, so they work after it too.
    Adapters receive one to add their own commands (``register(sub)``)."""

    def __init__(self, action: argparse._SubParsersAction, common: argparse.ArgumentParser):
        self.action, self.common = action, common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.action.add_parser(name, parents=[self.common], **kwargs)
        return parser
