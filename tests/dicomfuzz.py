"""A fuzzed corpus of DICOM instances: seeded mutations of one valid Part 10 instance.

Each mutant is the valid instance with its own SOP Instance UID (and, with ``own_series``,
its own Series Instance UID), encoded Explicit VR Little Endian, then its data set bytes
mutated by one of :data:`KINDS`. The file meta stays valid, so a sender that reads only the
meta (pynetdicom with ``STORE_SEND_CHUNKED_DATASET``) sends the mutated bytes as they are.
The same ``seed`` gives the same corpus, byte for byte.

Kinds:

* ``truncated``: the data set cut inside one element (its header or its value).
* ``wrong_vr``: one element's VR replaced (short and long length forms swapped, unknown VRs).
* ``lying_length``: one element's length replaced (undefined, huge, off by a few).
* ``huge_sequence``: a private sequence nested thousands deep, or tens of thousands of
  items wide, or claiming a length far past the end.
* ``private_tags``: private blocks of random VRs and values (up to 1 MiB), elements without
  a creator, out of order and repeated.
* ``flipped``: a few random bytes changed anywhere.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

KINDS = ("truncated", "wrong_vr", "lying_length", "huge_sequence", "private_tags", "flipped")
_LONG = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_VRS = [b"SQ", b"UN", b"OB", b"OW", b"US", b"UL", b"FD", b"AT", b"DA", b"LO", b"UI", b"ZZ", b"\x00\x00", b"\xff\xff"]
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class Mutant:
    kind: str
    sop_uid: str
    series_uid: str
    path: Path


@dataclass(frozen=True)
class Element:
    offset: int
    tag: int
    vr: bytes
    header: int  # bytes of tag, VR and length
    length: int


def elements(body: bytes) -> list[Element]:
    """The top-level elements of an Explicit VR Little Endian data set (defined lengths)."""
    out, i = [], 0
    while i + 8 <= len(body):
        group, elem = struct.unpack_from("<HH", body, i)
        vr = body[i + 4:i + 6]
        if vr in _LONG:
            (length,) = struct.unpack_from("<L", body, i + 8)
            header = 12
        else:
            (length,) = struct.unpack_from("<H", body, i + 6)
            header = 8
        out.append(Element(i, (group << 16) | elem, vr, header, length))
        i += header + length
    return out


def _element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    head += struct.pack("<HL", 0, n) if vr in _LONG else struct.pack("<H", n)
    return head + value


def _tag(tag: int, length: int) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, length)


def _insert(body: bytes, els: list[Element], tag: int, blob: bytes) -> bytes:
    """``blob`` put where an element ``tag`` belongs in tag order."""
    at = next((e.offset for e in els if e.tag > tag), len(body))
    return body[:at] + blob + body[at:]


def _truncated(body: bytes, els: list[Element], rng: random.Random) -> bytes:
    e = rng.choice(els)
    return body[:e.offset + rng.randint(1, max(1, e.header + e.length - 1))]


def _wrong_vr(body: bytes, els: list[Element], rng: random.Random) -> bytes:
    e = rng.choice(els)
    vr = rng.choice([v for v in _VRS if v != e.vr])
    return body[:e.offset + 4] + vr + body[e.offset + 6:]


def _lying_length(body: bytes, els: list[Element], rng: random.Random) -> bytes:
    e = rng.choice(els)
    if e.header == 12:
        n = rng.choice([UNDEFINED, 0xFFFFFFF0, 0x7FFFFFFF, e.length * 1000 + 7, e.length + 1, max(0, e.length - 3)])
        return body[:e.offset + 8] + struct.pack("<L", n) + body[e.offset + 12:]
    n = rng.choice([0xFFFF, e.length + 1, e.length + 3, 0, max(0, e.length - 1)])
    return body[:e.offset + 6] + struct.pack("<H", n) + body[e.offset + 8:]


def _huge_sequence(body: bytes, els: list[Element], rng: random.Random) -> bytes:
    creator = _element(0x00090010, b"LO", b"FUZZ SEQ")
    shape = rng.choice(["deep", "wide", "lying"])
    if shape == "deep":  # nested items of undefined length, thousands deep
        depth = rng.randint(1000, 4000)
        seq = (_element(0x00091010, b"SQ", b"", UNDEFINED) + _tag(_ITEM, UNDEFINED)) * depth
        seq += (_tag(_ITEM_END, 0) + _tag(_SEQ_END, 0)) * depth
    elif shape == "wide":  # tens of thousands of empty items
        items = _tag(_ITEM, 0) * rng.randint(20000, 60000)
        seq = _element(0x00091010, b"SQ", items)
    else:  # a defined length far past the end of the data set
        item = _element(0x00091011, b"LO", b"X" * 8)
        seq = _element(0x00091010, b"SQ", _tag(_ITEM, len(item)) + item, rng.choice([0xFFFFFFF0, 0x10000000]))
    return _insert(body, els, 0x00090010, creator + seq)


def _private_tags(body: bytes, els: list[Element], rng: random.Random) -> bytes:
    group = rng.choice([0x0009, 0x0011, 0x0029, 0x7FD1])
    blob = _element((group << 16) | 0x0010, b"LO", b"FUZZ PRIVATE")
    for k in range(rng.randint(1, 120)):
        vr = rng.choice([b"LO", b"UN", b"OB", b"DS", b"US", b"SQ", b"UT"])
        size = rng.choice([0, 1, 3, 64, 4096]) if vr in _LONG else rng.choice([0, 1, 2, 16, 64])
        if k == 0 and rng.random() < 0.5:
            size, vr = 1 << 20, b"UN"
        value = bytes(rng.getrandbits(8) for _ in range(min(size, 256))) * max(1, size // 256)
        blob += _element((group << 16) | (0x1000 + k % 0x100), vr, value[:size])
    blob += _element(((group + 2) << 16) | 0x1001, b"LO", b"NO CREATOR ")  # no private creator
    if rng.random() < 0.5:  # out of order: anywhere among the elements
        at = rng.choice(els).offset
        return body[:at] + blob + body[at:]
    return _insert(body, els, group << 16, blob)


def _flipped(body: bytes, els: list[Element], rng: random.Random) -> bytes:
    out = bytearray(body)
    for _ in range(rng.randint(1, 16)):
        out[rng.randrange(len(out))] = rng.getrandbits(8)
    return bytes(out)


MUTATORS: dict[str, Callable[[bytes, list[Element], random.Random], bytes]] = {
    "truncated": _truncated, "wrong_vr": _wrong_vr, "lying_length": _lying_length,
    "huge_sequence": _huge_sequence, "private_tags": _private_tags, "flipped": _flipped}


def fuzz_corpus(source: Path, folder: Path, n: int, *, seed: int, own_series: bool = True) -> list[Mutant]:
    """``n`` mutants of ``source`` under ``folder``, the kinds in turn (module docstring)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        ds = dcmread(source)
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed), "sop", str(i)])
        if own_series:
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), "series", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        (meta_length,) = struct.unpack_from("<L", data, 132 + 8)  # (0002,0000) UL, the meta's length
        start = 132 + 12 + meta_length
        body = data[start:]
        mutated = MUTATORS[kind](body, elements(body), rng)
        path = folder / f"{i:03d}-{kind}.dcm"
        path.write_bytes(data[:start] + mutated)
        out.append(Mutant(kind, str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), path))
    return out
