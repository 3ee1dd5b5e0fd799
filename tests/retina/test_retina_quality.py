"""The quality gate on clean and degraded shared photos, on non-fundus images and on synthetic frames.

Rates are checked on a sample of the *valid* split (the thresholds were calibrated on train), with
floors a little under the full-split figures in docs/quality-gate.md so that a sample of 24 photos
does not flake; ``bench/quality_eval.py`` gives the full figures.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from support import degrade
from support.retina import fundus_files, read_bgr

from gateway.emulate.camera import synthetic_fundus
from gateway.records import QualityVerdict
from gateway.retina import quality

SAMPLE = 24

# degradation -> minimum share of the sample detected with an expected reason (full-valid figure in the doc)
FLOORS = {
    "defocus": 0.9,
    "motion": 0.9,
    "underexposed": 0.85,
    "overexposed": 0.8,
    "uneven": 0.2,
    "shifted": 0.9,
    "cropped": 0.9,
    "vignetting": 0.7,
    "jpeg_damage": 0.7,
}


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [read_bgr(p) for p in fundus_files("valid", limit=SAMPLE)]


def test_clean_shared_photos_mostly_pass(photos: list[np.ndarray]) -> None:
    verdicts = [quality.assess(p) for p in photos]
    rejected = [v.reasons for v in verdicts if not v.ok]
    assert len(rejected) <= 2, rejected  # about 4 % on all of valid; at most 2 of 24 here


@pytest.mark.parametrize("kind", sorted(FLOORS))
def test_degraded_photos_are_caught_with_the_right_reason(photos: list[np.ndarray], kind: str) -> None:
    expected = set(degrade.EXPECTED[kind])
    verdicts = [quality.assess(degrade.degrade(kind, p, seed)) for seed, p in enumerate(photos)]
    assert all(isinstance(v, QualityVerdict) for v in verdicts)
    detected = sum(1 for v in verdicts if not v.ok and expected & set(v.reasons))
    assert detected / len(verdicts) >= FLOORS[kind], [v.reasons for v in verdicts]


def test_blur_is_named_by_its_direction(photos: list[np.ndarray]) -> None:
    # The technician's action differs (refocus vs. hold still), so the reason must follow the blur's shape:
    # on all of valid 118/118 defocused copies say out_of_focus and 112/118 motion copies say motion_blur.
    defocused = [quality.assess(degrade.degrade("defocus", p, seed)).reasons for seed, p in enumerate(photos)]
    smeared = [quality.assess(degrade.degrade("motion", p, seed)).reasons for seed, p in enumerate(photos)]
    assert sum("motion_blur" in r for r in defocused) <= 1, defocused
    assert sum("motion_blur" in r for r in smeared) >= 0.8 * len(photos), smeared


def _smear(image: np.ndarray, angle: float, length: int) -> np.ndarray:
    """A straight smear of ``length`` pixels at ``angle`` (radians), the shape a moving eye leaves."""
    size = length + 2
    kernel = np.zeros((size, size), np.float32)
    c = size / 2 - 0.5
    dx, dy = np.cos(angle) * (length - 1) / 2, np.sin(angle) * (length - 1) / 2
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA)
    return np.asarray(cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT), np.uint8)


def test_a_smear_in_any_direction_is_motion_blur_even_when_the_photo_looks_sharp_across_it(
    photos: list[np.ndarray],
) -> None:
    # Vessels running along the smear stay sharp, so the isotropic focus ratio often passes such a photo
    # (72 % of motion copies caught before the directional measure, 98 % with it); the blurriest direction
    # gives it away. 5 % of the fundus diameter, in four directions.
    verdicts = []
    for p in photos[:8]:
        assert "motion_blur" not in quality.assess(p).reasons
        length = round(0.05 * max(p.shape[:2]))
        verdicts += [quality.assess(_smear(p, a, length)).reasons for a in np.arange(4) * np.pi / 4]
    assert sum("motion_blur" in r for r in verdicts) >= 0.9 * len(verdicts), verdicts


def _shade(image: np.ndarray, angle: float, low: float) -> np.ndarray:
    """Light falling off linearly across the frame towards ``angle`` (radians), down to ``low`` at the edge."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)) / (max(h, w) / 2)
    gain = low + (1 - low) * np.clip((1 - t) / 2, 0, 1)
    return np.asarray(np.clip(image * gain[..., None], 0, 255), np.uint8)


