"""Counting a store's transactions, and a meter driver that hands over a list of records.

Used by the download unit-of-work test (tests/meters_serial/test_download_transactions.py) and by
``bench/download_transactions.py``: a transaction is one top-level ``BEGIN`` on the store's connection
(nested blocks are savepoints inside it), seen through :meth:`sqlite3.Connection.set_trace_callback`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.records import MeterInfo, MeterRecord, Unit
from gateway.store import Store


@dataclass
class TransactionCount:
    """Top-level transactions begun on a store while counting."""

    begins: int = 0


@contextmanager
def count_transactions(store: Store) -> Iterator[TransactionCount]:
    """Count the ``BEGIN`` statements the store's connection runs inside the block."""
    count = TransactionCount()

    def trace(statement: str) -> None:
        if statement.lstrip().upper().startswith("BEGIN"):
            count.begins += 1

    conn = store.db.conn
    conn.set_trace_callback(trace)
    try:
        yield count
    finally:
        conn.set_trace_callback(None)


class ListMeter:
    """A MeterDriver over ``count`` numbered records (sequence 1..count), no I/O at all."""

    newest_first = False

    def __init__(self, count: int, *, meter_id: str = "list:M1") -> None:
        serial = meter_id.rsplit(":", maxsplit=1)[-1]
        self.info = MeterInfo(meter_id=meter_id, family="list", transport="serial", serial=serial)
        start = datetime(2026, 11, 1, 7, 0)
        self.list = [
            MeterRecord(sequence=i, meter_time=start + timedelta(minutes=20 * i), value=90.0 + i % 50, unit=Unit.MG_DL)
            for i in range(1, count + 1)
        ]

    async def read_info(self) -> MeterInfo:
        return self.info

    async def read_clock(self) -> datetime | None:
        return None

    async def count_records(self, since_sequence: int | None) -> int | None:
        return sum(1 for r in self.list if since_sequence is None or (r.sequence or 0) > since_sequence)

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        for record in self.list:
            if since_sequence is None or (record.sequence or 0) > since_sequence:
                yield record

    async def set_clock(self, meter_time: datetime) -> None:
        return None

    async def close(self) -> None:
        return None
