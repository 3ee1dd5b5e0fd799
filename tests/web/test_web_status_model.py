"""The status page names the active triage model, when it was installed and its validation summary."""

from __future__ import annotations

from pathlib import Path

from flask.testing import FlaskClient
from support.model_artifacts import publish
from web_harness import login

from gateway.retina.model_store import Candidate, ModelStore, model_root
from gateway.retina.service import RetinaService
from gateway.runtime import Runtime


def test_status_shows_the_installed_model(tmp_path: Path, client: FlaskClient, runtime: Runtime) -> None:
    store = ModelStore(model_root(runtime.config.gateway.state_dir))
    installed = store.install(Candidate.beside(publish(tmp_path / "pub", "site-model-7")))
    runtime.components.append(RetinaService(runtime))
    login(client, "ivy")
    model = client.get("/api/status").get_json()["model"]
    assert model["model_version"] == "site-model-7"
    assert model["installed_at"] == installed.installed_at
    assert model["validation_text"] == "AUC 0.900 (0.800-0.990); refer: sensitivity 0.920, specificity 0.800; 10 images"
    html = client.get("/status").get_data(as_text=True)
    assert 'data-field="model.installed_at"' in html and 'data-field="model.validation_text"' in html
