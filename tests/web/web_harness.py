"""Helpers for the page tests: config, users, forms with CSRF, and an asyncio core in a thread.

The core thread runs what the daemon would: components consuming DeskBus requests. For meter downloads
a small consumer drives the real :class:`~gateway.meters.session.DownloadSession` over a scripted meter
driver (the meter engineers' emulators cover the transports; here the desk flow is under test).
"""

from __future__ import annotations

import asyncio
import http.client
import re
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from gateway.config import GatewayConfig, parse_config
from gateway.desk import MeterProgress, SerialSyncRequest
from gateway.meters.session import DownloadSession
from gateway.records import Meal, MeterInfo, MeterRecord, Unit
from gateway.runtime import Runtime
from gateway.store import users as store_users
from gateway.web.component import WebServer

PASSWORD = "correct horse battery"
_HASH: dict[str, str] = {}
USERS = {"nina": "nurse", "tom": "technician", "ivy": "it", "ada": "admin"}
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def password_hash() -> str:
    """One scrypt hash for every test user (hashing is deliberately slow)."""
    if "h" not in _HASH:
        _HASH["h"] = generate_password_hash(PASSWORD)
    return _HASH["h"]


def make_config(state_dir: Path, **sections: dict[str, Any]) -> GatewayConfig:
    """A test config: loopback pages on any port, plain HTTP cookies, synchronised clock."""
    data: dict[str, Any] = {
        "gateway": {"site_id": "chc-test", "gateway_id": "gw-01", "state_dir": str(state_dir)},
        "clock": {"sync_check": "assume_synced"},
        "web": {"port": 0, "secure_cookies": False, "login_attempts_per_minute": 5},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return parse_config(data)


def add_users(runtime: Runtime) -> None:
    for name, role in USERS.items():
        store_users.add_user(runtime.store, name, password_hash(), role)


def csrf_of(client: FlaskClient, path: str = "/login") -> str:
    """The CSRF token of the form on ``path``."""
    page = client.get(path)
    match = CSRF_RE.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path} ({page.status_code})"
    return match.group(1)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> Any:
    """Log in through the form (with its CSRF token); returns the response."""
    token = csrf_of(client)
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token})


def post_form(client: FlaskClient, page: str, action: str, data: dict[str, str]) -> Any:
    """Submit a form found on ``page`` (its CSRF token included)."""
    return client.post(action, data={**data, "csrf_token": csrf_of(client, page)})


# -- an asyncio core in a thread -------------------------------------------------------------------
class CoreThread:
    """An event loop in a thread, bound to the runtime's DeskBus (what the daemon's loop does)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-core", daemon=True)
        self.tasks: list[asyncio.Task[Any]] = []
        runtime.desk.bind(self.loop)
        self.thread.start()

    def start(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        async def create() -> None:
            self.tasks.append(asyncio.create_task(factory()))

        asyncio.run_coroutine_threadsafe(create(), self.loop).result(5)

    def stop(self) -> None:
        async def cancel() -> None:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@contextmanager
def serving(runtime: Runtime) -> Iterator[WebServer]:
    """The daemon's own web component (waitress, its settings) serving ``runtime`` on a free loopback port."""
    core = CoreThread(runtime)
    web = WebServer(runtime)
    core.start(web.run)
    try:
        assert web.started.wait(30), "the pages did not start"
        yield web
    finally:
        core.stop()


class HttpBrowser:
    """A minimal browser over real HTTP(S): keeps the session cookie, sends the page it came from as the
    Referer (as browsers do; CSRF over HTTPS checks it), finds CSRF tokens, and can pose as another client
    address (any 127.x.y.z is a loopback source address on Linux)."""

    def __init__(
        self,
        port: int,
        *,
        source: str = "127.0.0.1",
        cookie: str | None = None,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.port = port
        self.source = source
        self.cookie = cookie
        self.tls = tls
        self.host = host
        self.origin = f"{'https' if tls else 'http'}://{host}:{port}"
        self.referer: str | None = None
        self.headers: http.client.HTTPMessage | None = None
        """The headers of the last answer."""
        self.tls_version: str | None = None

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """One request; (status, body). A new session cookie from the answer replaces the old one."""
        conn: http.client.HTTPConnection
        if self.tls is not None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=120, source_address=(self.source, 0), context=self.tls
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=120, source_address=(self.source, 0))
        sent = dict(headers or {})
        if self.cookie:
            sent["Cookie"] = self.cookie
        if self.referer:
            sent.setdefault("Referer", self.referer)
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=sent)
            if isinstance(conn.sock, ssl.SSLSocket):
                self.tls_version = conn.sock.version()
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            self.headers = response.headers
            for value in response.headers.get_all("Set-Cookie") or []:
                if value.startswith("cg_session="):
                    self.cookie = value.split(";", 1)[0]
            if method == "GET":
                self.referer = self.origin + path
            return response.status, text
        finally:
            conn.close()

    def csrf(self, path: str = "/login") -> str:
        status, body = self.request("GET", path)
        match = CSRF_RE.search(body)
        assert match, f"no CSRF token on {path} ({status})"
        return match.group(1)

    def login(self, username: str, password: str = PASSWORD, *, barrier: threading.Barrier | None = None) -> int:
        """Fetch the login form, wait at ``barrier`` (all threads post at once), post it; the status."""
        token = self.csrf()
        if barrier is not None:
            barrier.wait()
        return self.request("POST", "/login", {"username": username, "password": password, "csrf_token": token})[0]

    def logout(self, page: str) -> int:
        return self.request("POST", "/logout", {"csrf_token": self.csrf(page)})[0]


