"""Emulated fundus camera for the tests and the demo: synthetic fundus-like frames, served through OpenCV.

No camera and no patient photo is needed: :func:`synthetic_fundus` draws a plausible fundus (orange
field in a black surround, optic disc, macula, branching vessels, fine texture) from a seed. The frames
reach the gateway through the real adapter (``cv2.VideoCapture``) as

- a video file (:func:`write_video`, MJPG in AVI, read with the FFMPEG backend), or
- an image sequence (:func:`write_sequence`, ``frame_%04d.png``, read with ``CAP_IMAGES``), or
- a folder of existing images turned into a video (:func:`video_from_folder`).

A finite video that ends is what an unplugged camera looks like to the adapter (``read()`` fails).
:func:`export_slowly` imitates a fundus camera writing into its export folder: a partial file that grows
for a while before it is complete.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]


def _vessel_tree(
    canvas: npt.NDArray[np.float32],
    rng: np.random.Generator,
    *,
    start: tuple[float, float],
    angle: float,
    width: float,
    length: float,
    depth: int,
) -> None:
    """Draw one vessel as a wandering polyline that branches (into the darkening layer ``canvas``)."""
    x, y = start
    steps = max(4, int(length / 6))
    for i in range(steps):
        angle += rng.normal(0, 0.12)
        nx, ny = x + 6 * math.cos(angle), y + 6 * math.sin(angle)
        thickness = max(1, round(width * (1 - 0.5 * i / steps)))
        cv2.line(canvas, (round(x), round(y)), (round(nx), round(ny)), 1.0, thickness, cv2.LINE_AA)
        x, y = nx, ny
        if depth > 0 and rng.random() < 0.08:
            _vessel_tree(
                canvas,
                rng,
                start=(x, y),
                angle=angle + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9),
                width=width * 0.7,
                length=length * 0.5,
                depth=depth - 1,
            )


def synthetic_fundus(seed: int, size: tuple[int, int] = (640, 480), eye: str = "R") -> Image:
    """A fundus-like BGR frame, ``size = (width, height)``; the optic disc on the eye's nasal side."""
    rng = np.random.default_rng(seed)
    w, h = size
    radius = 0.48 * min(w, h) * 1.1
    cx, cy = w / 2, h / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(xx - cx, yy - cy) / radius
    base = np.array([30, 95, 200], np.float32) * rng.uniform(0.85, 1.1)  # B, G, R: orange-red
    falloff = (1.0 - 0.35 * r**2)[..., None]
    img = base * falloff
    side = 1 if eye == "R" else -1
    disc = (cx + side * 0.42 * radius, cy + rng.normal(0, 0.03) * radius)
    macula = (cx - side * 0.05 * radius, cy)
    d_disc = np.hypot(xx - disc[0], yy - disc[1]) / (0.09 * radius)
    img = img + np.exp(-(d_disc**4))[..., None] * np.array([60, 90, 55], np.float32)
    d_mac = np.hypot(xx - macula[0], yy - macula[1]) / (0.12 * radius)
    img *= (1 - 0.35 * np.exp(-(d_mac**2)))[..., None]
    vessels = np.zeros((h, w), np.float32)
    for k in range(8):
        angle = (k / 8) * 2 * math.pi + rng.normal(0, 0.2)
        _vessel_tree(
            vessels,
            rng,
            start=disc,
            angle=angle,
            width=rng.uniform(2.0, 4.0),
            length=radius * rng.uniform(0.6, 1.1),
            depth=3,
        )
    soft = np.asarray(cv2.GaussianBlur(vessels, (0, 0), 0.8), dtype=np.float32)
    img *= (1 - 0.45 * np.clip(soft, 0, 1))[..., None] * np.array([1.0, 0.75, 0.92], np.float32)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.2)
    img *= (1 + 0.06 * texture)[..., None]
    img += rng.normal(0, 1.2, img.shape).astype(np.float32)
    img[r > 1.0] = rng.uniform(0, 4)
    out: Image = np.clip(img, 0, 255).astype(np.uint8)
    return out


