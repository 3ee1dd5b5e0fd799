"""pyserial adapter: open a port with a family's line settings, timed reads and writes, nothing else.

The only module that imports :mod:`serial`. Reads wait on the event loop for the port's file descriptor
(``add_reader``) and then take what is buffered without blocking; writes of a meter's short frames go
straight to the kernel; only open and close run in a worker thread.
Every pyserial / OS error is translated here, once, into the gateway's DeviceError tree:
a missing port is :class:`~gateway.errors.DeviceNotFound`, an unplugged cable (the read that "reports
readiness but returned no data", EIO on write) is :class:`~gateway.errors.DeviceDisconnected`, silence is
reported by :meth:`SerialPort.read_some` returning ``b""`` and by callers as DeviceTimeout.

Modem lines (DTR/RTS) are left alone: meter cables do not use them, and on a pseudo-terminal (the
emulators) their ioctls fail with ENOTTY.

A port is a device path (``/dev/ttyUSB0``, an emulator's pty) or a pyserial URL: ``cp2110:///dev/hidraw3``
opens a Silicon Labs CP2110 USB-HID UART bridge (the TaiDoc TD-42xx cable) through pyserial's ``cp2110``
handler, which needs the ``hidapi`` package. Such handles have no file descriptor to wait on, so their reads
wait in a worker thread instead. :func:`list_hid_uart_bridges` lists the CP2110 bridges present.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import serial
from serial.tools import list_ports

from gateway.errors import DeviceDisconnected, DeviceError, DeviceNotFound

_logger = logging.getLogger(__name__)

_DISCONNECT_ERRNOS = {errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF}
_NOT_FOUND_ERRNOS = {errno.ENOENT, errno.ENXIO, errno.ENODEV}

CP2110_VID_PID = (0x10C4, 0xEA80)
"""Silicon Labs CP2110 USB-HID UART bridge (the TaiDoc TD-42xx cable): a hidraw device, not a tty."""
CP2110_SCHEME = "cp2110://"


@dataclass(frozen=True, slots=True)
class LineSettings:
    """A family's serial line: baud rate, framing and flow control."""

    baudrate: int
    bytesize: int = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    xonxoff: bool = False


@dataclass(frozen=True, slots=True)
class PortInfo:
    """A serial port the OS lists, with its USB identity when it has one."""

    device: str
    vid: int | None
    pid: int | None
    serial_number: str | None
    description: str | None


def list_serial_ports() -> list[PortInfo]:
    """Serial ports present now (``serial.tools.list_ports``)."""
    return [
        PortInfo(
            device=p.device, vid=p.vid, pid=p.pid, serial_number=p.serial_number, description=p.description or None
        )
        for p in list_ports.comports()
    ]


def list_hid_uart_bridges() -> list[PortInfo]:
    """CP2110 bridges present now, as ``cp2110://<hid path>`` ports (none when ``hidapi`` is missing)."""
    try:
        import hid  # hidapi: only needed for the HID-bridged cables
    except ImportError:
        return []
    vid, pid = CP2110_VID_PID
    ports: list[PortInfo] = []
    for device in hid.enumerate(vid, pid):
        raw_path = device.get("path", b"")
        path = raw_path.decode("utf-8", "replace") if isinstance(raw_path, bytes) else str(raw_path)
        ports.append(
            PortInfo(
                device=CP2110_SCHEME + path,
                vid=vid,
                pid=pid,
                serial_number=device.get("serial_number") or None,
                description=device.get("product_string") or None,
            )
        )
    return ports


def is_url(path: str) -> bool:
    """True for a pyserial URL (``cp2110://...``, ``loop://``) rather than a device path."""
    return "://" in path


def port_for(path: str) -> str:
    """What to open for ``path``: a hidraw node (a CP2110 bridge, e.g. the udev name ``/dev/meter-taidoc-0``)
    becomes its ``cp2110://`` URL; device paths and URLs stay as they are."""
    if is_url(path):
        return path
    resolved = os.path.realpath(path)
    return CP2110_SCHEME + resolved if os.path.basename(resolved).startswith("hidraw") else path


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISCONNECT_ERRNOS:
        return True
    text = str(exc)
    # pyserial's own words for a vanished device (serialposix.read), for a write on a dead fd, and for a
    # CP2110 bridge whose HID reader stopped (protocol_cp2110.read).
    return any(words in text for words in ("returned no data", "Errno 5", "Input/output error", "reader thread died"))


@contextmanager
def translate_serial_errors(what: str, port: str) -> Iterator[None]:
    """The one translation point: SerialException / OSError -> DeviceError subclasses."""
    try:
        yield
    except (serial.SerialException, OSError) as exc:
        if _is_disconnect(exc):
            raise DeviceDisconnected(f"{port}: {what}: the meter was unplugged ({exc})", device_id=port) from exc
        raise DeviceError(f"{port}: {what}: {exc}", device_id=port) from exc


