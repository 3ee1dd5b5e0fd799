"""Reusable checks for every page in a real headless Chromium (Playwright driving Debian's chromium).

For the desk pages too: import what you need and call it on a Playwright ``Page``.

- :func:`launch` (context manager): one browser for a module or session, offline, no downloads.
- :func:`open_page`: a new context at one of :data:`WIDTHS` and in one of :data:`LANGUAGES`, CSP kept.
- :func:`login`: through the login form.
- :func:`check_page`: everything a page must pass, in one call (what the tests of every page do):
  :func:`screenshot` (saved under :data:`SHOTS`, path printed), :func:`assert_fits_width` (no horizontal page
  scroll), :func:`assert_accessible` (axe-core, zero serious or critical violations) and, on a Chinese page,
  :func:`assert_no_english` (the walker below).
- :func:`english_words`: the walker itself, if a test wants the list.
- :func:`assert_buttons_reachable`: at phone width, every button lies inside the window.
- :func:`wait_for` : poll a condition in the test (the pages' CSP forbids Playwright's ``wait_for_function``).

No fixed sleeps anywhere: the checks run on what the page shows once the test has waited for it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from babel.messages.pofile import read_po

from gateway.web import i18n

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
]  # fmt: skip
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
"""Where every screenshot goes (git-ignored): ``<page>-<lang>-<width>.png``."""
WIDTHS = {"desktop": 1280, "phone": 390}
"""The widths every page is checked at: a clinic PC and a phone in the corridor (iPhone 12-15: 390 px)."""
LANGUAGES = {"en": "en-GB", "zh": "zh-CN"}
"""Page language -> the browser locale (Accept-Language) that selects it."""
DEFAULT_TIMEOUT_MS = 30_000
"""How long a locator or ``expect`` waits (a bound for a broken page on a loaded runner, never a measured time)."""


@contextmanager
def launch() -> Iterator[Any]:
    """One headless Chromium (the Debian package; nothing downloaded), closed at the end."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=DEFAULT_TIMEOUT_MS)  # expect() has its own 5 s default, apart from the context's
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Any, base_url: str, *, width: int, lang: str) -> Any:
    """A page in a fresh context (own cookies) ``width`` px wide, asking for ``lang`` ("en" or "zh")."""
    context = browser.new_context(
        base_url=base_url,
        viewport={"width": width, "height": 900 if width > 600 else 844},
        locale=LANGUAGES[lang],
        extra_http_headers={"Accept-Language": LANGUAGES[lang]},
    )
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    return context.new_page()


def login(page: Any, user: str, password: str) -> None:
    """Log in through the form (the page ends on the user's start page)."""
    page.goto("/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#login")
    page.wait_for_load_state()


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds (a wedge detector, not a speed check)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


# -- screenshots ------------------------------------------------------------------------------------------------
def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as ``SHOTS/<name>.png`` and print its path (the test run's artefacts)."""
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


# -- width ------------------------------------------------------------------------------------------------------
_WIDEST = """() => {
  const limit = window.innerWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width && r.right > limit + 1) {
      const cls = typeof el.className === 'string' && el.className.trim() ? '.' + el.className.trim() : '';
      wide.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + cls + ' right=' + Math.round(r.right));
    }
  }
  return {scroll: document.documentElement.scrollWidth, inner: limit, wide: wide.slice(0, 8)};
}"""


def assert_fits_width(page: Any) -> None:
    """No horizontal page scroll: ``document.documentElement.scrollWidth <= innerWidth`` (naming what sticks out)."""
    found = page.evaluate(_WIDEST)
    assert found["scroll"] <= found["inner"], (
        f"{page.url} is {found['scroll']} px wide in a {found['inner']} px window; too wide: {found['wide']}"
    )


# -- accessibility ----------------------------------------------------------------------------------------------
@cache
def _axe() -> Any:
    from axe_playwright_python.sync_playwright import Axe

    return Axe()  # axe-core bundled in the package: injected into the page, no network


def assert_accessible(page: Any, impacts: Iterable[str] = ("serious", "critical")) -> None:
    """Run axe-core (WCAG 2.x A/AA rules, colour contrast included) on the page; fail on any violation of
    ``impacts``, listing each rule with its first offending elements."""
    results = _axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21aa"]}})
    bad = [v for v in results.response["violations"] if v["impact"] in set(impacts)]
    report = [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes'][:4]]}" for v in bad]
    assert not bad, f"{page.url}: accessibility violations: {report}"


# -- English on a Chinese page ----------------------------------------------------------------------------------
_RENDERED_TEXT = """() => {
  // What a reader of the page sees: visible text and the texts of titles, labels, placeholders and
  // buttons, leaving out what the page marks as not to be translated (translate="no": ids, names,
  // versions, commands), what it marks as another language (lang="en": the switch to English), code
  // elements, scripts and styles.
  const skip = (el) => el.closest('[translate="no"], code, script, style, noscript, [lang]:not([lang^="zh"])');
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || skip(el) || !node.textContent.trim()) continue;
    if (!el.getClientRects().length) continue;  // not rendered (hidden, display: none)
    out.push(node.textContent.trim());
  }
  for (const el of document.querySelectorAll('[title], [aria-label], [placeholder], [alt], input[type=submit]')) {
    if (skip(el)) continue;
    for (const a of ['title', 'aria-label', 'placeholder', 'alt', 'value']) {
      if (a === 'value' && el.type !== 'submit') continue;
      const v = el.getAttribute(a);
      if (v && v.trim()) out.push(v.trim());
    }
  }
  out.push(document.title);
  return out;
}"""
ALLOWED = frozenset(
    {"mmol", "mg", "dl", "gb", "mb", "kb", "utc", "od", "os", "tls", "csv", "json", "id", "ip", "png", "jpeg",
     "sd", "cv", "gmi", "hba1c"}
)  # fmt: skip
"""Units and abbreviations that stay as they are in Chinese pages (SD, CV, GMI, HbA1c: as Chinese clinical
texts write them)."""
_ID_TOKEN = re.compile(r"[0-9_/:.@#=+<>]|\w-\w")
_PUNCTUATION = "()[]{}.,;:!?\"'\u201c\u201d\u2018\u2019\u2026\u00b7\u2013\u2014"
_WORD = re.compile(r"[A-Za-z][A-Za-z']+")
_CAMEL = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z0-9]+)+$")
_EN_DURATION = re.compile(r"^\d+(?:d|h|m|min|mins|s|sec|secs)$")
"""A number glued to an English time unit (``2m``, ``16s``): the issue's "2m 16s" on a Chinese page."""


