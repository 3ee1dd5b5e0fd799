"""Run a process as an unprivileged user, so that file owners and modes bind as they do for the service.

CI runs as root, and modes do not stop root. As root, the process runs as ``nobody`` (uid/gid 65534) through
util-linux's ``setpriv`` and "a file the service cannot read" is a root-owned 0600 file, as ``sudo gateway ...``
leaves one. As an ordinary user, that user is already unprivileged and a ``chmod`` takes the access away.
The fixtures skip, with the reason, only when neither can be arranged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


@dataclass(frozen=True, slots=True)
class ServiceUser:
    """Who the gateway runs as in a test: ``nobody`` when the tests run as root, else the test's own user."""

    uid: int
    gid: int
    prefix: tuple[str, ...]
    """Command prefix that drops to this user (empty when we already are it)."""

    @property
    def as_root(self) -> bool:
        """True when the tests run as root and the service is another user."""
        return bool(self.prefix)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as the service user."""
        return [*self.prefix, *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the service user in the repository, text output captured."""
        return subprocess.run(self.argv(argv), cwd=REPO, capture_output=True, text=True, check=False, **kwargs)

    def give(self, path: Path) -> None:
        """Make ``path`` the service user's own (a no-op when the service user is us)."""
        if self.as_root:
            os.chown(path, self.uid, self.gid)

    def take_away(self, path: Path, *, write_only: bool = False) -> None:
        """Leave ``path`` in place but deny the service user access to it.

        As root: owned by root, mode 0600 (or 0644 / 0755 with ``write_only``: readable, not writable),
        what running a command as root leaves behind. Otherwise: mode 0 (0444 / 0555 with ``write_only``).
        """
        is_dir = path.is_dir()
        if self.as_root:
            os.chown(path, 0, 0)
            mode = (0o755 if is_dir else 0o644) if write_only else (0o700 if is_dir else 0o600)
        else:
            mode = (0o555 if is_dir else 0o444) if write_only else 0
        os.chmod(path, mode)


def _service_user() -> ServiceUser | str:
    """The service user, or why there is none."""
    if os.geteuid() != 0:
        return ServiceUser(uid=os.geteuid(), gid=os.getegid(), prefix=())
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return "running as root and util-linux's setpriv is missing: cannot drop to an unprivileged user"
    user = ServiceUser(
        uid=NOBODY,
        gid=NOBODY,
        prefix=(setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"),
    )
    probe = user.run([sys.executable, "-c", "import gateway"], timeout=60)
    if probe.returncode != 0:
        return f"as uid {NOBODY} this interpreter cannot import gateway: {probe.stderr.strip()[-300:]}"
    return user


@pytest.fixture(scope="session")
def service_user() -> ServiceUser:
    """The unprivileged user the gateway runs as in these tests (skips, saying why, when there is none)."""
    found = _service_user()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh directory the service user can reach (pytest's tmp_path is under a 0700 root directory)."""
    path = Path(tempfile.mkdtemp(prefix="cg-unpriv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        # Give back what a test took away, so that a non-root user can delete it (top-down: before descending).
        for top, dirs, _files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(top, name), 0o755)
        shutil.rmtree(path, ignore_errors=True)
