"""An emulated BlueZ for tests, benchmarks and the demo: a private dbus-daemon plus bluezoo, started as processes.

Supports any number of emulated adapters (``hci0`` .. ``hci<n-1>``): by convention ``hci0`` is the gateway's,
the others carry emulated meters (``gateway/emulate/ble_meter.py``). Real bleak then runs unmodified against
it through ``DBUS_SYSTEM_BUS_ADDRESS``::

    with BluezEnv(adapters=3) as env:        # sets DBUS_SYSTEM_BUS_ADDRESS for this process
        ... bleak with bluez={"adapter": "hci0"}, meters on env.adapter_path(1), env.adapter_path(2) ...

bluezoo is GPL-2.0-only: it runs only as its own process, through ``tools/bluezoo/run_bluezoo.py`` (which
carries run-time fixes for bluezoo 1.0.2); nothing here imports it. Both processes are stopped by their PIDs.
Needs the ``dbus-daemon`` and ``dbus-send`` programs (Debian ``dbus-daemon``, ``dbus-bin``; scripts/setup).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from gateway.errors import DeviceError

_logger = logging.getLogger(__name__)

LAUNCHER_ENV = "CG_BLUEZOO_LAUNCHER"
"""Environment variable naming the bluezoo launcher, for installs without the source tree's tools/."""
DEFAULT_LAUNCHER = Path(__file__).resolve().parents[2] / "tools" / "bluezoo" / "run_bluezoo.py"

# A system-style bus that anyone on this machine may use (it lives in a private temp dir). bluezoo calls
# Confirm() on the GATT server for every value it forwards, all at once: a burst of more than 128 hits dbus's
# default max_replies_per_connection (LimitsExceeded), hence the raised limit.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <limit name="max_replies_per_connection">65536</limit>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="signal"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="signal"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""


def adapter_address(index: int) -> str:
    """The Bluetooth address of emulated adapter ``hci<index>``."""
    return f"00:00:00:{index + 1:02X}:00:00"


def device_path(adapter_index: int, peer_address: str) -> str:
    """D-Bus path of the device ``peer_address`` as adapter ``hci<adapter_index>`` sees it."""
    return f"/org/bluez/hci{adapter_index}/dev_{peer_address.replace(':', '_')}"


class BluezEnv:
    """A private dbus-daemon and bluezoo with ``adapters`` powered adapters; a context manager."""

    def __init__(
        self,
        adapters: int = 2,
        *,
        scan_interval_s: int = 1,
        verbose: bool = False,
        set_environ: bool = True,
        launcher: Path | None = None,
        ready_timeout_s: float = 15.0,
    ) -> None:
        if adapters < 1:
            raise ValueError("at least one adapter")
        self.adapters = [adapter_address(i) for i in range(adapters)]
        self.scan_interval_s = scan_interval_s
        self.verbose = verbose
        self.set_environ = set_environ
        self.launcher = launcher or Path(os.environ.get(LAUNCHER_ENV, DEFAULT_LAUNCHER))
        self.ready_timeout_s = ready_timeout_s
        self.address: str | None = None
        self.log_text = ""
        self._tmp: Path | None = None
        self._dbus: subprocess.Popen[bytes] | None = None
        self._bluezoo: subprocess.Popen[bytes] | None = None
        self._saved_environ: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> BluezEnv:
        """Start both processes and wait until every adapter is powered. Raises DeviceError if they do not come up."""
        if not self.launcher.is_file():
            raise DeviceError(f"bluezoo launcher {self.launcher} not found (set {LAUNCHER_ENV})")
        for program in ("dbus-daemon", "dbus-send"):
            if shutil.which(program) is None:
                raise DeviceError(f"{program} is not installed (apt-get install dbus-daemon dbus-bin)")
        self._tmp = Path(tempfile.mkdtemp(prefix="cg-bluez-"))
        conf = self._tmp / "bus.conf"
        conf.write_text(BUS_CONFIG.format(socket=self._tmp / "bus.sock"), encoding="utf-8")
        with open(self._tmp / "dbus.log", "wb") as dbus_log:
            self._dbus = subprocess.Popen(
                ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile", "--print-address=1"],
                stdout=subprocess.PIPE,
                stderr=dbus_log,
                start_new_session=True,
            )
        assert self._dbus.stdout is not None
        self.address = self._dbus.stdout.readline().decode().strip()
        if not self.address:
            reason = (self._tmp / "dbus.log").read_text(errors="replace")
            self.stop()
            raise DeviceError(f"dbus-daemon did not start: {reason}")
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address)
        cmd = [sys.executable, str(self.launcher), "--auto-enable", f"--scan-interval={self.scan_interval_s}"]
        cmd += ["-vv"] if self.verbose else []
        for address in self.adapters:
            cmd += ["--adapter", address]
        with open(self._tmp / "bluezoo.log", "wb") as bluezoo_log:
            self._bluezoo = subprocess.Popen(
                cmd, env=env, stdout=bluezoo_log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_ready(env)
        if self.set_environ:
            self._saved_environ = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        _logger.debug("emulated BlueZ up at %s with %d adapters", self.address, len(self.adapters))
        return self

    def _wait_ready(self, env: dict[str, str]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        answer = ""
        pending = list(range(len(self.adapters)))
        while time.monotonic() < deadline and self._bluezoo is not None and self._bluezoo.poll() is None:
            while pending:
                probe = subprocess.run(
                    ["dbus-send", "--system", "--print-reply", "--dest=org.bluez", f"/org/bluez/hci{pending[0]}",
                     "org.freedesktop.DBus.Properties.Get", "string:org.bluez.Adapter1", "string:Powered"],
                    env=env, capture_output=True, text=True, check=False, timeout=5,
                )  # fmt: skip
                answer = probe.stdout + probe.stderr
                if "boolean true" not in probe.stdout:
                    break
                pending.pop(0)
            if not pending:
                return
            time.sleep(0.05)
        self.stop()
        raise DeviceError(f"emulated BlueZ did not become ready: {answer.strip()}\n{self.log_text[-2000:]}")

    def stop(self) -> None:
        """Stop bluezoo, then the bus, by PID; keep bluezoo's log in ``log_text``; remove the temp dir."""
        for proc in (self._bluezoo, self._dbus):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._dbus is not None and self._dbus.stdout is not None:
            self._dbus.stdout.close()
        if self.set_environ and self.address is not None and os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") == self.address:
            if self._saved_environ is None:
                os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self._saved_environ
        if self._tmp is not None:
            log = self._tmp / "bluezoo.log"
            self.log_text = log.read_text(errors="replace") if log.exists() else ""
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def errors_logged(self) -> list[str]:
        """bluezoo's ERROR lines (an exception inside the emulation), read after :meth:`stop`."""
        lines = self.log_text.splitlines()
        return ["\n".join(lines[i : i + 20]) for i, line in enumerate(lines) if line.startswith("ERROR")]

    @property
    def pids(self) -> tuple[int | None, int | None]:
        """PIDs of (dbus-daemon, bluezoo)."""
        return (
            None if self._dbus is None else self._dbus.pid,
            None if self._bluezoo is None else self._bluezoo.pid,
        )

    # -- addressing ---------------------------------------------------------------------------------------------
    @staticmethod
    def adapter_name(index: int) -> str:
        """``hci<index>``: the name bleak takes in ``bluez={"adapter": ...}``."""
        return f"hci{index}"

    @staticmethod
    def adapter_path(index: int) -> str:
        """D-Bus path of adapter ``hci<index>`` (where an emulated meter registers)."""
        return f"/org/bluez/hci{index}"

    def __enter__(self) -> BluezEnv:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
