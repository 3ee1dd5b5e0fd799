"""gateway.retina.preprocess: the one preprocessing used by training and by the gateway.

Synthetic images only, except the last tests, which check on the shared photos that the training
path (cached square, then ``to_model_input``) and the gateway path (``prepare_input`` on the decoded
file) give bit-identical tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.imports import gateway_modules, third_party_roots
from support.retina import REPO_ROOT, fundus_files, read_bgr

from gateway.retina import preprocess
from models.triage.data import batch_inputs

SIDECAR = REPO_ROOT / "models" / "triage" / "referable_dr.json"


def disc_image(height: int, width: int, box: tuple[int, int, int, int], value: int = 120) -> np.ndarray:
    """Black frame with a filled rectangle ``(top, bottom, left, right)`` of a non-black colour."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    top, bottom, left, right = box
    image[top:bottom, left:right] = (value // 2, value, value + 40)
    return image


def test_crop_finds_the_non_black_box() -> None:
    image = disc_image(300, 400, (20, 280, 50, 330))
    assert preprocess.fundus_box(image) == (20, 280, 50, 330)
    cropped = preprocess.crop_to_fundus(image)
    assert cropped.shape == (260, 280, 3)
    assert cropped.flags["C_CONTIGUOUS"]


def test_pixels_at_or_below_the_black_level_do_not_count() -> None:
    image = disc_image(200, 200, (50, 150, 50, 150))
    image[:50] = preprocess.BLACK_LEVEL  # "dark grey" border, still black by the rule
    assert preprocess.fundus_box(image) == (50, 150, 50, 150)


def test_a_line_needs_more_than_one_percent_of_its_pixels() -> None:
    image = disc_image(200, 1000, (40, 160, 100, 900))
    image[10, :10] = 200  # 10 of 1000 pixels = exactly 1 %: not enough
    image[190, :11] = 200  # 11 of 1000: counts
    assert preprocess.fundus_box(image)[:2] == (40, 191)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((100, 120, 3), dtype=np.uint8),  # all black
        disc_image(100, 120, (40, 55, 0, 120)),  # box 15 % of the height
        disc_image(100, 120, (0, 100, 50, 70)),  # box 17 % of the width
    ],
)
def test_untrusted_box_keeps_the_whole_frame(image: np.ndarray) -> None:
    assert preprocess.fundus_box(image) == (0, 100, 0, 120)
    assert preprocess.crop_to_fundus(image).shape == image.shape


def test_standardise_resizes_longest_side_and_is_identity_at_384() -> None:
    big = disc_image(1296, 1936, (0, 1296, 0, 1936))
    assert preprocess.standardise(big).shape == (257, 384, 3)
    stored = disc_image(327, 384, (0, 327, 0, 384))
    assert preprocess.standardise(stored) is stored


def test_pad_to_square_centres_the_image() -> None:
    square = preprocess.pad_to_square(disc_image(100, 160, (0, 100, 0, 160)))
    assert square.shape == (160, 160, 3)
    assert square[:30].max() == 0 and square[130:].max() == 0 and square[30:130].min() > 0


def test_prepare_input_layout_range_and_channel_order() -> None:
    image = disc_image(480, 640, (40, 440, 80, 560))
    image[40:440, 80:560] = (0, 0, 255)  # pure red in BGR
    x = preprocess.prepare_input(image, 64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    assert x.min() >= -1.0 and x.max() <= 1.0
    centre = x[0, :, 32, 32]
    np.testing.assert_allclose(centre, [1.0, -1.0, -1.0])  # R, G, B planes
    assert preprocess.prepare_input(image).shape == (1, 3, preprocess.INPUT_SIZE, preprocess.INPUT_SIZE)


def test_prepare_input_is_deterministic_and_does_not_modify_its_input() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    before = image.copy()
    a = preprocess.prepare_input(image, 96)
    b = preprocess.prepare_input(image, 96)
    assert np.array_equal(a, b)
    assert np.array_equal(image, before)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), dtype=np.uint8),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((10, 10, 3), dtype=np.float32),
        np.zeros((0, 10, 3), dtype=np.uint8),
    ],
)
def test_bad_arrays_raise_value_error(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        preprocess.prepare_input(bad, 32)


def test_bad_size_raises_value_error() -> None:
    with pytest.raises(ValueError):
        preprocess.prepare_input(disc_image(50, 50, (0, 50, 0, 50)), 0)


def test_module_is_pure() -> None:
    """Imports only numpy, cv2 and the standard library (it runs on the Pi and in training alike)."""
    assert third_party_roots(gateway_modules()[preprocess.__name__]) <= {"numpy", "cv2"}


def test_default_input_size_is_the_shipped_models() -> None:
    if not SIDECAR.is_file():
        pytest.skip("models/triage/referable_dr.json not there yet")
    assert json.loads(SIDECAR.read_text())["input_size"] == preprocess.INPUT_SIZE


def test_training_and_gateway_paths_give_identical_tensors(tmp_path: Path) -> None:
    """Training caches square_fundus() in a .npy and later calls to_model_input(); the gateway calls
    prepare_input() on the decoded photo. The two must agree bit for bit."""
    paths = fundus_files("valid", limit=4) + fundus_files("train", limit=4)
    np.save(tmp_path / "squares.npy", np.stack([preprocess.square_fundus(read_bgr(p)) for p in paths]))
    training = batch_inputs(np.load(tmp_path / "squares.npy"), preprocess.INPUT_SIZE)
    gateway = np.concatenate([preprocess.prepare_input(read_bgr(p)) for p in paths])
    assert np.array_equal(training, gateway)
