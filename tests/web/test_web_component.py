"""The pages inside the daemon (waitress in a thread) and the ``gateway user`` commands."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from web_harness import make_config

from gateway.cli import main as cli_main
from gateway.runtime import Runtime, open_runtime
from gateway.store import audit
from gateway.store import users as store_users
from gateway.web import component


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_components_follow_web_enabled(runtime: Runtime, tmp_path: Path) -> None:
    names = [c.name for c in component.components(runtime)]
    assert names == ["web", "web-sampler"]
    off = open_runtime(make_config(tmp_path / "off", web={"enabled": False}))
    try:
        assert component.components(off) == []
    finally:
        off.store.close()


def test_waitress_serves_and_stops_on_cancel(runtime: Runtime) -> None:
    web, sampler = component.components(runtime)
    assert isinstance(web, component.WebServer)

    async def scenario() -> None:
        task = asyncio.create_task(web.run())
        sampling = asyncio.create_task(sampler.run())
        while not web.started.is_set():
            await asyncio.sleep(0.01)
        assert web.healthy() and sampler.healthy()
        port = web.port
        assert port
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body) == {"ok": True, "level": "green", "problems": []}
        status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/status")
        assert status == 200  # the login page, after the redirect
        assert web.snapshot()["serving"] is True
        task.cancel()
        sampling.cancel()
        await asyncio.gather(task, sampling, return_exceptions=True)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass

    asyncio.run(scenario())
    assert not web.started.is_set()
    # The sampler took its first sample straight away.
    assert runtime.store.scalar("SELECT count(*) FROM web_queue_samples") == 1


def test_port_in_use_is_a_clear_component_error(runtime: Runtime, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rt = open_runtime(make_config(tmp_path / "busy", web={"port": port}))
        try:
            web = component.WebServer(rt)
            with pytest.raises(Exception, match=f"cannot listen on 127.0.0.1:{port}"):
                asyncio.run(web.run())
        finally:
            rt.store.close()


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\nsite_id = "chc-test"\ngateway_id = "gw-01"\nstate_dir = "{tmp_path / "state"}"\n'
        '[clock]\nsync_check = "assume_synced"\n'
    )
    return path


def test_user_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path)
    secret = tmp_path / "pw"
    secret.write_text("a long password\n")
    secret.chmod(0o600)
    assert cli_main(["user", "add", "lin", "--role", "nurse", "--password-file", str(secret), "-c", str(config)]) == 0
    assert cli_main(["user", "add", "lin", "--role", "nurse", "--password-file", str(secret), "-c", str(config)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["user", "disable", "lin", "-c", str(config)]) == 0
    assert cli_main(["user", "list", "-c", str(config)]) == 0
    listing = capsys.readouterr().out
    assert "lin" in listing and "nurse" in listing and "disabled" in listing
    secret.write_text("another long password\n")
    assert cli_main(["user", "passwd", "lin", "--password-file", str(secret), "-c", str(config)]) == 0
    assert cli_main(["user", "enable", "lin", "-c", str(config)]) == 0
    assert cli_main(["user", "disable", "nobody", "-c", str(config)]) == 2
    short = tmp_path / "short"
    short.write_text("short")
    short.chmod(0o600)
    assert cli_main(["user", "add", "x", "--role", "it", "--password-file", str(short), "-c", str(config)]) == 2
    assert "at least 8" in capsys.readouterr().err

    rt = open_runtime(make_config(tmp_path / "state"))
    try:
        row = store_users.get_user(rt.store, "lin")
        assert row is not None and not row.disabled and row.password_hash.startswith("scrypt:")
        assert "another long password" not in row.password_hash
        from werkzeug.security import check_password_hash

        assert check_password_hash(row.password_hash, "another long password")
        actions = [r.action for r in audit.recent(rt.store)]
        assert {"user_add", "user_disable", "user_passwd", "user_enable"} <= set(actions)
    finally:
        rt.store.close()


def test_password_file_must_be_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path)
    secret = tmp_path / "pw"
    secret.write_text("a long password\n")
    secret.chmod(0o644)
    assert cli_main(["user", "add", "lin", "--role", "it", "--password-file", str(secret), "-c", str(config)]) == 2
    assert "readable by others" in capsys.readouterr().err
