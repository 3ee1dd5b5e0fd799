"""Run a Python script on a small, real file system: a tmpfs mounted in a private user + mount namespace.

Nothing is faked: the script's writes really run out of space. Where the kernel does not let an unprivileged
user namespace mount a tmpfs (or ``unshare`` is missing), the calling test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_on_small_fs(
    script: str, workdir: Path, *, size_mb: int, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``sys.argv[1]`` = the mounted tmpfs and ``sys.argv[2]`` = the tests directory,
    importing this checkout's ``gateway``; the completed process (stdout, stderr, returncode)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not installed")
    mnt = workdir / "small"
    mnt.mkdir()
    path = workdir / "on_small_fs.py"
    path.write_text(script)
    mount = f"mount -t tmpfs -o size={size_mb}m tmpfs"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f"{mount} {mnt}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private namespace here: {probe.stderr.strip()}")
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f'{mount} "$1" && exec "$2" "$3" "$1" "$4"',
         "sh", str(mnt), sys.executable, str(path), str(REPO / "tests")],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's gateway, whatever is installed
    )  # fmt: skip
