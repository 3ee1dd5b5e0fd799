"""Benchmark: SQLite transactions one meter download costs, per record count and batch size.

A download of N records through the real :class:`~gateway.meters.session.DownloadSession` into a real store,
from a driver that hands over a list (no I/O, so only the store's work is counted). A transaction is one
top-level ``BEGIN`` on the store's connection, counted with ``sqlite3.Connection.set_trace_callback``; no time
is measured. The unit of work (:class:`gateway.store.readings.DownloadWriter`) makes it O(N / batch).

    .venv/bin/python bench/download_transactions.py [--records 500] [--batch 50 --batch 500]

The last line is one JSON object: ``transactions`` for N records at the session's default batch size, and
``by_batch`` (batch size -> transactions).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.transactions import ListMeter, count_transactions  # noqa: E402

from gateway.clock import FakeClock  # noqa: E402
from gateway.meters.session import DownloadSession  # noqa: E402
from gateway.store import open_store  # noqa: E402

DEFAULT_BATCH = 50
"""DownloadSession's default batch size."""


def transactions_for(records: int, batch: int, workdir: Path) -> int:
    """Transactions one download of ``records`` records costs at ``batch`` records per batch (fresh store)."""
    clock = FakeClock(datetime(2026, 11, 23, 2, 0, tzinfo=UTC), synchronised=True)
    store = open_store(workdir / f"tx-{records}-{batch}.db", workdir / "images", clock=clock)
    try:
        with count_transactions(store) as count:  # the session row is opened when the session is made
            session = DownloadSession(store, clock, ListMeter(records), tz=ZoneInfo("UTC"), batch_size=batch)
            result = asyncio.run(session.run())
        assert (result.state, result.added) == ("done", records), result
        return int(count.begins)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 10, 50, 500)")
    args = parser.parse_args(argv)
    batches = sorted(set(args.batch or [10, DEFAULT_BATCH, 500]) | {DEFAULT_BATCH})
    with tempfile.TemporaryDirectory(prefix="cg-tx-") as tmp:
        by_batch = {b: transactions_for(args.records, b, Path(tmp)) for b in batches}
    for batch, count in by_batch.items():
        print(f"{args.records} records, batch {batch}: {count} transactions")
    print(json.dumps({"records": args.records, "batch": DEFAULT_BATCH, "transactions": by_batch[DEFAULT_BATCH],
                      "by_batch": {str(b): n for b, n in by_batch.items()}}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
