"""DICOM -> display-ready uint8 image, for training and for the web app.

The chain: decode -> modality LUT (rescale slope/intercept or Modality LUT Sequence) -> first
VOI window or VOI LUT Sequence (min-max when the file has none) -> MONOCHROME1 inverted -> uint8
-> optional downscale so the longest side is at most `max_size`.

Only pixels and sizes leave this module: never names, IDs or dates from the header.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from . import atomic
from .bounds import (
    DEFAULT_MAX_MEGAPIXELS,
    Dimensions,
    HeaderError,
    ImageTooLarge,
    check_budget,
    codestream_dimensions,
)

if TYPE_CHECKING:
    import pandas as pd


class DicomError(ValueError):
    """A DICOM that cannot become an image: corrupt, unsupported syntax, or not an image."""


@dataclass(frozen=True)
class ConvertedImage:
    pixels: np.ndarray  # uint8 HxW
    orig_height: int
    orig_width: int


def _read_dataset(path: str | Path, data: bytes | None = None):
    """The dataset of `path`, parsed from `data` (its bytes, already read) when given."""
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ImplicitVRLittleEndian

    def source():
        return io.BytesIO(data) if data is not None else path

    try:
        ds = pydicom.dcmread(source())
    except InvalidDicomError:
        # No preamble / no file meta (old ACR-NEMA style streams): read anyway.
        try:
            ds = pydicom.dcmread(source(), force=True)
        except Exception as exc:
            raise DicomError(
                f"{Path(path).name}: not a DICOM file ({exc.__class__.__name__})"
            ) from exc
        if "PixelData" not in ds and "SOPClassUID" not in ds and "Rows" not in ds:
            raise DicomError(
                f"{Path(path).name}: not a DICOM file (no preamble and no recognisable elements)"
            )
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    except Exception as exc:
        raise DicomError(
            f"{Path(path).name}: unreadable DICOM ({exc.__class__.__name__}: {exc})"
        ) from exc
    if "PixelData" not in ds:
        raise DicomError(f"{Path(path).name}: no pixel data (not an image DICOM)")
    return ds


def _to_display(ds, arr: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(arr, ds)
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        arr = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
        lo, hi = _voi_output_range(ds)
    else:
        lo, hi = float(arr.min()), float(arr.max())
    out = (arr.astype(np.float32, copy=False) - lo) * (1.0 / max(hi - lo, 1e-6))
    np.clip(out, 0.0, 1.0, out=out)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return out


def _voi_output_range(ds) -> tuple[float, float]:
    """The output range pydicom's VOI step maps onto (its own rules, mirrored)."""
    if "VOILUTSequence" in ds:
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        y_min, y_max = (
            -float(2 ** (int(ds.BitsStored) - 1)),
            float(2 ** (int(ds.BitsStored) - 1) - 1),
        )
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = (
            y_min * float(slope) + float(intercept),
            y_max * float(slope) + float(intercept),
        )
    return y_min, y_max


def resize_max(img: np.ndarray, max_size: int | None) -> np.ndarray:
    if not max_size:
        return img
    h, w = img.shape[:2]
    scale = max_size / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def _j2k_precision(codestream: bytes) -> int | None:
    """Bit depth of the first component, from the codestream's SIZ marker."""
    i = codestream.find(b"\xff\x51")
    if i < 0 or len(codestream) < i + 41:
        return None
    ssiz = codestream[i + 40]
    return None if ssiz & 0x80 else (ssiz & 0x7F) + 1  # signed data: no fast path


def reduce_factor(rows: int, cols: int, max_size: int | None) -> int:
    """Largest k with the 2**k-reduced image still at least `max_size` on its longest side."""
    if not max_size:
        return 0
    k = 0
    while max(rows, cols) / 2 ** (k + 1) >= max_size:
        k += 1
    return k


