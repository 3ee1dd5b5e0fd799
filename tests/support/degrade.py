"""Controlled, seeded image degradations and non-fundus images: the quality gate's labelled test set (PURE).

The shared fundus photos carry no quality labels, so the quality gate is calibrated and measured on
clean photos degraded in documented ways. Every function takes a BGR uint8 image and a
``numpy.random.Generator`` and returns a new image; the same seed gives the same image. Sizes are
relative to the fundus diameter (the image width for the shared set), so the severities mean the same
at any resolution. ``docs/quality-gate.md`` lists the ranges and what a technician would see.

=================== ========================================================== ==========================
kind                what                                                       expected reason
=================== ========================================================== ==========================
defocus             disk (pill-box) blur, radius 1.0-2.0 % of the diameter      out_of_focus
motion              line blur, length 3.5-7 % of the diameter, any angle        out_of_focus / motion_blur
underexposed        gain 0.12-0.30 (with the camera's noise floor)              too_dark
overexposed         gain 1.9-3.0, clipped at 255                                overexposed
uneven              linear shading across the field, one side at 8-25 %         uneven_illumination
shifted             fundus moved 22-40 % of the diameter off centre             not_centred / field_incomplete
cropped             a window of 55-68 % of the field, enlarged to full size      field_incomplete
vignetting          dark periphery from a small pupil: clear to 40-58 % of the  small_pupil_vignetting
                    radius, dark (5-18 %) beyond 72-90 %
jpeg_damage         bytes of the JPEG scan data overwritten, decoded leniently   jpeg_damage
=================== ========================================================== ==========================

Non-fundus images (:func:`not_fundus`): a text document, a natural-looking scene, a flat colour, colour
noise, a smooth gradient, a skin-tone close-up and a round orange-ish object on a dark table (the
hardest cases: fundus colours, or a bright disc on black); expected reason ``not_fundus``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
Rng = np.random.Generator

EXPECTED: Final[dict[str, tuple[str, ...]]] = {
    "defocus": ("out_of_focus",),
    "motion": ("out_of_focus", "motion_blur"),
    "underexposed": ("too_dark",),
    "overexposed": ("overexposed",),
    "uneven": ("uneven_illumination",),
    "shifted": ("not_centred", "field_incomplete"),
    "cropped": ("field_incomplete", "not_centred"),
    "vignetting": ("small_pupil_vignetting",),
    "jpeg_damage": ("jpeg_damage",),
    "not_fundus": ("not_fundus",),
}
"""Degradation kind -> the reasons that count as detecting it (the first is the primary one)."""


def _diameter(image: Image) -> int:
    return int(max(image.shape[:2]))


def _clip(values: Any) -> Image:
    return np.clip(np.asarray(values, dtype=np.float32), 0, 255).astype(np.uint8)


def _u8(values: Any) -> Image:
    return np.asarray(values, dtype=np.uint8)


def defocus(image: Image, rng: Rng) -> Image:
    """Pill-box blur (an out-of-focus lens), radius 1.0-2.0 % of the fundus diameter."""
    radius = max(1.5, rng.uniform(0.010, 0.020) * _diameter(image))
    size = int(np.ceil(radius)) * 2 + 1
    kernel = np.zeros((size, size), np.float32)
    cv2.circle(kernel, (size // 2, size // 2), round(radius), 1.0, -1, lineType=cv2.LINE_AA)
    kernel /= kernel.sum()
    return _u8(cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT))


def motion(image: Image, rng: Rng) -> Image:
    """Linear motion blur (eye or camera moved), length 3.5-7 % of the diameter, random angle."""
    length = max(3, round(rng.uniform(0.035, 0.07) * _diameter(image)))
    angle = rng.uniform(0, np.pi)
    size = length + 2
    kernel = np.zeros((size, size), np.float32)
    c = size / 2 - 0.5
    dx, dy = np.cos(angle) * (length - 1) / 2, np.sin(angle) * (length - 1) / 2
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA)
    kernel /= kernel.sum()
    return _u8(cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT))


def _sensor_noise(shape: tuple[int, ...], rng: Rng, sigma: float) -> npt.NDArray[np.float32]:
    return rng.normal(0.0, sigma, shape).astype(np.float32)


def underexposed(image: Image, rng: Rng) -> Image:
    """Too little light: gain 0.12-0.30 plus the sensor's noise floor (1.5 grey levels)."""
    gain = rng.uniform(0.12, 0.30)
    return _clip(image.astype(np.float32) * gain + _sensor_noise(image.shape, rng, 1.5))


