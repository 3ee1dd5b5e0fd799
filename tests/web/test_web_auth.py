"""Login, roles, CSRF, rate limit, cookie flags, session invalidation and the audit trail (Flask test client)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from web_harness import PASSWORD, csrf_of, login, make_config, post_form

from gateway.clock import FakeClock
from gateway.errors import ConfigError
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.store import audit
from gateway.store import users as store_users
from gateway.web.app import create_app, load_or_create_secret
from gateway.web.auth import hash_password

PAGES = {"/nurse": "nurse", "/technician": "technician", "/status": "it"}


@pytest.mark.parametrize("path", ["/nurse", "/technician", "/status", "/"])
def test_pages_without_login_go_to_the_login_page(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_json_without_login_is_401_not_a_redirect(client: FlaskClient) -> None:
    assert client.get("/api/status").status_code == 401
    assert client.get("/nurse/api/progress/abc").status_code == 401


@pytest.mark.parametrize("user", ["nina", "tom", "ivy", "ada"])
def test_each_role_reaches_its_pages_only(client: FlaskClient, runtime: Runtime, user: str) -> None:
    role = store_users.get_user(runtime.store, user).role  # type: ignore[union-attr]
    assert login(client, user).status_code == 302
    for path, needed in PAGES.items():
        code = client.get(path).status_code
        assert code == (200 if role in (needed, "admin") else 403), (user, path, code)
    refused = [r for r in audit.recent(runtime.store) if r.action == "access_refused"]
    assert len(refused) == (0 if role == "admin" else 2)


def test_login_lands_on_the_role_start_page(client: FlaskClient) -> None:
    assert login(client, "nina").headers["Location"] == "/nurse"
    client.post("/logout", data={"csrf_token": csrf_of(client, "/nurse")})
    assert login(client, "tom").headers["Location"] == "/technician"


def test_login_follows_only_local_next(client: FlaskClient) -> None:
    token = csrf_of(client)
    data = {"username": "ivy", "password": PASSWORD, "csrf_token": token}
    assert client.post("/login", data={**data, "next": "/status?x=1"}).headers["Location"] == "/status?x=1"
    client.post("/logout", data={"csrf_token": csrf_of(client, "/status")})
    token = csrf_of(client)
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = client.post("/login", data={**data, "csrf_token": token, "next": evil})
        assert response.headers["Location"] == "/status", evil


def test_wrong_password_and_unknown_user_are_refused_alike(client: FlaskClient, runtime: Runtime) -> None:
    first = login(client, "nina", "wrong password")
    second = login(client, "nobody", "wrong password")
    assert first.status_code == second.status_code == 401
    assert "Wrong user name or password." in first.get_data(as_text=True)
    assert client.get("/nurse").status_code == 302
    actions = [r.action for r in audit.recent(runtime.store)]
    assert actions.count("login_failed") == 2


def test_login_without_csrf_token_is_refused(client: FlaskClient) -> None:
    response = client.post("/login", data={"username": "nina", "password": PASSWORD})
    assert response.status_code == 400
    assert "expired" in response.get_data(as_text=True)
    assert client.get("/nurse").status_code == 302  # not logged in


def test_forms_of_a_logged_in_user_need_the_csrf_token(client: FlaskClient) -> None:
    login(client, "nina")
    assert client.post("/nurse", data={"patient_id": "P-1"}).status_code == 400
    assert client.post("/nurse", data={"patient_id": "P-1", "csrf_token": "forged"}).status_code == 400
    assert client.post("/logout").status_code == 400
    assert client.post("/lang", data={"lang": "zh"}).status_code == 400
    assert post_form(client, "/nurse", "/nurse", {"patient_id": "P-1"}).status_code == 200


def test_rate_limit_per_user_name_and_per_address(client: FlaskClient, runtime: Runtime, fake_clock: FakeClock) -> None:
    limit = runtime.config.web.login_attempts_per_minute
    for _ in range(limit):
        assert login(client, "nina", "guess").status_code == 401
    # Even the right password is not checked now, from this address or any other.
    blocked = login(client, "nina")
    assert blocked.status_code == 429
    assert "Too many attempts" in blocked.get_data(as_text=True)
    assert 1 <= int(blocked.headers["Retry-After"]) <= 61
    other = client.application.test_client()
    token = csrf_of(other)
    response = other.post(
        "/login",
        data={"username": "nina", "password": PASSWORD, "csrf_token": token},
        environ_base={"REMOTE_ADDR": "10.0.0.9"},
    )
    assert response.status_code == 429
    # Another user from the same address is not affected (the address has attempts left).
    assert login(client, "tom").status_code == 302
    client.post("/logout", data={"csrf_token": csrf_of(client, "/technician")})
    # After the minute the user may try again.
    fake_clock.advance(61)
    assert login(client, "nina").status_code == 302
    assert "login_rate_limited" in [r.action for r in audit.recent(runtime.store)]
    client.post("/logout", data={"csrf_token": csrf_of(client, "/nurse")})
    # Guessing at many names from one address stops at the address's limit.
    per_address = runtime.config.web.login_attempts_per_address_per_minute
    for i in range(per_address):  # good logins do not count
        assert login(client, f"someone{i}", "guess").status_code == 401
    assert login(client, "tom").status_code == 429


def test_session_cookie_flags(runtime: Runtime, tmp_path: Path) -> None:
    secure = make_config(tmp_path / "secure", web={"secure_cookies": True})
    app = create_app(GatewayServices(runtime), secure)
    client = app.test_client()
    # Over HTTPS (as behind the clinic's TLS), the cookie carries every flag.
    response = client.get("/login", base_url="https://gateway.local")
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_security_headers(client: FlaskClient) -> None:
    response = client.get("/login")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


def test_disabled_user_loses_session_and_cannot_log_in(client: FlaskClient, runtime: Runtime) -> None:
    login(client, "nina")
    assert client.get("/nurse").status_code == 200
    store_users.set_disabled(runtime.store, "nina")
    assert client.get("/nurse").status_code == 302
    assert login(client, "nina").status_code == 401


def test_password_change_ends_existing_sessions(client: FlaskClient, runtime: Runtime) -> None:
    login(client, "nina")
    store_users.set_password_hash(runtime.store, "nina", hash_password("a new password"))
    assert client.get("/nurse").status_code == 302
    assert login(client, "nina", "a new password").status_code == 302


def test_login_and_logout_are_audited(client: FlaskClient, runtime: Runtime) -> None:
    login(client, "ada")
    client.post("/logout", data={"csrf_token": csrf_of(client, "/status")})
    actions = [(r.actor, r.action) for r in audit.recent(runtime.store)]
    assert ("ada", "login") in actions and ("ada", "logout") in actions


def test_secret_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "web-secret"
    first = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_secret(path)


def test_app_uses_the_configured_secret_file(tmp_path: Path, fake_clock: FakeClock) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 40)
    secret.chmod(0o600)
    config = make_config(tmp_path / "state", web={"secret_key_file": str(secret)})
    rt = open_runtime(config, clock=fake_clock)
    try:
        app = create_app(GatewayServices(rt), config)
        assert app.secret_key == "s" * 40
        assert not (tmp_path / "state" / "web-secret").exists()
    finally:
        rt.store.close()


def test_user_names_and_roles_are_validated(runtime: Runtime) -> None:
    with pytest.raises(store_users.UserError, match="unknown role"):
        store_users.add_user(runtime.store, "x", "h", "doctor")
    with pytest.raises(store_users.UserError, match="already exists"):
        store_users.add_user(runtime.store, "nina", "h", "nurse")
    with pytest.raises(store_users.UserError, match="printable"):
        store_users.add_user(runtime.store, " spaced ", "h", "nurse")


def test_a_patient_id_typed_as_user_name_stays_out_of_the_log(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("DEBUG"):
        login(client, "440301-PAT-0099", "whatever")
        login(client, "nina", "wrong")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "440301-PAT-0099" not in text
    assert "an unknown user name" in text and "user nina" in text
