"""Advisory referable-DR triage with onnxruntime (ADAPTER: the only module that imports onnxruntime).

One :class:`TriageModel` holds one ``InferenceSession``, loaded once at start (threads from
``retina.model.threads``) and reused for every image. The model's sidecar JSON (same name, ``.json``)
gives ``model_version``, ``input_size``, the output name and the operating ``thresholds``
(``refer``: sensitivity-first point, ``high_specificity``). Preprocessing is
:func:`gateway.retina.preprocess.prepare_input`, the one implementation training also uses.

Decisions (advisory, never a diagnosis; human grading stays):

- an image that fails the quality gate is ``ungradable`` (counted as refer, as screening programmes do),
  with no probability: a number computed on a photo we cannot grade would only mislead;
- otherwise ``refer`` when the referable probability reaches ``thresholds["refer"]``, else ``rescreen``.
- per eye (:func:`eye_decision`): from the best gradable image of that eye; ungradable when none is.

Errors: a missing, unreadable or mismatched model (file, sidecar, input shape, output name) raises
:class:`~gateway.errors.ModelError`, translated once here from onnxruntime's exceptions.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from gateway import records
from gateway.errors import ModelError, ModelInputMismatch
from gateway.records import QualityVerdict, TriageDecision, TriageResult
from gateway.retina.preprocess import INPUT_SIZE, prepare_input

_logger = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "triage" / "referable_dr.onnx"
"""The model shipped in the repository (``retina.model.path`` overrides it)."""
OUTPUT_NAME = "referable_probability"
ADVISORY_NOTE = "Advisory triage by software, not a diagnosis; a grader reviews every image."


def _glibc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library is not glibc (musl, macOS)."""
    try:
        trim: Callable[[int], object] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


