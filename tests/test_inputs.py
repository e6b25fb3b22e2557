"""camseg.io.inputs: formats, headers before pixels, budgets, ids and paths — and a fuzz test
of the whole decode path of a request."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from camseg.core.errors import CamsegError, InvalidInputError, ResourceExhaustedError, StatusCode, shown
from camseg.io.codecs import encode_png
from camseg.io.guards import Budget, check_id, path_under
from camseg.io.inputs import decode_image, decode_mask, read_header
from tests.hostile import formats, png_bomb, tiff, tiff_pages


@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff"])
def test_documented_formats_decode(fmt: str) -> None:
    arr = (np.arange(64 * 48).reshape(48, 64) % 251).astype(np.uint8)
    data = formats(arr)[fmt]
    h = read_header(data, "x")
    assert (h.format, h.height, h.width, h.samples, h.pages) == (fmt.upper(), 48, 64, 1, 1)
    out = decode_image(data, name="x")
    assert out.shape == (48, 64) and out.dtype == np.float32
    if fmt != "jpeg":  # lossless
        np.testing.assert_allclose(out, arr / 255.0, atol=1e-6)


def test_other_formats_are_refused() -> None:
    for fmt in ("BMP", "GIF", "WEBP", "PPM"):
        buf = io.BytesIO()
        Image.new("L", (8, 8)).save(buf, format=fmt)
        with pytest.raises(InvalidInputError, match="not a readable image"):
            decode_image(buf.getvalue(), name="x")


def test_bombs_are_refused_from_the_header() -> None:
    with pytest.raises(InvalidInputError, match=r"60000x60000 pixels exceed the limit|decompression bomb"):
        decode_image(png_bomb(60000, 60000, rows=4), name="bomb")
    with pytest.raises(InvalidInputError, match="50 pages"):
        decode_image(tiff_pages(50, 2048), name="pages")
    five = io.BytesIO()
    import tifffile

    tifffile.imwrite(five, np.zeros((8, 8, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    with pytest.raises(InvalidInputError, match="5 samples per pixel"):
        decode_image(five.getvalue(), name="five")


def test_budgets_refuse_before_decoding() -> None:
    small = encode_png(np.zeros((10, 10), np.uint8))
    server = Budget(250, "server budget")
    with Budget(150, "request budget", parent=server) as request:
        decode_image(small, budget=request)
        with pytest.raises(ResourceExhaustedError, match="request budget"):
            decode_image(png_bomb(100, 100, rows=1), budget=request)  # 10,000 values claimed, refused unread
        assert request.used == 100 and server.used == 100
        with Budget(200, "other request", parent=server) as other:
            with pytest.raises(ResourceExhaustedError, match="server budget"):
                other.take(151, "image 0")  # fits the request, not what the server has left
            assert other.used == 0
            other.take(150, "image 0")
            assert server.used == 250
    assert server.used == 0
    rgb = encode_png(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ResourceExhaustedError):
        decode_image(rgb, budget=Budget(299))  # an RGB pixel counts three values


def test_masks_and_16_bit() -> None:
    wide = np.array([[0, 1], [300, 65535]], np.uint16)
    np.testing.assert_array_equal(decode_mask(encode_png(wide)), wide != 0)
    np.testing.assert_allclose(decode_image(encode_png(wide)), wide / 65535.0, atol=1e-7)
    np.testing.assert_array_equal(decode_mask(tiff(np.array([[0.0, -1.0]], np.float32))), [[False, True]])


def test_ids_and_paths(tmp_path: Path) -> None:
    assert check_id("Mass-Training_P_00001.LEFT", "x") == "Mass-Training_P_00001.LEFT"
    for bad in ("../x", "/abs", "..", ".hidden", "a/b", "a\\b", "a\nb", "x" * 201, ""):
        with pytest.raises(InvalidInputError, match="not allowed"):
            check_id(bad, "labels.csv:2")
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "images" / "in.png").write_bytes(b"x")
    (root / "images" / "out.png").symlink_to(tmp_path / "secret.png")
    (root / "images" / "alias.png").symlink_to(root / "images" / "in.png")
    assert path_under(root, root / "images" / "alias.png", "x") == root / "images" / "alias.png"
    with pytest.raises(InvalidInputError, match="resolves outside"):
        path_under(root, root / "images" / "out.png", "x")


def test_messages_echo_bounded_input() -> None:
    assert shown("a\nb") == "'a\\nb'"
    long = shown("x" * 10_000)
    assert len(long) < 100 and "10000 characters" in long


# ---------------------------------------------------------------------- fuzzing
def _seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for shape in ((16, 16), (9, 23), (12, 12, 3)):
        arr = (rng.random(shape) * 255).astype(np.uint8)
        out += list(formats(arr).values())
    out.append(encode_png((rng.random((8, 8)) * 65535).astype(np.uint16)))
    out.append(png_bomb(5000, 5000, rows=2))
    out.append(tiff_pages(3, 8))
    return out


SEEDS = _seeds()


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """A valid seed, mutated: bytes flipped, cut, spliced, or its header fields patched."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 4]))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "header", "random"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut" and data:
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(max_size=32))
        elif op == "header" and len(data) > 24:
            # PNG width/height live at 16..24; in TIFF this lands in the first IFD
            i = draw(st.integers(16, 20))
            data[i : i + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
        elif op == "random":
            data = bytearray(draw(st.binary(max_size=256)))
    return bytes(data)


ALLOWED = {StatusCode.INVALID_ARGUMENT, StatusCode.RESOURCE_EXHAUSTED}


def fuzz_request(examples: int) -> None:
    """Mutated PNG/JPEG/TIFF and random raw arrays through the service's request decoding
    (pb.Image -> core decode -> model input): each is decoded or refused with
    INVALID_ARGUMENT / RESOURCE_EXHAUSTED, never anything else."""
    from services import codec
    from services.gen.camseg.v1 import camseg_pb2 as pb

    raw_dtypes = st.sampled_from(["uint8", "uint16", "float32", "float64", "float16", "int64", "bool", ""])

    @st.composite
    def images(draw: st.DrawFn) -> pb.Image:
        if draw(st.booleans()):
            return pb.Image(encoded=draw(hostile_bytes()))
        dtype = draw(raw_dtypes)
        if draw(st.booleans()) and dtype in ("uint8", "uint16", "float32", "float64", "float16"):
            # consistent shape and length: the values themselves are hostile (NaN, inf, huge)
            shape = draw(st.lists(st.integers(1, 40), min_size=2, max_size=2)) + draw(st.sampled_from([[], [1], [3]]))
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            data = draw(st.binary(min_size=size, max_size=size))
        else:
            shape = draw(st.lists(st.integers(-2, 70000), min_size=0, max_size=4))
            data = draw(st.binary(max_size=4096))
        return pb.Image(raw=pb.RawArray(dtype=dtype, shape=shape, data=data))

    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(images(), min_size=1, max_size=3))
    def run(batch: list[pb.Image]) -> None:
        with Budget(3 * 4096 * 4096) as budget:
            try:
                arrays = codec.decode_images(batch, max_images=256, max_pixels=4096 * 4096, budget=budget)
            except CamsegError as exc:
                assert exc.code in ALLOWED, f"{exc.code}: {exc.message}"
                return
        for a in arrays:
            assert a.dtype == np.float32 and a.ndim in (2, 3) and np.isfinite(a).all()
            assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0

    run()


