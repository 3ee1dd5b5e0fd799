"""Fundus developer set: labels, a preprocessed-image cache and training augmentation.

Photos are read from the shared data directory (``CG_FUNDUS_DIR`` or ``<repo>/../shared/data/fundus``)
and never copied into the repository. The cache (``models/triage/cache/``, git-ignored) holds the
uint8 output of :func:`gateway.retina.preprocess.square_fundus` for every photo, keyed by a hash of
``labels.csv`` and ``preprocess.py`` so that it is rebuilt whenever either changes. Nothing here
logs pixel data or patient identifiers beyond file names.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from gateway.retina import preprocess

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / "models" / "triage" / "cache"
UInt8Array = npt.NDArray[np.uint8]


def fundus_dir() -> Path:
    """Return the fundus data directory: ``$CG_FUNDUS_DIR`` or ``<repo>/../shared/data/fundus``."""
    env = os.environ.get("CG_FUNDUS_DIR")
    return Path(env) if env else (REPO_ROOT / ".." / "shared" / "data" / "fundus").resolve()


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled photo (no pixels)."""

    file: str
    split: str
    patient_id: str
    dr_grade: int
    referable: int


def read_labels(data_dir: Path) -> list[Sample]:
    """Read ``labels.csv`` into samples, in file order."""
    with (data_dir / "labels.csv").open(newline="") as fh:
        return [
            Sample(
                file=row["file"],
                split=row["split"],
                patient_id=row["patient_id"],
                dr_grade=int(row["dr_grade"]),
                referable=int(row["referable"]),
            )
            for row in csv.DictReader(fh)
        ]


def read_bgr(path: Path) -> UInt8Array:
    """Decode a photo with OpenCV (BGR, 8-bit), as the gateway does.

    Raises:
        ValueError: if the file cannot be decoded.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {path.name}")
    return np.asarray(image, dtype=np.uint8)


def cache_key(data_dir: Path) -> str:
    """Hash of ``labels.csv`` and the preprocessing source: the cache is valid while both are unchanged."""
    digest = hashlib.sha256((data_dir / "labels.csv").read_bytes())
    digest.update(Path(preprocess.__file__).read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Dataset:
    """All samples with their cached ``(N, S, S, 3)`` uint8 BGR squares (S = ``STANDARD_SIDE``)."""

    samples: list[Sample]
    squares: UInt8Array

    def indices(self, split: str) -> npt.NDArray[np.intp]:
        """Indices of the samples in ``split`` (``train`` or ``valid``)."""
        return np.array([i for i, s in enumerate(self.samples) if s.split == split], dtype=np.intp)

    def labels(self, idx: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        """Referable labels (0/1) of the given indices."""
        return np.array([self.samples[i].referable for i in idx], dtype=np.float32)

    def grades(self, idx: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        """ICDR grades of the given indices."""
        return np.array([self.samples[i].dr_grade for i in idx], dtype=np.int64)


def load_dataset(data_dir: Path | None = None, cache_dir: Path = CACHE_DIR) -> Dataset:
    """Load labels and preprocessed squares, building the cache on first use.

    Raises:
        FileNotFoundError: if the data directory has no ``labels.csv``.
    """
    data_dir = data_dir or fundus_dir()
    if not (data_dir / "labels.csv").is_file():
        raise FileNotFoundError(f"no labels.csv in {data_dir} (set CG_FUNDUS_DIR)")
    samples = read_labels(data_dir)
    cache = cache_dir / f"squares-{cache_key(data_dir)}.npy"
    portable = cache.with_suffix(".jpg.npz")
    if cache.is_file():
        squares = np.load(cache)
    elif portable.is_file():
        squares = read_portable_cache(portable)
    else:
        squares = np.stack([preprocess.square_fundus(read_bgr(data_dir / s.file)) for s in samples])
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, squares)
        tmp.replace(cache)
    return Dataset(samples=samples, squares=squares)


@dataclass(frozen=True, slots=True)
class Augment:
    """Random geometric and photometric augmentation of a uint8 BGR square (train only)."""

    max_rotation: float = 180.0
    scale: tuple[float, float] = (0.92, 1.12)
    max_shift: float = 0.04
    brightness: float = 0.15
    contrast: float = 0.15
    gamma: float = 0.15
    blur_p: float = 0.15

    def __call__(self, square: UInt8Array, rng: np.random.Generator) -> UInt8Array:
        """Return an augmented copy of ``square`` (same shape and dtype)."""
        side = square.shape[0]
        image = square[:, ::-1] if rng.random() < 0.5 else square
        angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
        zoom = float(math.exp(rng.uniform(math.log(self.scale[0]), math.log(self.scale[1]))))
        matrix = cv2.getRotationMatrix2D((side / 2 - 0.5, side / 2 - 0.5), angle, zoom)
        matrix[:, 2] += rng.uniform(-self.max_shift, self.max_shift, size=2) * side
        out = cv2.warpAffine(
            np.ascontiguousarray(image), matrix, (side, side), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)
        )
        if rng.random() < self.blur_p:
            out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.5, 1.5)))
        gain = 1.0 + rng.uniform(-self.contrast, self.contrast)
        bias = rng.uniform(-self.brightness, self.brightness) * 255.0 * 0.3
        gamma = float(math.exp(rng.uniform(-self.gamma, self.gamma)))
        lut = np.arange(256, dtype=np.float32) / 255.0
        lut = np.clip(255.0 * lut**gamma * gain + bias, 0, 255).astype(np.uint8)
        mask = out.max(axis=2, keepdims=True) > preprocess.BLACK_LEVEL
        return np.where(mask, cv2.LUT(out, lut), out).astype(np.uint8)


def batch_inputs(squares: UInt8Array, size: int) -> npt.NDArray[np.float32]:
    """Stack :func:`gateway.retina.preprocess.to_model_input` over squares into one ``(N, 3, S, S)`` batch."""
    return np.concatenate([preprocess.to_model_input(sq, size) for sq in squares], axis=0)


def write_portable_cache(squares: UInt8Array, path: Path, quality: int = 95) -> None:
    """Write squares as JPEG bytes in one ``.npz`` (small enough to carry to an experiment machine).

    JPEG is lossy: results from a portable cache are for experiments only, never for the shipped model.
    """
    blobs = [cv2.imencode(".jpg", sq, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].ravel() for sq in squares]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    np.savez(path, data=np.concatenate(blobs), offsets=offsets)


def read_portable_cache(path: Path) -> UInt8Array:
    """Decode a cache written by :func:`write_portable_cache`."""
    with np.load(path) as npz:
        data, offsets = npz["data"], npz["offsets"]
    return np.stack(
        [np.asarray(cv2.imdecode(data[a:b], cv2.IMREAD_COLOR), dtype=np.uint8) for a, b in itertools.pairwise(offsets)]
    )
