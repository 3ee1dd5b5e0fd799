"""Benchmark: what the outbox itself costs per message drained (claim, then the platform's ack), no network.

The drain's store work, alone: ``--messages`` readings are stored, then claimed ``--claim`` at a time and acked
in parts of ``--ack`` ids (about what the drain gathers into one ack transaction), as the forwarder does, on a
real store file. Per message, separately for the claims and the acks:

- ``*_cpu_us``: thread CPU (``time.thread_time``) of ``Outbox.claim_batch`` / ``Outbox.ack``;
- ``*_rows_written``: rows the statements changed, triggers included (``sqlite3.Connection.total_changes``);
- ``*_wal_bytes``: what they added to the write-ahead log (automatic checkpoints off while measuring), the
  bytes an SD card has to take.

The rows and WAL bytes do not depend on the machine's load; the CPU figures do (medians over ``--repeat``).

    .venv/bin/python bench/outbox_cycle.py [--messages 20000] [--claim 140] [--ack 140] [--repeat 3]

The last line is one JSON object (medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from outbox_drain import fill_store

from gateway.clock import SystemClock
from gateway.store import Store, open_store
from gateway.store.db import Origin
from gateway.store.outbox import Outbox

T = TypeVar("T")


class Meter:
    """CPU, rows written and WAL bytes of the calls measured through it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.wal = Path(str(store.path) + "-wal")
        self.cpu_s = 0.0
        self.rows = 0
        self.wal_bytes = 0

    def __call__(self, call: Callable[[], T]) -> T:
        conn = self.store.db.conn
        rows, wal, cpu = conn.total_changes, self.wal.stat().st_size, time.thread_time()
        result = call()
        self.cpu_s += time.thread_time() - cpu
        self.rows += conn.total_changes - rows
        self.wal_bytes += self.wal.stat().st_size - wal
        return result


def one_round(messages: int, claim: int, ack: int, workdir: Path) -> dict[str, float]:
    clock = SystemClock("assume_synced")
    store = open_store(workdir / "gateway.db", workdir / "images", clock=clock, origin=Origin("bench", "gw", "json"))
    try:
        fill_store(store, messages, 500)
        conn = store.db.conn
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the WAL only grows while we measure
        outbox = Outbox(store)
        claims, acks = Meter(store), Meter(store)
        drained = 0
        while drained < messages:
            batch = claims(partial(outbox.claim_batch, claim))
            if not batch:
                raise SystemExit(f"the outbox ran dry after {drained} of {messages} messages")
            ids = [m.message_id for m in batch]
            for start in range(0, len(ids), ack):
                acks(partial(outbox.ack, ids[start : start + ack]))
            drained += len(batch)
        if outbox.ack_activity()[0] != messages:
            raise SystemExit("not every message was acked")
    finally:
        store.close()
    return {
        "claim_cpu_us_per_msg": claims.cpu_s / messages * 1e6,
        "ack_cpu_us_per_msg": acks.cpu_s / messages * 1e6,
        "claim_rows_written_per_msg": claims.rows / messages,
        "ack_rows_written_per_msg": acks.rows / messages,
        "claim_wal_bytes_per_msg": claims.wal_bytes / messages,
        "ack_wal_bytes_per_msg": acks.wal_bytes / messages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--claim", type=int, default=140, help="messages per claim (the drain claims ~140)")
    parser.add_argument("--ack", type=int, default=140, help="ids per ack transaction")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="cg-outbox-cycle-") as tmp:
            figures = one_round(args.messages, args.claim, args.ack, Path(tmp))
        print(f"round {i + 1}: {json.dumps({k: round(v, 2) for k, v in figures.items()})}", file=sys.stderr)
        rounds.append(figures)
    medians = {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}
    print(json.dumps({"messages": args.messages, "claim": args.claim, "ack": args.ack, "rounds": args.repeat,
                      **medians}))  # fmt: skip


if __name__ == "__main__":
    main()
