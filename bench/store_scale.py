"""Benchmark: a year of a busy clinic. A store of ``--readings`` readings (default 10^6) with ``--unsent`` of them
(default 10^4) not yet confirmed, built through the store's own API, and the figures the pages and the daemon
depend on. The last line (stdout) is one JSON object; progress goes to stderr.

The store is built as the daemon would fill it: one meter download of ``--download`` readings per desk session
(``store.downloads.DownloadWriter`` as the download session uses it, one batch per download), the clock moving
so that the downloads spread over a year,
the forwarder's claim and the platform's acks confirming all but the newest ``--unsent`` messages, and the
retention task's run every ``--retention-every`` readings (nothing is old enough yet: it only does its
housekeeping, such as dropping the bodies of acked messages where the code does that).

Figures (medians of ``--repeat`` runs where it says so):

- ``status_ms``: the IT status page's data (``GatewayServices.status()`` and ``queue_history()``, what
  ``/api/status`` serves), at the end; ``status_ms_at_tenth``: the same once a tenth of the store was built
  (equal figures: independent of the history's size). ``sampler_ms``: the web sampler's minute
  (``sample_queue()``).
- ``desk_page_ms``, ``desk_page_bytes``: a nurse's session page for one download of ``--download`` readings
  (Flask test client, logged in). ``visit_picture_ms``: the data of a patient's visit picture (their readings
  since the last visit, summarised: ``GatewayServices.visit_picture``) for the last download's patient.
- ``claim_ms_per_500``, ``claim_cpu_ms_per_500``: ``Outbox.claim_batch(500)``, wall and thread CPU (each batch
  put back with ``requeue`` between runs).
- ``prune_pass_ms_max``, ``prune_pass_ms_median``, ``prune_passes``, ``prune_total_s``, ``pruned_readings``: a
  retention run on the finished store that removes the oldest tenth (acked) of the readings. Code that prunes
  in one go counts as one pass.
- ``db_bytes_per_reading`` (the database file after a checkpoint, over the readings kept),
  ``used_bytes_per_reading`` (pages in use, without the free pages a prune leaves for later writes to
  reuse); ``table_bytes`` per table and index when SQLite has ``dbstat``.

    .venv/bin/python bench/store_scale.py [--readings 1000000] [--unsent 10000] [--download 5000]

For a before/after comparison, run the same command on an export of the older tree (the script uses only
calls both have, and says ``"prune": "single"`` where the tree prunes in one go).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from werkzeug.security import generate_password_hash

from gateway.clock import FakeClock
from gateway.config import parse_config
from gateway.errors import StoreError
from gateway.records import GlucoseReading, Meal, MeterInfo, Unit
from gateway.runtime import Runtime, open_runtime
from gateway.services import GatewayServices
from gateway.store import retention
from gateway.store import users as store_users
from gateway.store.downloads import DownloadWriter
from gateway.store.outbox import Outbox
from gateway.web.app import create_app

START = datetime(2025, 11, 1, 8, 0, tzinfo=UTC)
YEAR_DAYS = 365
PASSWORD = "bench-password-1"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def download(meter: int, n: int, session_id: str, at: datetime) -> list[GlucoseReading]:
    """One meter's ``n`` records (its history), as a download for one desk session."""
    base = (at - timedelta(days=90)).replace(tzinfo=None)
    return [
        GlucoseReading(
            meter_id=f"bench:{meter:05d}",
            sequence=i,
            meter_time=base + timedelta(minutes=25 * i),
            clock_offset_s=4.0,
            corrected_time=(base + timedelta(minutes=25 * i, seconds=4)).replace(tzinfo=UTC),
            time_trusted=True,
            value=float(60 + (i * 37) % 250),
            unit=Unit.MG_DL,
            patient_id=f"P-{meter:05d}",
            session_id=session_id,
            meal=Meal.BEFORE_MEAL if i % 3 == 0 else None,
        )
        for i in range(1, n + 1)
    ]