class ScriptedMeter:
    """A meter driver that yields scripted records with a short pause between them (progress shows)."""

    newest_first = False

    def __init__(self, meter_id: str, records: list[MeterRecord], pause_s: float = 0.05) -> None:
        serial = meter_id.rsplit(":", maxsplit=1)[-1]
        self.info = MeterInfo(
            meter_id=meter_id, family="scripted", transport="serial", serial=serial, model="Test Meter 1"
        )
        self.records_list = records
        self.pause_s = pause_s
        self.closed = False

    async def read_info(self) -> MeterInfo:
        return self.info

    async def read_clock(self) -> datetime | None:
        return datetime(2026, 11, 23, 10, 0)

    async def count_records(self, since_sequence: int | None) -> int | None:
        return len([r for r in self.records_list if since_sequence is None or (r.sequence or 0) > since_sequence])

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        for record in self.records_list:
            if since_sequence is not None and (record.sequence or 0) <= since_sequence:
                continue
            await asyncio.sleep(self.pause_s)
            yield record

    async def set_clock(self, meter_time: datetime) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


def scripted_records() -> list[MeterRecord]:
    """Six readings: one hypo (3.2), one hyper (15.1 mmol/L, given in mg/dL), meal markers."""
    base = datetime(2026, 11, 22, 7, 30)
    values = [
        (5.6, Unit.MMOL_L, Meal.FASTING),
        (3.2, Unit.MMOL_L, Meal.BEFORE_MEAL),
        (272.0, Unit.MG_DL, Meal.AFTER_MEAL),
        (7.8, Unit.MMOL_L, None),
        (6.1, Unit.MMOL_L, Meal.BEDTIME),
        (9.0, Unit.MMOL_L, Meal.CASUAL),
    ]
    return [
        MeterRecord(sequence=i + 1, meter_time=base + timedelta(hours=3 * i), value=v, unit=u, meal=m)
        for i, (v, u, m) in enumerate(values)
    ]


async def serve_meter_sync(runtime: Runtime, driver_for: Callable[[str], ScriptedMeter]) -> None:
    """What the meter source does with serial desk requests: one DownloadSession each, progress on the board."""
    queue = runtime.desk.queue(SerialSyncRequest)
    while True:
        request = await queue.get()

        def progress(p: Any, target: str = request.target) -> None:
            runtime.progress.put(p.session_id, MeterProgress(state=p.state, done=p.done, total=p.total,
                                                             meter_id=p.meter_id, target=target))  # fmt: skip

        session = DownloadSession(
            runtime.store,
            runtime.clock,
            driver_for(request.target),
            tz=ZoneInfo(runtime.config.gateway.timezone),
            patient_id=request.patient_id,
            operator=request.operator,
            session_id=request.request_id,
            on_progress=progress,
        )
        result = await session.run()
        final = runtime.progress.get(request.request_id)
        assert isinstance(final, MeterProgress)
        runtime.progress.put(request.request_id, replace(final, added=result.added, duplicates=result.duplicates))


class RetinaStub:
    """A retina component as the status page and the health model see it: its snapshot's ``model`` (what the
    real one reports: ``model_version``, ``thresholds``, ...) and ``model_problem()`` (None when loaded)."""

    name = "retina"

    def __init__(self, model: dict[str, Any] | None = None, problem: str | None = None) -> None:
        self.model = model
        self.problem = problem

    async def run(self) -> None:  # pragma: no cover - never started
        return None

    def healthy(self) -> bool:
        return True

    def snapshot(self) -> dict[str, Any]:
        return {"model": self.model}

    def model_problem(self) -> str | None:
        return self.problem
