"""scripts/install-pi and scripts/update: a dry run, and a real run into a throw-away root (ROOT=...).

The ROOT run creates the user with useradd --prefix in the staged /etc/passwd, writes config, secrets, units
and udev rules with their modes and owners, keeps the config on a re-run, and uninstalls with and without
--purge. Steps that need the live system (apt-get, pip, systemctl, udevadm) are printed in ROOT mode; they are
exercised on a Pi (docs/operations.md).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USER = "clinic-gateway"


def run(
    script: str, *args: str, env: dict[str, str] | None = None, src: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(src / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = run("install-pi", "--dry-run", env={"ROOT": str(root)})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.replace("\\", "")  # printed commands are shell-quoted (printf %q)
    for expected in (
        "useradd",
        "--shell /usr/sbin/nologin",
        "--append --groups dialout,video,bluetooth clinic-gateway",
        "python3 -m venv /opt/clinic-gateway/.venv",
        "pip install --quiet --upgrade --editable /opt/clinic-gateway",
        "/etc/clinic-gateway/gateway.toml",
        "systemctl enable --now bluetooth.service",
        "systemctl enable clinic-gateway.service",
        "systemctl restart clinic-gateway.service",
    ):
        assert expected in out, expected
    assert "[dev]" not in out
    assert tree(root) == []  # nothing written


def test_update_dry_run(tmp_path: Path) -> None:
    proc = run("update", "--dry-run", "--no-pull")
    assert proc.returncode == 0, proc.stderr
    assert "install-pi: installing into / (dry run)" in proc.stdout
    assert "systemctl restart clinic-gateway.service" in proc.stdout


def test_bad_options_are_refused() -> None:
    assert run("install-pi", "--purge", "--dry-run").returncode == 2
    assert run("install-pi", "--bogus").returncode == 2
    assert run("update", "--bogus").returncode == 2


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def passwd_entry(root: Path) -> list[str] | None:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == USER:
            return fields
    return None


def group_members(root: Path, group: str) -> list[str]:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return [m for m in fields[3].split(",") if m]
    return []


@pytest.fixture
def staged(tmp_path: Path) -> tuple[Path, Path]:
    """A small source checkout (the files install-pi reads) and an empty root with a copy of /etc's user db."""
    if os.geteuid() != 0:
        pytest.skip("the ROOT run sets owners and edits the staged /etc/passwd: needs root (CI runs as root)")
    if shutil.which("useradd") is None:
        pytest.skip("useradd (passwd package) not installed")
    src = tmp_path / "src"
    for rel in ("scripts/install-pi", "config/gateway.example.toml", "pyproject.toml", "gateway/__init__.py"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    shutil.copytree(REPO / "systemd", src / "systemd")
    (src / "config/udev").mkdir(parents=True)
    (src / "config/udev/60-clinic-gateway-test.rules").write_text('SUBSYSTEM=="tty", ATTRS{idVendor}=="10c4"\n')
    for junk in (".venv/bin/python", "state/demo/gateway.db", "gateway/__pycache__/x.pyc", ".git/HEAD"):
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_text("junk")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    return src, root


def test_root_run_places_files_with_the_right_modes(staged: tuple[Path, Path]) -> None:
    src, root = staged
    proc = run("install-pi", env={"ROOT": str(root)}, src=src)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    entry = passwd_entry(root)
    assert entry is not None and entry[5] == "/var/lib/clinic-gateway" and entry[6] == "/usr/sbin/nologin"
    uid, gid = int(entry[2]), int(entry[3])
    assert uid < 1000  # a system user
    for group in ("dialout", "video", "bluetooth"):
        assert USER in group_members(root, group), group

    conf = root / "etc/clinic-gateway"
    expectations = {
        conf: (0o750, 0, gid),
        conf / "gateway.toml": (0o640, 0, gid),
        conf / "secrets": (0o700, uid, gid),
        root / "var/lib/clinic-gateway": (0o750, uid, gid),
        root / "var/lib/clinic-gateway/web-secret": (0o600, uid, gid),
        root / "etc/systemd/system/clinic-gateway.service": (0o644, 0, 0),
        root / "etc/udev/rules.d/60-clinic-gateway-test.rules": (0o644, 0, 0),
    }
    for path, (want_mode, want_uid, want_gid) in expectations.items():
        st = path.stat()
        assert (oct(mode(path)), st.st_uid, st.st_gid) == (oct(want_mode), want_uid, want_gid), path
    assert (conf / "gateway.toml").read_text() == (REPO / "config/gateway.example.toml").read_text()
    secret = (root / "var/lib/clinic-gateway/web-secret").read_text()
    assert len(secret) == 64 and int(secret, 16) > 0
    assert (root / "etc/systemd/system/clinic-gateway.service").read_bytes() == (
        REPO / "systemd/clinic-gateway.service"
    ).read_bytes()
    # The code tree arrived without the checkout's venv, state, caches or .git.
    app = root / "opt/clinic-gateway"
    assert (app / "gateway/__init__.py").is_file() and (app / "scripts/install-pi").is_file()
    assert not any((app / junk).exists() for junk in (".venv", "state", ".git", "gateway/__pycache__"))
    # Live-system steps were printed, not run.
    assert "+ [system] systemctl enable clinic-gateway.service" in proc.stdout

    # Re-run: idempotent, keeps the edited config and the secret, one user.
    with (conf / "gateway.toml").open("a") as fh:
        fh.write("# edited by IT\n")
    again = run("install-pi", env={"ROOT": str(root)}, src=src)
    assert again.returncode == 0, again.stderr
    assert "keeping /etc/clinic-gateway/gateway.toml" in again.stdout
    assert (conf / "gateway.toml").read_text().endswith("# edited by IT\n")
    assert (root / "var/lib/clinic-gateway/web-secret").read_text() == secret
    assert sum(line.startswith(f"{USER}:") for line in (root / "etc/passwd").read_text().splitlines()) == 1

    # Uninstall keeps configuration and data ...
    (root / "var/lib/clinic-gateway/gateway.db").write_text("clinical data")
    gone = run("install-pi", "--uninstall", env={"ROOT": str(root)}, src=src)
    assert gone.returncode == 0, gone.stderr
    assert not (root / "etc/systemd/system/clinic-gateway.service").exists()
    assert not (root / "etc/udev/rules.d/60-clinic-gateway-test.rules").exists()
    assert not app.exists()
    assert (conf / "gateway.toml").exists() and (root / "var/lib/clinic-gateway/gateway.db").exists()
    assert passwd_entry(root) is not None
    # ... unless purged.
    purged = run("install-pi", "--uninstall", "--purge", env={"ROOT": str(root)}, src=src)
    assert purged.returncode == 0, purged.stderr
    assert not conf.exists() and not (root / "var/lib/clinic-gateway").exists()
    assert passwd_entry(root) is None