@cache
def english_vocabulary() -> frozenset[str]:
    """The English UI words: every word of every msgid in the catalogue, and every code word the core may send
    (states, kinds, components, events: the keys of the word tables in :mod:`gateway.web.i18n`)."""
    with (i18n.TRANSLATIONS_DIR / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh)
    words: set[str] = set()
    for message in catalog:
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        for text in ids:
            words.update(w.lower() for w in _WORD.findall(re.sub(r"%\(\w+\)\w", " ", text or "")))
    for table in (i18n.LINK_STATE_NAMES, i18n.DEVICE_STATE_NAMES, i18n.COMPONENT_NAMES, i18n.OUTBOX_KIND_NAMES,
                  i18n.EVENT_TEXT, i18n.PROBLEM_TEXT, i18n.STATE_NAMES, i18n.TRANSPORT_NAMES):  # fmt: skip
        for code in table:
            words.update(w.lower() for w in re.split(r"[_\- ]", code) if len(w) > 1)
    return frozenset(words - ALLOWED)


def english_words(page: Any) -> list[str]:
    """English UI words left on the rendered page, each with the text it was found in.

    The rule: split what a reader sees (:data:`_RENDERED_TEXT` says what counts) into tokens. A token with a
    digit, ``_``, ``/``, ``:``, ``.`` and the like, or a hyphen between letters, is an id, a code or a number
    and may stay (``330106-GLU-8812``, ``serial:TM0042``, ``Asia/Shanghai``, ``UTC+8``). A remaining word is
    English UI text when it is one of the words of the catalogue's msgids or of the core's codes
    (:func:`english_vocabulary`: an untranslated text or a raw state leaked), or a CamelCase word (a raw
    exception type such as ``DeviceNotFound``), unless it is a unit or abbreviation in :data:`ALLOWED`.
    A number glued to an English time unit (``2m``, ``16s``: :data:`_EN_DURATION`) is an untranslated duration.
    Data that is not UI text (names, ids, versions, commands) is marked ``translate="no"`` by the page.
    """
    vocabulary = english_vocabulary()
    found: list[str] = []
    for text in page.evaluate(_RENDERED_TEXT):
        for token in text.split():
            if _EN_DURATION.match(token.strip(_PUNCTUATION)):
                found.append(f"{token!r} in {text[:80]!r}")  # "2m 16s": a duration left in English
                continue
            if _ID_TOKEN.search(token.strip(_PUNCTUATION)):
                continue
            for word in _WORD.findall(token):
                lower = word.lower()
                if lower in ALLOWED:
                    continue
                if lower in vocabulary or _CAMEL.match(word):
                    found.append(f"{word!r} in {text[:80]!r}")
    return found


def assert_no_english(page: Any) -> None:
    """A Chinese page shows no English UI words (see :func:`english_words` for the rule)."""
    words = english_words(page)
    assert not words, f"{page.url}: English on a Chinese page: {words[:12]}"


# -- reach ------------------------------------------------------------------------------------------------------
def assert_buttons_reachable(page: Any, width: int) -> None:
    """Every visible button of the page's main part lies inside the window (no action needs a sideways scroll)."""
    for box in page.locator("main button:visible").evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.right]; })"
    ):
        assert box[0] >= 0 and box[1] <= width, f"{page.url}: a button sticks out: {box}"


# -- all of it --------------------------------------------------------------------------------------------------
def check_page(page: Any, name: str, *, lang: str, width: int) -> Path:
    """Screenshot, width, accessibility and (Chinese) language checks of the page as it is now; returns the
    screenshot's path. Call it once the page shows what is to be checked."""
    shot = screenshot(page, f"{name}-{lang}-{width}")
    assert_fits_width(page)
    assert_accessible(page)
    if lang == "zh":
        assert_no_english(page)
    return shot
