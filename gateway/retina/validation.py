"""Local validation of a triage model on a hospital's own graded photos (``gateway model validate``).

Input: a folder of photos and a CSV with one row per photo and the columns ``file`` (relative to the folder),
``eye`` (L/R), ``patient`` (any id) and ``grade`` (ICDR 0-4) **or** ``referable`` (1/0, yes/no). Each photo goes
through exactly what the daemon does: decode with the same limits (:func:`gateway.retina.intake.assess_bytes`),
the quality gate, and the model on the gateway's preprocessing. Photos the gate refuses are *ungradable*: they
are never scored; the report gives their share and, as screening programmes do, a view that counts them as
referred.

Figures (shared with the model's developers through :mod:`gateway.retina.metrics`): AUC per eye and per patient
(a patient is referable when either eye is, and referred when either eye is) with patient-bootstrap CIs;
confusion tables per eye and per patient at the model's thresholds; per-grade referral rates; and **suggested
thresholds for this population** by the project's rules (highest with per-eye sensitivity >= 0.92, lowest with
specificity >= 0.95), with the figures they give on the same photos (optimistic: chosen and reported on one set).

Output: ``report.json`` and ``report.html`` (self-contained: the ROC curve is inline SVG, no script or network)
in the output folder. Neither holds file names or patient ids, only counts and figures; nothing is logged
about single photos.
"""

from __future__ import annotations

import csv
import html
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import CaptureError, LabelsError
from gateway.retina import metrics
from gateway.retina.intake import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, assess_bytes
from gateway.retina.triage import ADVISORY_NOTE, TriageModel

_logger = logging.getLogger(__name__)

REFERABLE_GRADE = 2
_TRUE = {"1", "yes", "y", "true", "referable"}
_FALSE = {"0", "no", "n", "false", "not_referable"}


@dataclass(frozen=True, slots=True)
class LabelledPhoto:
    """One row of the labels CSV."""

    file: str
    eye: str
    patient: str
    referable: bool
    grade: int | None


def read_labels(path: Path) -> list[LabelledPhoto]:
    """Read the labels CSV (columns ``file``, ``eye``, ``patient`` and ``grade`` or ``referable``).

    Raises:
        LabelsError: a missing column or a value that is not a grade 0-4 / a yes-no.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(path, 0, f"cannot be read: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    columns = {c.strip().lower() for c in reader.fieldnames or []}
    missing = {"file", "eye", "patient"} - columns
    if missing or not columns & {"grade", "referable"}:
        need = sorted(missing) + ([] if columns & {"grade", "referable"} else ["grade or referable"])
        raise LabelsError(path, 0, f"missing column(s): {', '.join(need)}")
    rows: list[LabelledPhoto] = []
    for line, raw in enumerate(reader, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        grade: int | None = None
        if row.get("grade"):
            try:
                grade = int(row["grade"])
            except ValueError:
                grade = -1
            if not 0 <= grade <= 4:
                raise LabelsError(path, line, "grade must be an ICDR grade 0-4")
            referable = grade >= REFERABLE_GRADE
        elif row.get("referable", "").lower() in _TRUE | _FALSE:
            referable = row["referable"].lower() in _TRUE
        else:
            raise LabelsError(path, line, "needs a grade (0-4) or referable (1/0)")
        if not row.get("file") or not row.get("patient"):
            raise LabelsError(path, line, "file and patient must not be empty")
        rows.append(LabelledPhoto(row["file"], row.get("eye", "").upper(), row["patient"], referable, grade))
    if not rows:
        raise LabelsError(path, 0, "no rows")
    return rows


@dataclass(frozen=True, slots=True)
class Scored:
    """What the gateway made of one labelled photo."""

    photo: LabelledPhoto
    outcome: str
    """``scored``, ``ungradable`` (refused by the quality gate) or ``unreadable`` (missing or not an image)."""
    probability: float | None
    reasons: tuple[str, ...] = ()


def score(
    photos: Sequence[LabelledPhoto],
    images: Path,
    model: TriageModel,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Scored]:
    """Run each photo through the daemon's decode, quality gate and model (unrounded probability)."""
    out: list[Scored] = []
    for photo in photos:
        try:
            found = assess_bytes((images / photo.file).read_bytes(), None, max_bytes=max_bytes, max_pixels=max_pixels)
        except (OSError, CaptureError) as exc:
            out.append(Scored(photo, "unreadable", None, (type(exc).__name__,)))
            continue
        if not found.quality.ok:
            out.append(Scored(photo, "ungradable", None, tuple(found.quality.reasons)))
            continue
        out.append(Scored(photo, "scored", model.probability(found.decoded.image)))
    return out


def _programme_view(rows: Sequence[Scored], threshold: float) -> dict[str, Any]:
    # Per eye, ungradable counted as referred (what happens to the patient): the programme's own sensitivity.
    usable = [r for r in rows if r.outcome != "unreadable"]
    y = np.array([r.photo.referable for r in usable], dtype=bool)
    referred = np.array([r.outcome == "ungradable" or (r.probability or 0.0) >= threshold for r in usable])
    return {
        "threshold": round(threshold, 6),
        "sensitivity": round(float(referred[y].mean()), 4) if y.any() else None,
        "specificity": round(float((~referred[~y]).mean()), 4) if (~y).any() else None,
    }


