"""Platform acks that arrive together are applied in one durable transaction (one fsync on the SD card), and
what they confirm counts only once that transaction is committed.

The forwarder's event handling is driven directly with link events on a fake clock: gathering is about time,
and a real broker would make "arrived together" a matter of luck.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.broker import gateway_config
from support.factories import T0, make_store, reading

from gateway.clock import FakeClock
from gateway.errors import BrokerUnavailable
from gateway.forward import forwarder as forwarder_module
from gateway.forward.forwarder import ACK_GATHER_S, Forwarder, _Inflight
from gateway.forward.mqtt import Disconnected, Received
from gateway.store.outbox import IN_FLIGHT, Outbox
from gateway.store.readings import add_readings
from gateway.wire import contract


def _forwarder_with_sent(tmp_path: Path, n: int) -> tuple[Forwarder, FakeClock, list[str]]:
    clock = FakeClock(T0)
    store = make_store(tmp_path / "gw", clock)
    add_readings(store, [reading(i) for i in range(1, n + 1)])
    forwarder = Forwarder(gateway_config(tmp_path / "gw", port=1), store, clock)
    claimed = forwarder.outbox.claim_batch(n)
    for message in claimed:  # as if published on a link: in flight, waiting for the platform
        forwarder._inflight[message.message_id] = _Inflight(message.seq, message.kind, clock.monotonic(), None)
    return forwarder, clock, [m.message_id for m in claimed]


def _ack(forwarder: Forwarder, ids: list[str], mid: int) -> Received:
    return Received(forwarder.prefix + contract.TOPIC_ACK, contract.ack_payload(ids), mid, 1, 0)


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The ids of each ack transaction the forwarder commits."""
    seen: list[list[str]] = []
    real = Outbox.ack

    def counting(self: Outbox, message_ids: list[str]):  # type: ignore[no-untyped-def]
        seen.append(list(message_ids))
        return real(self, message_ids)

    monkeypatch.setattr(Outbox, "ack", counting)
    return seen


def test_acks_within_the_gathering_time_are_one_transaction(tmp_path: Path, commits: list[list[str]]) -> None:
    forwarder, clock, ids = _forwarder_with_sent(tmp_path, 6)
    outbox = forwarder.outbox
    forwarder._apply([_ack(forwarder, ids[:2], 1)])
    clock.advance(ACK_GATHER_S / 2)
    forwarder._apply([_ack(forwarder, ids[2:4], 2)])
    # gathered, not applied: nothing counts yet, and the window still holds them
    assert commits == [] and forwarder.counters["acked"] == 0
    assert {outbox.state_of(i) for i in ids[:4]} == {IN_FLIGHT}
    assert len(forwarder._inflight) == 6
    assert 0 < forwarder._wait_s() <= ACK_GATHER_S / 2  # the drain wakes when they are due
    clock.advance(ACK_GATHER_S / 2)
    forwarder._apply([])
    assert commits == [ids[:4]]
    assert [outbox.state_of(i) for i in ids] == ["acked"] * 4 + [IN_FLIGHT] * 2
    assert forwarder.counters["acked"] == 4 and len(forwarder._inflight) == 2


def test_gathered_acks_are_applied_when_the_link_ends_or_outside_the_drain(
    tmp_path: Path, commits: list[list[str]]
) -> None:
    forwarder, _clock, ids = _forwarder_with_sent(tmp_path, 4)
    forwarder._apply([_ack(forwarder, ids[:1], 1)])
    ended = forwarder._apply(
        [_ack(forwarder, ids[1:2], 2), Disconnected(BrokerUnavailable("gone"), unconfirmed=(ids[3],))]
    )
    assert isinstance(ended, BrokerUnavailable)
    assert commits == [ids[:2]]  # before the drain returns: nothing gathered is left behind
    forwarder._apply([_ack(forwarder, ids[2:3], 3)], gather=False)  # while backing off: at once
    assert commits == [ids[:2], ids[2:3]]
    outbox = Outbox(forwarder.store)
    assert [outbox.state_of(i) for i in ids] == ["acked", "acked", "acked", "pending"]


def test_a_large_gathering_is_applied_at_once(tmp_path: Path, commits: list[list[str]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(forwarder_module, "CLAIM_MAX", 3)
    forwarder, _clock, ids = _forwarder_with_sent(tmp_path, 4)
    forwarder._apply([_ack(forwarder, ids[:2], 1)])
    assert commits == []
    forwarder._apply([_ack(forwarder, ids[2:], 2)])
    assert commits == [ids]


def test_a_quiet_link_applies_what_is_gathered_whatever_the_clock_says(
    tmp_path: Path, commits: list[list[str]]
) -> None:
    """The drain passes ``gather=False`` after a whole wait without news: a clock that does not move (a test's,
    or a wall clock held back) never holds acks."""
    forwarder, _clock, ids = _forwarder_with_sent(tmp_path, 2)
    forwarder._apply([_ack(forwarder, ids, 1)])
    assert commits == []
    forwarder._apply([], gather=False)
    assert commits == [ids]
