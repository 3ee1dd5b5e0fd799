"""Image decoding with limits: every bad input gets a CaptureError that says what is wrong."""

from __future__ import annotations

import contextlib
import hashlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.retina import fundus_jpeg

from gateway.emulate.camera import encode, synthetic_fundus
from gateway.errors import CaptureError
from gateway.retina import imaging

LIMITS = {"max_bytes": 30 * 1024 * 1024, "max_pixels": 40_000_000}
JPEG = fundus_jpeg(seed=3, size=(320, 240))


@pytest.mark.parametrize(("ext", "media_type"), [(".jpg", "image/jpeg"), (".png", "image/png"), (".tif", "image/tiff")])
def test_decodes_the_three_camera_formats(ext: str, media_type: str) -> None:
    data = encode(synthetic_fundus(2, (320, 240)), ext)
    decoded = imaging.decode(data, **LIMITS)
    assert decoded.media_type == media_type
    assert (decoded.width, decoded.height) == (320, 240)
    assert decoded.image.shape == (240, 320, 3) and decoded.image.dtype == np.uint8
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert decoded.size_bytes == len(data)


def test_sixteen_bit_tiff_is_decoded_to_eight_bit() -> None:
    image16 = (synthetic_fundus(4, (200, 150)).astype(np.uint16) * 257).astype(np.uint16)
    ok, buf = cv2.imencode(".tif", image16)
    assert ok
    decoded = imaging.decode(buf.tobytes(), **LIMITS)
    assert decoded.image.dtype == np.uint8 and decoded.image.max() > 100


@pytest.mark.parametrize("cut", [len(JPEG) - 2, len(JPEG) * 2 // 3, len(JPEG) // 3])
def test_truncated_jpeg_is_refused_as_truncated(cut: int) -> None:
    with pytest.raises(CaptureError, match="truncated"):
        imaging.decode(JPEG[:cut], **LIMITS)


def test_jpeg_cut_inside_its_header_is_refused() -> None:
    with pytest.raises(CaptureError, match="JPEG"):
        imaging.decode(JPEG[:40], **LIMITS)


def test_corrupt_jpeg_header_is_refused() -> None:
    broken = bytearray(JPEG)
    broken[4:40] = b"\x00" * 36  # the first segment header is zeroed
    with pytest.raises(CaptureError, match="corrupt"):
        imaging.decode(bytes(broken), **LIMITS)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"GIF89a" + b"\x00" * 40, "GIF"),
        (b"BM" + b"\x00" * 40, "BMP"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 20, "WebP"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 20, "HEIC"),
        (b"%PDF-1.7\n" + b"\x00" * 20, "PDF"),
    ],
)
def test_unsupported_formats_are_named(data: bytes, named: str) -> None:
    with pytest.raises(CaptureError, match=f"unsupported image format {named}"):
        imaging.decode(data, **LIMITS)


def test_webp_from_opencv_is_refused() -> None:
    ok, buf = cv2.imencode(".webp", synthetic_fundus(1, (64, 48)))
    assert ok
    with pytest.raises(CaptureError, match="WebP"):
        imaging.decode(buf.tobytes(), **LIMITS)


@pytest.mark.parametrize("data", [b"", b"hello, this is a text file", b"\x00" * 100])
def test_empty_and_unknown_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(CaptureError):
        imaging.decode(data, **LIMITS)


def test_fifty_megapixel_image_is_refused_before_decoding() -> None:
    ok, buf = cv2.imencode(".jpg", np.zeros((5774, 8660, 3), np.uint8))  # 50.0 MP, 0.8 MB of JPEG
    assert ok
    with pytest.raises(CaptureError, match=r"8660x5774 \(50\.0 megapixels\).*retina\.max_pixels"):
        imaging.decode(buf.tobytes(), **LIMITS)


def test_file_above_byte_limit_is_refused() -> None:
    with pytest.raises(CaptureError, match="max_image_mb"):
        imaging.decode(JPEG, max_bytes=1000, max_pixels=LIMITS["max_pixels"])


def test_png_header_lying_about_its_size_is_refused_by_the_limit() -> None:
    data = bytearray(encode(synthetic_fundus(1, (64, 48)), ".png"))
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # claims 100000 x 100000
    with pytest.raises(CaptureError, match="megapixel"):
        imaging.decode(bytes(data), **LIMITS)


def test_exif_thumbnail_does_not_hide_a_truncated_main_image() -> None:
    # An APP1 segment carrying a complete little JPEG (with its own SOS and EOI), then a cut main image.
    thumb = encode(synthetic_fundus(1, (32, 24)), ".jpg")
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + thumb
    with_thumb = JPEG[:2] + app1 + JPEG[2:]
    assert imaging.decode(with_thumb, **LIMITS).width == 320
    with pytest.raises(CaptureError, match="truncated"):
        imaging.decode(with_thumb[: len(with_thumb) - 500], **LIMITS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_any_bytes_give_an_image_or_capture_error(data: bytes) -> None:
    with contextlib.suppress(CaptureError):
        imaging.decode(data, **LIMITS)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(JPEG) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_damaged_jpeg_gives_an_image_or_capture_error(edits: list[tuple[int, int]]) -> None:
    data = bytearray(JPEG)
    for pos, value in edits:
        data[pos] = value
    try:
        decoded = imaging.decode(bytes(data), **LIMITS)
    except CaptureError:
        return
    assert decoded.image.ndim == 3 and decoded.image.shape[2] == 3


def test_large_jpeg_is_decoded_reduced_but_reported_at_full_size() -> None:
    data = encode(synthetic_fundus(5, (4000, 3000)), ".jpg")
    full = imaging.decode(data, **LIMITS)
    reduced = imaging.decode(data, **LIMITS, reduce_to=1024)
    assert (full.width, full.height, full.scale) == (4000, 3000, 1)
    assert (reduced.width, reduced.height, reduced.scale) == (4000, 3000, 2)
    assert reduced.image.shape == (1500, 2000, 3)
    assert reduced.sha256 == full.sha256
    small = imaging.decode(JPEG, **LIMITS, reduce_to=1024)  # 320x240: nothing to reduce
    assert small.scale == 1 and small.image.shape == (240, 320, 3)
    png = imaging.decode(encode(synthetic_fundus(5, (2400, 1800)), ".png"), **LIMITS, reduce_to=600)
    assert png.scale == 1 and png.image.shape == (1800, 2400, 3)  # only JPEG has cheap reduced decoding
