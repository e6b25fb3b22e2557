"""A model repository on disk: ``DIR/<name>/<version>/``, each version a model directory.

A version is *complete* when it holds ``model.onnx``, ``model.pt`` and
``metadata.json`` (what ``camseg train`` + ``camseg export`` write). Versions sort
numerically where they are numbers and after every named one (``"beta" < "2" < "10"``);
"latest" is the last in that order. Hidden entries (``.name``) are never versions, so
a version can be staged under a hidden name and renamed into place.

The scan looks at every entry on its own: an entry that cannot be read is skipped
with a log line, and the rest of the repository is still found. The service (which
polls and swaps models) and the workers (which take a name and a version) share this.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from camseg.core.errors import InvalidInputError, NotFoundError, shown
from camseg.models.modelconfig import CONFIG_FILE
from camseg.models.modeldir import METADATA_FILE, MODEL_FILE, ONNX_FILE

logger = logging.getLogger(__name__)

REQUIRED_FILES = (ONNX_FILE, MODEL_FILE, METADATA_FILE)  # a camseg-trained version
IMPORTED_FILES = (ONNX_FILE, CONFIG_FILE)  # an imported classifier (camseg.models.imported)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LATEST = ""


def version_key(v: str) -> tuple[int, int, str]:
    """Numeric versions (ASCII digits) sort numerically and after named ones."""
    return (1, int(v), "") if v.isascii() and v.isdigit() else (0, 0, v)


def valid_name(name: str) -> bool:
    """A model or version name: letters, digits, ``._-``, not starting with a dot."""
    return NAME_PATTERN.fullmatch(name) is not None


Signature = tuple[tuple[str, int, int], ...]


def version_files(path: Path) -> tuple[str, ...]:
    """The files that make ``path`` a version: an imported classifier's where its config
    is there, else a camseg-trained model's."""
    return IMPORTED_FILES if (path / CONFIG_FILE).is_file() else REQUIRED_FILES


def signature(path: Path) -> Signature:
    """Names, sizes and modification times of a version's files: changes when it is
    replaced or rewritten in place. The required files come first (OSError when one is
    gone), then every other visible file under the folder, subfolders included (an ONNX
    graph's external data may live in one; a student, a recipe), symlinks followed and a
    broken one marked by -1, so a version refused for a file beside its required ones is
    tried again once that file changes. Only ``stat`` is called: nothing is read."""
    required = version_files(path)
    out = []
    for name in required:
        st = (path / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns))
    for name in _other_files(path, required):
        try:
            st = (path / name).stat()
        except OSError:
            out.append((name, -1, -1))
            continue
        if not stat.S_ISDIR(st.st_mode):
            out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _other_files(path: Path, required: tuple[str, ...]) -> list[str]:
    """Visible files under ``path`` other than ``required``, relative and sorted; hidden
    entries (a file being written) and symlinked folders are not entered."""
    found = []
    for top, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(top).relative_to(path)
        found += [(rel / f).as_posix() for f in files if not f.startswith(".")]
    return sorted(f for f in found if f not in required)


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    path: Path


class ModelStore:
    """Read-only lookups in a repository root."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFoundError(f"{self.root}: no such model repository")
        self._reported: set[str] = set()  # entries already logged as skipped (a poller scans often)

    def _once(self, key: str, message: str, *args: object) -> None:
        if key not in self._reported:
            self._reported.add(key)
            logger.warning(message, *args)

    def scan(self) -> dict[str, list[str]]:
        """Complete versions of every model, each list in version order."""
        found: dict[str, list[str]] = {}
        for model_dir in self._entries(self.root):
            versions = [v.name for v in self._entries(model_dir) if self._complete(v)]
            if versions:
                found[model_dir.name] = sorted(versions, key=version_key)
        return found

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name`` in version order; NOT_FOUND when there are none."""
        self._check_name(name, "model")
        model_dir = self.root / name
        versions = sorted((v.name for v in self._entries(model_dir) if self._complete(v)), key=version_key)
        if not versions:
            raise NotFoundError(f"unknown model {shown(name)} in {self.root}")
        return versions

    def resolve(self, name: str, version: str = LATEST) -> VersionRef:
        """The directory of ``name`` at ``version`` (the latest when empty or ``latest``)."""
        versions = self.versions(name)
        if version in (LATEST, "latest"):
            version = versions[-1]
        else:
            self._check_name(version, "version")
        if version not in versions:
            raise NotFoundError(f"model {shown(name)} has no version {shown(version)}; it has {', '.join(versions)}")
        return VersionRef(name, version, self.root / name / version)

    @staticmethod
    def _check_name(name: str, what: str) -> None:
        if not valid_name(name):
            raise InvalidInputError(f"bad {what} name {shown(name)}: use letters, digits and ._-")

    def _entries(self, path: Path) -> list[Path]:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            self._once(str(path), "cannot list %s: %s", path, exc)
            return []
        out = []
        for e in entries:
            if not valid_name(e.name):
                if not e.name.startswith("."):
                    self._once(e.path, "skipped %r: not a valid model or version name", e.path)
                continue
            try:
                if e.is_dir():
                    out.append(Path(e.path))
            except OSError as exc:
                self._once(e.path, "skipped %s: %s", e.path, exc)
        return out

    def _complete(self, version_dir: Path) -> bool:
        missing = [f for f in version_files(version_dir) if not (version_dir / f).is_file()]
        if missing:
            self._once(f"{version_dir}:{','.join(missing)}", "%s is not a complete version yet (no %s); skipped",
                       version_dir, ", ".join(missing))
        return not missing