def frames(count: int, size: tuple[int, int] = (640, 480), seed: int = 0, eye: str = "R") -> list[Image]:
    """``count`` synthetic frames (small changes between them, like a live view)."""
    return [synthetic_fundus(seed + i, size, eye) for i in range(count)]


def write_video(path: Path, images: Sequence[Image], fps: float = 10.0, fourcc: str = "MJPG") -> Path:
    """Write frames as a video OpenCV can play back (MJPG in .avi by default)."""
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {path.name} with {fourcc}")
    try:
        for image in images:
            writer.write(image)
    finally:
        writer.release()
    return path


def write_sequence(folder: Path, images: Iterable[Image]) -> str:
    """Write frames as ``frame_0000.png``...; return the pattern ``cv2.VideoCapture`` opens."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"frame_{i:04d}.png"), image)
    return str(folder / "frame_%04d.png")


def video_from_folder(folder: Path, path: Path, size: tuple[int, int] = (640, 480), fps: float = 5.0) -> Path:
    """A video of the JPEG/PNG/TIFF images in ``folder`` (letterboxed to ``size``), for a demo on real photos."""
    images: list[Image] = []
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() not in (".jpg", ".jpeg", ".png", ".tif", ".tiff"):
            continue
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            continue
        scale = min(size[0] / image.shape[1], size[1] / image.shape[0])
        resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
        canvas = np.zeros((size[1], size[0], 3), np.uint8)
        y0, x0 = (size[1] - resized.shape[0]) // 2, (size[0] - resized.shape[1]) // 2
        canvas[y0 : y0 + resized.shape[0], x0 : x0 + resized.shape[1]] = resized
        images.append(canvas)
    if not images:
        raise FileNotFoundError(f"no images in {folder}")
    return write_video(path, images, fps)


def encode(image: Image, ext: str = ".jpg", quality: int = 92) -> bytes:
    """Encode a frame as the bytes a camera would export (``.jpg``, ``.png`` or ``.tif``)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise ValueError(f"cannot encode as {ext}")
    return bytes(buf.tobytes())


def export_slowly(target: Path, data: bytes, *, pieces: int = 4, pause_s: float = 0.2) -> None:
    """Write ``data`` to ``target`` in ``pieces`` appends with pauses, as a camera exporting over USB does."""
    step = max(1, -(-len(data) // pieces))
    with target.open("wb") as fh:
        for start in range(0, len(data), step):
            fh.write(data[start : start + step])
            fh.flush()
            if start + step < len(data):
                time.sleep(pause_s)


DEMO_SIZE = (1920, 1080)
"""The demo camera's resolution: the default of ``retina.camera.width/height``, so the real check passes."""


def write_demo_video(folder: Path, *, size: tuple[int, int] = DEMO_SIZE, distinct: int = 4, fps: float = 10.0) -> Path:
    """The demo's camera: a short MJPG video of synthetic fundus frames (made once, then reused).

    ``distinct`` frames are drawn (about a second each at 1920x1080) and shown for a second each; the
    demo config sets ``retina.camera.loop`` so the video plays on like a live camera.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"demo-fundus-{size[0]}x{size[1]}.avi"
    if path.is_file() and path.stat().st_size > 0:
        return path
    rng = np.random.default_rng(0)
    shown: list[Image] = []
    for i in range(distinct):
        base = synthetic_fundus(100 + i, size, "R" if i % 2 else "L")
        for _ in range(int(fps)):  # a live view flickers a little
            noise = rng.normal(0, 1.0, base.shape).astype(np.float32)
            shown.append(np.clip(base.astype(np.float32) + noise, 0, 255).astype(np.uint8))
    tmp = path.with_suffix(".tmp.avi")
    write_video(tmp, shown, fps)
    tmp.replace(path)
    return path
