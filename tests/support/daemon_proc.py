"""The real daemon (``python -m gateway run``) in a subprocess, with a test NOTIFY_SOCKET, and /proc figures.

Used by the tests that need the real process (idle CPU, RSS) and by ``bench/web_idle.py``. Readiness is the
daemon's own ``READY=1`` datagram (no sleeps); CPU time is ``utime + stime`` from ``/proc/<pid>/stat`` (what the
kernel charged the process, independent of how busy the machine is), RSS from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from support.broker import free_port

REPO = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def write_config(
    path: Path,
    state: Path,
    *,
    web: bool,
    web_port: int = 0,
    extra: str = "",
    broker_port: int | None = None,
    payload_format: str = "json",
) -> Path:
    """A daemon config: no broker reachable (a closed port) unless ``broker_port``, no meters unless ``extra``
    adds them, pages on or off."""
    path.write_text(
        f"""
[gateway]
site_id = "chc-test"
gateway_id = "gw-test"
state_dir = "{state}"

[clock]
sync_check = "assume_synced"

[forward]
host = "127.0.0.1"
port = {broker_port or free_port()}
payload_format = "{payload_format}"

[web]
enabled = {"true" if web else "false"}
host = "127.0.0.1"
port = {web_port}
secure_cookies = false
{extra}
"""
    )
    return path


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the kernel has charged process ``pid``, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14, stime field 15 (man 5 proc).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class DaemonProcess:
    """``gateway run -c CONFIG`` as a child, ready once it said ``READY=1`` on our notify socket."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.notify_path = workdir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.log = (workdir / "daemon.log").open("w+")
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONUNBUFFERED": "1"}
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Return once the daemon sent ``READY=1``; AssertionError (with its log) if it exits or never does."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(min(0.25, left))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
                continue
            if any(line == "READY=1" for line in message.splitlines()):
                return
        raise AssertionError(f"the daemon did not become ready\n--- log ---\n{self.output()[-4000:]}")

    def output(self) -> str:
        """Everything the daemon has logged so far."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        """SIGTERM, then wait (kill after 30 s); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.sock.close()
        self.log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def idle_cpu_fraction(pid: int, window_s: float) -> float:
    """CPU seconds the process used per second over the next ``window_s`` seconds (1.0 = one whole core)."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)  # the measurement window itself; nothing is awaited
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)
