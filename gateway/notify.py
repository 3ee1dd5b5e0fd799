"""systemd service notifications (sd_notify) and the watchdog, in a few lines of our own.

Supports the parts of the protocol the gateway uses (``sd_notify(3)``): ``READY=1``, ``STATUS=...``,
``STOPPING=1`` and ``WATCHDOG=1``, sent as one datagram to ``$NOTIFY_SOCKET`` (a path, or an abstract
socket written ``@name``). Without ``NOTIFY_SOCKET`` (tests, the demo, a shell) every call is a no-op.

Sending never blocks the event loop: a datagram socket whose reader has stalled (a hung PID 1, a test
harness that does not read) fills up, and a blocking ``sendto`` would then wait forever, taking signal
handling and every reconnect with it. The socket is non-blocking; a datagram that cannot be delivered at
once (queue full, socket gone) is dropped and counted (:meth:`Notifier.snapshot`, on the status page), and
logged once when dropping starts and once when delivery resumes, not once per datagram.

The watchdog interval is half of ``$WATCHDOG_USEC``, and only when ``$WATCHDOG_PID`` is unset or names this
process (systemd sets it to the main pid; a child that inherited the environment must not ping).
:class:`Watchdog` pings only while a health predicate holds, so a stuck loop makes systemd restart us.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

_logger = logging.getLogger(__name__)


class Notifier:
    """Sends state lines to systemd's notification socket; a no-op when there is none."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # A leading '@' means a Linux abstract socket, whose name starts with a NUL byte.
        self.address: str | None = ("\0" + address[1:] if address.startswith("@") else address) or None
        self.watchdog_interval_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2 / 1_000_000
        self.sent = 0
        self.dropped = 0
        """Datagrams that could not be delivered at once and were dropped (since start)."""
        self._dropping = 0
        """Datagrams dropped in the current episode (0: delivering)."""
        self.last_error: str | None = None

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one message without ever waiting; False (counted, never raised) when dropped."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full queue is EAGAIN at once, not a wait on a reader that may never come
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            # Never fatal: a missed ping is systemd's business (it restarts us), not a crash or a stall here.
            self._drop(exc)
            return False
        self.sent += 1
        if self._dropping:
            _logger.info("sd_notify: delivering again after %d dropped notifications", self._dropping)
            self._dropping = 0
        return True

    def _drop(self, exc: OSError) -> None:
        self.dropped += 1
        self.last_error = "socket full" if isinstance(exc, BlockingIOError) else (exc.strerror or type(exc).__name__)
        if not self._dropping:
            _logger.warning(
                "sd_notify: cannot deliver to the service manager (%s); dropping notifications until it reads again",
                self.last_error,
            )
        self._dropping += 1

    def snapshot(self) -> dict[str, Any]:
        """Delivery counts for the status page (``dropping``: the last datagram was dropped)."""
        return {
            "enabled": self.enabled,
            "sent": self.sent,
            "dropped": self.dropped,
            "dropping": self._dropping > 0,
            "last_error": self.last_error,
        }

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up is complete (``Type=notify``)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """One-line status shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        """Tell systemd a clean shutdown has begun."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """Keep-alive ping."""
        return self.notify("WATCHDOG=1")


class Watchdog:
    """Pings systemd every ``interval_s`` while ``healthy()`` is true; silent otherwise.

    Runs as a task on the daemon's event loop, so a blocked loop also stops the pings.
    """

    name = "watchdog"

    def __init__(self, notifier: Notifier, healthy: Callable[[], bool], interval_s: float | None = None) -> None:
        self.notifier = notifier
        self.is_healthy = healthy
        self.interval_s = interval_s if interval_s is not None else notifier.watchdog_interval_s
        self.pings = 0
        self.last_ok = True

    @property
    def enabled(self) -> bool:
        """True when there is a socket and a watchdog interval."""
        return self.notifier.enabled and self.interval_s is not None

    def tick(self) -> bool:
        """Ping once if healthy; return whether a ping was sent. State changes are logged once."""
        ok = self.is_healthy()
        if ok != self.last_ok:
            _logger.log(logging.INFO if ok else logging.ERROR, "watchdog: %s", "healthy again" if ok else "unhealthy")
            self.last_ok = ok
        if ok and self.notifier.watchdog():
            self.pings += 1
            return True
        return False

    async def run(self) -> None:
        """Ping forever (until cancelled); returns at once when the watchdog is off."""
        if not self.enabled or self.interval_s is None:
            return
        while True:
            self.tick()
            await asyncio.sleep(self.interval_s)
