"""Publishable tiny triage models for the install/rollback tests: ONNX + sidecar (+ Ed25519 signature).

The models are the tiny ``onnx.helper`` graphs of :func:`support.retina.build_tiny_model` (TESTING.md §6); the
sidecar is completed the way ``models/triage/export.py`` writes the real one (SHA-256, input contract,
validation summary). Keys are made here with ``cryptography``; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support.retina import build_tiny_model

SIZE = 32
VALIDATION = {
    "method": "tiny test model",
    "n_images": 10,
    "n_patients": 5,
    "auc": 0.9,
    "auc_ci95": [0.8, 0.99],
    "refer": {"sensitivity": 0.92, "specificity": 0.8},
}


def publish(folder: Path, version: str, *, size: int = SIZE, input_shape: list[Any] | None = None,
            key: Ed25519PrivateKey | None = None, **sidecar: Any) -> Path:  # fmt: skip
    """Write ``<folder>/<version>.onnx`` and its complete sidecar (signed with ``key`` when given)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = build_tiny_model(folder / f"{version}.onnx", input_size=size, version=version, input_shape=input_shape)
    doc = json.loads(path.with_suffix(".json").read_text())
    doc.update(
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        input="image",
        input_contract={"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32"},
        validation=VALIDATION,
    )
    doc.update(sidecar)
    path.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    if key is not None:
        sign(path.with_suffix(".json"), key)
    return path


def sign(sidecar: Path, key: Ed25519PrivateKey) -> Path:
    """Detached raw Ed25519 signature over the sidecar's bytes, as ``openssl pkeyutl -sign -rawin`` writes it."""
    sig = sidecar.with_name(sidecar.name + ".sig")
    sig.write_bytes(key.sign(sidecar.read_bytes()))
    return sig


def public_pem(key: Ed25519PrivateKey, path: Path) -> Path:
    """Write the key's public half as PEM (what IT configures as ``retina.model.signing_key_file``)."""
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path
