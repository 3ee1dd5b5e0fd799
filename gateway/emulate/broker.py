"""A private mosquitto broker on loopback, for the demo and the tests: started and stopped by pid.

Debian's mosquitto 2.0.11 has no "random port" (``listener 0`` means a unix socket there), so a free
port is picked here first. Running as root, ``user root`` keeps mosquitto from dropping to the
``mosquitto`` user, which could not read our 0600 key files or temp directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import GatewayError


class BrokerStartError(GatewayError):
    """mosquitto could not be started (not installed, bad config, port taken)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class BrokerOptions:
    """What the private broker offers. TLS needs ca/cert/key files (made by the caller)."""

    port: int = 0
    """0: pick a free port."""
    host: str = "127.0.0.1"
    persistence: bool = True
    password_file: Path | None = None
    acl_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_client_cert: bool = False
    message_size_limit: int | None = None
    extra_lines: list[str] = field(default_factory=list)


class MosquittoBroker:
    """One mosquitto process with its own config and data directory."""

    def __init__(self, workdir: Path, options: BrokerOptions | None = None) -> None:
        self.workdir = workdir
        self.options = options or BrokerOptions()
        self.port = self.options.port or free_port(self.options.host)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def host(self) -> str:
        return self.options.host

    def config_text(self) -> str:
        """The mosquitto.conf for these options."""
        o = self.options
        data_dir = self.workdir / "data"
        lines = []
        if os.geteuid() == 0:
            lines.append("user root")
        if o.message_size_limit is not None:
            # 2.0.11 still honours the global option; max_packet_size is the newer per-listener knob.
            lines.append(f"message_size_limit {o.message_size_limit}")
        lines += [
            "per_listener_settings true",
            f"persistence {'true' if o.persistence else 'false'}",
            f"persistence_location {data_dir}/",
            "autosave_interval 1",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"listener {self.port} {o.host}",
        ]
        if o.password_file is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {o.password_file}"]
        if o.acl_file is not None:
            lines.append(f"acl_file {o.acl_file}")
        if o.tls_cert is not None:
            lines += [f"cafile {o.tls_ca}", f"certfile {o.tls_cert}", f"keyfile {o.tls_key}"]
            if o.require_client_cert:
                lines += ["require_certificate true"]
        lines += o.extra_lines
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto and wait until it accepts TCP connections."""
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            raise BrokerStartError("mosquitto is not installed (scripts/setup installs it)")
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text(), encoding="utf-8")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-500:]
                raise BrokerStartError(f"mosquitto exited with {self.process.returncode}: {tail}")
            try:
                with socket.create_connection((self.options.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerStartError(f"mosquitto did not listen on port {self.port} within {timeout_s} s")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """Stop our mosquitto (by pid) and wait for it."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start on the same port (persistent sessions survive with persistence on)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
