"""Shared pytest set-up: tests/ on sys.path (for the ``support`` package) and common fixtures."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

pytest_plugins = ["support.fixtures_broker", "support.unprivileged"]

# Hypothesis' per-example deadline (200 ms) and its "too slow" health check measure wall-clock time: on a loaded
# CI runner they fail tests whose code is right. Examples are bounded by their count, never by time.
settings.register_profile("gateway", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gateway")

SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
"""Where the browser tests save their screenshots (tests/web/browser_kit.py, git-ignored)."""
_session_started: list[float] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _session_started.append(time.time())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """Say where this run's screenshots are (the browser tests' artefacts), so nobody has to look for them."""
    if not _session_started or not SCREENSHOTS.is_dir():
        return
    fresh = [p for p in SCREENSHOTS.glob("*.png") if p.stat().st_mtime >= _session_started[0] - 1]
    if fresh:
        terminalreporter.write_line(f"screenshots: {len(fresh)} saved under {SCREENSHOTS}")