def build_report(rows: Sequence[Scored], model: TriageModel, *, n_boot: int = metrics.N_BOOT) -> dict[str, Any]:
    """The validation report (JSON-ready): counts, figures at the model's and at suggested thresholds."""
    scored = [r for r in rows if r.outcome == "scored"]
    counts = {k: sum(r.outcome == k for r in rows) for k in ("scored", "ungradable", "unreadable")}
    reasons: dict[str, int] = {}
    for r in rows:
        if r.outcome == "ungradable":
            for reason in r.reasons:
                reasons[reason] = reasons.get(reason, 0) + 1
    report: dict[str, Any] = {
        "model_version": model.model_version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": ADVISORY_NOTE,
        "images": len(rows),
        "patients": len({r.photo.patient for r in rows}),
        "counts": counts,
        "ungradable_share": round(counts["ungradable"] / max(1, len(rows) - counts["unreadable"]), 4),
        "ungradable_reasons": dict(sorted(reasons.items())),
        "model_thresholds": dict(model.info.thresholds),
    }
    y = [r.photo.referable for r in scored]
    p = [float(r.probability or 0.0) for r in scored]
    patients = [r.photo.patient for r in scored]
    known = [r.photo.grade for r in scored if r.photo.grade is not None]
    grades = known if scored and len(known) == len(scored) else None
    if not scored or all(y) or not any(y):
        report["problem"] = "need gradable photos of both referable and non-referable eyes for these figures"
        return report
    thresholds = {k: v for k, v in model.info.thresholds.items() if k in {"refer", "high_specificity"}}
    at_model = metrics.summarise(y, p, patients, thresholds, grades, n_boot=n_boot)
    report["at_model_thresholds"] = at_model.as_dict()
    report["programme_refer_including_ungradable"] = _programme_view(rows, thresholds["refer"])
    try:
        suggested = metrics.choose_thresholds(y, p)
    except ValueError as exc:
        report["suggested_thresholds"] = {"problem": str(exc)}
    else:
        at_suggested = metrics.summarise(y, p, patients, suggested, grades, n_boot=n_boot)
        report["suggested_thresholds"] = {
            "rule": f"refer: highest with per-eye sensitivity >= {metrics.REFER_SENSITIVITY}; high_specificity: "
            f"lowest with specificity >= {metrics.HIGH_SPECIFICITY}. Chosen and reported on the same photos, so "
            "optimistic; prefer more photos than fewer before adopting them.",
            "thresholds": {k: round(v, 6) for k, v in suggested.items()},
            "figures": at_suggested.as_dict(),
        }
    py, pp, _ = metrics.per_patient(y, p, patients)
    report["roc"] = {
        "per_eye": [[round(a, 4), round(b, 4)] for a, b in metrics.roc_curve(y, p)],
        "per_patient": [[round(a, 4), round(b, 4)] for a, b in metrics.roc_curve(py, pp)],
    }
    return report


# -- HTML -------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _ci(value: Any, ci: Any) -> str:
    if isinstance(ci, list) and len(ci) == 2 and ci[0] is not None:
        return f"{_fmt(value)} <small>({_fmt(ci[0])}\u2013{_fmt(ci[1])})</small>"
    return _fmt(value)


