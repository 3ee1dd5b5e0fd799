"""Benchmark: CPU the idle daemon uses, with the pages on and off, and its memory after start.

The real daemon (``python -m gateway run``) in a subprocess, no broker reachable, no meters; once it said
READY=1 and settled for ``--settle`` seconds, its CPU time (utime + stime from /proc, all threads) over
``--window`` seconds, as a percentage of one core, and its RSS. Issue 15: waitress's loop timeout was truncated
to 0 and the idle daemon burnt a whole core with the pages on.

    .venv/bin/python bench/web_idle.py [--window 10] [--settle 2]

Prints one JSON object (stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.daemon_proc import DaemonProcess, idle_cpu_fraction, rss_mb, write_config  # noqa: E402


def measure(web: bool, window_s: float, settle_s: float) -> dict[str, Any]:
    """Idle CPU % of one core and RSS (MiB) of a fresh daemon with the pages on or off."""
    with tempfile.TemporaryDirectory(prefix="cg-idle-") as tmp:
        work = Path(tmp)
        config = write_config(work / "gateway.toml", work / "state", web=web)
        with DaemonProcess(config, work) as daemon:
            daemon.wait_ready()
            idle_cpu_fraction(daemon.pid, settle_s)
            rss_after_start = rss_mb(daemon.pid)
            cpu = idle_cpu_fraction(daemon.pid, window_s)
            return {"idle_cpu_pct": round(100 * cpu, 2), "rss_mb_after_start": round(rss_after_start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--window", type=float, default=10.0, help="seconds of CPU time measured")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after READY=1 before measuring")
    args = parser.parse_args(argv)
    on = measure(True, args.window, args.settle)
    off = measure(False, args.window, args.settle)
    print(
        json.dumps(
            {
                "idle_cpu_pct_pages_on": on["idle_cpu_pct"],
                "idle_cpu_pct_pages_off": off["idle_cpu_pct"],
                "rss_mb_after_start_pages_on": on["rss_mb_after_start"],
                "rss_mb_after_start_pages_off": off["rss_mb_after_start"],
                "window_s": args.window,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