def overexposed(image: Image, rng: Rng) -> Image:
    """Too much flash: gain 1.9-3.0, clipped."""
    gain = rng.uniform(1.9, 3.0)
    return _clip(image.astype(np.float32) * gain)


def uneven(image: Image, rng: Rng) -> Image:
    """Uneven light: shading that falls linearly across the field to 8-25 % on one side."""
    h, w = image.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    low = rng.uniform(0.08, 0.25)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)) / (max(h, w) / 2)  # -1..1 across
    gain = low + (1.0 - low) * np.clip((t + 1) / 2, 0, 1) ** 0.8
    return _clip(image.astype(np.float32) * gain[..., None])


def shifted(image: Image, rng: Rng) -> Image:
    """Fundus not centred: moved 22-40 % of the diameter in a random direction, the rest black."""
    h, w = image.shape[:2]
    dist = rng.uniform(0.22, 0.40) * _diameter(image)
    angle = rng.uniform(0, 2 * np.pi)
    matrix = np.array([[1, 0, dist * np.cos(angle)], [0, 1, dist * np.sin(angle)]], dtype=np.float32)
    return _u8(cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)))


def cropped(image: Image, rng: Rng) -> Image:
    """Field incomplete: a window of 55-68 % of the field at one side, enlarged to the full frame."""
    h, w = image.shape[:2]
    frac = rng.uniform(0.55, 0.68)
    cw, ch = round(w * frac), round(h * frac)
    corner = int(rng.integers(0, 4))
    x0 = 0 if corner in (0, 2) else w - cw
    y0 = 0 if corner in (0, 1) else h - ch
    # Slide along the other axis so that not every crop sits in a corner.
    if rng.random() < 0.5:
        y0 = int(rng.integers(0, h - ch + 1))
    return _u8(cv2.resize(image[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR))


def vignetting(image: Image, rng: Rng) -> Image:
    """Small pupil: clear to 40-58 % of the radius, then darkening to 5-18 % by 72-90 %, with a faint haze."""
    h, w = image.shape[:2]
    radius = _diameter(image) / 2
    inner = rng.uniform(0.40, 0.58) * radius
    outer = rng.uniform(0.72, 0.90) * radius
    floor = rng.uniform(0.05, 0.18)
    cx, cy = w / 2 + rng.normal(0, 0.03) * radius, h / 2 + rng.normal(0, 0.03) * radius
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(xx - cx, yy - cy)
    t = np.clip((r - inner) / max(outer - inner, 1.0), 0, 1)
    gain = 1.0 - (1.0 - floor) * (3 * t**2 - 2 * t**3)  # smoothstep
    out = image.astype(np.float32) * gain[..., None]
    haze = (1 - gain)[..., None] * np.float32(rng.uniform(4, 14)) * np.array([0.6, 0.8, 1.0], dtype=np.float32)
    return _clip(out + haze * (image.max(axis=2, keepdims=True) > 20))


def jpeg_damage(image: Image, rng: Rng) -> Image:
    """JPEG damage: 2-6 runs of scan-data bytes overwritten, decoded the way cameras' viewers do (leniently)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:  # pragma: no cover - encoding a valid uint8 image does not fail
        raise ValueError("could not encode")
    data = bytearray(buf.tobytes())
    start = data.find(b"\xff\xda") + 20
    end = len(data) - 2
    for _ in range(100):  # retry until the damaged stream still decodes (as it does in a viewer)
        damaged = bytearray(data)
        for _ in range(int(rng.integers(2, 7))):
            pos = int(rng.integers(start, end - 8))
            run = rng.integers(0, 255, int(rng.integers(1, 6)), dtype=np.uint8)
            # Avoid creating 0xFF (markers) so the stream keeps its structure, as bit rot in transit does.
            damaged[pos : pos + run.size] = bytes(np.where(run == 255, 254, run).tolist())
        decoded = cv2.imdecode(np.frombuffer(bytes(damaged), np.uint8), cv2.IMREAD_COLOR)
        if decoded is not None and decoded.shape == image.shape:
            diff = np.abs(decoded.astype(np.int16) - image.astype(np.int16)).mean()
            if diff > 4.0:  # visibly damaged (some hits land in flat areas and change almost nothing)
                return np.ascontiguousarray(decoded)
    return np.ascontiguousarray(decoded) if decoded is not None else image.copy()


DEGRADATIONS: Final[dict[str, Callable[[Image, Rng], Image]]] = {
    "defocus": defocus,
    "motion": motion,
    "underexposed": underexposed,
    "overexposed": overexposed,
    "uneven": uneven,
    "shifted": shifted,
    "cropped": cropped,
    "vignetting": vignetting,
    "jpeg_damage": jpeg_damage,
}


# -- images that are not fundus photos ----------------------------------------------------------------
NOT_FUNDUS_KINDS: Final = ("document", "scene", "flat", "noise", "gradient", "skin", "object")


def not_fundus(kind: str, rng: Rng, size: tuple[int, int] = (384, 320)) -> Image:
    """A synthetic image that is not a fundus photo: ``document``, ``scene``, ``flat``, ``noise``,
    ``gradient`` or ``skin`` (a reddish close-up, the hardest case). ``size`` is ``(width, height)``."""
    w, h = size
    if kind == "document":
        img = np.full((h, w, 3), int(rng.integers(200, 250)), np.uint8)
        y = int(rng.integers(18, 30))
        while y < h - 8:
            words = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz  "), int(rng.integers(15, 40))))
            cv2.putText(img, words, (8, y), cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.35, 0.6), (20, 20, 20), 1)
            y += int(rng.integers(14, 24))
        return img
    if kind == "scene":
        img = np.zeros((h, w, 3), np.uint8)
        horizon = int(rng.integers(h // 3, 2 * h // 3))
        sky = np.array([rng.integers(150, 255), rng.integers(110, 200), rng.integers(60, 140)])
        ground = np.array([rng.integers(20, 90), rng.integers(80, 170), rng.integers(30, 110)])
        img[:horizon] = sky
        img[horizon:] = ground
        for _ in range(int(rng.integers(5, 15))):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(5, w // 4)), int(rng.integers(5, h // 4)))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        noise = rng.normal(0, 6, img.shape)
        return _clip(cv2.GaussianBlur(img, (0, 0), 1.2).astype(np.float32) + noise.astype(np.float32))
    if kind == "flat":
        flat = rng.integers(0, 256, 3).astype(np.float32)
        return _clip(np.broadcast_to(flat, (h, w, 3)) + rng.normal(0, 2, (h, w, 3)).astype(np.float32))
    if kind == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "gradient":
        a, b = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        return _clip(a + (b - a) * np.broadcast_to(t, (h, w, 1)))
    if kind == "skin":
        base = np.array([rng.uniform(90, 150), rng.uniform(120, 170), rng.uniform(190, 235)], np.float32)
        skin = np.broadcast_to(base, (h, w, 3)).copy()
        for _ in range(int(rng.integers(20, 60))):  # pores, freckles, a few creases
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            shade = float(rng.uniform(0.7, 0.95))
            cv2.circle(skin, centre, int(rng.integers(1, 5)), [float(c) * shade for c in base], -1)
        return _clip(cv2.GaussianBlur(skin, (0, 0), 1.5) + rng.normal(0, 3, skin.shape).astype(np.float32))
    if kind == "object":  # a round object on a dark table (an orange, a ball): round, dark surround
        table = np.full((h, w, 3), float(rng.uniform(0, 15)), np.float32)
        tint = [float(rng.uniform(0, 120)), float(rng.uniform(60, 200)), float(rng.uniform(150, 255))]
        radius = int(min(h, w) * rng.uniform(0.3, 0.48))
        centre = (w // 2 + int(rng.integers(-20, 21)), h // 2 + int(rng.integers(-20, 21)))
        cv2.circle(table, centre, radius, tint, -1, lineType=cv2.LINE_AA)
        highlight = (centre[0] - radius // 3, centre[1] - radius // 3)
        cv2.circle(table, highlight, radius // 4, [min(255.0, c * 1.3) for c in tint], -1)
        return _clip(cv2.GaussianBlur(table, (0, 0), radius / 6) + rng.normal(0, 2, table.shape).astype(np.float32))
    raise ValueError(f"unknown non-fundus kind {kind!r}; one of {NOT_FUNDUS_KINDS}")


def degrade(kind: str, image: Image, seed: int) -> Image:
    """Apply degradation ``kind`` with its own generator seeded by ``seed`` (reproducible)."""
    try:
        func = DEGRADATIONS[kind]
    except KeyError:
        raise ValueError(f"unknown degradation {kind!r}; one of {sorted(DEGRADATIONS)}") from None
    return func(image, np.random.default_rng(seed))
