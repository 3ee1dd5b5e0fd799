"""Config files as clinics have them: saved by Windows editors, with secrets whose mode or owner is wrong.

Through ``load_config`` and the real CLI (``gateway config check FILE`` and ``gateway run`` in subprocesses):
a GBK comment is one line naming the file and the byte offset, never a traceback; a UTF-8 byte-order mark is
read; a world-readable web secret or one the service user cannot read is reported, never "OK".
"""

from __future__ import annotations

import codecs
import subprocess
import sys
from pathlib import Path

import pytest
from support.unprivileged import ServiceUser

from gateway.config import load_config
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
# "# 诊所网关" (clinic gateway) in GBK, as Notepad on a Chinese Windows saves it: not UTF-8.
GBK_COMMENT = "# 诊所网关\n".encode("gbk")


def config_text(state: Path, *, web: bool = True) -> str:
    return (
        f'[gateway]\nsite_id = "chc-1"\ngateway_id = "gw-1"\nstate_dir = "{state}"\n'
        f"[web]\nenabled = {'true' if web else 'false'}\n"
    )


def gateway(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_gbk_comment_is_one_clear_problem_with_offset_line_and_column(tmp_path: Path) -> None:
    head = config_text(tmp_path / "state").encode()
    path = tmp_path / "gateway.toml"
    path.write_bytes(head + b"  " + GBK_COMMENT)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.source == str(path)
    [(key, message)] = info.value.problems
    line = head.count(b"\n") + 1
    assert key == "(file)"
    assert f"offset {len(head) + 4}" in message  # "  # " then the first GBK byte
    assert f"line {line}, column 5" in message
    assert f"byte 0x{GBK_COMMENT[2]:02x}" in message


def test_config_check_and_run_report_a_gbk_file_in_one_line_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(GBK_COMMENT + config_text(tmp_path / "state").encode())
    check = gateway("config", "check", str(path))
    assert check.returncode == 1
    assert "Traceback" not in check.stdout + check.stderr
    lines = check.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: (file): not UTF-8 text")
    assert "offset 2 (line 1, column 3)" in lines[0]

    # The daemon under systemd: a clear message and exit 2, not a UnicodeDecodeError traceback.
    run = gateway("run", "-c", str(path))
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "UnicodeDecodeError" not in run.stderr
    assert str(path) in run.stderr and "offset 2" in run.stderr


def test_utf16_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(codecs.BOM_UTF16_LE + config_text(tmp_path / "state").encode("utf-16-le"))
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "it is UTF-16" in info.value.problems[0][1]


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(codecs.BOM_UTF8 + config_text(tmp_path / "state").encode() + "# 诊所网关\n".encode())
    assert load_config(path, environ={}).gateway.site_id == "chc-1"
    check = gateway("config", "check", str(path))
    assert (check.returncode, check.stdout.strip()) == (0, f"{path}: OK"), check.stdout + check.stderr


def test_world_readable_web_secret_at_its_default_place_fails_the_check(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    secret = state / "web-secret"  # where the daemon reads (and on first start creates) it
    secret.write_text("0123456789abcdef" * 4 + "\n")
    secret.chmod(0o644)
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(state))
    check = gateway("config", "check", str(path))
    assert check.returncode == 1, check.stdout
    assert check.stdout.strip() == (
        f"{path}: web.secret_key_file: secret file {secret} is readable by others (mode 0644); chmod 600 it"
    )
    # Pages off: the daemon does not read it, so it is not the check's business.
    path.write_text(config_text(state, web=False))
    assert gateway("config", "check", str(path)).returncode == 0
    # Fixed: OK.
    path.write_text(config_text(state))
    secret.chmod(0o600)
    assert gateway("config", "check", str(path)).returncode == 0


def test_missing_default_web_secret_is_fine_the_daemon_creates_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(tmp_path / "state"))
    assert gateway("config", "check", str(path)).returncode == 0


def test_secret_the_service_user_cannot_read_fails_the_check_run_as_that_user(
    service_user: ServiceUser, shared_dir: Path
) -> None:
    """``sudo -u clinic-gateway gateway config check``: a secret left root-owned 0600 is not OK for the service."""
    state = shared_dir / "state"
    state.mkdir()
    service_user.give(state)
    secret = shared_dir / "mqtt-password"
    secret.write_text("s3cret\n")
    service_user.take_away(secret)  # root-owned 0600 as root; mode 0 otherwise
    path = shared_dir / "gateway.toml"
    path.write_text(config_text(state) + f'[forward]\nusername = "gw"\npassword_file = "{secret}"\n')
    path.chmod(0o644)
    check = service_user.run([sys.executable, "-m", "gateway", "config", "check", str(path)], timeout=60)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "Traceback" not in check.stderr
    [line] = check.stdout.splitlines()
    assert line.startswith(f"{path}: forward.password_file: secret file {secret}")
    if service_user.as_root:
        assert "is owned by root (mode 0600) but read as" in line
    else:
        assert "not readable by its owner (mode 0000)" in line

    service_user.give(secret)
    secret.chmod(0o600)
    fixed = service_user.run([sys.executable, "-m", "gateway", "config", "check", str(path)], timeout=60)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr


def test_config_check_as_root_for_the_service_user(tmp_path: Path) -> None:
    """``--user NAME`` checks owners as NAME reads them, so root can check for the service."""
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(tmp_path / "state") + f'[forward]\nusername = "gw"\npassword_file = "{secret}"\n')
    check = gateway("config", "check", "--user", "nobody", str(path))
    assert check.returncode == 1
    assert "but read as nobody; chown nobody it" in check.stdout
    assert gateway("config", "check", "--user", "no-such-user-here", str(path)).returncode == 1
