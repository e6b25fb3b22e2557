"""Hostile inputs for the tests: decompression bombs, multi-page TIFFs, mutated files.

Everything is built in memory and small on the wire, however large it claims to be.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import tifffile
from PIL import Image

from camseg.io.codecs import encode_png


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A valid 8-bit gray PNG of ``width`` x ``height`` zeros, compressed to a few KB;
    ``rows`` limits the pixel data actually written (a truncated bomb is cheaper to build
    and just as dangerous to a decoder that trusts the header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(comp.compress(row) for _ in range(height if rows is None else rows)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def tiff_pages(pages: int, size: int) -> bytes:
    """A multi-page TIFF of zeros, each page ``size`` x ``size``, zlib-compressed."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((pages, size, size), np.uint8), compression="zlib", photometric="minisblack")
    return buf.getvalue()


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


def formats(arr: np.ndarray) -> dict[str, bytes]:
    """The same uint8 array as PNG, JPEG and TIFF."""
    return {"png": encode_png(arr), "jpeg": jpeg(arr), "tiff": tiff(arr)}