def test_strong_shading_is_uneven_illumination_and_an_evenly_lit_frame_is_not() -> None:
    # Evenly lit emulator frames, shaded to 10 % at one edge in eight directions. This pins today's known
    # limit too: the luminance slope catches about half of them (docs/quality-gate.md, Known limits).
    frames = [synthetic_fundus(seed, (640, 480)) for seed in range(1, 7)]
    assert all("uneven_illumination" not in quality.assess(f).reasons for f in frames)
    shaded = [quality.assess(_shade(f, a, 0.1)).reasons for f in frames for a in np.arange(8) * np.pi / 4]
    assert sum("uneven_illumination" in r for r in shaded) >= 0.4 * len(shaded), shaded
    mild = [quality.assess(_shade(f, a, 0.6)).reasons for f in frames[:2] for a in np.arange(4) * np.pi / 2]
    assert all(not r for r in mild), mild  # 40 % fall-off across the whole frame is within a good photo's range


@pytest.mark.parametrize("kind", degrade.NOT_FUNDUS_KINDS)
def test_images_that_are_not_fundus_photos_are_refused(kind: str) -> None:
    verdicts = [quality.assess(degrade.not_fundus(kind, np.random.default_rng(500 + i))) for i in range(6)]
    assert all(not v.ok for v in verdicts)
    if kind != "object":  # a round orange object on black is the hard case (80 % in the doc)
        assert all(v.reasons == ("not_fundus",) for v in verdicts), [v.reasons for v in verdicts]


@pytest.mark.parametrize("size", [(640, 480), (1920, 1080), (2000, 2000)])
def test_synthetic_fundus_frames_pass_at_camera_resolutions(size: tuple[int, int]) -> None:
    verdict = quality.assess(synthetic_fundus(sum(size), size))
    assert verdict.ok, verdict.reasons


def test_reasons_are_known_and_metrics_are_numbers() -> None:
    image = degrade.degrade("underexposed", synthetic_fundus(1), seed=1)
    verdict = quality.assess(image)
    assert verdict.reasons and set(verdict.reasons) <= set(quality.REASONS)
    assert all(isinstance(v, float) for v in verdict.metrics.values())
    assert "too_dark" in verdict.reasons


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10, 3), np.uint8),
        np.zeros((1, 5000, 3), np.uint8),
        np.full((300, 300, 3), 255, np.uint8),
        np.zeros((480, 640, 3), np.uint8),
    ],
    ids=["tiny", "one-row", "white", "black"],
)
def test_degenerate_images_get_a_verdict(image: np.ndarray) -> None:
    verdict = quality.assess(image)
    assert not verdict.ok and verdict.reasons


def test_wrong_array_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        quality.assess(np.zeros((10, 10), np.uint8))  # type: ignore[arg-type]


def test_degradations_are_reproducible() -> None:
    image = synthetic_fundus(2, (320, 240))
    for kind in degrade.DEGRADATIONS:
        assert np.array_equal(degrade.degrade(kind, image, 7), degrade.degrade(kind, image, 7)), kind


def test_eye_suggestion_from_the_optic_disc(photos: list[np.ndarray]) -> None:
    import csv

    from support.retina import require_fundus

    folder = require_fundus()
    with (folder / "labels.csv").open(newline="") as fh:
        eyes = [r["eye"] for r in csv.DictReader(fh) if r["split"] == "valid"][: len(photos)]
    suggested = [quality.suggest_eye(quality.measure(p)) for p in photos]
    called = [(s, e) for s, e in zip(suggested, eyes, strict=True) if s is not None]
    assert len(called) >= 0.7 * len(photos)  # 108 of 118 on all of valid
    assert sum(str(s) == e for s, e in called) >= len(called) - 1  # 108/108 on all of valid
    assert quality.suggest_eye({"disc_x": 0.05}) is None  # disc-centred: no suggestion
