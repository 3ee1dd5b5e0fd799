"""The demo's pretend meter: a daemon component that stores a plausible reading every few seconds.

Stands in for real meters in ``gateway demo`` and drives the crash tests' ingest. Not one of the daemon's
own components: whoever runs the daemon for a demo or a test adds :func:`components` to its factories
(``gateway run`` does when the config's ``[demo] synthetic_readings`` is on).
"""

from __future__ import annotations

import asyncio
import random

from gateway.records import GlucoseReading, MeterInfo, Unit
from gateway.runtime import Component, Runtime
from gateway.store.readings import add_readings, last_sequence, upsert_meter


class SyntheticReadings:
    """A pretend meter that takes a reading every ``interval`` seconds.

    Values follow a plausible daily curve with noise; the meter numbers its records, so identity is
    ``(meter_id, sequence)``.
    """

    name = "synthetic-readings"

    def __init__(self, runtime: Runtime, interval_s: float, meter_id: str = "synthetic:demo-0001") -> None:
        self.runtime = runtime
        self.interval_s = interval_s
        self.meter_id = meter_id
        self._beat = runtime.clock.monotonic()
        self._rng = random.Random(7)

    def healthy(self) -> bool:
        return self.runtime.clock.monotonic() - self._beat < max(30.0, 10 * self.interval_s)

    async def run(self) -> None:
        store = self.runtime.store
        upsert_meter(store, MeterInfo(meter_id=self.meter_id, family="synthetic", transport="none", serial="demo-0001"))
        seq = last_sequence(store, self.meter_id) or 0
        while True:
            self._beat = self.runtime.clock.monotonic()
            seq += 1
            now = self.runtime.clock.utc_now()
            value = round(max(2.5, self._rng.gauss(7.5, 2.5)), 1)
            reading = GlucoseReading(
                meter_id=self.meter_id,
                sequence=seq,
                meter_time=now.replace(tzinfo=None),
                clock_offset_s=0.0,
                corrected_time=now,
                time_trusted=self.runtime.clock.is_synchronised(),
                value=value,
                unit=Unit.MMOL_L,
                patient_id=f"DEMO-{(seq % 5) + 1:04d}",
            )
            add_readings(store, [reading])
            await asyncio.sleep(self.interval_s)


def components(runtime: Runtime) -> list[Component]:
    """The synthetic source when the config's ``[demo] synthetic_readings`` is on, else nothing."""
    demo = runtime.config.demo
    return [SyntheticReadings(runtime, demo.synthetic_interval_s)] if demo.synthetic_readings else []
