"""systemd service notifications (sd_notify) and the watchdog, in a few lines of our own.

Supports the parts of the protocol the gateway uses (``sd_notify(3)``): ``READY=1``, ``STATUS=...``,
``STOPPING=1`` and ``WATCHDOG=1``, sent as one datagram to ``$NOTIFY_SOCKET`` (a path, or an abstract
socket written ``@name``). Without ``NOTIFY_SOCKET`` (tests, the demo, a shell) every call is a no-op.

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

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens."""
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one message; False (logged, never raised) when it could not be sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            # Never fatal: a missed ping is systemd's business (it restarts us), not a crash here.
            _logger.warning("sd_notify failed: %s", exc)
            return False
        return True

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
