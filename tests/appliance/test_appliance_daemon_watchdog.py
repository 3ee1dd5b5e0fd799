"""The real daemon (``gateway run``) in a subprocess under a test NOTIFY_SOCKET and WATCHDOG_USEC.

It must send READY=1, then WATCHDOG=1 periodically while healthy, stop pinging while a loop is stuck, resume
when it recovers, and say STOPPING=1 on SIGTERM. The stuck loop is the health monitor's disk probe blocked in
open() on a FIFO put at its probe path: a real blocking system call, standing in for I/O on a failing SD card.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 400_000  # ping every 0.2 s
PROBE = ".health-probe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def recv_until(
    sock: socket.socket,
    predicate: Callable[[list[str]], bool],
    timeout: float,
    proc: subprocess.Popen[str] | None = None,
) -> list[str]:
    """Collect messages until ``predicate(messages)`` holds, ``timeout`` passes or ``proc`` exits."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(0.25, left))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            if proc is not None and proc.poll() is not None:
                break
            continue
        if predicate(got):
            break
    return got


def block_probe(state: Path) -> None:
    """Replace the probe file by a FIFO (retrying: the monitor may re-create the file in between)."""
    for _ in range(100):
        (state / PROBE).unlink(missing_ok=True)
        try:
            os.mkfifo(state / PROBE)
            return
        except FileExistsError:
            continue
    raise AssertionError("could not place the FIFO")


@pytest.fixture
def daemon_env(tmp_path: Path) -> tuple[Path, Path, socket.socket, dict[str, str]]:
    state = tmp_path / "state"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f"""
[gateway]
site_id = "chc-test"
gateway_id = "gw-test"
state_dir = "{state}"

[store]
health_interval_s = 0.1

[clock]
sync_check = "assume_synced"

[forward]
host = "127.0.0.1"
port = {free_port()}

[web]
enabled = false
"""
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WATCHDOG_PID", None)
    return cfg, state, sock, env


def test_daemon_pings_while_healthy_and_stops_when_stuck(
    daemon_env: tuple[Path, Path, socket.socket, dict[str, str]],
) -> None:
    cfg, state, sock, env = daemon_env
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        scenario(proc, state, sock)
    except AssertionError as exc:
        proc.kill()
        out = proc.communicate(timeout=10)[0]
        raise AssertionError(f"{exc}\n--- daemon output (tail) ---\n{out[-4000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=10)[0] if proc.stdout and not proc.stdout.closed else ""
        sock.close()
    assert "Traceback" not in out, out


def scenario(proc: subprocess.Popen[str], state: Path, sock: socket.socket) -> None:
    """READY, pings, a stuck probe silences them, recovery brings them back, SIGTERM stops cleanly."""
    first = recv_until(sock, lambda got: sum(m == "WATCHDOG=1" for m in got) >= 5, timeout=60, proc=proc)
    assert any(m.startswith("READY=1") for m in first), first
    assert sum(m == "WATCHDOG=1" for m in first) >= 5, first
    ready_at = next(i for i, m in enumerate(first) if m.startswith("READY=1"))
    assert "WATCHDOG=1" not in first[:ready_at]  # no ping before start-up is complete

    block_probe(state)
    # Within three health intervals the monitor counts as stuck; drain what was sent until then ...
    recv_until(sock, lambda got: False, timeout=1.5)
    # ... after which no ping may arrive for many watchdog intervals (status updates may).
    stuck = recv_until(sock, lambda got: "WATCHDOG=1" in got, timeout=2.0)
    assert "WATCHDOG=1" not in stuck, stuck
    assert proc.poll() is None  # the daemon itself keeps running; systemd would restart it

    # Unblock the probe: it completes, the monitor is healthy again, the pings resume.
    reader = os.open(state / PROBE, os.O_RDONLY | os.O_NONBLOCK)
    try:
        again = recv_until(sock, lambda got: got.count("WATCHDOG=1") >= 2, timeout=10)
    finally:
        os.close(reader)
    assert again.count("WATCHDOG=1") >= 2, again

    proc.send_signal(signal.SIGTERM)
    tail = recv_until(sock, lambda got: "STOPPING=1" in got, timeout=10)
    assert "STOPPING=1" in tail
    assert proc.wait(timeout=30) == 0
