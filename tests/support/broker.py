"""Test helpers around a real mosquitto (TESTING.md §1): certificates, passwords, ACLs, size limits,
a gateway config pointing at the broker, and the forwarder run on its own event loop in a thread.

The broker process itself is :class:`gateway.emulate.broker.MosquittoBroker` (shared with the demo): a free
port picked in Python, ``user root`` when root, stopped and restarted by pid.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig, parse_config
from gateway.emulate.broker import BrokerOptions, MosquittoBroker, free_port
from gateway.emulate.platform import Receiver, ReceiverSettings
from gateway.forward.forwarder import Forwarder
from gateway.store import Store

SITE, GATEWAY = "chc-test", "gw-test"
PREFIX = f"cg/v1/{SITE}/{GATEWAY}/"


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


# -- certificates -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def _leaf(
    cn: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server
                                   else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )  # fmt: skip
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """Certificates made with ``cryptography`` (EC P-256), keys 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("clinic-gateway test CA")
    other, _ = _ca("some other CA")
    server, server_key = _leaf("localhost", ca, ca_key, server=True)
    client, client_key = _leaf("gw-test", ca, ca_key, server=False)
    pem = serialization.Encoding.PEM
    paths = Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.crt",
    )
    paths.ca.write_bytes(ca.public_bytes(pem))
    paths.other_ca.write_bytes(other.public_bytes(pem))
    paths.server_cert.write_bytes(server.public_bytes(pem))
    paths.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(paths.server_key, server_key)
    _write_key(paths.client_key, client_key)
    return paths


# -- passwords, ACLs, secrets --------------------------------------------------------------------------


def password_file(directory: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (``mosquitto_passwd -b``) for ``users``."""
    path = directory / "passwd"
    directory.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True)
    return path


def acl_file(directory: Path, text: str) -> Path:
    """A mosquitto ACL file, e.g. ``"user gateway\\ntopic readwrite cg/#\\n"``."""
    path = directory / "acl"
    path.write_text(text)
    return path


def secret_file(path: Path, value: str) -> Path:
    """A 0600 secret file (the gateway refuses one that others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(value + "\n")
    return path


def start_broker(workdir: Path, **options: Any) -> MosquittoBroker:
    """Start mosquitto with :class:`BrokerOptions` ``options`` (password_file, tls_*, message_size_limit...)."""
    broker = MosquittoBroker(workdir, BrokerOptions(**options))
    broker.start()
    return broker


# -- gateway side -------------------------------------------------------------------------------------


def gateway_config(state_dir: Path, *, host: str = "127.0.0.1", port: int, **forward: Any) -> GatewayConfig:
    """A gateway config for the forwarder tests: fast backoff, short timeouts, clock assumed synced."""
    fwd: dict[str, Any] = {
        "host": host,
        "port": port,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "ack_timeout_s": 5.0,
        "keepalive_s": 5,
        "inflight_window": 50,
    }
    fwd.update({k: str(v) if isinstance(v, Path) else v for k, v in forward.items()})
    data = {
        "gateway": {"site_id": SITE, "gateway_id": GATEWAY, "state_dir": str(state_dir)},
        "forward": fwd,
        "clock": {"sync_check": "assume_synced"},
        "web": {"enabled": False},
    }
    return parse_config(data, "test")


class ForwarderRunner:
    """The real forwarder on its own asyncio loop in a thread (the daemon runs it the same way, minus the thread)."""

    def __init__(self, config: GatewayConfig, store: Store, clock: Clock | None = None) -> None:
        self.forwarder = Forwarder(config, store, clock or SystemClock("assume_synced"))
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="forwarder-test", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self.forwarder.run())
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # surfaced to the test by stop()
            self.error = exc
        finally:
            self._loop.close()

    def start(self) -> ForwarderRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Cancel the forwarder (it closes the link cleanly) and re-raise whatever it died of."""
        if self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(15)
        assert not self._thread.is_alive(), "forwarder did not stop"
        if self.error is not None:
            raise self.error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> ForwarderRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_receiver(broker: MosquittoBroker, db: Path, **settings: Any) -> Receiver:
    """The reference receiver on ``broker``, subscribed before this returns."""
    receiver = Receiver(ReceiverSettings(host=broker.host, port=broker.port, db_path=db, **settings))
    receiver.start()
    assert receiver.connected, "receiver did not subscribe"
    return receiver


def gateway_status(receiver: Receiver) -> dict[str, Any] | None:
    """The test gateway's retained status as the receiver last stored it (None before the first)."""
    rows = receiver.store.query("SELECT doc FROM status WHERE site_id = ? AND gateway_id = ?", [SITE, GATEWAY])
    return json.loads(rows[0]["doc"]) if rows else None


def gateway_state(receiver: Receiver) -> str | None:
    """``online`` or ``offline``: the state in the test gateway's retained status (None before the first)."""
    status = gateway_status(receiver)
    return None if status is None else str(status.get("state"))


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; fail the test with ``what`` after ``timeout_s`` (generous: a deadline for
    a wedged test on a loaded 2-core machine, never a measure of speed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    if not condition():
        raise AssertionError(f"timed out waiting for {what}")


__all__ = [
    "GATEWAY",
    "PREFIX",
    "SITE",
    "ForwarderRunner",
    "MosquittoBroker",
    "Pki",
    "acl_file",
    "free_port",
    "gateway_config",
    "gateway_state",
    "gateway_status",
    "make_pki",
    "mosquitto_available",
    "password_file",
    "secret_file",
    "start_broker",
    "start_receiver",
    "wait_until",
]