def test_fuzz_every_input_is_answered_with_bounded_memory() -> None:
    """Thousands of hostile inputs in a fresh process, whose peak memory is then read: the
    whole run (interpreter, torch and the decoders included) stays under 1.5 GB."""
    code = ("import resource, sys\n"
            "from tests.test_inputs import fuzz_request\n"
            "fuzz_request(3000)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_kib = int(proc.stdout.strip().splitlines()[-1])
    assert peak_kib < 1.5 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


ATHERIS_TARGET = """
import sys, logging
import atheris
logging.getLogger("tifffile").disabled = True
with atheris.instrument_imports():
    from camseg.io import guards, inputs
    from camseg.core.errors import CamsegError

ALLOWED = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}

def one(data: bytes) -> None:
    try:
        with guards.Budget(3 * 4096 * 4096) as budget:
            inputs.decode_image(data, name="fuzz", budget=budget)
    except CamsegError as exc:
        if exc.code.value not in ALLOWED:
            raise

atheris.Setup([sys.argv[0], "-runs=%d" % int(sys.argv[1]), "-rss_limit_mb=1500", "-max_len=4096",
               sys.argv[2]], one)
atheris.Fuzz()
"""


def test_atheris_coverage_guided_fuzz_of_the_decoder(tmp_path: Path) -> None:
    """Coverage-guided mutations of the seed PNG/JPEG/TIFF files through the core decoder
    (libFuzzer via atheris): every input is decoded or refused with INVALID_ARGUMENT /
    RESOURCE_EXHAUSTED, within libFuzzer's 1.5 GB memory limit."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    script = tmp_path / "fuzz.py"
    script.write_text(ATHERIS_TARGET)
    proc = subprocess.run([sys.executable, str(script), "5000", str(corpus)], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 5000 runs" in proc.stderr
