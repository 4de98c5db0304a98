"""Uploads -> pixels. PNG and JPEG through OpenCV, DICOM through the training pipeline's own
`read_dicom_image` (modality LUT, VOI window, MONOCHROME1 inversion). Only pixels come out: nothing
from a DICOM header is returned or logged."""

from __future__ import annotations

import os
import tempfile

import cv2
import numpy as np

from ..core.detection import to_gray
from ..core.dicom import DicomError, read_dicom_image


class UploadError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def kind_of(data: bytes, filename: str = "") -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    # a DICOM without its preamble starts with a group 0x0002 or 0x0008 tag
    if filename.lower().endswith((".dcm", ".dicom")) or data[:2] in (b"\x02\x00", b"\x08\x00"):
        return "dicom"
    return None


def decode(data: bytes, filename: str = "") -> tuple[np.ndarray, str]:
    """(uint8 HxW pixels, kind). Raises UploadError 415 (unsupported type) or 400 (corrupt)."""
    kind = kind_of(data, filename)
    if kind is None:
        raise UploadError(415, "unsupported file type: upload a PNG, a JPEG or a DICOM chest X-ray")
    if kind == "dicom":
        # a private file per request (pydicom reads paths); removed at once, never shared
        fd, path = tempfile.mkstemp(prefix="xray-upload-", suffix=".dcm")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            try:
                return read_dicom_image(path), kind
            except DicomError as exc:
                # the reason's kind only: the temp file's name and decoder details stay out
                reason = str(exc).split(": ", 1)[-1].split(" (")[0]
                raise UploadError(400, f"this DICOM cannot be read as an image: {reason}") from None
            except Exception:
                raise UploadError(400, "this DICOM is corrupt or holds no image") from None
        finally:
            os.unlink(path)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise UploadError(400, f"this {kind.upper()} is corrupt and cannot be decoded")
    return to_gray(img), kind   # the evaluation decodes its test images with the same function
