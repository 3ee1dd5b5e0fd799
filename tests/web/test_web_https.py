"""Issue 15 item 8: HTTPS for the desk pages, for real.

The shipped nginx site (``config/nginx/clinic-gateway.conf``, as ``scripts/install-pi --print-nginx-site``
renders it) runs in the real nginx on free ports, with a freshly generated certificate, in front of the
daemon's own web component configured as the example config ships it (loopback, ``trusted_proxy``, secure
cookies). Checked: TLS with the certificate, HSTS, plain HTTP redirecting, a login session with its Secure cookie
and CSRF over HTTPS, the client's address reaching the login limits, and a spoofed ``X-Forwarded-For`` ignored.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.broker import free_port
from web_harness import HttpBrowser, add_users, make_config, serving

from gateway.clock import SystemClock
from gateway.runtime import Runtime, open_runtime
from gateway.store import audit

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed (scripts/setup installs it)")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed EC P-256 server certificate for localhost / 127.0.0.1, as install-pi generates one."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "pages.crt", directory / "pages.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx did not listen on {port}: {log.read_text()}")


class Proxy:
    def __init__(self, http_port: int, https_port: int, cert: Path) -> None:
        self.http_port, self.https_port = http_port, https_port
        self.tls = ssl.create_default_context(cafile=str(cert))  # the desk PC trusts this certificate


@pytest.fixture
def https_runtime(tmp_path: Path) -> Iterator[Runtime]:
    # As config/gateway.example.toml ships the [web] section: loopback, behind the proxy, secure cookies.
    config = make_config(
        tmp_path / "state", web={"host": "127.0.0.1", "trusted_proxy": "127.0.0.1", "secure_cookies": True}
    )
    rt = open_runtime(config, clock=SystemClock("assume_synced"))
    add_users(rt)
    yield rt
    rt.store.close()


def _render_site(prefix: Path, cert: Path, key: Path, upstream: str, http_port: int, https_port: int) -> None:
    """The shipped site as install-pi renders it, inside a minimal main config (Debian's nginx.conf includes it
    the same way, inside http{})."""
    site = subprocess.run(
        [str(REPO / "scripts/install-pi"), "--print-nginx-site", "--pages-http-port", str(http_port),
         "--pages-https-port", str(https_port), "--pages-upstream", upstream],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert not re.search(r"@[A-Z_]+@", site)  # every placeholder filled in
    site = site.replace("/etc/clinic-gateway/tls/pages.crt", str(cert))
    site = site.replace("/etc/clinic-gateway/tls/pages.key", str(key))
    (prefix / "site.conf").write_text(site)
    temp = "\n".join(f"  {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                             "uwsgi", "scgi"))  # fmt: skip
    (prefix / "nginx.conf").write_text(
        f"{'user root;' if os.geteuid() == 0 else ''}\nworker_processes 1;\nerror_log {prefix}/error.log notice;\n"
        f"pid {prefix}/nginx.pid;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n  access_log off;\n{temp}\n  include {prefix}/site.conf;\n}}\n"
    )


def _start_nginx(prefix: Path) -> subprocess.Popen[bytes]:
    assert NGINX is not None
    return subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def proxy(https_runtime: Runtime, tmp_path: Path) -> Iterator[Proxy]:
    cert, key = make_certificate(tmp_path)
    with serving(https_runtime) as web:
        # Ports that were free a moment ago may be taken by another test worker before nginx binds them:
        # then nginx exits at once ("Address already in use") and we try other ports.
        for attempt in range(5):
            prefix = tmp_path / f"nginx-{attempt}"
            prefix.mkdir()
            http_port, https_port = free_port(), free_port()
            if http_port == https_port:
                continue
            _render_site(prefix, cert, key, f"127.0.0.1:{web.port}", http_port, https_port)
            proc = _start_nginx(prefix)
            try:
                wait_listening(https_port, proc, prefix / "error.log")
                wait_listening(http_port, proc, prefix / "error.log")
            except AssertionError:
                proc.terminate()
                proc.wait(timeout=10)
                if "Address already in use" in (prefix / "error.log").read_text() and attempt < 4:
                    continue
                raise
            break
        try:
            yield Proxy(http_port, https_port, cert)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_tls_hsts_and_the_redirect(proxy: Proxy) -> None:
    browser = HttpBrowser(proxy.https_port, tls=proxy.tls, host="localhost")
    status, body = browser.request("GET", "/login")
    assert status == 200 and 'name="csrf_token"' in body
    assert browser.tls_version in ("TLSv1.2", "TLSv1.3")
    assert browser.headers is not None
    assert browser.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "Secure" in (browser.headers["Set-Cookie"] or "")
    # An untrusted certificate is refused (the desk PC must trust this one, not any).
    with pytest.raises(ssl.SSLCertVerificationError):
        HttpBrowser(proxy.https_port, tls=ssl.create_default_context(), host="localhost").request("GET", "/login")
    # Plain HTTP only redirects, to the same page over HTTPS.
    plain = HttpBrowser(proxy.http_port, host="localhost")
    status, _ = plain.request("GET", "/nurse?x=1")
    assert status == 301
    assert plain.headers is not None
    assert plain.headers["Location"] == f"https://localhost:{proxy.https_port}/nurse?x=1"


def test_a_login_session_works_over_https(proxy: Proxy, https_runtime: Runtime) -> None:
    browser = HttpBrowser(proxy.https_port, tls=proxy.tls, host="localhost", source="127.0.0.7")
    assert browser.login("nina") == 302
    assert browser.headers is not None and browser.headers["Location"] == "/nurse"
    status, body = browser.request("GET", "/nurse")
    assert status == 200 and "nina" in body
    # The gateway saw the desk PC's address (from nginx's X-Forwarded-For), not the proxy's.
    logins = [r for r in audit.recent(https_runtime.store) if r.action == "login"]
    assert logins[0].detail["ip"] == "127.0.0.7"
    assert browser.logout("/nurse") == 302
    assert browser.request("GET", "/nurse")[0] == 302


def test_csrf_over_https_checks_the_origin(proxy: Proxy) -> None:
    """Flask sees https and the browser's host (X-Forwarded-Proto/-Host), so its HTTPS referrer check runs."""
    browser = HttpBrowser(proxy.https_port, tls=proxy.tls, host="localhost")
    token = browser.csrf()
    form = {"username": "nina", "password": "correct horse battery", "csrf_token": token}
    assert browser.request("POST", "/login", form, headers={"Referer": "https://evil.example/login"})[0] == 400
    assert browser.request("POST", "/login", form)[0] == 302  # Referer: this origin, as a browser sends it


def test_a_spoofed_forwarded_for_does_not_escape_the_address_limit(proxy: Proxy, https_runtime: Runtime) -> None:
    limit = https_runtime.config.web.login_attempts_per_address_per_minute
    statuses = []
    for i in range(limit + 1):
        browser = HttpBrowser(proxy.https_port, tls=proxy.tls, host="localhost", source="127.0.0.8")
        token = browser.csrf()
        statuses.append(
            browser.request(
                "POST",
                "/login",
                {"username": f"guess{i}", "password": "x", "csrf_token": token},
                headers={"X-Forwarded-For": f"10.9.9.{i}", "X-Forwarded-Proto": "http"},
            )[0]
        )
    assert statuses == [401] * limit + [429]