def _decode_j2k_reduced(ds, max_size: int | None) -> np.ndarray | None:
    """JPEG 2000 decoded at 1/2**k resolution (Pillow's `reduce`), or None when it does not apply."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in J2K_SYNTAXES or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return None
    if int(ds.get("PixelRepresentation", 0)) != 0:
        return None
    k = reduce_factor(int(ds.Rows), int(ds.Columns), max_size)
    if k == 0:
        return None
    import io

    from PIL import Image
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    precision = _j2k_precision(frame)
    if precision is None:
        return None
    arr = None
    for level in range(k, 0, -1):  # some codestreams decode only the first reductions
        try:
            with Image.open(io.BytesIO(frame)) as im:
                im.reduce = level
                im.load()
                arr = np.asarray(im)
            break
        except OSError:
            continue
    if arr is None or arr.ndim != 2:
        return None
    if arr.dtype == np.uint16 and precision < 16:
        arr = arr >> (16 - precision)  # Pillow scales samples up to 16 bits
    return arr


def _int_tag(ds, name: str, default: int, path) -> int:
    value = ds.get(name, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise DicomError(f"{Path(path).name}: {name} is not a number") from None


def declared_dimensions(ds, path) -> Dimensions:
    """What the header declares (Rows, Columns, NumberOfFrames, SamplesPerPixel; BitsAllocated must
    be a pixel size): DicomError naming the file when it declares no image."""
    name = Path(path).name
    rows, cols = _int_tag(ds, "Rows", 0, path), _int_tag(ds, "Columns", 0, path)
    frames = _int_tag(ds, "NumberOfFrames", 1, path)
    samples = _int_tag(ds, "SamplesPerPixel", 1, path)
    bits = _int_tag(ds, "BitsAllocated", 16, path)
    if rows <= 0 or cols <= 0 or frames <= 0 or samples <= 0:
        raise DicomError(
            f"{name}: the header declares no image ({rows} rows x {cols} columns, {frames} frames)"
        )
    if bits not in (1, 8, 16, 32, 64):
        raise DicomError(f"{name}: BitsAllocated {bits} is not a valid pixel size")
    return Dimensions("dicom", cols, rows, frames, samples)


def check_dimensions(ds, path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Dimensions:
    """What the header declares and what a compressed frame's own codestream declares, both inside
    the pixel budget, before decoding."""
    name = Path(path).name
    dims = check_budget(declared_dimensions(ds, path), max_megapixels, name)
    try:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and getattr(syntax, "is_compressed", False):
            from pydicom.encaps import generate_frames

            first = next(generate_frames(ds.PixelData, number_of_frames=dims.frames), b"")
            inner = codestream_dimensions(first)
            if inner is not None:
                check_budget(inner, max_megapixels, f"{name}: its compressed frame")
    except ImageTooLarge:
        raise
    except HeaderError as exc:
        raise DicomError(f"{name}: corrupt compressed frame ({exc})") from None
    except Exception as exc:
        raise DicomError(
            f"{name}: corrupt encapsulated pixel data ({exc.__class__.__name__})"
        ) from None
    return dims


def read_dicom(
    path: str | Path,
    max_size: int | None = None,
    fast: bool = True,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    data: bytes | None = None,
) -> ConvertedImage:
    """Display-ready uint8. `fast`: decode JPEG 2000 at reduced resolution when `max_size` allows.
    Raises ImageTooLarge (before decoding) when the header declares more than `max_megapixels`.
    `data`: the file's bytes when the caller has read them already (the path then only names it)."""
    ds = _read_dataset(path, data)
    check_dimensions(ds, path, max_megapixels)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomError(
            f"{Path(path).name}: {ds.SamplesPerPixel} samples per pixel; expected grayscale"
        )
    if fast:
        try:
            reduced = _decode_j2k_reduced(ds, max_size)
        except Exception:
            reduced = None  # fall back to pydicom's full decode
        if reduced is not None:
            return _finish(ds, reduced, max_size, int(ds.Rows), int(ds.Columns), fast)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DicomError(
            f"{Path(path).name}: cannot decode pixel data (transfer syntax {syntax}): {exc.__class__.__name__}"
        ) from exc
    if arr.ndim != 2:
        arr = arr[0] if arr.ndim == 3 else arr
        if arr.ndim != 2:
            raise DicomError(
                f"{Path(path).name}: unsupported pixel array shape {ds.pixel_array.shape}"
            )
    return _finish(ds, arr, max_size, *arr.shape, fast)


def _finish(
    ds, arr: np.ndarray, max_size: int | None, orig_h: int, orig_w: int, fast: bool
) -> ConvertedImage:
    if fast and max_size and max(arr.shape) > max_size and not _has_lut_sequence(ds):
        # Rescale and windowing are linear per pixel, so averaging the stored values first gives the
        # same image (to rounding, away from the window's clip points) at a fraction of the work.
        arr = resize_max(arr.astype(np.float32), max_size)
    u8 = (_to_display(ds, arr) * 255.0 + 0.5).astype(np.uint8)
    return ConvertedImage(resize_max(u8, max_size), int(orig_h), int(orig_w))


