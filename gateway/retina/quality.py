"""Image-quality gate: a decoded photo -> QualityVerdict(ok, reasons, metrics, geometry) (PURE).

Fast (a few tens of milliseconds on one core at any camera resolution: the image is downscaled first)
and explainable: every reason is one a technician can act on while the patient is still in the chair.

==========================  ==========================================================================
reason                      what the technician does
==========================  ==========================================================================
``not_fundus``              this is not a retinal photo: photograph the fundus (nothing else checked)
``too_dark``                raise flash / illumination, let the pupil dilate, clean the lens
``overexposed``             lower the flash, check the camera's exposure setting
``uneven_illumination``     re-align the camera on the pupil axis (light falls off on one side)
``small_pupil_vignetting``  dark rim all around: wait for dilation, move closer to the pupil
``not_centred``             centre the fundus in the frame
``field_incomplete``        part of the field is cut off: move back / re-align so the whole circle shows
``out_of_focus``            refocus (and check that the patient does not blink)
``motion_blur``             hold still / ask the patient to fixate; take it again
``jpeg_damage``             the file is damaged (broken blocks): export or transfer it again
==========================  ==========================================================================

How it decides (all thresholds in :data:`THRESHOLDS`, calibrated on degraded copies of the *train*
split of the shared photos by ``bench/quality_eval.py``; rates on the *valid* split in
``docs/quality-gate.md``):

1. Downscale so the longest side is at most :data:`WORK_SIDE` pixels.
2. Find the fundus: pixels brighter than a level adapted to the image's own brightness, largest blob.
   Fit a circle to the blob's edge where it is not the frame's edge: centre and radius of the
   camera's circular field, even when the frame cuts it.
3. Colour and structure decide ``not_fundus``: a fundus is red-orange with little blue, inside a dark
   surround or filling a circle; documents, scenes, flat colours and noise are not.
4. Exposure from the luminance inside the fundus; illumination from sector means and the radial profile
   of a heavily smoothed luminance map; geometry from the circle; focus from the ratio of fine to coarse
   detail in the green channel (self-normalising: exposure and contrast cancel) at a fixed scale of
   :data:`FOCUS_DIAMETER` pixels across the fundus; motion from the same ratio measured per direction
   (gradient energy at two scales): a smear leaves one direction blurred while the others stay sharp.

5. :func:`locate` says where the reasons are, as typed geometry (:class:`~gateway.records.QualityGeometry`) for
   the technician's overlay: the fitted field circle, and tiles of the field that are dark, clipped or
   without fine detail, from the arrays the metrics were computed on (nothing measured twice).

Imports numpy and OpenCV's array functions only; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from gateway.records import Eye, FieldCircle, ImageBox, QualityGeometry, QualityVerdict

Image = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]

WORK_SIDE: Final = 512
"""Longest side of the working copy (geometry, colour, exposure)."""
ILLUM_SIDE: Final = 160
"""Longest side of the copy on which illumination is measured (it varies slowly; this keeps it cheap)."""
FOCUS_DIAMETER: Final = 384
"""Fundus diameter (pixels) at which focus is measured, so the measure means the same at any resolution."""

REASONS: Final = (
    "not_fundus",
    "too_dark",
    "overexposed",
    "uneven_illumination",
    "small_pupil_vignetting",
    "not_centred",
    "field_incomplete",
    "out_of_focus",
    "motion_blur",
    "jpeg_damage",
)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Decision thresholds (metric names as in the verdict's ``metrics``).

    The calibrated ones come from ``bench/quality_eval.py`` on the train split (see docs/quality-gate.md);
    the colour and framing rules of ``not_fundus`` are fixed, deliberately lenient, limits.
    """

    min_fundus_colour: float = 0.5
    """Share of fundus pixels that are red > green > blue (fixed)."""
    max_blue_ratio: float = 0.7
    """Median blue/red inside the fundus (fixed)."""
    max_unframed_fraction: float = 0.95
    """A photo with no circular field edge that is this full of non-black pixels is not a fundus (fixed)."""
    max_circle_residual: float = 0.08
    """Edge points further than this (relative to the radius, RMS) from the fitted circle: no circular field."""
    min_texture: float = 0.0227
    min_luma: float = 30.9
    max_luma: float = 148.0
    max_clipped: float = 0.263
    min_rim_ratio: float = 0.478
    min_sector_ratio: float = 0.459
    max_illum_slope: float = 0.566
    max_centre_offset: float = 0.251
    min_field_inside: float = 0.813
    min_focus: float = 0.282
    min_focus_dir: float = 1.11
    max_motion_anisotropy: float = 0.0657
    max_block_damage: float = 0.000956


