"""Hostile ids and escaping symlinks in a folder data set: the reader refuses them with one
InvalidInputError naming labels.csv and the line, and ``camseg segment`` (a real process)
refuses them before it writes anything, anywhere."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from camseg.core.errors import InvalidInputError
from camseg.core.outdir import MARKER
from camseg.data.folder import FolderDataset

HOSTILE_IDS = {
    "parent-traversal": "../../../x/y",
    "absolute": "/abs/path",
    "dot-dot": "..",
    "dot": ".",
    "hidden": ".hidden",
    "slash": "a/b",
    "backslash": "a\\b",
    "newline": "evil\nid",
    "nul": "a\x00b",
    "long": "".join(f"{i:03d}" for i in range(100)),  # 300 characters, no window repeats
}
ECHO_LIMIT = 70  # characters of an id a message may repeat
ROWS = 24  # the tiny folder's ROIs: the header is line 1, its rows lines 2-25


# ---------------------------------------------------------------------- helpers
def copy_set(tiny_folder: Path, dest: Path) -> Path:
    shutil.copytree(tiny_folder, dest)
    return dest


def append_row(data: Path, sample_id: str, label: str = "tumor") -> int:
    """Append one row to labels.csv; its line number (the file has no embedded newlines
    before it)."""
    labels = data / "labels.csv"
    lines = labels.read_text().count("\n")
    with labels.open("a", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerow([sample_id, label, "test"])
    return lines + 1


def line_of(data: Path, sample_id: str) -> int:
    for n, line in enumerate((data / "labels.csv").read_text().splitlines(), start=1):
        if line.split(",")[0] == sample_id:
            return n
    raise AssertionError(sample_id)


def tumor_id(data: Path) -> str:
    """The first ROI that has a mask."""
    return sorted((data / "masks").glob("*.png"))[0].stem


def longest_echo(text: str, message: str) -> int:
    """Length of the longest piece of ``text`` that ``message`` repeats verbatim."""
    best = 0
    for i in range(len(text)):
        k = best + 1
        while i + k <= len(text) and text[i : i + k] in message:
            best = k
            k += 1
    return best


def refusal(data: Path) -> str:
    with pytest.raises(InvalidInputError) as exc:
        FolderDataset.open(data)
    message = exc.value.message
    assert str(exc.value) == message
    assert "\n" not in message and "\r" not in message  # one line, whatever the input
    return message


Snapshot = dict[str, tuple[str, int, int]]


def snapshot(root: Path) -> Snapshot:
    """Every entry under ``root`` (``root`` included, symlinks not followed): kind, size
    and modification time."""
    out: Snapshot = {}
    for entry in [root, *root.rglob("*")]:
        st = entry.lstat()
        kind = "link" if entry.is_symlink() else "dir" if entry.is_dir() else "file"
        out[str(entry.relative_to(root))] = (kind, st.st_size if kind != "dir" else 0, st.st_mtime_ns)
    return out


def segment(model: Path, data: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAMSEG_TORCH_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "camseg", "--no-progress", "segment", "--model", str(model),
                           "--data", str(data), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


# ---------------------------------------------------------------------- the reader: ids
def test_the_untouched_copy_opens(tiny_folder: Path, tmp_path: Path) -> None:
    """The control for every refusal below: the same copy, unmodified, is accepted."""
    data = copy_set(tiny_folder, tmp_path / "data")
    ds = FolderDataset.open(data)
    assert len(ds) == ROWS
    assert all(s.image_path.parent == data / "images" for s in ds.samples)
    line = append_row(data, "roi-extra.v2_b")  # an unusual but allowed id with an image is accepted
    assert line == ROWS + 2
    shutil.copyfile(data / "images" / "roi-00000.png", data / "images" / "roi-extra.v2_b.png")
    assert FolderDataset.open(data).samples[-1].id == "roi-extra.v2_b"


@pytest.mark.parametrize("sample_id", list(HOSTILE_IDS.values()), ids=list(HOSTILE_IDS))
def test_hostile_ids_are_refused_naming_the_file_and_line(tiny_folder: Path, tmp_path: Path,
                                                          sample_id: str) -> None:
    data = copy_set(tiny_folder, tmp_path / "data")
    line = append_row(data, sample_id)
    assert line == ROWS + 2
    message = refusal(data)
    assert message.startswith(f"{data / 'labels.csv'}:{line}: id ")
    assert "is not allowed" in message
    assert longest_echo(sample_id, message) <= ECHO_LIMIT


def test_a_hostile_id_in_the_middle_is_refused_at_its_own_line(tiny_folder: Path, tmp_path: Path) -> None:
    data = copy_set(tiny_folder, tmp_path / "data")
    labels = data / "labels.csv"
    lines = labels.read_text().splitlines()
    lines.insert(5, "../../etc/passwd,tumor,train")  # becomes line 6; valid rows follow it
    labels.write_text("\n".join(lines) + "\n")
    assert refusal(data).startswith(f"{labels}:6: id '../../etc/passwd' is not allowed")


def test_a_long_id_is_cut_in_the_message(tiny_folder: Path, tmp_path: Path) -> None:
    data = copy_set(tiny_folder, tmp_path / "data")
    long_id = "Q" * 5000
    append_row(data, long_id)
    message = refusal(data)
    assert longest_echo(long_id, message) <= ECHO_LIMIT
    assert len(message) < len(str(data)) + 300
    assert "5000 characters" in message


def test_a_field_over_the_csv_limit_is_an_invalid_input(tiny_folder: Path, tmp_path: Path) -> None:
    data = copy_set(tiny_folder, tmp_path / "data")
    huge = "Z" * (csv.field_size_limit() + 1)
    line = append_row(data, huge)
    message = refusal(data)
    assert message.startswith(f"{data / 'labels.csv'}:{line}")
    assert longest_echo(huge, message) <= ECHO_LIMIT


def test_the_line_number_counts_blank_lines(tiny_folder: Path, tmp_path: Path) -> None:
    data = copy_set(tiny_folder, tmp_path / "data")
    labels = data / "labels.csv"
    labels.write_text("id,label,split\nroi-00000,normal,val\n\n../../x/y,tumor,test\n")
    assert refusal(data).startswith(f"{labels}:4: ")  # physical line 4; reported as 3


# ---------------------------------------------------------------------- the reader: symlinks
@pytest.mark.parametrize("kind", ["images", "masks"])
def test_a_file_symlink_out_of_the_data_set_is_refused(tiny_folder: Path, tmp_path: Path, kind: str) -> None:
    data = copy_set(tiny_folder, tmp_path / "data")
    sid = tumor_id(data)
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    shutil.copyfile(data / kind / f"{sid}.png", secret)  # a readable image: only its place is wrong
    link = data / kind / f"{sid}.png"
    link.unlink()
    link.symlink_to(secret)
    message = refusal(data)
    assert message == f"{data / 'labels.csv'}:{line_of(data, sid)}: {link} resolves outside {data}"


@pytest.mark.parametrize("relative", [True, False])
def test_a_relative_or_absolute_link_climbing_out_is_refused(tiny_folder: Path, tmp_path: Path,
                                                             relative: bool) -> None:
    data = copy_set(tiny_folder, tmp_path / "data")
    sid = "roi-00000"
    secret = tmp_path / "secret.png"
    shutil.copyfile(data / "images" / f"{sid}.png", secret)
    link = data / "images" / f"{sid}.png"
    link.unlink()
    link.symlink_to(Path("../../secret.png") if relative else secret)
    assert link.is_file()
    assert "resolves outside" in refusal(data)


def test_an_images_folder_linked_out_of_the_data_set_is_refused(tiny_folder: Path, tmp_path: Path) -> None:
    data = copy_set(tiny_folder, tmp_path / "data")
    shutil.move(data / "images", tmp_path / "elsewhere")
    (data / "images").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    message = refusal(data)
    assert message.startswith(f"{data / 'labels.csv'}:2: ") and "resolves outside" in message


def test_symlinks_that_stay_inside_are_accepted(tiny_folder: Path, tmp_path: Path) -> None:
    data = copy_set(tiny_folder, tmp_path / "data")
    original = FolderDataset.open(data)
    sid = tumor_id(data)
    index = [s.id for s in original.samples].index(sid)
    want_image, want_mask = original.load(index)
    assert want_mask is not None and want_mask.any()

    spare = data / "spare"
    spare.mkdir()
    for kind in ("images", "masks"):  # the files move to another folder of the set; links point at them
        shutil.move(data / kind / f"{sid}.png", spare / f"{kind}-{sid}.png")
    (data / "images" / f"{sid}.png").symlink_to(Path("..") / "spare" / f"images-{sid}.png")  # relative
    (data / "masks" / f"{sid}.png").symlink_to(spare / f"masks-{sid}.png")  # absolute
    via = tmp_path / "via"
    via.symlink_to(data, target_is_directory=True)  # the data set reached through a link of its own

    for root in (data, via):
        ds = FolderDataset.open(root)
        assert len(ds) == ROWS
        sample = ds.samples[index]
        assert sample.id == sid and sample.image_path.is_symlink()
        assert sample.mask_path is not None and sample.mask_path.is_symlink()
        image, mask = ds.load(index)
        np.testing.assert_array_equal(image, want_image)
        assert mask is not None
        np.testing.assert_array_equal(mask, want_mask)


# ---------------------------------------------------------------------- the command line
def hostile_layout(tiny_folder: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """``tmp/in/data`` (the set), ``tmp/x/y.png`` (an image outside it, exactly where
    ``../../../x/y`` leads from both ``images/`` and the output's ``masks/``) and
    ``tmp/work/out`` (not created)."""
    data = copy_set(tiny_folder, tmp_path / "in" / "data")
    (tmp_path / "x").mkdir()
    shutil.copyfile(data / "images" / f"{tumor_id(data)}.png", tmp_path / "x" / "y.png")
    return data, tmp_path / "x" / "y.png", tmp_path / "work" / "out"


def spoil(case: str, data: Path, outside: Path) -> int:
    """Make the set hostile; the line of labels.csv the refusal must name."""
    if case in HOSTILE_IDS:
        return append_row(data, HOSTILE_IDS[case])
    sid = tumor_id(data)
    kind = {"image-link": "images", "mask-link": "masks"}[case]
    link = data / kind / f"{sid}.png"
    link.unlink()
    link.symlink_to(outside)
    return line_of(data, sid)


@pytest.mark.parametrize("case", ["parent-traversal", "absolute", "image-link", "mask-link"])
def test_segment_refuses_and_writes_nothing_anywhere(trained_dir: Path, tiny_folder: Path, tmp_path: Path,
                                                     case: str) -> None:
    data, outside, out = hostile_layout(tiny_folder, tmp_path)
    line = spoil(case, data, outside)
    before, model_before = snapshot(tmp_path), snapshot(trained_dir)

    proc = segment(trained_dir, data, out, cwd=tmp_path)

    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip() == ""  # no result line
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"camseg: error: {data / 'labels.csv'}:{line}: ")
    assert ("resolves outside" if case.endswith("-link") else "is not allowed") in lines[0]
    assert snapshot(tmp_path) == before  # nothing created, changed or removed: no out, no work/, no temporaries
    assert not (tmp_path / "work").exists()
    assert snapshot(trained_dir) == model_before


def test_a_successful_segment_writes_only_under_out(trained_dir: Path, tiny_folder: Path, tmp_path: Path) -> None:
    data, _outside, out = hostile_layout(tiny_folder, tmp_path)
    out.parent.mkdir()
    before, model_before = snapshot(tmp_path), snapshot(trained_dir)

    proc = segment(trained_dir, data, out, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert f"{out / 'results.csv'}: {ROWS} images" in proc.stdout
    after = snapshot(tmp_path)
    outside_out = {k: v for k, v in after.items() if k != "work" and not k.startswith("work/out")}
    assert outside_out == {k: v for k, v in before.items() if k != "work"}
    assert sorted(os.listdir(out.parent)) == ["out"]  # the temporary sibling was renamed, none left
    ids = [s.id for s in FolderDataset.open(data).samples]
    written = {str(p.relative_to(out)) for p in out.rglob("*")}
    assert written == {"masks", "results.csv", "lesions.csv", "summary.json", MARKER} | {f"masks/{i}.png" for i in ids}
    assert all(after[f"work/out/masks/{i}.png"][0] == "file" for i in ids)  # files, not links
    assert snapshot(trained_dir) == model_before
