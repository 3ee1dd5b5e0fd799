"""The Record Access Control Point of an emulated device: requests in, responses and a record stream out.

The same procedures serve every service with stored records behind a RACP 0x2A52 (Glucose Service 1.0.1,
Blood Pressure Service 1.1): report stored records, report the number of stored records, delete stored
records and abort, with the operators all, <=, >=, within range, first and last, filtered by sequence number
or user facing time, and the response codes the specifications give for everything else. Requests are read
with the shared RACP codec (:func:`gateway.meters.codec.gls.parse_racp_request`); what a record looks like on
the air is the device's business (its ``stream`` callback), as is which records it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from dbus_fast import DBusError

from gateway.errors import ProtocolError
from gateway.meters.codec import gls


class StoredRecord(Protocol):
    """What the RACP filters look at in a device's record."""

    @property
    def sequence(self) -> int: ...


R = TypeVar("R", bound=StoredRecord)


class Indicator(Protocol):
    """The RACP characteristic as the server uses it (:class:`gateway.emulate.gatt_peripheral.Characteristic`)."""

    notifying: bool

    async def send(self, value: bytes, timeout_s: float = 2.0) -> bool: ...


class RacpServer(Generic[R]):
    """One device's RACP. ``records()`` lists what the device holds (in sequence order), ``delete(sequences)``
    forgets some, ``stream(selected)`` sends a report's records (and ends it with :meth:`respond`), and
    ``time_of(record)`` is a record's user facing time for the time filters."""

    def __init__(
        self,
        *,
        records: Callable[[], Sequence[R]],
        delete: Callable[[set[int]], None],
        stream: Callable[[list[R]], Coroutine[Any, Any, None]],
        time_of: Callable[[R], datetime],
    ) -> None:
        self._records = records
        self._delete = delete
        self._stream = stream
        self._time_of = time_of
        self.transfer: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """A report is being sent."""
        return self.transfer is not None and not self.transfer.done()

    def cancel(self) -> bool:
        """Stop a running report (the central went, or asked); True when one was running."""
        if not self.busy or self.transfer is None:
            return False
        self.transfer.cancel()
        return True

    async def stop(self) -> None:
        """Stop a running report and wait for it."""
        if self.transfer is not None:
            self.transfer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.transfer

    async def respond(self, racp: Indicator, request: int, code: gls.RacpResponseCode) -> None:
        """Indicate the response code to the request op code ``request``."""
        await racp.send(gls.encode_response_code(request, code))

    async def write(self, racp: Indicator, value: bytes) -> bool:
        """Serve one RACP write. True when it aborted a running report."""
        if not racp.notifying:
            # Client Characteristic Configuration Descriptor Improperly Configured (0x81)
            code = gls.GlsAttError.CCCD_IMPROPERLY_CONFIGURED
            raise DBusError("org.bluez.Error.Failed", f"Operation failed with ATT error: 0x{code:02x}")
        op = value[0] if value else 0
        try:
            request = gls.parse_racp_request(value)
        except gls.RacpRequestError as exc:
            await self.respond(racp, op, exc.response)
            return False
        except ProtocolError:
            await self.respond(racp, op, gls.RacpResponseCode.INVALID_OPERAND)
            return False
        if request.op == gls.RacpOpCode.ABORT:
            aborted = self.cancel()
            await self.respond(racp, op, gls.RacpResponseCode.SUCCESS)
            return aborted
        if self.busy:
            await self.respond(racp, op, gls.RacpResponseCode.PROCEDURE_NOT_COMPLETED)
            return False
        supported = (gls.RacpOpCode.REPORT_RECORDS, gls.RacpOpCode.REPORT_NUMBER, gls.RacpOpCode.DELETE_RECORDS)
        if request.op not in supported:
            await self.respond(racp, op, gls.RacpResponseCode.OP_CODE_NOT_SUPPORTED)
            return False
        selected = self.select(request)
        if isinstance(selected, gls.RacpResponseCode):
            await self.respond(racp, op, selected)
        elif request.op == gls.RacpOpCode.REPORT_NUMBER:
            await racp.send(gls.encode_number_response(len(selected)))
        elif request.op == gls.RacpOpCode.DELETE_RECORDS:
            self._delete({r.sequence for r in selected})
            done = gls.RacpResponseCode.SUCCESS if selected else gls.RacpResponseCode.NO_RECORDS_FOUND
            await self.respond(racp, op, done)
        elif not selected:
            await self.respond(racp, op, gls.RacpResponseCode.NO_RECORDS_FOUND)
        else:
            # Answer the write first (as a device does), then stream from a task of our own.
            self.transfer = asyncio.get_running_loop().create_task(self._stream(selected))
        return False

    def select(self, request: gls.RacpRequest) -> list[R] | gls.RacpResponseCode:
        """The records a request names, or the response code refusing it."""
        if not isinstance(request.operator, gls.RacpOperator):
            return gls.RacpResponseCode.OPERATOR_NOT_SUPPORTED
        records = list(self._records())
        op = gls.RacpOperator
        if request.operator is op.NULL:
            return gls.RacpResponseCode.INVALID_OPERATOR
        if request.operator is op.ALL:
            return records
        if request.operator is op.FIRST:
            return records[:1]
        if request.operator is op.LAST:
            return records[-1:]

        def key(r: R) -> int | datetime:
            return r.sequence if request.filter_type is gls.RacpFilter.SEQUENCE_NUMBER else self._time_of(r)

        values = request.values
        if request.operator is op.LESS_OR_EQUAL:
            return [r for r in records if key(r) <= values[0]]  # type: ignore[operator]
        if request.operator is op.GREATER_OR_EQUAL:
            return [r for r in records if key(r) >= values[0]]  # type: ignore[operator]
        if values[0] > values[1]:  # type: ignore[operator]
            return gls.RacpResponseCode.INVALID_OPERAND
        return [r for r in records if values[0] <= key(r) <= values[1]]  # type: ignore[operator]
