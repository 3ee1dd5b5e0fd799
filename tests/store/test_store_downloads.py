"""The download unit of work: a meter download of N records costs O(N / batch) transactions, not ~2 per batch
plus a dozen, and the session's counters travel in the batches' own transactions."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import get_args
from zoneinfo import ZoneInfo

import pytest
from support.factories import make_store, reading
from support.transactions import ListMeter, count_transactions

from gateway.desk import DeskState
from gateway.errors import ErrorInfo
from gateway.meters.session import DownloadSession
from gateway.store import Store
from gateway.store.downloads import DownloadWriter
from gateway.store.sessions import SessionState, get_session

RECORDS = 120


def download(store: Store, records: int, batch: int) -> tuple[int, str]:
    """Transactions one download costs (the session row included), and the session id."""
    with count_transactions(store) as count:
        session = DownloadSession(store, store.clock, ListMeter(records), tz=ZoneInfo("UTC"), batch_size=batch)
        result = asyncio.run(session.run())
    assert (result.state, result.added) == (DeskState.DONE, records)
    return count.begins, result.session_id


@pytest.mark.parametrize("batch", [10, 40])
def test_a_download_costs_one_transaction_per_batch_and_three_more(tmp_path: Path, batch: int) -> None:
    store = make_store(tmp_path)
    begins, session_id = download(store, RECORDS, batch)
    # begin (session row), meter (meter row + session's meter and patient), one per batch, finish
    assert begins == 3 + math.ceil(RECORDS / batch)
    row = get_session(store, session_id)
    assert row is not None
    assert (row.state, row.records_new, row.records_total) == ("done", RECORDS, RECORDS)
    assert store.query("SELECT last_sync IS NOT NULL AS synced FROM meters") == [{"synced": 1}]


def test_batch_size_changes_only_the_batches(tmp_path: Path) -> None:
    small, _ = download(make_store(tmp_path / "a"), RECORDS, 10)
    large, _ = download(make_store(tmp_path / "b"), RECORDS, 40)
    assert small - large == RECORDS // 10 - RECORDS // 40  # one transaction per batch, nothing else per batch


def test_counters_are_written_with_each_batch_and_the_error_at_the_end(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    meter = ListMeter(30)
    writer = DownloadWriter.begin(store, patient_id="P-1", operator="nurse")
    writer.meter(meter.info, "P-1")
    writer.total = 30
    writer.add_batch([reading(seq, meter_id=meter.info.meter_id) for seq in range(1, 21)])
    row = get_session(store, writer.session_id)
    assert row is not None and (row.records_new, row.records_total, row.state) == (20, 30, "running")
    writer.finish(DeskState.INTERRUPTED, ErrorInfo("DeviceDisconnected", "link lost after 20 records"))
    row = get_session(store, writer.session_id)
    assert row is not None and row.state == "interrupted"
    assert row.error == "DeviceDisconnected: link lost after 20 records"
    meter_row = store.query("SELECT last_sync, last_error FROM meters")[0]
    assert meter_row == {"last_sync": None, "last_error": "DeviceDisconnected: link lost after 20 records"}


def test_a_stored_sessions_state_is_running_or_a_final_desk_state() -> None:
    """The session row reads ``state`` as SessionState unchecked: its writers store ``running`` at the start and
    a final desk state at the end (DownloadWriter.finish), so the literal must name exactly those."""
    finals = {str(state) for state in DeskState if state.finished}
    assert set(get_args(SessionState)) == {str(DeskState.RUNNING), *finals}
