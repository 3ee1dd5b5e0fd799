"""Image bytes -> a checked, decoded BGR array (PURE: bytes in, values or CaptureError out).

Supports the three formats fundus cameras export: JPEG, PNG and TIFF, recognised by their magic bytes
(never by a file name). Before anything is decoded the header is read for the image's dimensions, so a
50-megapixel photo or a decompression bomb is refused without allocating its pixels. A JPEG that ends
before its end-of-image marker is refused as truncated, instead of being decoded into a half-grey picture
that the quality gate would have to guess about.

Every refusal is a :class:`~gateway.errors.CaptureError` whose message says what is wrong and what to do.
Decoding uses ``cv2.imdecode`` (a pure function over bytes); no file or device is touched here.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from gateway.errors import CaptureError

JPEG: Final = "image/jpeg"
PNG: Final = "image/png"
TIFF: Final = "image/tiff"
SUPPORTED: Final = (JPEG, PNG, TIFF)
MIB: Final = 1024 * 1024
"""Bytes per MB as ``retina.max_image_mb`` counts them."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Formats we recognise only to name them in the refusal.
_OTHER_MAGIC: Final = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"DICM", "DICOM"),
)

# JPEG start-of-frame markers carry the dimensions (all SOFn except DHT C4, JPG C8 and DAC CC).
_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS: Final = frozenset({0x01, *range(0xD0, 0xD8)})
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the header says, before decoding."""

    media_type: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """A decoded photo and the facts about its original bytes."""

    image: npt.NDArray[np.uint8]
    """uint8 BGR pixels, ``(height / scale, width / scale, 3)`` (rounded up)."""
    media_type: str
    width: int
    """Width of the original image (``image`` may be a reduced decode, see ``scale``)."""
    height: int
    sha256: str
    """SHA-256 (hex) of the original bytes, which are what is stored and forwarded."""
    size_bytes: int
    scale: int = 1
    """1, or 2/4/8 when a large JPEG was decoded at reduced size (``decode(..., reduce_to=...)``)."""


_REDUCED_FLAGS: Final = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def sniff_media_type(data: bytes) -> str:
    """The media type from the magic bytes: ``image/jpeg``, ``image/png`` or ``image/tiff``.

    Raises:
        CaptureError: empty data, or a format we do not take (named when recognised, e.g. GIF, WebP, HEIC).
    """
    if not data:
        raise CaptureError("the image is empty (0 bytes)")
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(_PNG_MAGIC):
        return PNG
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return TIFF
    name = _other_format(data)
    if name is not None:
        raise CaptureError(f"unsupported image format {name}; export the photo as JPEG, PNG or TIFF")
    raise CaptureError("not an image file (unknown format); export the photo as JPEG, PNG or TIFF")


def _other_format(data: bytes) -> str | None:
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "HEIC"
        if brand in (b"avif", b"avis"):
            return "AVIF"
    return None


def read_header(data: bytes) -> ImageInfo:
    """Media type and dimensions from the header alone (nothing is decoded).

    Raises:
        CaptureError: unsupported format, or a header that is damaged or cut short.
    """
    media_type = sniff_media_type(data)
    if media_type == JPEG:
        width, height = _jpeg_size(data)
    elif media_type == PNG:
        width, height = _png_size(data)
    else:
        width, height = _tiff_size(data)
    if width < 1 or height < 1:
        raise CaptureError(f"{_label(media_type)} header gives an empty size {width}x{height}; the file is damaged")
    return ImageInfo(media_type=media_type, width=width, height=height)


def _label(media_type: str) -> str:
    return media_type.removeprefix("image/").upper()


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise CaptureError("PNG header is damaged or cut short (no IHDR chunk)")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    width, height, _ = _jpeg_walk(data)
    return width, height


def _jpeg_walk(data: bytes) -> tuple[int, int, int | None]:
    """Walk the top-level JPEG segments: ``(width, height, offset of the first scan or None)``.

    Segment lengths are followed, so thumbnails inside APP1 (with their own SOS/EOI) are skipped.
    """
    pos, end = 2, len(data)
    size: tuple[int, int] | None = None
    while pos < end:
        if data[pos] != 0xFF:
            raise CaptureError(f"JPEG is corrupt: expected a marker at byte {pos}")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker == 0xDA and size is not None:
            return size[0], size[1], pos
        if marker in (0xD9, 0xDA):  # EOI, or a scan before any frame header
            raise CaptureError("JPEG is corrupt: no frame header before the image data")
        if pos + 2 > end:
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            raise CaptureError(f"JPEG is corrupt: segment length {length} at byte {pos}")
        if marker in _SOF_MARKERS:
            if pos + 7 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            size = (int(width), int(height))
        pos += length
    if size is None:
        raise CaptureError("JPEG is truncated: the file ends before the frame header")
    return size[0], size[1], None


def _tiff_size(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
        found: dict[int, int] = {}
        for i in range(count):
            entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
            tag, typ, _n = struct.unpack(order + "HHI", entry[:8])
            if tag in (_TIFF_WIDTH, _TIFF_LENGTH):
                # SHORT (3) values sit in the first two bytes of the value field, LONG (4) fill it.
                fmt = order + ("H" if typ == 3 else "I")
                (found[tag],) = struct.unpack(fmt, entry[8 : 8 + struct.calcsize(fmt)])
    except struct.error:
        raise CaptureError("TIFF header is damaged or cut short") from None
    if _TIFF_WIDTH not in found or _TIFF_LENGTH not in found:
        raise CaptureError("TIFF header is damaged: no image width/length")
    return found[_TIFF_WIDTH], found[_TIFF_LENGTH]


def jpeg_is_complete(data: bytes) -> bool:
    """True when a JPEG has a scan and an end-of-image marker after it.

    Inside entropy-coded data a 0xFF byte is always stuffed (0xFF00) or a restart marker, so an
    0xFFD9 after the first scan's start can only be the end-of-image marker.
    """
    try:
        _, _, scan = _jpeg_walk(data)
    except CaptureError:
        return False
    return scan is not None and data.rfind(b"\xff\xd9") > scan


def check_limits(info: ImageInfo, size_bytes: int, *, max_bytes: int, max_pixels: int) -> None:
    """Refuse a file above the byte limit or an image above the pixel limit, saying by how much."""
    if size_bytes > max_bytes:
        raise CaptureError(
            f"image file is {size_bytes / MIB:.1f} MB, above the {max_bytes / MIB:.1f} MB limit "
            "(retina.max_image_mb); export a smaller JPEG"
        )
    pixels = info.width * info.height
    if pixels > max_pixels:
        raise CaptureError(
            f"image is {info.width}x{info.height} ({pixels / 1e6:.1f} megapixels), above the "
            f"{max_pixels / 1e6:.1f} megapixel limit (retina.max_pixels); set the camera to a lower resolution"
        )


def decode(data: bytes, *, max_bytes: int, max_pixels: int, reduce_to: int | None = None) -> DecodedImage:
    """Check and decode image bytes into an 8-bit BGR array.

    Args:
        data: the original file bytes (JPEG, PNG or TIFF).
        max_bytes: refuse larger files (``retina.max_image_mb``).
        max_pixels: refuse images with more pixels, before decoding them (``retina.max_pixels``).
        reduce_to: decode a large JPEG at 1/2, 1/4 or 1/8 size (libjpeg's DCT scaling: faster, a fraction of
            the memory) as long as its longest side stays at least this many pixels. The quality gate and the
            model work at a few hundred pixels; the stored and forwarded bytes are always the original.

    Raises:
        CaptureError: saying what is wrong: empty, unsupported format, too large, truncated or corrupt.
    """
    info = read_header(data)
    check_limits(info, len(data), max_bytes=max_bytes, max_pixels=max_pixels)
    if info.media_type == JPEG and not jpeg_is_complete(data):
        raise CaptureError("JPEG is truncated (no end-of-image marker); the transfer was cut short, send it again")
    buf = np.frombuffer(data, dtype=np.uint8)
    scale, flag = 1, cv2.IMREAD_COLOR
    if reduce_to is not None and info.media_type == JPEG:
        longest = max(info.width, info.height)
        scale, flag = next(((f, fl) for f, fl in _REDUCED_FLAGS if -(-longest // f) >= reduce_to), (1, flag))
    try:
        # IMREAD_COLOR gives 8-bit BGR for every supported input (16-bit TIFF/PNG scaled, grey expanded).
        raw = cv2.imdecode(buf, flag)
    except cv2.error as exc:
        raise CaptureError(f"{_label(info.media_type)} could not be decoded ({exc.err}); the file is corrupt") from exc
    if raw is None:
        raise CaptureError(f"{_label(info.media_type)} could not be decoded; the file is corrupt")
    height, width = raw.shape[:2]
    expected = (-(-info.width // scale), -(-info.height // scale))
    if expected not in {(width, height), (height, width)}:
        # A rotation by EXIF orientation swaps the sides; anything else means a lying header.
        raise CaptureError(
            f"{_label(info.media_type)} is corrupt: header says {info.width}x{info.height}, "
            f"pixels are {width * scale}x{height * scale}"
        )
    # Report the original size as shown (sides swapped when the EXIF orientation rotated the picture).
    rotated = (width, height) != expected
    shown = (info.height, info.width) if rotated else (info.width, info.height)
    image: npt.NDArray[np.uint8] = np.ascontiguousarray(raw, dtype=np.uint8)
    return DecodedImage(
        image=image,
        media_type=info.media_type,
        width=shown[0],
        height=shown[1],
        sha256=sha256_hex(data),
        size_bytes=len(data),
        scale=scale,
    )


def encode_jpeg(image_bgr: npt.NDArray[np.uint8], quality: int = 92) -> bytes:
    """Encode a BGR frame as JPEG bytes (camera frames are stored as the JPEG the gateway wrote)."""
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise CaptureError("the frame could not be encoded as JPEG")
    return bytes(buf.tobytes())


def rendition(data: bytes, *, max_side: int, max_bytes: int, max_pixels: int, quality: int = 85) -> bytes:
    """A JPEG of the photo ``data`` no larger than ``max_side`` pixels (a thumbnail, or a view for the screen
    that any browser shows, whatever the camera wrote: TIFF, 16-bit PNG). Large JPEGs are decoded at reduced
    size, so a thumbnail of a 20-megapixel photo costs a fraction of a full decode.

    Raises:
        CaptureError: the stored bytes cannot be decoded (as :func:`decode`).
    """
    decoded = decode(data, max_bytes=max_bytes, max_pixels=max_pixels, reduce_to=max_side)
    image = decoded.image
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return encode_jpeg(image, quality)
