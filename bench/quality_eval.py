"""Calibrate the quality gate on the train split, report it on the valid split (prints JSON).

The shared fundus photos have no quality labels, so the labelled set is made here: every photo clean,
plus one copy per degradation of ``tests/support/degrade.py`` (seeded by file name and kind), plus
synthetic non-fundus images. Thresholds are chosen on *train* only:

- for a metric where low is bad, the 0.5 % quantile of the clean train photos (at most 1 in 200 clean
  photos rejected for that reason); if the degraded photos it targets lie clearly below that (their
  90th percentile is lower), the threshold moves half way towards them, to leave a margin for clean
  photos not seen yet. Mirror image for metrics where high is bad.
- motion vs. defocus: half way between the median blur anisotropy of the two degradations.

Then *valid* is measured with those thresholds, and with the thresholds shipped in
``gateway/retina/quality.py`` (they should be the calibrated ones; ``shipped_equals_calibrated`` says).

Usage::

    .venv/bin/python bench/quality_eval.py [--data DIR] [--jobs 2] [--limit N] [--markdown]

The data directory defaults to ``$CG_FUNDUS_DIR`` or ``<repo>/../shared/data/fundus``. The last line of
output is one JSON object. Nothing from the photos is written anywhere.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the calibration generator is test support, not shipped

from support import degrade  # noqa: E402

from gateway.retina import quality  # noqa: E402

Item = tuple[str, dict[str, float], float]  # (kind, metrics, seconds to measure)
NOT_FUNDUS_PER_KIND = 20

# metric -> (direction, target kinds): which degradations a threshold is meant to catch.
CALIBRATED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "min_luma": ("luma_mean", "low", ("underexposed",)),
    "max_luma": ("luma_mean", "high", ("overexposed",)),
    "max_clipped": ("clipped", "high", ("overexposed",)),
    "min_rim_ratio": ("rim_ratio", "low", ("vignetting",)),
    "min_sector_ratio": ("sector_ratio", "low", ("uneven",)),
    "max_illum_slope": ("illum_slope", "high", ("uneven",)),
    "max_centre_offset": ("centre_offset", "high", ("shifted",)),
    "min_field_inside": ("field_inside", "low", ("cropped", "shifted")),
    "min_focus": ("focus", "low", ("defocus", "motion")),
    "min_focus_dir": ("focus_dir", "low", ("motion",)),
    "max_block_damage": ("block_damage", "high", ("jpeg_damage",)),
}
CLEAN_QUANTILE = 0.005


def data_dir(arg: str | None) -> Path:
    """The fundus folder: ``--data``, ``$CG_FUNDUS_DIR`` or ``<repo>/../shared/data/fundus``."""
    return Path(arg or os.environ.get("CG_FUNDUS_DIR") or REPO.parent / "shared" / "data" / "fundus")


def seed_of(*parts: str) -> int:
    """A stable seed from names (not Python's salted hash)."""
    return int(hashlib.sha256(":".join(parts).encode()).hexdigest()[:8], 16)


def _timed(image: np.ndarray) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    metrics = quality.measure(image)
    return metrics, time.perf_counter() - start


def photo_items(path: str) -> list[Item]:
    """The clean photo and each of its degradations, measured."""
    raw = cv2.imread(path, cv2.IMREAD_COLOR)
    if raw is None:
        raise SystemExit(f"cannot read {Path(path).name}")
    image = np.asarray(raw, dtype=np.uint8)
    name = Path(path).name
    items: list[Item] = [("clean", *_timed(image))]
    for kind in degrade.DEGRADATIONS:
        items.append((kind, *_timed(degrade.degrade(kind, image, seed_of(name, kind)))))
    return items


def not_fundus_item(spec: tuple[str, str, int]) -> Item:
    """One synthetic non-fundus image, measured."""
    split, kind, i = spec
    image = degrade.not_fundus(kind, np.random.default_rng(seed_of(split, kind, str(i))))
    metrics, seconds = _timed(image)
    return f"not_fundus:{kind}", metrics, seconds


def build(split: str, files: list[Path], jobs: int) -> list[Item]:
    """Measure every item of one split (photos in parallel; nothing is written)."""
    specs = [(split, kind, i) for kind in degrade.NOT_FUNDUS_KINDS for i in range(NOT_FUNDUS_PER_KIND)]
    with Pool(jobs) as pool:
        photos = pool.map(photo_items, [str(f) for f in files], chunksize=4)
        others = pool.map(not_fundus_item, specs, chunksize=8)
    return [item for group in photos for item in group] + others


def _values(items: list[Item], kinds: tuple[str, ...], metric: str) -> np.ndarray:
    return np.array([m[metric] for k, m, _ in items if k in kinds and metric in m], dtype=np.float64)


def _sig(value: float) -> float:
    return float(f"{value:.3g}")


def calibrate(items: list[Item]) -> quality.Thresholds:
    """Thresholds from the train items (see the module docstring for the rule)."""
    chosen: dict[str, float] = {}
    for name, (metric, direction, targets) in CALIBRATED.items():
        clean = _values(items, ("clean",), metric)
        bad = _values(items, targets, metric)
        if direction == "low":
            edge, far = float(np.quantile(clean, CLEAN_QUANTILE)), float(np.quantile(bad, 0.9))
            chosen[name] = _sig((edge + far) / 2 if far < edge else edge)
        else:
            edge, far = float(np.quantile(clean, 1 - CLEAN_QUANTILE)), float(np.quantile(bad, 0.1))
            chosen[name] = _sig((edge + far) / 2 if far > edge else edge)
    # A fundus, even blurred, has vessel texture; a flat object does not.
    fundus_texture = _values(items, ("clean", "defocus", "motion"), "texture")
    chosen["min_texture"] = _sig(float(np.quantile(fundus_texture, CLEAN_QUANTILE)) * 0.8)
    defocus = statistics.median(_values(items, ("defocus",), "blur_anisotropy"))
    motion = statistics.median(_values(items, ("motion",), "blur_anisotropy"))
    chosen["max_motion_anisotropy"] = _sig((defocus + motion) / 2)
    return dataclasses.replace(quality.THRESHOLDS, **chosen)


def evaluate(items: list[Item], thresholds: quality.Thresholds) -> dict[str, Any]:
    """Per-kind reject and detection rates, clean false rejects, reasons seen, timing."""
    by_kind: dict[str, list[tuple[str, ...]]] = {}
    for kind, metrics, _ in items:
        by_kind.setdefault(kind, []).append(quality.decide(metrics, thresholds))
    out: dict[str, Any] = {}
    for kind, verdicts in by_kind.items():
        expected = degrade.EXPECTED["not_fundus" if kind.startswith("not_fundus") else kind] if kind != "clean" else ()
        counts: dict[str, int] = {}
        for reasons in verdicts:
            for r in reasons:
                counts[r] = counts.get(r, 0) + 1
        n = len(verdicts)
        entry: dict[str, Any] = {
            "n": n,
            "rejected": round(sum(1 for r in verdicts if r) / n, 3),
            "reasons": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        }
        if expected:
            entry["detected"] = round(sum(1 for r in verdicts if set(r) & set(expected)) / n, 3)
            entry["expected"] = list(expected)
        out[kind] = entry
    nf = [v for k, vs in by_kind.items() if k.startswith("not_fundus") for v in vs]
    times = sorted(t for _, _, t in items)
    summary = {
        "clean_false_reject": out["clean"]["rejected"],
        "not_fundus_detected": round(sum(1 for r in nf if "not_fundus" in r) / max(1, len(nf)), 3),
        "measure_ms_median": round(1000 * times[len(times) // 2], 1),
        "measure_ms_p99": round(1000 * times[int(len(times) * 0.99)], 1),
    }
    return {"summary": summary, "kinds": out}


def markdown(report: dict[str, Any]) -> str:
    """The valid-split table for docs/quality-gate.md."""
    lines = ["| images | n | rejected | detected (expected reason) | reasons given |", "|---|---|---|---|---|"]
    for kind, e in report["kinds"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in e["reasons"].items()) or "-"
        detected = f"{e['detected']:.1%} ({' / '.join(e['expected'])})" if "detected" in e else "-"
        lines.append(f"| {kind} | {e['n']} | {e['rejected']:.1%} | {detected} | {reasons} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build both splits, calibrate on train, report on valid; last line JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="fundus folder (default $CG_FUNDUS_DIR or ../shared/data/fundus)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos per split (quick look)")
    parser.add_argument("--markdown", action="store_true", help="also print the valid table as Markdown")
    args = parser.parse_args(argv)
    folder = data_dir(args.data)
    labels = folder / "labels.csv"
    if not labels.is_file():
        print(json.dumps({"error": f"no fundus data at {folder} (set CG_FUNDUS_DIR)"}))
        return 2
    with labels.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    splits = {s: [folder / r["file"] for r in rows if r["split"] == s][: args.limit] for s in ("train", "valid")}
    cv2.setNumThreads(1)
    train = build("train", splits["train"], args.jobs)
    calibrated = calibrate(train)
    valid = build("valid", splits["valid"], args.jobs)
    result = {
        "bench": "quality_eval",
        "photos": {s: len(f) for s, f in splits.items()},
        "thresholds_calibrated_on_train": dataclasses.asdict(calibrated),
        "shipped_equals_calibrated": calibrated == quality.THRESHOLDS,
        "train_in_sample": evaluate(train, calibrated)["summary"],
        "valid": evaluate(valid, calibrated),
    }
    if calibrated != quality.THRESHOLDS:
        result["valid_with_shipped_thresholds"] = evaluate(valid, quality.THRESHOLDS)["summary"]
    if args.markdown:
        print(markdown(result["valid"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
