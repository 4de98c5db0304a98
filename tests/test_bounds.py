"""Image sizes from headers (PNG IHDR, JPEG SOF, JPEG 2000 SIZ), the pixel budget, and the isolated
pool's three ways for a task to die (crash, timeout, memory cap) each named."""

import os
import signal

import cv2
import hostile
import numpy as np
import pytest

from xray_assets.core import bounds
from xray_assets.core.isolation import DecodeLimits, IsolatedPool, failure_reason


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_header_dimensions_equal_the_decoded_ones(ext):
    img = np.random.default_rng(0).integers(0, 255, (37, 53), dtype=np.uint8)
    data = cv2.imencode(ext, img)[1].tobytes()
    dims = bounds.image_dimensions(data)
    assert (dims.width, dims.height) == (53, 37)


def test_a_progressive_jpeg_with_metadata_segments_is_measured():
    img = np.zeros((21, 99, 3), np.uint8)
    data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    # an APP segment before the frame header must be skipped by its length
    data = data[:2] + b"\xff\xe1\x00\x10" + b"Exif\0\0" + b"\0" * 8 + data[2:]
    assert (bounds.jpeg_dimensions(data).width, bounds.jpeg_dimensions(data).samples) == (99, 3)


def test_budget_refuses_a_bomb_and_names_the_limit():
    dims = bounds.png_dimensions(hostile.png(30000, 30000, rows=1))
    with pytest.raises(
        bounds.ImageTooLarge, match=r"30000 x 30000 pixels \(900.0 megapixels\); the limit is 50 "
    ):
        bounds.check_budget(dims, 50)
    assert (
        bounds.check_budget(bounds.png_dimensions(hostile.png(4000, 4000, rows=1)), 50).pixels
        == 16e6
    )


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 30,
        b"\xff\xd8\xff\xda\x00\x02",
        b"\xff\xd8\xff\xe0\xff\xff",
        b"\xff\xd8" + b"\xff" * 50,
    ],
)
def test_truncated_or_nonsensical_headers_are_header_errors(data):
    with pytest.raises(bounds.HeaderError):
        bounds.image_dimensions(data)


def test_j2k_siz_is_read_from_a_real_codestream(real_data):
    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    ds = dcmread(real_data / "dicom" / "pydicom-data_RG1_J2KI.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    dims = bounds.codestream_dimensions(frame)
    assert (dims.width, dims.height) == (ds.Columns, ds.Rows)


def _die(how: str):
    if how == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if how == "hang":
        import time

        time.sleep(60)
    if how == "memory":
        return bytearray(4 << 30)  # 4 GB: over the worker's cap
    return how


def test_isolated_pool_survives_crash_hang_and_memory_and_names_each():
    limits = DecodeLimits(workers=1, timeout_s=3, memory_mb=1536)
    with IsolatedPool(limits) as pool:
        reasons = {}
        for how in ("crash", "hang", "memory"):
            with pytest.raises(BaseException) as info:
                pool.submit(_die, how).result()
            reasons[how] = failure_reason(info.value, limits)
        assert pool.submit(_die, "fine").result() == "fine"
    assert "crashed (SIGSEGV)" in reasons["crash"]
    assert "longer than 3 s" in reasons["hang"]
    assert "more than the 1536 MB" in reasons["memory"]
