"""Shared pytest set-up: tests/ on sys.path (for the ``support`` package) and common fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

pytest_plugins = ["support.fixtures_broker", "support.unprivileged"]