def confirm_oldest(outbox: Outbox, count: int) -> None:
    """What the forwarder and the platform do: send the oldest ``count`` pending messages and ack them."""
    while count > 0:
        batch = outbox.claim_batch(min(500, count))
        if not batch:
            return
        outbox.ack([m.message_id for m in batch])
        count -= len(batch)


def build(runtime: Runtime, clock: FakeClock, args: argparse.Namespace) -> dict[str, Any]:
    """Fill the store; return the last download's session id and the status time at a tenth of the build."""
    store, outbox = runtime.store, Outbox(runtime.store)
    downloads = max(1, args.readings // args.download)
    step = timedelta(days=YEAR_DAYS) / downloads
    added = confirmed = since_retention = 0
    status_at_tenth: float | None = None
    session_id = patient_id = ""
    started = time.perf_counter()
    for d in range(downloads):
        clock.now = START + step * d
        # One visit, written as the download session writes it (store.downloads, the unit of work).
        patient_id = f"P-{d:05d}"
        writer = DownloadWriter.begin(store, patient_id=patient_id, operator="nurse")
        session_id = writer.session_id
        writer.meter(MeterInfo(meter_id=f"bench:{d:05d}", family="bench", transport="serial", serial=f"{d:05d}"),
                     patient_id)  # fmt: skip
        writer.total = args.download
        result = writer.add_batch(download(d, args.download, session_id, clock.now))
        writer.finish("done")
        added += result.added
        since_retention += result.added
        target = max(0, added - args.unsent)
        confirm_oldest(outbox, target - confirmed)
        confirmed = target
        if since_retention >= args.retention_every:
            retention.prune(store, 10 * YEAR_DAYS)  # the daemon's periodic run: nothing is that old
            since_retention = 0
        if status_at_tenth is None and added >= args.readings // 10:
            status_at_tenth = status_ms(runtime, args.repeat)
        if d % 20 == 0:
            log(f"build: {added} readings, {confirmed} confirmed, {time.perf_counter() - started:.0f} s")
    retention.prune(store, 10 * YEAR_DAYS)
    return {
        "session_id": session_id,
        "patient_id": patient_id,
        "status_ms_at_tenth": status_at_tenth,
        "build_s": time.perf_counter() - started,
        "readings": added,
    }


def status_ms(runtime: Runtime, repeat: int) -> float:
    services = GatewayServices(runtime)

    def status_document() -> None:
        services.status()
        services.queue_history(6.0)

    return median_ms(status_document, repeat)


def desk_page(runtime: Runtime, session_id: str, repeat: int) -> tuple[float, int]:
    """A logged-in nurse's session page: median milliseconds and bytes."""
    store_users.add_user(runtime.store, "bench-nurse", generate_password_hash(PASSWORD), "nurse")
    client = create_app(GatewayServices(runtime), runtime.config).test_client()
    token = CSRF_RE.search(client.get("/login").get_data(as_text=True))
    assert token is not None
    client.post("/login", data={"username": "bench-nurse", "password": PASSWORD, "csrf_token": token.group(1)})
    sizes: list[int] = []

    def get() -> None:
        response = client.get(f"/nurse/session/{session_id}")
        assert response.status_code == 200, response.status_code
        sizes.append(len(response.get_data()))

    return median_ms(get, repeat), sizes[-1]


def claim_ms(runtime: Runtime, repeat: int) -> tuple[float, float]:
    """Median wall and thread-CPU milliseconds of ``claim_batch(500)`` (the CPU figure says what the claim costs
    when other processes share the cores)."""
    outbox = Outbox(runtime.store)
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.thread_time()
        batch = outbox.claim_batch(500)
        cpu.append((time.thread_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start) * 1000)
        outbox.requeue([m.message_id for m in batch])
    return statistics.median(wall), statistics.median(cpu)


def prune_figures(runtime: Runtime, clock: FakeClock) -> dict[str, Any]:
    """Prune the oldest tenth of a year: per-pass times where the code prunes in passes."""
    clock.now = START + timedelta(days=YEAR_DAYS)
    days = int(YEAR_DAYS * 0.9)
    store = runtime.store
    pruner_class = getattr(retention, "Pruner", None)
    passes: list[float] = []
    start = time.perf_counter()
    if pruner_class is None:
        result = retention.prune(store, days)
        passes.append((time.perf_counter() - start) * 1000)
    else:
        pruner = pruner_class(store, days)
        more = True
        while more:
            t = time.perf_counter()
            more = pruner.run_pass()
            passes.append((time.perf_counter() - t) * 1000)
        result = pruner.result
    return {
        "prune": "single" if pruner_class is None else "passes",
        "prune_pass_ms_max": round(max(passes), 1),
        "prune_pass_ms_median": round(statistics.median(passes), 1),
        "prune_passes": len(passes),
        "prune_total_s": round(time.perf_counter() - start, 2),
        "pruned_readings": result.readings,
    }


def size_figures(runtime: Runtime) -> dict[str, Any]:
    store = runtime.store
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    readings = int(store.scalar("SELECT count(*) FROM readings"))
    page_size = int(store.scalar("PRAGMA page_size"))
    pages = int(store.scalar("PRAGMA page_count"))
    free = int(store.scalar("PRAGMA freelist_count"))
    assert store.path is not None
    figures: dict[str, Any] = {
        "readings_kept": readings,
        "db_file_bytes": store.path.stat().st_size,
        "db_bytes_per_reading": round(store.path.stat().st_size / max(1, readings)),
        "used_bytes_per_reading": round((pages - free) * page_size / max(1, readings)),
    }
    try:
        rows = store.query("SELECT name, sum(pgsize) AS bytes FROM dbstat GROUP BY name ORDER BY bytes DESC")
        figures["table_bytes_per_reading"] = {r["name"]: round(r["bytes"] / max(1, readings)) for r in rows[:12]}
    except StoreError:  # an SQLite built without dbstat: the totals above still stand
        figures["table_bytes_per_reading"] = None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--unsent", type=int, default=10_000)
    parser.add_argument("--download", type=int, default=5_000, help="readings per download (one desk session)")
    parser.add_argument("--retention-every", type=int, default=200_000, help="readings between retention runs")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timed figure (median)")
    parser.add_argument("--keep", type=Path, default=None, help="build the store here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cg-scale-") as tmp:
        state = args.keep or Path(tmp)
        config = parse_config(
            {
                "gateway": {"site_id": "bench", "gateway_id": "gw-scale", "state_dir": str(state)},
                "clock": {"sync_check": "assume_synced"},
                "web": {"port": 0, "secure_cookies": False},
            }
        )
        clock = FakeClock(START)
        runtime = open_runtime(config, clock=clock)
        built = build(runtime, clock, args)
        log(f"built {built['readings']} readings in {built['build_s']:.0f} s; measuring")
        services = GatewayServices(runtime)
        figures: dict[str, Any] = {
            "readings": built["readings"],
            "unsent": Outbox(runtime.store).stats().total_unsent,
            "download": args.download,
            "build_s": round(built["build_s"], 1),
            "status_ms": round(status_ms(runtime, args.repeat), 1),
            "status_ms_at_tenth": round(built["status_ms_at_tenth"] or 0.0, 1),
            "sampler_ms": round(median_ms(services.sample_queue, args.repeat), 1),
        }
        page_ms, page_bytes = desk_page(runtime, built["session_id"], args.repeat)
        figures.update(desk_page_ms=round(page_ms, 1), desk_page_bytes=page_bytes)
        visit_ms = median_ms(lambda: services.visit_picture(built["patient_id"]), args.repeat)
        figures.update(visit_picture_ms=round(visit_ms, 1))
        claim_wall, claim_cpu = claim_ms(runtime, max(30, args.repeat))
        figures.update(claim_ms_per_500=round(claim_wall, 2), claim_cpu_ms_per_500=round(claim_cpu, 2))
        figures.update(size_figures(runtime))
        figures.update(prune_figures(runtime, clock))
        runtime.store.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