def _has_lut_sequence(ds) -> bool:
    return bool(ds.get("ModalityLUTSequence")) or bool(ds.get("VOILUTSequence"))


def read_dicom_image(
    path: str | Path, max_size: int | None = None, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> np.ndarray:
    """uint8 HxW, display-ready (the public API: docs/development.md)."""
    return read_dicom(path, max_size, max_megapixels=max_megapixels).pixels


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def quarantined(reason: str) -> dict:
    """A conversion row for a DICOM that gave no image, with the reason (naming the file)."""
    return {
        "path": "",
        "height": 0,
        "width": 0,
        "orig_height": 0,
        "orig_width": 0,
        "status": "quarantined",
        "reason": reason,
    }


def convert_one(
    src: str, dst: str, max_size: int | None, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> dict:
    """Convert one DICOM to a PNG at `dst` (atomically). Never raises: failures come back as rows.
    The file is read once: its bytes give the row's `source_hash` (sha256) and are decoded from
    memory. (A decoder that crashes the process is caught one level up, by the isolated pool.)"""

    row = {
        "path": dst,
        "height": 0,
        "width": 0,
        "orig_height": 0,
        "orig_width": 0,
        "status": "ok",
        "reason": "",
    }
    try:
        data = Path(src).read_bytes()
    except OSError as exc:
        return quarantined(f"{Path(src).name}: unreadable ({exc.__class__.__name__}: {exc})")
    source_hash = hashlib.sha256(data).hexdigest()
    try:
        img = read_dicom(src, max_size, max_megapixels=max_megapixels, data=data)
        del data  # the dataset holds what it needs
        ok, buf = cv2.imencode(".png", img.pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise DicomError(f"{Path(src).name}: PNG encoding failed")
        atomic.write_bytes(dst, buf.tobytes())
        row.update(
            height=img.pixels.shape[0],
            width=img.pixels.shape[1],
            orig_height=img.orig_height,
            orig_width=img.orig_width,
        )
    except (DicomError, ImageTooLarge) as exc:
        return {**quarantined(str(exc)), "source_hash": source_hash}
    except MemoryError:
        reason = f"{Path(src).name}: decoding needs more memory than a worker may use"
        return {**quarantined(reason), "source_hash": source_hash}
    except Exception as exc:  # a corrupt file must not stop the run
        reason = f"{Path(src).name}: {exc.__class__.__name__}: {exc}"
        return {**quarantined(reason), "source_hash": source_hash}
    return {**row, "source_hash": source_hash}


def stat_key(path: Path) -> str:
    """A cheap identity of a file version (size and modification time)."""
    s = Path(path).stat()
    return f"{s.st_size}:{s.st_mtime_ns}"


def plan_conversion(
    sources: list[Path], old: "pd.DataFrame", converted: set[str], max_size: int, digest=file_sha256
) -> tuple[list[dict], list[tuple[Path, str, str]]]:
    """Which DICOMs need converting: (manifest rows kept as they are, [(source, sha256 or None,
    stat key)]).

    A source is unchanged when its stat key matches the manifest's (no read at all), or else when its
    content hash does (a touched but identical file: the only case hashed here); it also needs the
    same target size and, when it converted fine, its PNG among `converted` (the names the storage
    root holds). Anything else is converted again: a new file, new bytes, another size, a lost PNG.
    A source without a usable manifest row is not read here at all (sha256 None): the worker that
    converts it hashes the bytes it reads, so a first run reads each file once, in parallel.
    """
    prev_by_id = old.set_index("image_id", drop=False) if len(old) else None
    keep, todo = [], []
    for p in sources:
        key = stat_key(p)
        prev = (
            prev_by_id.loc[p.stem]
            if prev_by_id is not None and p.stem in prev_by_id.index
            else None
        )
        usable = (
            prev is not None
            and int(prev["max_size"]) == max_size
            and (prev["status"] != "ok" or Path(prev["path"]).name in converted)
        )
        if usable and prev["stat_key"] == key:
            keep.append(prev.to_dict())
            continue
        if not usable:
            todo.append((p, None, key))
            continue
        sha = digest(p)
        if prev["source_hash"] == sha:
            keep.append({**prev.to_dict(), "stat_key": key})
            continue
        todo.append((p, sha, key))
    return keep, todo
