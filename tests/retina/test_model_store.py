"""``gateway model install | rollback | list``: checked, signed, atomic model switches; the running one stays.

Real onnxruntime sessions on tiny ``onnx.helper`` models, real files under a temporary state directory,
real Ed25519 keys; the CLI runs through ``gateway.cli.main`` with a real config file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.model_artifacts import public_pem, publish, sign

from gateway.cli import main
from gateway.errors import ModelRefused, RefusalReason
from gateway.retina.model_store import ACTIVE, ActiveModel, Candidate, ModelStore


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "state" / "models")


def install(store: ModelStore, path: Path) -> str:
    return store.install(Candidate.beside(path)).model_version


def test_install_makes_it_active_with_its_record(tmp_path: Path, store: ModelStore) -> None:
    entry = store.install(Candidate.beside(publish(tmp_path / "pub", "m-1")))
    assert entry.active and entry.model_version == "m-1" and entry.installed_at
    assert entry.validation["auc"] == 0.9 and not entry.signature_verified
    active = store.active_model_path()
    assert active is not None and active.read_bytes() == (tmp_path / "pub" / "m-1.onnx").read_bytes()
    assert os.path.islink(store.root / ACTIVE) and not os.path.isabs(os.readlink(store.root / ACTIVE))
    assert [e.model_version for e in store.installed()] == ["m-1"]


def test_tampered_file_is_refused_and_the_running_model_keeps_serving(tmp_path: Path, store: ModelStore) -> None:
    install(store, publish(tmp_path / "pub", "good"))
    running = ActiveModel(store, None)
    assert running.load() is not None and running.model is not None
    bad = publish(tmp_path / "pub", "evil")
    data = bytearray(bad.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the weights: the sidecar's SHA-256 no longer matches
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelRefused) as refused:
        store.install(Candidate.beside(bad))
    assert refused.value.reason is RefusalReason.SHA256_MISMATCH
    assert running.refresh() is False and running.model.model_version == "good"
    active = store.active()
    assert active is not None and active.model_version == "good"
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []  # no staging left behind


@pytest.mark.parametrize(
    ("shape", "sidecar"),
    [
        (["N", 3, 32, 48], {}),  # not square: not what the preprocessing makes
        (["N", 3, 64, 64], {"input_size": 32}),  # the file and its sidecar disagree on the size
        (None, {"input_contract": {"name": "pixels", "shape": ["batch", 3, 32, 32], "dtype": "float32"}}),
        (None, {"input_contract": {"name": "image", "shape": ["batch", 3, 32, 32], "dtype": "float16"}}),
    ],
)
def test_wrong_input_contract_is_refused(tmp_path: Path, store: ModelStore, shape: list | None, sidecar: dict) -> None:
    install(store, publish(tmp_path / "pub", "good"))
    bad = publish(tmp_path / "bad", "wrong-input", input_shape=shape, **sidecar)
    with pytest.raises(ModelRefused) as refused:
        store.install(Candidate.beside(bad))
    assert refused.value.reason is RefusalReason.INPUT_CONTRACT
    assert store.active() is not None and store.active().model_version == "good"


def test_sidecar_without_validation_summary_is_refused(tmp_path: Path, store: ModelStore) -> None:
    path = publish(tmp_path / "pub", "m")
    doc = json.loads(path.with_suffix(".json").read_text())
    del doc["validation"]
    path.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(ModelRefused) as refused:
        store.install(Candidate.beside(path))
    assert refused.value.reason is RefusalReason.SIDECAR_INVALID and "validation" in refused.value.detail
    assert store.active() is None


def test_signatures_with_a_configured_key(tmp_path: Path) -> None:
    it_key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    store = ModelStore(tmp_path / "models", signing_key=public_pem(it_key, tmp_path / "it.pub"))
    signed = store.install(Candidate.beside(publish(tmp_path / "a", "signed", key=it_key)))
    assert signed.signature_verified
    forged = publish(tmp_path / "b", "forged", key=other)
    unsigned = publish(tmp_path / "c", "unsigned")
    altered = publish(tmp_path / "d", "altered", key=it_key)
    doc = json.loads(altered.with_suffix(".json").read_text())
    doc["thresholds"]["refer"] = 0.99  # a signed sidecar edited afterwards
    altered.with_suffix(".json").write_text(json.dumps(doc))
    for path, reason in ((forged, RefusalReason.SIGNATURE_INVALID), (unsigned, RefusalReason.SIGNATURE_MISSING),
                         (altered, RefusalReason.SIGNATURE_INVALID)):  # fmt: skip
        with pytest.raises(ModelRefused) as refused:
            store.install(Candidate.beside(path))
        assert refused.value.reason is reason
    assert store.active() is not None and store.active().model_version == "signed"


def test_rollback_restores_the_previous_model_and_the_daemon_follows(tmp_path: Path, store: ModelStore) -> None:
    with pytest.raises(ModelRefused) as refused:
        store.rollback()
    assert refused.value.reason is RefusalReason.NO_PREVIOUS
    install(store, publish(tmp_path / "pub", "v1"))
    running = ActiveModel(store, None)
    running.load()
    install(store, publish(tmp_path / "pub", "v2"))
    assert running.refresh() is True and running.model is not None and running.model.model_version == "v2"
    assert store.rollback().model_version == "v1"
    assert running.refresh() is True and running.model.model_version == "v1"
    assert {e.model_version: (e.active, e.previous) for e in store.installed()} == {
        "v1": (True, False),
        "v2": (False, True),
    }
    install(store, publish(tmp_path / "pub", "v3"))  # only the active and the previous model are kept
    assert sorted(e.model_version for e in store.installed()) == ["v1", "v3"]


def test_a_pinned_path_is_not_switched(tmp_path: Path, store: ModelStore) -> None:
    pinned = publish(tmp_path / "pub", "pinned")
    running = ActiveModel(store, pinned)
    running.load()
    install(store, publish(tmp_path / "pub", "installed"))
    assert running.refresh() is False and running.model is not None and running.model.model_version == "pinned"


def _config(tmp_path: Path, key: Path | None = None) -> Path:
    conf = tmp_path / "gateway.toml"
    lines = ['[gateway]\nsite_id = "chc-test"\ngateway_id = "gw-test"', f'state_dir = "{tmp_path / "state"}"',
             "[web]\nenabled = false", "[retina.model]"]  # fmt: skip
    if key is not None:
        lines.append(f'signing_key_file = "{key}"')
    conf.write_text("\n".join(lines) + "\n")
    return conf


def test_cli_install_list_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = Ed25519PrivateKey.generate()
    conf = str(_config(tmp_path, public_pem(key, tmp_path / "it.pub")))
    first = publish(tmp_path / "pub", "cli-1", key=key)
    second = publish(tmp_path / "pub", "cli-2")  # unsigned
    assert main(["model", "install", str(first), "-c", conf]) == 0
    assert main(["model", "install", str(second), "-c", conf]) == 1
    err = capsys.readouterr().err
    assert "signature_missing" in err and "active model is unchanged" in err
    sign(second.with_suffix(".json"), key)
    assert main(["model", "install", str(second), "-c", conf]) == 0
    capsys.readouterr()
    assert main(["model", "list", "--json", "-c", conf]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["model_version"], e["active"], e["signature_verified"]) for e in listed] == [
        ("cli-2", True, True),
        ("cli-1", False, True),
    ]
    assert main(["model", "rollback", "-c", conf]) == 0
    assert "cli-1" in capsys.readouterr().out
    assert main(["model", "list", "-c", conf]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("active   cli-1") and "AUC 0.900 (0.800-0.990)" in out