class SerialPort:
    """One open serial port. Use :meth:`open`; every method may raise DeviceError."""

    def __init__(self, handle: serial.SerialBase, path: str, settings: LineSettings) -> None:
        self._handle = handle
        self.path = path
        self.settings = settings
        self.bytes_written = 0
        self.bytes_read = 0
        self._fd = _fileno(handle)
        """The descriptor reads wait on; None for URL handlers without one (reads then wait in a thread)."""

    @classmethod
    async def open(cls, path: str, settings: LineSettings) -> SerialPort:
        """Open ``path`` (device path or pyserial URL) with ``settings`` (exclusive, no modem-line changes)."""

        def _open() -> serial.SerialBase:
            handle = _new_handle(port_for(path))
            handle.baudrate = settings.baudrate
            handle.bytesize = settings.bytesize
            handle.parity = settings.parity
            handle.stopbits = settings.stopbits
            handle.xonxoff = settings.xonxoff
            handle.rtscts = handle.dsrdtr = False
            handle.exclusive = True
            handle.timeout = 0  # non-blocking: reads wait on the event loop (read_some)
            handle.write_timeout = 5.0
            try:
                handle.open()
            except serial.SerialException as exc:
                if exc.errno in _NOT_FOUND_ERRNOS:
                    raise DeviceNotFound(f"{path}: no such serial port", device_id=path) from exc
                raise DeviceError(f"{path}: cannot open serial port: {exc}", device_id=path) from exc
            except OSError as exc:
                raise DeviceError(f"{path}: cannot open serial port: {exc}", device_id=path) from exc
            return handle

        handle = await asyncio.to_thread(_open)
        _logger.debug("opened %s at %d baud", path, settings.baudrate)
        return cls(handle, path, settings)

    def _read_now(self) -> bytes:
        """Whatever is buffered, without waiting (the handle is non-blocking)."""
        with translate_serial_errors("read", self.path):
            data = bytes(self._handle.read(max(1, self._handle.in_waiting)))
        self.bytes_read += len(data)
        return data

    async def read_some(self, timeout: float) -> bytes:
        """Whatever arrives within ``timeout`` seconds (at least one byte), or ``b""`` on silence.

        Waits on the event loop for the port's file descriptor (no thread hop per read: turnaround time
        on a 9600-baud line is what the download's speed is made of).
        """
        data = self._read_now()
        if data:
            return data
        if self._fd is None:
            data = await asyncio.to_thread(self._read_waiting, timeout)
            self.bytes_read += len(data)
            return data
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self._fd

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            return b""
        finally:
            loop.remove_reader(fd)
        return self._read_now()

    def _read_waiting(self, timeout: float) -> bytes:
        """Blocking read of a handle without a descriptor: the first byte within ``timeout``, then the rest."""
        with translate_serial_errors("read", self.path):
            self._handle.timeout = timeout
            try:
                data = bytes(self._handle.read(1))
            finally:
                self._handle.timeout = 0
            if data:
                data += bytes(self._handle.read(self._handle.in_waiting))
        return data

    async def write(self, data: bytes) -> None:
        """Write ``data`` (a meter frame or command: a few dozen bytes, taken by the kernel at once)."""
        with translate_serial_errors("write", self.path):
            self._handle.write(data)
        self.bytes_written += len(data)

    def discard_input(self) -> None:
        """Drop unread input (stale bytes from an earlier exchange or probe)."""
        with translate_serial_errors("reset input", self.path):
            self._handle.reset_input_buffer()

    async def close(self) -> None:
        """Close the port (never raises for an already-vanished device)."""
        try:
            await asyncio.to_thread(self._handle.close)
        except (serial.SerialException, OSError) as exc:
            _logger.debug("closing %s: %s", self.path, exc)


def _new_handle(path: str) -> serial.SerialBase:
    """An unopened pyserial handle for a device path or a URL (``cp2110://`` needs ``hidapi``)."""
    if not is_url(path):
        handle = serial.Serial()
        handle.port = path
        return handle
    try:
        return serial.serial_for_url(path, do_not_open=True)
    except ImportError as exc:  # the cp2110 handler imports hidapi's ``hid``
        raise DeviceError(
            f"{path}: this kind of port needs a package that is not installed ({exc})", device_id=path
        ) from exc
    except (ValueError, serial.SerialException) as exc:
        raise DeviceError(f"{path}: not a usable serial port URL: {exc}", device_id=path) from exc


def _fileno(handle: serial.SerialBase) -> int | None:
    try:
        return int(handle.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None