# Without the arena, onnxruntime frees every activation buffer after a run, but glibc keeps the freed blocks
# in its heap: the daemon held about 40 MB more after the first photo (the three-network ensemble; process RSS
# 227 MB instead of 186 MB in bench/retina_intake.py). Trimming after each photo costs about 30 ms of CPU
# (refaulting those pages in the next run); a fixed mmap threshold instead cost about 100 ms.
_TRIM = _glibc_trim()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the sidecar JSON says about the model (plus the path it came from)."""

    path: Path
    model_version: str
    input_size: int
    output_name: str
    thresholds: Mapping[str, float]
    validation: Mapping[str, Any] | None = None
    """The validation summary the model was published (and installed) with, if its sidecar has one."""

    def describe(self) -> dict[str, Any]:
        """For the status page and ``gateway triage``: version, file name, thresholds (no paths of data)."""
        return {
            "model_version": self.model_version,
            "file": self.path.name,
            "input_size": self.input_size,
            "thresholds": dict(self.thresholds),
            "validation": None if self.validation is None else dict(self.validation),
        }


def read_sidecar(model_path: Path, sidecar: Path | None = None) -> ModelInfo:
    """Read and check the model's description: ``sidecar``, by default ``<model>.json`` next to the ONNX file.

    Raises:
        ModelError: missing or unreadable file, or missing / wrong keys (named).
    """
    sidecar = sidecar or model_path.with_suffix(".json")
    try:
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model description {sidecar} is missing (it ships next to the .onnx file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model description {sidecar} cannot be read: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelError(f"model description {sidecar}: expected a JSON object")
    version = doc.get("model_version")
    if not isinstance(version, str) or not version:
        raise ModelError(f"model description {sidecar}: model_version is missing")
    size = doc.get("input_size", INPUT_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 2048:
        raise ModelError(f"model description {sidecar}: input_size must be an integer 16..2048, got {size!r}")
    output = doc.get("output", doc.get("output_name", OUTPUT_NAME))
    if isinstance(output, dict):  # {"name": ..., ...} form
        output = output.get("name", OUTPUT_NAME)
    thresholds = doc.get("thresholds")
    if not isinstance(thresholds, dict) or "refer" not in thresholds:
        raise ModelError(f"model description {sidecar}: thresholds.refer is missing")
    clean: dict[str, float] = {}
    for key, raw in thresholds.items():
        # {"threshold": t, "sensitivity": ..., ...} form, or the bare number.
        value = raw.get("threshold") if isinstance(raw, dict) else raw
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
            raise ModelError(f"model description {sidecar}: thresholds.{key} must be a number in 0..1")
        clean[str(key)] = float(value)
    validation = doc.get("validation")
    return ModelInfo(
        path=model_path,
        model_version=version,
        input_size=size,
        output_name=str(output),
        thresholds=clean,
        validation=validation if isinstance(validation, dict) else None,
    )


class TriageModel:
    """The referable-DR model, loaded once; :meth:`triage` is safe to call from several threads."""

    def __init__(
        self, path: Path | None = None, *, sidecar: Path | None = None, threads: int = 1, low_memory: bool = True
    ) -> None:
        """Load ``path`` (default: the shipped model) with its sidecar (default: ``<path>.json``).

        Raises:
            ModelError: missing or unloadable model or sidecar; ModelInputMismatch for a wrong input shape.
        """
        path = path or DEFAULT_MODEL
        if not path.is_file():
            raise ModelError(f"triage model not found at {path}; set retina.model.path")
        self.info = read_sidecar(path, sidecar)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if low_memory:
            # Measured with an EfficientNet-Lite0 (256 px, flip TTA) on one core (bench/retina_intake.py):
            # process RSS 191 MB instead of 304 MB, inference 75 ms instead of 59 ms. Memory patterns and the
            # arena keep every activation buffer of the largest run; the "all" level adds NCHWc copies of the
            # weights. The daemon's budget is 200 MB in all, so memory wins over ~15 ms.
            options.enable_mem_pattern = False
            options.enable_cpu_mem_arena = False
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            # Pre-packing keeps a second, GEMM-ready copy of the weights: 11 MB for the shipped three-network
            # ensemble, and the idle daemon of a fresh install (its libraries' pages read in) measured 201 MB
            # with it, 190 MB without. The same outputs; one inference 192 -> 241 ms on one core.
            options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
            raise ModelError(f"triage model {path.name} cannot be loaded: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"triage model {path.name} has {len(inputs)} inputs, expected 1 image input")
        self._input_name = inputs[0].name
        self.input_type: str = inputs[0].type
        """onnxruntime's element type of the input, e.g. ``tensor(float)``."""
        shape = list(inputs[0].shape)
        self.input_shape: list[int | str | None] = shape
        """The input's declared shape (symbolic axes as names)."""
        expected = [3, self.info.input_size, self.info.input_size]
        static = [d if isinstance(d, int) else None for d in shape[1:]]
        if len(shape) != 4 or any(d is not None and d != e for d, e in zip(static, expected, strict=True)):
            raise ModelInputMismatch(
                f"triage model {path.name} takes input shape {shape}, expected [N, 3, {self.info.input_size}, "
                f"{self.info.input_size}] (input_size from its description)",
                shape=list(shape),
                expected=["N", *expected],
            )
        outputs = [o.name for o in self._session.get_outputs()]
        if self.info.output_name not in outputs:
            raise ModelError(f"triage model {path.name} has no output {self.info.output_name!r} (has {outputs})")
        self._lock = threading.Lock()
        self._trim = _TRIM if low_memory else None
        _logger.info("triage model %s loaded (%s, %d thread(s))", path.name, self.info.model_version, threads)

    @property
    def model_version(self) -> str:
        """The loaded model's version string."""
        return self.info.model_version

    @property
    def input_name(self) -> str:
        """The name of the model's one image input."""
        return str(self._input_name)

    def probability(self, image_bgr: npt.NDArray[np.uint8]) -> float:
        """Referable-DR probability of one decoded BGR photo.

        Raises:
            ModelError: inference failed or gave something that is not a probability.
        """
        try:
            batch = prepare_input(image_bgr, self.info.input_size)
        except ValueError as exc:
            raise ModelError(f"image cannot be prepared for the model: {exc}") from exc
        try:
            with self._lock:  # one session, one caller at a time: memory stays flat on the Pi
                (out,) = self._session.run([self.info.output_name], {self._input_name: batch})
                if self._trim is not None:
                    self._trim()  # low_memory: give the freed activation buffers back to the OS
        except Exception as exc:  # onnxruntime's own exception types
            raise ModelError(f"triage model failed on an image: {exc}") from exc
        values = np.asarray(out, dtype=np.float64).ravel()
        if values.size < 1 or not math.isfinite(values[0]) or not 0.0 <= values[0] <= 1.0:
            raise ModelError(f"triage model output {self.info.output_name!r} is not a probability")
        return float(values[0])

    def triage(self, image_bgr: npt.NDArray[np.uint8], quality: QualityVerdict) -> TriageResult:
        """Advisory triage of one image given its quality verdict (ungradable when the gate failed)."""
        thresholds = dict(self.info.thresholds)
        if not quality.ok:
            return TriageResult(
                referable_probability=None,
                decision=TriageDecision.UNGRADABLE,
                model_version=self.info.model_version,
                thresholds=thresholds,
            )
        p = self.probability(image_bgr)
        decision = TriageDecision.REFER if p >= thresholds["refer"] else TriageDecision.RESCREEN
        return TriageResult(
            referable_probability=round(p, 4),
            decision=decision,
            model_version=self.info.model_version,
            thresholds=thresholds,
        )


def eye_decision(results: Iterable[TriageResult]) -> TriageDecision:
    """One eye's advisory decision from its images' results (the rule is :func:`gateway.records.eye_decision`)."""
    return records.eye_decision(r.decision for r in results)
