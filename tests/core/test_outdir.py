"""camseg.core.outdir: only folders camseg wrote are ever replaced, and the commands that
replace a folder refuse anything else in one line, leaving it untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from camseg.core.errors import InvalidInputError
from camseg.core.outdir import MARKER, check_replaceable, fresh_dir, is_own, mark
from camseg.data.folder import atomic_directory


def _foreign(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    return folder


def test_absent_empty_and_own_folders_are_replaceable(tmp_path: Path) -> None:
    check_replaceable(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    own = fresh_dir(tmp_path / "own", "test")
    (own / "result.txt").write_text("x")
    assert is_own(own)
    check_replaceable(own)
    again = fresh_dir(own, "test")
    assert sorted(p.name for p in again.iterdir()) == [MARKER]


def test_a_foreign_folder_a_file_and_a_link_are_refused(tmp_path: Path) -> None:
    home = _foreign(tmp_path / "home")
    with pytest.raises(InvalidInputError, match=r"home: is not a camseg output \(no \.camseg-output in it\)"):
        fresh_dir(home, "demo")
    assert (home / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder camseg wrote"):
        check_replaceable(tmp_path / "file")
    own = tmp_path / "own"
    own.mkdir()
    mark(own, "test")
    os.symlink(own, tmp_path / "link")
    with pytest.raises(InvalidInputError, match="not a folder camseg wrote"):
        check_replaceable(tmp_path / "link")


def test_atomic_directory_marks_what_it_writes_and_overwrites_only_its_own(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert is_own(out) and (out / "a.txt").read_text() == "1"
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
    home = _foreign(tmp_path / "home")
    with pytest.raises(InvalidInputError, match="is not a camseg output"), atomic_directory(home, overwrite=True):
        pytest.fail("the body must not run")
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize("command", [
    ["demo", "--n", "8", "--no-service"],
    ["data", "synth", "--n", "8", "--size", "32", "--overwrite"],
])
def test_commands_refuse_a_foreign_output_folder_in_one_line(tmp_path: Path, command: list[str]) -> None:
    home = _foreign(tmp_path / "home")
    env = {**os.environ, "CAMSEG_TORCH_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "camseg", "--no-progress", *command, "--out", str(home)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("camseg: error: ") and "is not a camseg output" in lines[0]
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]
