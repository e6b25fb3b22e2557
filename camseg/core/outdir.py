"""Output folders camseg may replace: only its own.

Every folder a command writes whole (a data set, a demo report, a segmentation run, a
job's chunk) carries :data:`MARKER`, a small JSON file naming what wrote it. Replacing an
existing folder is allowed only when it is empty or carries that mark, so ``camseg demo
--out ~`` or ``camseg data synth --out ~ --overwrite`` can never delete a home folder: it
stops with one line instead.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp()); _ = (d / "notes.txt").write_text("mine")
>>> check_replaceable(d)
Traceback (most recent call last):
...
camseg.core.errors.InvalidInputError: ... is not a camseg output (no .camseg-output in it): refusing to replace it
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import camseg
from camseg.core.errors import InvalidInputError

MARKER = ".camseg-output"
"""The file that marks a folder as camseg's own output."""


def mark(folder: Path, what: str) -> Path:
    """Write the mark into ``folder`` (which must exist): ``what`` says which command made it."""
    path = Path(folder) / MARKER
    path.write_text(json.dumps({"camseg": camseg.__version__, "what": what}) + "\n")
    return path


def is_own(folder: Path) -> bool:
    """Whether ``folder`` carries the mark."""
    return (Path(folder) / MARKER).is_file()


def check_replaceable(folder: Path) -> None:
    """Nothing when ``folder`` is absent, an empty folder or marked as camseg's own;
    InvalidInputError otherwise (a file, a link, or a folder with anything else in it)."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InvalidInputError(f"{folder}: not a folder camseg wrote: refusing to replace it")
    if folder.is_dir() and any(folder.iterdir()) and not is_own(folder):
        raise InvalidInputError(f"{folder}: is not a camseg output (no {MARKER} in it): refusing to replace it; "
                                "remove it yourself or choose another output folder")


def fresh_dir(folder: Path, what: str) -> Path:
    """``folder`` emptied (only when :func:`check_replaceable` allows it), created and marked."""
    folder = Path(folder)
    check_replaceable(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    mark(folder, what)
    return folder
