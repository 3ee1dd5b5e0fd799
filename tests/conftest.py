"""Shared pytest set-up: tests/ on sys.path (for the ``support`` package) and common fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

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
