"""Benchmark: how many login attempts get their password checked, under a burst and with rotating user names.

The daemon's own web component (waitress) serves a real store on a free loopback port; clients post the login
form over real HTTP with session cookies and CSRF tokens, all with wrong passwords. A password check shows as
HTTP 401 (a refusal before any check as 429). Figures (the limits are 5 per user name and 20 per address within
a minute, the shipped defaults):

- ``burst_same_user``: ``--burst`` clients post for one user name at the same moment (a barrier); checks made.
- ``burst_rotating_names``: the same with a different user name each.
- ``rotating_names_per_minute``: one client, one name after the other, for ``--seconds`` seconds; checks made,
  scaled to a minute.

    .venv/bin/python bench/web_logins.py [--burst 60] [--seconds 60]

Prints one JSON object (stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# This checkout's gateway (not whichever one is installed), its test helpers.
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "web")]

from web_harness import HttpBrowser, add_users, make_config, serving  # noqa: E402

from gateway.clock import SystemClock  # noqa: E402
from gateway.runtime import open_runtime  # noqa: E402


def burst(port: int, names: list[str]) -> int:
    """Every name logs in (wrong password) at the same moment; how many passwords were checked."""
    barrier = threading.Barrier(len(names))

    def one(name: str) -> int:
        return int(HttpBrowser(port).login(name, "a wrong guess", barrier=barrier))

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return Counter(pool.map(one, names))[401]


def rotating(port: int, seconds: float) -> float:
    """One client tries a new user name after the other; password checks per minute."""
    checked, i = 0, 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        checked += HttpBrowser(port).login(f"name{i}", "a wrong guess") == 401
        i += 1
    return checked * 60 / (time.monotonic() - start)


def fresh(tmp: Path, name: str) -> Any:
    runtime = open_runtime(make_config(tmp / name), clock=SystemClock("assume_synced"))
    add_users(runtime)
    return runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--burst", type=int, default=60, help="clients posting at once")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the rotating-names run")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"burst": args.burst}
    with tempfile.TemporaryDirectory(prefix="cg-logins-") as tmp:
        runs = (
            ("burst_same_user", lambda port: burst(port, ["nina"] * args.burst)),
            ("burst_rotating_names", lambda port: burst(port, [f"guess{i}" for i in range(args.burst)])),
            ("rotating_names_per_minute", lambda port: round(rotating(port, args.seconds), 1)),
        )
        for name, run in runs:
            runtime = fresh(Path(tmp), name)  # a fresh store each: no run inherits another's attempts
            try:
                with serving(runtime) as web:
                    results[name] = run(web.port)
            finally:
                runtime.store.close()
            print(f"{name}: {results[name]}", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
