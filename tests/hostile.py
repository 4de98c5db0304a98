"""Hostile inputs built from scratch or from the real DICOMs: decompression bombs, lying headers,
absurd DICOM dimensions and corrupted JPEG 2000 codestreams (shared by the upload and fuzz tests)."""

import struct
import zlib
from io import BytesIO
from pathlib import Path


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png(width: int, height: int, rows: int | None = None) -> bytes:
    """An 8-bit grey PNG declaring width x height; `rows` rows of zeros are really compressed (all of
    them by default: the classic decompression bomb, under 1 MB for 30000 x 30000)."""
    rows = height if rows is None else rows
    comp = zlib.compressobj(9)
    line = b"\x00" * (width + 1)
    out = []
    block = line * max(1, min(rows, (1 << 24) // len(line)))
    per = len(block) // len(line)
    done = 0
    while done < rows:
        n = min(per, rows - done)
        out.append(comp.compress(block if n == per else line * n))
        done += n
    out.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(out))
        + _chunk(b"IEND", b"")
    )


def dicom_with(src: Path, **tags) -> bytes:
    """A real DICOM with some header values replaced (Rows=60000, NumberOfFrames=..., ...)."""
    import pydicom

    ds = pydicom.dcmread(src, force=True)
    for k, v in tags.items():
        setattr(ds, k, v)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def corrupt_j2k(src: Path, offset: int = 200, length: int = 64) -> bytes:
    """A JPEG 2000 DICOM whose codestream is overwritten with junk just after its main header."""
    data = bytearray(Path(src).read_bytes())
    soc = data.find(b"\xff\x4f\xff\x51")
    assert soc > 0, f"{src}: no JPEG 2000 codestream"
    start = soc + offset
    data[start : start + length] = bytes((i * 37 + 11) % 256 for i in range(length))
    return bytes(data)
