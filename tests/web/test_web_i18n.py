"""Language: negotiation from the browser, the switch, the per-user choice, and complete catalogs."""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po
from flask.testing import FlaskClient
from web_harness import csrf_of, login

from gateway.runtime import Runtime
from gateway.store import users as store_users
from gateway.web import i18n

CATALOG = i18n.TRANSLATIONS_DIR / "zh_Hans_CN" / "LC_MESSAGES"
WEB_DIR = Path(i18n.__file__).parent


def test_english_by_default(client: FlaskClient) -> None:
    html = client.get("/login").get_data(as_text=True)
    assert '<html lang="en" ' in html and "Log in" in html


def test_chinese_from_accept_language(client: FlaskClient) -> None:
    for header in ("zh-CN,zh;q=0.9,en;q=0.8", "zh", "zh-Hans-CN"):
        html = client.get("/login", headers={"Accept-Language": header}).get_data(as_text=True)
        assert '<html lang="zh-Hans" ' in html, header
        assert "登录" in html and "用户名" in html, header


def test_browser_preferring_english_gets_english(client: FlaskClient) -> None:
    html = client.get("/login", headers={"Accept-Language": "en-GB,zh;q=0.5"}).get_data(as_text=True)
    assert "User name" in html


def test_switch_without_login_lasts_for_the_browser_session(client: FlaskClient) -> None:
    response = client.post("/lang", data={"lang": "zh", "next": "/login", "csrf_token": csrf_of(client)})
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    html = client.get("/login", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "用户名" in html


def test_switch_refuses_unknown_language_and_foreign_next(client: FlaskClient) -> None:
    token = csrf_of(client)
    assert client.post("/lang", data={"lang": "fr", "csrf_token": token}).status_code == 400
    response = client.post("/lang", data={"lang": "en", "next": "https://evil.example/", "csrf_token": token})
    assert response.headers["Location"] == "/"


def test_choice_is_saved_per_user(client: FlaskClient, runtime: Runtime) -> None:
    login(client, "nina")
    client.post("/lang", data={"lang": "zh", "next": "/nurse", "csrf_token": csrf_of(client, "/nurse")})
    assert store_users.get_user(runtime.store, "nina").language == "zh"  # type: ignore[union-attr]
    # A fresh browser that prefers English still gets the nurse's Chinese once she logs in.
    other = client.application.test_client()
    other.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"
    login(other, "nina")
    html = other.get("/nurse").get_data(as_text=True)
    assert "血糖仪数据下载" in html and "护士" in html


def test_catalog_translates_every_page_text() -> None:
    with (CATALOG / "messages.po").open("rb") as fh:
        catalog = read_po(fh)
    extracted = {
        message[2] if isinstance(message[2], str) else message[2][0]
        for message in extract_from_dir(
            str(WEB_DIR),
            method_map=[("**.py", "python"), ("templates/**.html", "jinja2")],
            keywords={"_": None, "gettext": None, "_l": None, "lazy_gettext": None},
        )
    }
    missing = sorted(m for m in extracted if not (catalog.get(m) and catalog.get(m).string))
    assert not missing, f"untranslated (see gateway/web/i18n.py for the pybabel steps): {missing}"
    assert not [m.id for m in catalog if m.id and m.fuzzy], "fuzzy entries left in messages.po"


def test_compiled_catalog_matches_the_po() -> None:
    with (CATALOG / "messages.po").open("rb") as fh:
        po = read_po(fh)
    with (CATALOG / "messages.mo").open("rb") as fh:
        mo = read_mo(fh)
    assert {m.id: m.string for m in po if m.id} == {m.id: m.string for m in mo if m.id}, (
        "messages.mo is stale: run pybabel compile -d gateway/web/translations"
    )
    buffer = BytesIO()
    write_mo(buffer, po)
    assert buffer.getvalue()


def test_the_triage_model_is_moxing_never_xinghao() -> None:
    """Issue 14: 型号 (a device's model number) was shown for the triage model, where 模型 is meant: the
    technician's result printed the model's version after ``_("Model")`` (型号). Wherever a page shows the
    triage model's version, its label is a text that says 模型; 型号 is left for a meter's model."""
    with (CATALOG / "messages.po").open("rb") as fh:
        catalog = read_po(fh)
    zh = {m.id: m.string for m in catalog if isinstance(m.id, str) and m.id}
    for msgid, text in zh.items():
        if "triage model" in msgid.lower() or "the model" in msgid.lower():
            assert "模型" in text and "型号" not in text, (msgid, text)
    label = re.compile(r"""_\(\s*["']([^"']+)["']\s*\)""")
    for template in sorted((WEB_DIR / "templates").glob("*.html")):
        source = template.read_text(encoding="utf-8")
        for match in re.finditer(r"model_version", source):
            before = label.findall(source[max(0, match.start() - 160) : match.start()])
            assert before, f"{template.name}: the model's version without a label"
            assert "模型" in zh[before[-1]], f"{template.name}: {before[-1]!r} -> {zh[before[-1]]!r}"