def roc_svg(curves: Mapping[str, Sequence[Sequence[float]]], points: Mapping[str, tuple[float, float]]) -> str:
    """The ROC curves as an inline SVG (no script): 1 - specificity across, sensitivity up."""
    size, pad = 320, 40
    span = size - 2 * pad

    def xy(fpr: float, tpr: float) -> str:
        return f"{pad + fpr * span:.1f},{size - pad - tpr * span:.1f}"

    colours = ["#1f5fa8", "#b5651d", "#2e7d32"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
        'role="img" aria-label="ROC curve">',
        f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="none" stroke="#999"/>',
        f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" stroke="#ccc" stroke-dasharray="4 4"/>',
        f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle" font-size="12">1 \u2212 specificity</text>',
        f'<text x="12" y="{size / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 12 {size / 2})">'
        "sensitivity</text>",
    ]
    for i, (name, curve) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        pts = " ".join(xy(a, b) for a, b in curve)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{pad + 8}" y="{pad + 16 + 14 * i}" font-size="12" fill="{colour}">'
                     f"{html.escape(name)}</text>")  # fmt: skip
    for name, (fpr, tpr) in points.items():
        x, y = xy(fpr, tpr).split(",")
        parts.append(f'<circle cx="{x}" cy="{y}" r="4" fill="#c62828"><title>{html.escape(name)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _confusion_table(title: str, block: Mapping[str, Any]) -> str:
    rows = []
    for name, c in block.items():
        rows.append(
            f"<tr><th>{html.escape(name)}</th><td>{_fmt(c['threshold'])}</td><td>{c['tp']}</td><td>{c['fn']}</td>"
            f"<td>{c['fp']}</td><td>{c['tn']}</td><td>{_ci(c['sensitivity'], c['sensitivity_ci95'])}</td>"
            f"<td>{_ci(c['specificity'], c['specificity_ci95'])}</td></tr>"
        )
    return (
        f"<h3>{html.escape(title)}</h3><table><thead><tr><th>threshold</th><th>value</th>"
        "<th>referable, referred</th><th>referable, missed</th><th>not referable, referred</th>"
        "<th>not referable, not referred</th><th>sensitivity (95 % CI)</th><th>specificity (95 % CI)</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _figures_html(figures: Mapping[str, Any]) -> str:
    parts = [
        "<table><tbody>",
        f"<tr><th>gradable images / patients</th><td>{figures['n_images']} / {figures['n_patients']}</td></tr>",
        f"<tr><th>referable images / patients</th><td>{figures['n_referable_images']} / "
        f"{figures['n_referable_patients']}</td></tr>",
        f"<tr><th>AUC per eye (95 % CI)</th><td>{_ci(figures['auc'], figures['auc_ci95_patient_bootstrap'])}</td>",
        f"</tr><tr><th>AUC per patient (95 % CI)</th><td>{_ci(figures['patient_auc'], figures['patient_auc_ci95'])}",
        "</td></tr>",
        "</tbody></table>",
        _confusion_table("Per eye", figures["per_eye"]),
        _confusion_table("Per patient (referred when either eye is)", figures["per_patient"]),
    ]
    by_grade = figures.get("referred_fraction_by_grade") or {}
    if by_grade:
        grades = sorted(figures.get("images_by_grade", {}))
        head = "".join(f"<th>grade {html.escape(g)} (n={figures['images_by_grade'][g]})</th>" for g in grades)
        body = "".join(
            f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{_fmt(rates.get(g))}</td>" for g in grades) + "</tr>"
            for name, rates in by_grade.items()
        )
        parts.append(f"<h3>Referred fraction by ICDR grade</h3><table><thead><tr><th></th>{head}</tr></thead>"
                     f"<tbody>{body}</tbody></table>")  # fmt: skip
    return "".join(parts)


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    counts = report["counts"]
    body = [
        f"<h1>Triage model validation: {_fmt(report['model_version'])}</h1>",
        f"<p>{_fmt(report['note'])}</p>",
        f"<p>{report['images']} photos of {report['patients']} patients: {counts['scored']} scored, "
        f"{counts['ungradable']} ungradable (quality gate; share {_fmt(report['ungradable_share'])}), "
        f"{counts['unreadable']} unreadable. Created {_fmt(report['created_at'])}.</p>",
    ]
    if report["ungradable_reasons"]:
        items = "".join(f"<li>{html.escape(k)}: {v}</li>" for k, v in report["ungradable_reasons"].items())
        body.append(f"<p>Quality-gate reasons:</p><ul>{items}</ul>")
    if "problem" in report:
        body.append(f"<p class=problem>{_fmt(report['problem'])}</p>")
    else:
        at_model = report["at_model_thresholds"]
        refer = at_model["per_eye"]["refer"]
        points = {"refer (model)": (1 - (refer["specificity"] or 0), refer["sensitivity"] or 0)}
        curves = {"per eye": report["roc"]["per_eye"], "per patient": report["roc"]["per_patient"]}
        body.append(f"<h2>ROC</h2>{roc_svg(curves, points)}")
        body.append("<h2>At the model's thresholds</h2>" + _figures_html(at_model))
        programme = report["programme_refer_including_ungradable"]
        body.append(
            f"<p>Per eye at “refer”, counting ungradable photos as referred: sensitivity "
            f"{_fmt(programme['sensitivity'])}, specificity {_fmt(programme['specificity'])}.</p>"
        )
        suggested = report["suggested_thresholds"]
        if "thresholds" in suggested:
            values = ", ".join(f"{html.escape(k)} = {v:.4f}" for k, v in suggested["thresholds"].items())
            body.append(f"<h2>Suggested thresholds for this population</h2><p>{values}. {_fmt(suggested['rule'])}</p>")
            body.append(_figures_html(suggested["figures"]))
        else:
            body.append(f"<h2>Suggested thresholds</h2><p>{_fmt(suggested.get('problem'))}</p>")
    style = (
        "body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;"
        "text-align:left}small{color:#555}.problem{color:#b71c1c}"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Triage model validation</title>'
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(report: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out`` (created); return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path


def validate(
    images: Path,
    labels: Path,
    model: TriageModel,
    out: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """Read the labels, score every photo as the daemon would, write the report; return it.

    Raises:
        LabelsError: the labels CSV cannot be used.
    """
    rows = score(read_labels(labels), images, model, max_bytes=max_bytes, max_pixels=max_pixels)
    report = build_report(rows, model)
    write_report(report, out)
    _logger.info("validation of %s: %d photos, report in %s", model.model_version, len(rows), out)
    return report
