"""Shared helpers of the USB-serial meter tests (imported by name; fixtures stay in their conftest)."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from gateway.clock import FakeClock
from gateway.emulate.serial_meter import SerialMeterEmulator
from gateway.meters.discovery import ALL_FAMILIES, identify
from gateway.meters.drivers import Timeouts
from gateway.meters.session import DownloadSession, SessionResult
from gateway.store import Store
from gateway.store import qc as store_qc
from gateway.store import readings as store_readings

TZ = ZoneInfo("Asia/Shanghai")
FAST = Timeouts(response_s=0.25, retries=3, probe_s=0.25)
"""Short timeouts for tests (no pacing: the pty answers in microseconds)."""


async def download(
    store: Store,
    clock: FakeClock,
    port: str,
    *,
    families: tuple[str, ...] = ALL_FAMILIES,
    timeouts: Timeouts = FAST,
    patient_id: str | None = None,
    set_meter_clock: bool = False,
) -> SessionResult:
    """Identify the meter on ``port`` (real probing) and run the shared DownloadSession."""
    driver = await identify(port, families, timeouts)
    session = DownloadSession(
        store,
        clock,
        driver,
        tz=TZ,
        patient_id=patient_id,
        max_clock_skew=timedelta(days=365),
        set_meter_clock=set_meter_clock,
    )
    return await session.run()


def stored_records(store: Store) -> int:
    """Meter records the store holds: the patients' readings and the meters' control-solution results."""
    return store_readings.count_readings(store) + store_qc.count_results(store)


def controls_in(emu: SerialMeterEmulator) -> int:
    """How many of the emulated meter's records are control-solution tests."""
    return sum(r.control_solution for r in emu.state.readings)


class ReplayPort:
    """A scripted serial port that replays a recorded exchange to a driver (stands in for SerialPort).

    ``script`` alternates host writes (``("host", bytes)``) and meter bytes (``("meter", bytes)``). What the
    driver writes must be, byte for byte, the next host step; the meter's bytes are handed out only once
    every host step before them was written, as a real meter would answer. Silence (a read with no meter
    bytes due) returns ``b""`` at once, which the driver sees as a timeout.
    """

    def __init__(self, script: list[tuple[str, bytes]], path: str = "replay") -> None:
        self.path = path
        self._steps = list(script)
        self.written = bytearray()
        self._pending_host = bytearray()

    def _advance_host(self) -> None:
        while self._steps and self._steps[0][0] == "host" and self._pending_host:
            want = self._steps[0][1]
            got = bytes(self._pending_host[: len(want)])
            assert want.startswith(got), f"host wrote {got.hex(' ')}, the capture has {want.hex(' ')}"
            if len(got) < len(want):
                return
            del self._pending_host[: len(want)]
            self._steps.pop(0)
        assert not self._pending_host or not self._steps or self._steps[0][0] == "host", (
            f"host wrote {bytes(self._pending_host).hex(' ')} where the capture has the meter speaking"
        )

    async def write(self, data: bytes) -> None:
        self.written += data
        self._pending_host += data
        assert self._steps, f"host wrote {data.hex(' ')} after the end of the capture"
        self._advance_host()

    async def read_some(self, timeout: float) -> bytes:
        if self._steps and self._steps[0][0] == "meter" and not self._pending_host:
            return self._steps.pop(0)[1]
        return b""

    def discard_input(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def finished(self) -> bool:
        """Every step of the capture was played."""
        return not self._steps and not self._pending_host
