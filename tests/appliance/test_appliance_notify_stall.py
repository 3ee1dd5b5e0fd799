"""A NOTIFY_SOCKET nobody reads must not freeze the daemon (issue 15, item 11).

The real daemon (``gateway run``) in a subprocess, its NOTIFY_SOCKET a bound datagram socket whose queue the
test has filled and does not read (a stalled PID 1), and a small WATCHDOG_USEC so that it pings often. It
must keep working (the demo's synthetic readings keep landing in the outbox, the pages keep answering), count
the dropped notifications on its status snapshot, log the episode once, deliver again once the socket is
read, and still stop promptly and cleanly on SIGTERM while the socket is full.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.broker import free_port
from support.daemon_proc import write_config

REPO = Path(__file__).resolve().parents[2]
TOKEN = "status-token-" + "0" * 32
DEADLINE_S = 60.0
DROP_WARNING = "sd_notify: cannot deliver"
RECOVERED = "sd_notify: delivering again"


def fill(address: str) -> int:
    """Send datagrams to ``address`` until its queue is full; return how many went in."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        sent = 0
        while True:
            try:
                sender.sendto(b"FILLER=1", address)
            except BlockingIOError:
                return sent
            sent += 1


def wait_for(predicate: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``predicate`` until it holds (generous deadline); fail early if the daemon exits."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {DEADLINE_S} s\n--- daemon log (tail) ---\n{log.read_text()[-4000:]}")


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log: Path
    notify: socket.socket
    address: str
    web_port: int

    def status(self) -> dict[str, Any] | None:
        """``/api/status`` with the monitoring token, or None while the pages do not answer."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.web_port}/api/status", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                doc: dict[str, Any] = json.load(resp)
                return doc
        except (urllib.error.URLError, OSError):
            return None

    def drain(self) -> list[str]:
        """Read what is queued on the notify socket now."""
        got: list[str] = []
        self.notify.setblocking(False)
        try:
            while True:
                got.append(self.notify.recv(4096).decode())
        except BlockingIOError:
            return got


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    state = tmp_path / "state"
    token = tmp_path / "status-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    web_port = free_port()
    cfg = write_config(
        tmp_path / "gateway.toml",
        state,
        web=True,
        web_port=web_port,
        extra=f'status_token_file = "{token}"\n\n[demo]\nsynthetic_readings = true\nsynthetic_interval_s = 0.05\n',
    )
    address = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(address)
    assert fill(address) > 0  # the stalled reader: its queue is full before the daemon starts
    env = {
        **os.environ,
        "NOTIFY_SOCKET": address,
        "WATCHDOG_USEC": "100000",  # a ping every 0.05 s
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(cfg)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Daemon(proc, log, notify, address, web_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        notify.close()


def test_daemon_keeps_working_and_stops_on_sigterm_while_nobody_reads_notify_socket(daemon: Daemon) -> None:
    proc, log = daemon.proc, daemon.log
    seen: dict[str, Any] = {}

    def working_while_dropping() -> bool:
        doc = daemon.status()
        if doc is None:
            return False
        unsent, dropped = doc["outbox"]["unsent"], doc["systemd_notify"]["dropped"]
        first = seen.setdefault("first_unsent", unsent)
        seen["doc"] = doc
        # Readings keep landing (the event loop runs) and many pings were dropped rather than waited on.
        return bool(unsent >= first + 5 and dropped >= 10)

    wait_for(working_while_dropping, "readings stored and notifications dropped while the socket is full", proc, log)
    notify_state = seen["doc"]["systemd_notify"]
    assert notify_state["dropping"] is True and notify_state["last_error"] == "socket full"
    assert log.read_text().count(DROP_WARNING) == 1  # one line for the episode, not one per datagram

    # The reader comes back: the pings arrive again, and the end of the episode is logged once.
    received: list[str] = []

    def pings_arrive() -> bool:
        received.extend(daemon.drain())
        return "WATCHDOG=1" in received and RECOVERED in log.read_text()

    wait_for(pings_arrive, "watchdog pings delivered once the socket is read", proc, log)

    # Stalled again, then SIGTERM: the daemon stops cleanly instead of hanging in sendto().
    fill(daemon.address)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE_S) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "Traceback" not in text, text[-4000:]
    assert "gateway stopped" in text
