"""The wall clock jumping by years (a Pi without RTC syncing late) changes nothing the forwarder decides:
ack timeouts run on the monotonic clock, order is the outbox's row order, nothing is lost or re-ordered."""

from __future__ import annotations

from datetime import timedelta

from support.broker import ForwarderRunner, gateway_config, wait_until
from support.factories import T0, make_store, reading

from gateway.clock import SystemClock
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings


class JumpyClock(SystemClock):
    """The real clocks, plus offsets a test can jump: the wall clock by years, the monotonic one forward."""

    def __init__(self) -> None:
        super().__init__("assume_synced")
        self.wall_offset = timedelta(0)
        self.mono_offset = 0.0

    def utc_now(self):
        return super().utc_now() + self.wall_offset

    def monotonic(self) -> float:
        return super().monotonic() + self.mono_offset


def test_wall_clock_jumps_do_not_trigger_or_block_resends(tmp_path, broker, receiver_factory) -> None:
    clock = JumpyClock()
    clock.wall_offset = T0 - clock.utc_now() - timedelta(days=3 * 365)  # booted believing it is 2023
    store = make_store(tmp_path / "gw", clock)
    add_readings(store, [reading(i) for i in range(1, 31)])
    receiver = receiver_factory(broker)
    receiver.ack_enabled = False
    outbox = Outbox(store)
    config = gateway_config(tmp_path / "gw", port=broker.port, ack_timeout_s=3600)
    with ForwarderRunner(config, store, clock) as run:
        fwd = run.forwarder
        wait_until(lambda: receiver.counts()["readings"] == 30)
        clock.wall_offset += timedelta(days=3 * 365 + 30)  # NTP syncs: the wall clock leaps forward by years
        add_readings(store, [reading(i) for i in range(31, 41)])  # intake stamped with the new wall time
        loops = fwd.loops
        wait_until(lambda: fwd.loops > loops + 20, what="the loop turning after the jump")
        # a wall-clock timer would now think every message is years overdue; the monotonic one does not
        assert fwd.counters["resent_after_timeout"] == 0
        assert receiver.counts()["duplicates"] == 0
        clock.wall_offset -= timedelta(days=20 * 365)  # and back again, far into the past
        clock.mono_offset += 3601  # only real elapsed time expires an ack wait
        wait_until(lambda: fwd.counters["resent_after_timeout"] == 40, what="re-sends after the monotonic timeout")
        wait_until(lambda: receiver.counts()["duplicates"] == 40, what="the re-sends at the receiver")
        receiver.ack_enabled = True
        clock.mono_offset += 3601
        wait_until(lambda: outbox.stats().total_unsent == 0, what="all confirmed")
    rows = receiver.readings()
    assert [r["sequence"] for r in rows] == list(range(1, 41))  # outbox order, whatever the timestamps say
    assert store.scalar("SELECT count(*) FROM readings") == 40  # nothing pruned
    assert store.scalar("SELECT count(*) FROM outbox WHERE state = 'acked'") >= 40
