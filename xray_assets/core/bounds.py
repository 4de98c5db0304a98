"""How big an image says it is, read from its header before a single pixel is decoded, and the
pixel budget it must fit.

A PNG's size is in its IHDR chunk, a JPEG's in its SOF segment, a JPEG 2000 codestream's in its SIZ
marker, a DICOM's in Rows x Columns x NumberOfFrames x SamplesPerPixel. A file that declares more
pixels than the budget is refused with `ImageTooLarge` (a web upload answers 413); a header that
cannot be read is `HeaderError`. Nothing here allocates more than the bytes it is given.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: the largest chest radiographs are about 4,300 x 4,300 (18 MP: the biggest VinBigData DICOMs are
#: 3,000 x 3,000); 50 MP leaves a wide margin and refuses the classic 30,000 x 30,000 bomb
DEFAULT_MAX_MEGAPIXELS = 50.0

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# JPEG start-of-frame markers (every coding process); C4 (DHT), C8 (JPG) and CC (DAC) are not frames
SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


class HeaderError(ValueError):
    """The header that gives the image's size is missing, truncated or nonsensical."""


class ImageTooLarge(ValueError):
    """The image declares more pixels than the budget allows (refused before decoding)."""


@dataclass(frozen=True)
class Dimensions:
    kind: str
    width: int
    height: int
    frames: int = 1
    samples: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height * max(self.frames, 1) * max(self.samples, 1)

    def describe(self) -> str:
        extra = f" x {self.frames} frames" if self.frames > 1 else ""
        extra += f" x {self.samples} samples" if self.samples > 1 else ""
        return f"{self.width} x {self.height} pixels{extra} ({self.pixels / 1e6:.1f} megapixels)"


def kind_of(data: bytes, filename: str = "") -> str | None:
    """'png', 'jpeg' or 'dicom' from the first bytes (and a DICOM's usual suffix), else None."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SOI):
        return "jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    # a DICOM without its preamble starts with a group 0x0002 or 0x0008 tag
    if filename.lower().endswith((".dcm", ".dicom")) or data[:2] in (b"\x02\x00", b"\x08\x00"):
        return "dicom"
    return None


def png_dimensions(data: bytes) -> Dimensions:
    """From the IHDR chunk, which the PNG standard puts first."""
    if not data.startswith(PNG_SIGNATURE):
        raise HeaderError("not a PNG (no PNG signature)")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise HeaderError("PNG header truncated or its first chunk is not IHDR")
    width, height = struct.unpack(">II", data[16:24])
    color_type = data[25]
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color_type)
    if width == 0 or height == 0 or samples is None:
        raise HeaderError(
            f"PNG header declares an impossible image ({width} x {height}, colour type {color_type})"
        )
    return Dimensions("png", width, height, 1, samples)


def jpeg_dimensions(data: bytes) -> Dimensions:
    """From the first start-of-frame segment, walking the marker segments (never the entropy data)."""
    if not data.startswith(b"\xff\xd8"):
        raise HeaderError("not a JPEG (no start-of-image marker)")
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise HeaderError(f"JPEG marker expected at byte {i}")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            raise HeaderError("JPEG has no frame header before its image data")
        if i + 2 > n:
            break
        length = struct.unpack(">H", data[i : i + 2])[0]
        if length < 2:
            raise HeaderError(f"JPEG segment at byte {i} has length {length}")
        if marker in SOF_MARKERS:
            if i + 8 > n:
                break
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            components = data[i + 7]
            if width == 0 or height == 0 or components == 0:
                raise HeaderError(
                    f"JPEG frame header declares an impossible image ({width} x {height}, "
                    f"{components} components)"
                )
            return Dimensions("jpeg", width, height, 1, components)
        i += length
    raise HeaderError("JPEG header truncated before its frame header")


def j2k_dimensions(data: bytes) -> Dimensions:
    """From a JPEG 2000 codestream's SIZ marker (a raw codestream, or the first one inside a JP2 box)."""
    i = data.find(b"\xff\x4f\xff\x51")
    if i < 0:
        raise HeaderError("no JPEG 2000 codestream header (SOC, SIZ)")
    siz = data[i + 4 : i + 4 + 38]
    if len(siz) < 38:
        raise HeaderError("JPEG 2000 header truncated")
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", siz[4:20])
    components = struct.unpack(">H", siz[36:38])[0]
    width, height = xsiz - xo, ysiz - yo
    if xsiz <= xo or ysiz <= yo or components == 0:
        raise HeaderError(
            f"JPEG 2000 header declares an impossible image ({xsiz} x {ysiz}, origin {xo}, {yo})"
        )
    return Dimensions("jpeg2000", width, height, 1, components)


def codestream_dimensions(frame: bytes) -> Dimensions | None:
    """The size a compressed DICOM frame declares itself (JPEG or JPEG 2000), None for another codec."""
    if frame.startswith(b"\xff\xd8"):
        return jpeg_dimensions(frame)
    if frame.startswith(J2K_SOC_SIZ) or frame.startswith(JP2_SIGNATURE):
        return j2k_dimensions(frame)
    return None


def image_dimensions(data: bytes, filename: str = "") -> Dimensions:
    """A PNG's or JPEG's size from its header. DICOMs are measured by `dicom.read_dicom` (pydicom
    parses the header; the pixel data is decoded only after the check)."""
    kind = kind_of(data, filename)
    if kind == "png":
        return png_dimensions(data)
    if kind == "jpeg":
        return jpeg_dimensions(data)
    raise HeaderError("not a PNG or a JPEG")


def check_budget(dims: Dimensions, max_megapixels: float, what: str = "this image") -> Dimensions:
    """`dims` if it fits the budget, else ImageTooLarge with a message that names the limit."""
    if dims.pixels > max_megapixels * 1e6:
        raise ImageTooLarge(
            f"{what} declares {dims.describe()}; the limit is {max_megapixels:g} megapixels "
            "(XRAY_MAX_MEGAPIXELS)"
        )
    return dims