THRESHOLDS: Final = Thresholds()


def _downscale(image: Image, side: int) -> Image:
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out: Image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return out


@dataclass(frozen=True, slots=True)
class _Circle:
    cx: float
    cy: float
    r: float
    residual: float
    """RMS distance of edge points from the circle, relative to the radius."""
    support: float
    """Fraction of the circle's circumference covered by edge points used in the fit."""


def _fundus_mask(work: Image) -> tuple[npt.NDArray[np.uint8], float]:
    vmax = work.max(axis=2)
    p99 = float(np.percentile(vmax, 99))
    level = min(20.0, max(6.0, 0.2 * p99))
    mask = (vmax > level).astype(np.uint8)
    k = max(3, round(min(work.shape[:2]) / 100) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.zeros_like(mask), level
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = (labels == biggest).astype(np.uint8)
    # Fill holes (dark lesions, a dark macula in a dim photo) so they do not count as edges.
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(blob)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return filled, level


def _fit_circle(mask: npt.NDArray[np.uint8]) -> _Circle | None:
    h, w = mask.shape
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    margin = 2
    keep = (pts[:, 0] > margin) & (pts[:, 0] < w - 1 - margin) & (pts[:, 1] > margin) & (pts[:, 1] < h - 1 - margin)
    pts = pts[keep]
    if len(pts) < 20:
        return None
    x, y = pts[:, 0], pts[:, 1]
    # Kasa least squares: x^2 + y^2 + D x + E y + F = 0.
    a = np.column_stack([x, y, np.ones_like(x)])
    b = -(x * x + y * y)
    try:
        (d, e, f), *_ = np.linalg.lstsq(a, b, rcond=None)
    except np.linalg.LinAlgError:
        return None
    cx, cy = -d / 2, -e / 2
    r2 = cx * cx + cy * cy - f
    if r2 <= 1:
        return None
    r = math.sqrt(r2)
    dist = np.hypot(x - cx, y - cy)
    residual = float(np.sqrt(np.mean((dist - r) ** 2)) / r)
    support = min(1.0, len(pts) / (2 * math.pi * r))
    return _Circle(cx=float(cx), cy=float(cy), r=r, residual=residual, support=support)


def _inside_fraction(circle: _Circle, h: int, w: int) -> float:
    """Fraction of the circle's disc that lies inside the frame (sampled on a grid)."""
    n = 64
    t = (np.arange(n) + 0.5) / n * 2 - 1
    xx, yy = np.meshgrid(t, t)
    inside_disc = xx * xx + yy * yy <= 1
    px = circle.cx + xx * circle.r
    py = circle.cy + yy * circle.r
    in_frame = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    return float((inside_disc & in_frame).sum() / max(1, inside_disc.sum()))


def _luma(image: Image) -> Floats:
    b, g, r = (image[:, :, i].astype(np.float32) for i in range(3))
    out: Floats = 0.114 * b + 0.587 * g + 0.299 * r
    return out


def _focus_view(image: Image, work_scale: float, circle: _Circle | None, work_shape: tuple[int, int]) -> Image:
    """The image rescaled so that the fundus is FOCUS_DIAMETER pixels across (from the full resolution)."""
    h, w = image.shape[:2]
    diameter_work = 2 * circle.r if circle is not None else max(work_shape)
    diameter_work = min(diameter_work, max(*work_shape) * 1.25)
    diameter = diameter_work / work_scale
    f = FOCUS_DIAMETER / diameter
    size = (max(8, round(w * f)), max(8, round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    out: Image = np.asarray(cv2.resize(image, size, interpolation=interp), dtype=np.uint8)
    return out


def _block_damage(image: Image, mask: npt.NDArray[np.bool_]) -> float:
    """Share of 8-pixel block boundaries (rows) with a jump far above the image's own row-to-row change.

    Damaged JPEG scan data shifts whole runs of 8x8 blocks in colour and brightness; the edges of those
    runs sit on block boundaries, where a healthy photo has no special change.
    """
    h, w = image.shape[:2]
    if h < 32 or w < 32:
        return 0.0
    f = image.astype(np.float32)
    # Mean colour jump between consecutive rows, per 8-px column segment.
    dy = np.abs(np.diff(f, axis=0)).sum(axis=2)  # (h-1, w)
    m = mask[1:, :] & mask[:-1, :]
    seg = w // 8
    dy = dy[:, : seg * 8].reshape(h - 1, seg, 8).mean(axis=2)
    m8: npt.NDArray[np.bool_] = np.asarray(m[:, : seg * 8].reshape(h - 1, seg, 8).all(axis=2), dtype=bool)
    at_boundary = np.arange(h - 1) % 8 == 7
    inner = dy[~at_boundary][m8[~at_boundary]]
    edge = dy[at_boundary][m8[at_boundary]]
    if inner.size < 100 or edge.size < 20:
        return 0.0
    typical = float(np.percentile(inner, 99)) + 6.0
    return float((edge > 2.5 * typical).mean())


def _gradient_tensor(green: Floats, sigma: float, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Mean gradient structure tensor [[gx², gx·gy], [gx·gy, gy²]] inside ``mask`` after a Gaussian of ``sigma``."""
    smooth = cv2.GaussianBlur(green, (0, 0), sigma)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    xx, yy, xy = (float(v[mask].mean()) for v in (gx * gx, gy * gy, gx * gy))
    return np.array([[xx, xy], [xy, yy]], dtype=np.float64)


def _directional_sharpness(fine: npt.NDArray[np.float64], coarse: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Fine-to-coarse gradient ratio in the blurriest and in the sharpest direction: (lowest, highest).

    The gradient energy along a unit direction u is uᵀJu; the extremes of uᵀJ_f u / uᵀJ_c u over all u are
    the generalised eigenvalues of the two tensors. A motion blur wipes out fine detail along the motion
    only, so vessels across it keep the isotropic ``focus`` high while the lowest ratio falls towards 1 (both
    scales see the same smear); a defocus lowers both alike. Exposure and contrast cancel, as in ``focus``.
    """
    try:
        values = np.linalg.eigvals(np.linalg.solve(coarse + 1e-9 * np.eye(2), fine)).real
    except np.linalg.LinAlgError:
        return 0.0, 0.0
    return math.sqrt(max(float(values.min()), 0.0)), math.sqrt(max(float(values.max()), 0.0))


def _illumination(work: Image, mask: npt.NDArray[np.uint8], circle: _Circle | None) -> dict[str, float]:
    """Sector balance, rim/centre ratio and log-luminance slope, on a small copy (light varies slowly)."""
    h0, w0 = work.shape[:2]
    f = min(1.0, ILLUM_SIDE / max(h0, w0))
    if f < 1.0:
        size = (max(1, round(w0 * f)), max(1, round(h0 * f)))
        work = np.asarray(cv2.resize(work, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        mask = np.asarray(cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
    h, w = work.shape[:2]
    sx, sy = w / w0, h / h0
    if circle is not None:
        cx, cy, rad = circle.cx * sx, circle.cy * sy, circle.r * (sx + sy) / 2
    else:
        cx, cy, rad = w / 2, h / 2, max(h, w) / 2
    sel = mask.astype(bool)
    if sel.sum() < 20:
        sel = np.ones((h, w), bool)
    out: dict[str, float] = {}
    luma = _luma(work)
    sigma = max(1.0, 0.06 * max(h, w))
    # The optic disc is a small, very bright spot: leave it out so that it does not read as uneven light.
    lit = sel.astype(np.float32) * (luma <= 1.4 * float(np.median(luma[sel])))
    weight = cv2.GaussianBlur(lit, (0, 0), sigma)
    smooth = cv2.GaussianBlur(luma * lit, (0, 0), sigma) / np.maximum(weight, 1e-3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rr = np.hypot(xx - cx, yy - cy) / rad
    ang = np.arctan2(yy - cy, xx - cx)
    ring = sel & (rr > 0.3) & (rr < 0.8)
    sectors = []
    for k in range(8):
        lo = -math.pi + k * math.pi / 4
        part = ring & (ang >= lo) & (ang < lo + math.pi / 4)
        if part.sum() > 4:
            sectors.append(float(smooth[part].mean()))
    if len(sectors) >= 4:
        out["sector_ratio"] = min(sectors) / max(*sectors, 1.0)
    centre = sel & (rr < 0.35)
    rim = (rr > 0.78) & (rr < 0.95) & (weight > 0.05)
    if centre.sum() > 4 and rim.sum() > 4:
        out["rim_ratio"] = float(luma[rim].mean()) / max(float(luma[centre].mean()), 1.0)
    # Uneven light: a plane fitted to log luminance; its slope is the log brightness ratio per radius.
    inner = sel & (rr < 0.85)
    if inner.sum() > 20:
        ys, xs = np.nonzero(inner)
        design = np.column_stack([np.ones(len(xs)), (xs - cx) / rad, (ys - cy) / rad])
        target = np.log(smooth[ys, xs].astype(np.float64) + 4.0)
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        out["illum_slope"] = float(math.hypot(coef[1], coef[2]))
    return out


def _disc_offset(work: Image, mask: npt.NDArray[np.uint8], circle: _Circle) -> float:
    """Horizontal position of the optic disc (the brightest compact spot), in radii from the circle's centre.

    Positive: right of centre, as in a right eye's photo (disc on the nasal side) in the usual view.
    """
    luma = _luma(work)
    inside = cv2.erode(mask, np.ones((15, 15), np.uint8)).astype(np.float32)
    blurred = cv2.GaussianBlur(luma * inside, (0, 0), max(2.0, circle.r * 0.08))
    weight = cv2.GaussianBlur(inside, (0, 0), max(2.0, circle.r * 0.08))
    spot = np.where(weight > 0.5, blurred / np.maximum(weight, 1e-3), 0)
    _, _, _, (x, _y) = cv2.minMaxLoc(spot)
    return (x - circle.cx) / circle.r


@dataclass(frozen=True, slots=True)
class _Parts:
    """What :func:`measure` computed on the way, kept for :func:`locate` (nothing is computed twice)."""

    work: Image
    work_scale: float
    """``work`` pixels per input pixel."""
    mask: npt.NDArray[np.uint8]
    circle: _Circle | None
    view_scale: float
    """Focus-view pixels per input pixel."""
    fine: Floats
    coarse: Floats
    vmask: npt.NDArray[np.bool_]


def measure(image: Image) -> dict[str, float]:
    """All quality metrics of a BGR uint8 photo (see the module docstring for what each one means)."""
    return _measure(image)[0]


def _measure(image: Image) -> tuple[dict[str, float], _Parts]:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 BGR image, got {image.shape} {image.dtype}")
    work = _downscale(image, WORK_SIDE)
    h, w = work.shape[:2]
    work_scale = w / image.shape[1]
    mask, level = _fundus_mask(work)
    area = float(mask.sum())
    metrics: dict[str, float] = {"fundus_fraction": area / (h * w), "mask_level": level}
    circle = _fit_circle(mask) if area > 0.05 * h * w else None
    if circle is not None:
        metrics.update(
            circle_r=circle.r / max(h, w),
            circle_residual=circle.residual,
            circle_support=circle.support,
            centre_offset=math.hypot(circle.cx - w / 2, circle.cy - h / 2) / circle.r,
            field_inside=_inside_fraction(circle, h, w),
        )
    sel = mask.astype(bool)
    if area < 50:
        sel = np.ones((h, w), bool)
    px = work[sel].astype(np.float32)  # (n, 3) BGR
    b, g, r = px[:, 0], px[:, 1], px[:, 2]
    total = b + g + r + 1.0
    # Fundus colour: red dominant, blue weakest (pixel by pixel, so a few ellipses of other colours count).
    metrics["fundus_colour"] = float(((r >= g) & (g >= b * 0.9) & (r > 1.15 * b)).mean())
    metrics["blue_ratio"] = float(np.median(b / (r + 1.0)))
    metrics["red_share"] = float(np.median(r / total))
    luma_px = 0.114 * b + 0.587 * g + 0.299 * r
    metrics["luma_mean"] = float(luma_px.mean())
    metrics["clipped"] = float((px.max(axis=1) >= 250).mean())
    metrics["dark_surround"] = float(1.0 - area / (h * w))

    metrics.update(_illumination(work, mask, circle))
    if circle is not None:
        metrics["disc_x"] = _disc_offset(work, mask, circle)

    # Focus and motion at a fixed fundus scale, in the green channel (best vessel contrast).
    view = _focus_view(image, work_scale, circle, (h, w))
    vmask_u8 = cv2.resize(mask, (view.shape[1], view.shape[0]), interpolation=cv2.INTER_NEAREST)
    vmask: npt.NDArray[np.bool_] = np.asarray(cv2.erode(vmask_u8, np.ones((9, 9), np.uint8)), dtype=bool)
    if vmask.sum() < 500:
        vmask = np.ones(view.shape[:2], bool)
    green = view[:, :, 1].astype(np.float32)
    fine = green - cv2.GaussianBlur(green, (0, 0), 1.5)
    coarse = green - cv2.GaussianBlur(green, (0, 0), 6.0)
    fine_sd = float(fine[vmask].std())
    coarse_sd = float(coarse[vmask].std())
    metrics["focus"] = fine_sd / max(coarse_sd, 1e-3)
    metrics["texture"] = coarse_sd / max(float(green[vmask].mean()), 1.0)
    low, high = _directional_sharpness(_gradient_tensor(green, 1.0, vmask), _gradient_tensor(green, 2.0, vmask))
    metrics["focus_dir"] = low
    metrics["blur_anisotropy"] = 1.0 - low / max(high, 1e-6)
    metrics["block_damage"] = _block_damage(work, cv2.erode(mask, np.ones((7, 7), np.uint8)).astype(bool))
    parts = _Parts(work, work_scale, mask, circle, view.shape[1] / image.shape[1], fine, coarse, vmask)
    return {k: round(v, 4) for k, v in metrics.items()}, parts


TILES: Final = 12
"""The overlay's grid: the longest side of the photo in this many tiles."""
DARK_REASONS: Final = frozenset({"too_dark", "uneven_illumination", "small_pupil_vignetting"})
BRIGHT_REASONS: Final = frozenset({"overexposed"})
BLUR_REASONS: Final = frozenset({"out_of_focus", "motion_blur"})


def _tiles(shape: tuple[int, int], inside: npt.NDArray[np.bool_]) -> Iterator[tuple[int, int, int, int]]:
    """(x, y, w, h) of the grid's tiles that lie mostly inside the fundus."""
    h, w = shape
    side = max(8, round(max(h, w) / TILES))
    for y in range(0, h - side // 2, side):
        for x in range(0, w - side // 2, side):
            if inside[y : y + side, x : x + side].mean() >= 0.5:
                yield x, y, min(side, w - x), min(side, h - y)


def locate(image: Image, reasons: tuple[str, ...], parts: _Parts | None = None) -> QualityGeometry:
    """Where in ``image`` the gate saw ``reasons``: the field circle, and the tiles that are too dark (or much
    darker than the rest of the field), clipped, or without fine detail (only for reasons of their kind).

    Pure and cheap (the tiles reuse what :func:`measure` computed); coordinates are ``image`` pixels.
    """
    if parts is None:
        parts = _measure(image)[1]
    height, width = image.shape[:2]
    ws, vs = parts.work_scale, parts.view_scale
    circle = parts.circle
    field = None if circle is None else FieldCircle(*(round(v / ws, 1) for v in (circle.cx, circle.cy, circle.r)))
    inside = parts.mask.astype(bool)

    def box(x: int, y: int, w: int, h: int, scale: float) -> ImageBox:
        return ImageBox(round(x / scale, 1), round(y / scale, 1), round(w / scale, 1), round(h / scale, 1))

    dark: list[ImageBox] = []
    bright: list[ImageBox] = []
    if set(reasons) & (DARK_REASONS | BRIGHT_REASONS):
        luma = _luma(parts.work)
        tiles = list(_tiles(luma.shape, inside))
        means = [float(luma[y : y + h, x : x + w].mean()) for x, y, w, h in tiles]
        if tiles and set(reasons) & DARK_REASONS:
            # Absolutely too dark, or far darker than the well-lit part of this very field.
            limit = max(THRESHOLDS.min_luma, 0.5 * float(np.percentile(means, 75)))
            dark = [box(*t, ws) for t, m in zip(tiles, means, strict=True) if m < limit]
        if tiles and set(reasons) & BRIGHT_REASONS:
            top = parts.work.max(axis=2) >= 250
            for (x, y, w, h), m in zip(tiles, means, strict=True):
                if m > THRESHOLDS.max_luma or top[y : y + h, x : x + w].mean() > THRESHOLDS.max_clipped:
                    bright.append(box(x, y, w, h, ws))
    blurred: list[ImageBox] = []
    if set(reasons) & BLUR_REASONS:
        for x, y, w, h in _tiles(parts.vmask.shape, parts.vmask):
            fine = float(parts.fine[y : y + h, x : x + w].std())
            coarse = float(parts.coarse[y : y + h, x : x + w].std())
            if fine / max(coarse, 1e-3) < THRESHOLDS.min_focus:
                blurred.append(box(x, y, w, h, vs))
    return QualityGeometry(width=width, height=height, circle=field, dark=tuple(dark), bright=tuple(bright),
                           blurred=tuple(blurred))  # fmt: skip


def decide(metrics: dict[str, float], t: Thresholds = THRESHOLDS) -> tuple[str, ...]:
    """The reasons a photo fails, in the order a technician should address them (empty: it passes)."""
    colour_ok = metrics["fundus_colour"] >= t.min_fundus_colour and metrics["blue_ratio"] <= t.max_blue_ratio
    framed = "circle_r" in metrics and metrics["circle_residual"] <= t.max_circle_residual
    unframed_full = not framed and metrics["fundus_fraction"] > t.max_unframed_fraction
    if not colour_ok or unframed_full or metrics["texture"] < t.min_texture:
        return ("not_fundus",)
    reasons: list[str] = []
    if metrics["block_damage"] > t.max_block_damage:
        reasons.append("jpeg_damage")
    if metrics["luma_mean"] < t.min_luma:
        reasons.append("too_dark")
    elif metrics["luma_mean"] > t.max_luma or metrics["clipped"] > t.max_clipped:
        reasons.append("overexposed")
    if metrics.get("rim_ratio", 1.0) < t.min_rim_ratio:
        reasons.append("small_pupil_vignetting")
    elif metrics.get("sector_ratio", 1.0) < t.min_sector_ratio or metrics.get("illum_slope", 0.0) > t.max_illum_slope:
        reasons.append("uneven_illumination")
    if metrics.get("centre_offset", 0.0) > t.max_centre_offset:
        reasons.append("not_centred")
    if not framed or metrics["field_inside"] < t.min_field_inside:
        reasons.append("field_incomplete")
    if metrics["focus"] < t.min_focus:
        reasons.append("motion_blur" if metrics["blur_anisotropy"] > t.max_motion_anisotropy else "out_of_focus")
    elif metrics["focus_dir"] < t.min_focus_dir:
        # Sharp overall but blurred in one direction: a smear, not a focus error.
        reasons.append("motion_blur")
    return tuple(reasons)


EYE_DISC_OFFSET: Final = 0.3
"""|disc_x| above this (radii) suggests the eye: on the shared train split 334 of 360 photos, 97.9 % right
(valid: 108 of 118, all right). Near the centre (a disc-centred field) there is no suggestion."""


def suggest_eye(metrics: Mapping[str, float]) -> Eye | None:
    """The eye a photo looks like (optic disc right of centre: right eye), or None when it cannot tell.

    A check for the technician's entry, never a replacement for it: it assumes the usual, non-mirrored
    view of a macula-centred photo.
    """
    disc_x = metrics.get("disc_x")
    if disc_x is None or abs(disc_x) < EYE_DISC_OFFSET:
        return None
    return Eye.RIGHT if disc_x > 0 else Eye.LEFT


def assess(image: Image, thresholds: Thresholds = THRESHOLDS) -> QualityVerdict:
    """The quality verdict of a decoded BGR photo: ``ok`` when no reason applies.

    Raises:
        ValueError: ``image`` is not an ``(H, W, 3)`` uint8 array (a caller bug; decoding guarantees it).
    """
    metrics, parts = _measure(image)
    reasons = decide(metrics, thresholds)
    geometry = locate(image, reasons, parts)
    return QualityVerdict(ok=not reasons, reasons=reasons, metrics=metrics, geometry=geometry)
