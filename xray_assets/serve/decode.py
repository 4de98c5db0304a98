"""Uploads -> pixels. PNG and JPEG through OpenCV, DICOM through the training pipeline's own
`read_dicom_image` (modality LUT, VOI window, MONOCHROME1 inversion). Only pixels come out: nothing
from a DICOM header is returned or logged.

Bounded, in this order: the type from the first bytes (415); a PNG's or JPEG's size from its header,
checked against the pixel budget in the server process before anything is decoded (413, naming the
limit; a DICOM's header is measured by the worker before its pixel data is touched); then the decode
itself in an isolated worker (`core.isolation`), so a decoder that crashes, hangs or runs out of
memory costs that request a 400 or 413 and the server nothing.
"""

from __future__ import annotations

import os
import tempfile

import cv2
import numpy as np

from ..core.bounds import (
    DEFAULT_MAX_MEGAPIXELS,
    HeaderError,
    ImageTooLarge,
    check_budget,
    image_dimensions,
    kind_of,
)
from ..core.detection import to_gray
from ..core.dicom import DicomError, read_dicom_image

__all__ = ["UploadError", "decode", "check_upload", "kind_of"]


class UploadError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # raised in a decode worker, re-raised in the server
        return (UploadError, (self.status, str(self)))


def check_upload(
    data: bytes, filename: str = "", max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> str:
    """The upload's kind, after the checks that need no decoding: 415 for an unknown type, 400 for
    an unreadable header, 413 for a PNG or JPEG whose header declares more than the budget."""
    kind = kind_of(data, filename)
    if kind is None:
        raise UploadError(415, "unsupported file type: upload a PNG, a JPEG or a DICOM chest X-ray")
    if kind != "dicom":
        try:
            check_budget(image_dimensions(data, filename), max_megapixels, f"this {kind.upper()}")
        except ImageTooLarge as exc:
            raise UploadError(413, str(exc)) from None
        except HeaderError as exc:
            raise UploadError(400, f"this {kind.upper()} is corrupt: {exc}") from None
    return kind


def decode(
    data: bytes, filename: str = "", max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> tuple[np.ndarray, str]:
    """(uint8 HxW pixels, kind). Raises UploadError 415 (unsupported type), 413 (over the pixel
    budget) or 400 (corrupt). Runs in a decode worker; safe to call in-process too."""
    kind = check_upload(data, filename, max_megapixels)
    if kind == "dicom":
        # a private file per request (pydicom reads paths); removed at once, never shared
        fd, path = tempfile.mkstemp(prefix="xray-upload-", suffix=".dcm")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            try:
                return read_dicom_image(path, max_megapixels=max_megapixels), kind
            except ImageTooLarge as exc:
                # the temp file's name stays out: "this DICOM declares ..."
                raise UploadError(
                    413, str(exc).replace(os.path.basename(path), "this DICOM")
                ) from None
            except DicomError as exc:
                # the reason's kind only: the temp file's name and decoder details stay out
                reason = str(exc).split(": ", 1)[-1].split(" (")[0]
                raise UploadError(400, f"this DICOM cannot be read as an image: {reason}") from None
            except MemoryError:
                raise UploadError(
                    413, "this DICOM needs more memory to decode than an upload may use"
                ) from None
            except Exception:
                raise UploadError(400, "this DICOM is corrupt or holds no image") from None
        finally:
            os.unlink(path)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except MemoryError:
        raise UploadError(
            413, f"this {kind.upper()} needs more memory to decode than an upload may use"
        ) from None
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise UploadError(400, f"this {kind.upper()} is corrupt and cannot be decoded")
    return to_gray(img), kind  # the evaluation decodes its test images with the same function
