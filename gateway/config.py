"""The gateway's one configuration model.

Loaded once from a TOML file by :func:`load_config`, with environment overrides, validated as a whole, and
passed down explicitly. Every problem is reported with its key path (``forward.port: ...``) in one
:class:`~gateway.errors.ConfigError`. Secrets are never values in the file: they are paths to files that
only the gateway's user may read (mode 0600 or stricter).

Environment overrides: ``CG_<SECTION>__<KEY>=value`` (double underscore between levels), e.g.
``CG_FORWARD__PORT=8883``. Values are read as TOML scalars when they parse as one, else as strings.
"""

from __future__ import annotations

import codecs
import os
import pwd
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.errors import ConfigError

ENV_PREFIX = "CG_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Section):
    """Identity of this gateway and where it keeps its state."""

    site_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    gateway_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    state_dir: Path = Path("/var/lib/clinic-gateway")
    timezone: str = "Asia/Shanghai"
    """The clinic's time zone: meters keep local wall-clock time."""

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class StoreSection(_Section):
    """Local SQLite store and image directory."""

    path: Path | None = None
    """Database file; default ``<state_dir>/gateway.db``."""
    image_dir: Path | None = None
    """Image directory; default ``<state_dir>/images``."""
    min_free_mb: int = Field(default=200, ge=0)
    """Below this much free space new clinical intake is refused (stored data stays safe)."""
    low_disk_warn_mb: int = Field(default=1000, ge=0)
    """Below this much free space a low-disk warning goes to the status page and the events topic."""
    retention_days: int = Field(default=90, ge=1)
    """Records and images the platform confirmed are pruned after this many days."""
    max_page_count: int | None = Field(default=None, ge=16)
    """Hard cap on database pages (tests use it to emulate a full disk)."""
    health_interval_s: float = Field(default=30.0, gt=0)
    """How often the health monitor checks the clock, free space and that the state directory takes writes."""


class TLSSection(_Section):
    """TLS to the broker; ``cert_file`` + ``key_file`` for mutual TLS."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    """Private key: a secret file (mode 0600)."""
    insecure_skip_hostname: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TLSSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return self


class ForwardSection(_Section):
    """MQTT link to the platform."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = None
    """Default ``cg-<site_id>-<gateway_id>``."""
    username: str | None = None
    password_file: Path | None = None
    tls: TLSSection | None = None
    topic_prefix: str = "cg/v1/{site_id}/{gateway_id}/"
    payload_format: Literal["json", "fhir"] = "json"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)
    inflight_window: int = Field(default=500, ge=1, le=1000)
    ack_timeout_s: float = Field(default=60.0, gt=0)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    reconnect_probe_s: float = Field(default=1.0, ge=0, le=60)
    """While the broker is unreachable, try its port (a bare TCP connect) about this often and reconnect as
    soon as it answers, instead of sitting out the backoff; 0 turns probing off."""
    chunk_size: int = Field(default=128 * 1024, ge=1024, le=64 * 1024 * 1024)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.endswith("/") or "#" in v or "+" in v:
            raise ValueError("must end with '/' and contain no MQTT wildcards")
        return v


class ClockSection(_Section):
    """How to tell whether the system clock is synchronised (the Pi has no RTC)."""

    sync_check: Literal["adjtimex", "file", "assume_synced", "assume_unsynced"] = "adjtimex"
    sync_file: Path | None = None
    """With ``sync_check = "file"``: synchronised while this file exists (e.g. systemd-timesyncd's
    ``/run/systemd/timesync/synchronized``)."""

    @model_validator(mode="after")
    def _file(self) -> ClockSection:
        if self.sync_check == "file" and self.sync_file is None:
            raise ValueError("sync_check = 'file' needs sync_file")
        return self


class WebSection(_Section):
    """Local pages."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    secret_key_file: Path | None = None
    """Flask session secret (secret file). Default ``<state_dir>/web-secret``, created 0600 on first run."""
    secure_cookies: bool = True
    """Mark cookies Secure; turn off only for plain-HTTP loopback demos."""
    login_attempts_per_minute: int = Field(default=5, ge=1)
    """Login attempts per user name (from any address) within a minute; more get HTTP 429 unchecked."""
    login_attempts_per_address_per_minute: int = Field(default=20, ge=1)
    """Login attempts from one client address (for any user names) within a minute."""
    session_idle_minutes: int = Field(default=30, ge=1)
    """A desk session ends after this long without a page opened or a form sent (polling does not count)."""
    session_max_hours: int = Field(default=12, ge=1, le=168)
    """A desk session ends this long after the login, however busy (a clinic day)."""
    trusted_proxy: str | None = None
    """Address of the reverse proxy in front of the pages (``127.0.0.1`` behind the installed nginx): only
    from there are ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` believed (client address, HTTPS)."""
    status_token_file: Path | None = None
    """Secret file (0600) with a bearer token that lets monitoring scripts read ``/api/status`` without a login."""


class HealthSection(_Section):
    """When the status badge, ``/healthz`` and ``/metrics`` call something a problem (:mod:`gateway.health`).

    Free space uses ``store.low_disk_warn_mb`` (amber) and ``store.min_free_mb`` (red) and is not repeated here.
    """

    broker_down_s: float = Field(default=120.0, gt=0)
    """The link to the platform's broker may be down this long before it is red (amber until then)."""
    oldest_unsent_s: float = Field(default=1800.0, gt=0)
    """A message still unconfirmed by the platform after this long is amber (data is late at the hospital)."""
    restart_window_s: float = Field(default=3600.0, gt=0)
    """A component restarted after a failure within this long is amber."""
    page_stale_s: float = Field(default=60.0, gt=0)
    """The status page turns red ("no answer from the gateway") when its last good refresh is this old."""


class BleSection(_Section):
    """Bluetooth LE glucose meters (Glucose Service) and blood pressure cuffs (Blood Pressure Service)."""

    enabled: bool = False
    adapter: str = "hci0"
    scan_timeout_s: float = Field(default=5.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    connect_retries: int = Field(default=3, ge=0)
    auto_sync: bool = False
    """Download any GLS meter that advertises, without a desk request."""
    racp_timeout_s: float = Field(default=10.0, gt=0)
    """Longest wait for a RACP answer or a GATT read/write."""
    record_timeout_s: float = Field(default=10.0, gt=0)
    """Longest silence between two records of a report before the download counts as stalled."""
    auto_sync_interval_s: float = Field(default=60.0, gt=0)
    """With ``auto_sync``: how often to scan for meters."""
    auto_sync_cooldown_s: float = Field(default=900.0, ge=0)
    """With ``auto_sync``: do not download the same meter again within this many seconds."""
    cuff_quiet_s: float = Field(default=5.0, gt=0)
    """A blood pressure cuff without stored-record access (BLS 1.0) sends its measurements after connecting and
    then ends the connection or goes quiet: this long without a measurement ends its download."""


class BloodPressureSection(_Section):
    """Blood pressure readings at the desk (the programme's target: readings above it are highlighted)."""

    target_systolic_mmhg: int = Field(default=140, ge=60, le=250)
    target_diastolic_mmhg: int = Field(default=90, ge=30, le=150)


class SerialSection(_Section):
    """USB-serial glucose meters."""

    enabled: bool = False
    poll_interval_s: float = Field(default=1.0, gt=0)
    ports: list[str] = []
    """Extra ports to probe besides USB ones recognised by VID:PID (e.g. emulator ptys)."""
    set_meter_clock: bool = False
    """Set the meter's clock to the gateway's when the gateway's clock is trusted."""
    auto_sync: bool = True
    response_timeout_s: float = Field(default=1.0, gt=0)
    """Silence after a request (or inside a dump) that counts as no answer."""
    retries: int = Field(default=3, ge=0, le=10)
    """Repeats of a request that got a damaged or no answer (the protocols' own retry)."""
    probe_timeout_s: float = Field(default=0.5, gt=0)
    """Answer timeout while trying a family on a newly plugged cable."""
    reprobe_interval_s: float = Field(default=5.0, gt=0)
    """How often a cable that stays plugged in is asked again which meter (if any) is on its jack."""


class MetersSection(_Section):
    """Glucose meters."""

    ble: BleSection = BleSection()
    serial: SerialSection = SerialSection()
    blood_pressure: BloodPressureSection = BloodPressureSection()
    max_clock_skew_days: int = Field(default=365, ge=1)
    """A meter clock further off than this is implausible: readings keep ``time_trusted = false``."""
    registry: dict[str, str] = {}
    """meter_id -> patient id for meters that belong to one patient (used when no desk link is made)."""


class CameraSection(_Section):
    """USB fundus camera through OpenCV."""

    enabled: bool = False
    device: int | str = 0
    """V4L2 index, or a path / URL OpenCV can open (video file, image sequence pattern)."""
    width: int = Field(default=1920, ge=16)
    height: int = Field(default=1080, ge=16)
    fourcc: str = Field(default="MJPG", min_length=4, max_length=4)
    strict_resolution: bool = True
    """Refuse to capture when the camera delivers another resolution than width x height."""
    loop: bool = False
    """For a video-file device (demo emulator): start again at the end instead of reporting an unplug."""
    preview_fps: float = Field(default=5.0, gt=0, le=30)
    preview_max_side: int = Field(default=640, ge=64)
    jpeg_quality: int = Field(default=95, ge=50, le=100)
    """JPEG quality of captured frames (the stored, hashed and forwarded bytes)."""


class FolderSection(_Section):
    """Export folder of a fundus camera."""

    enabled: bool = False
    path: Path | None = None
    poll_interval_s: float = Field(default=1.0, gt=0)
    settle_s: float = Field(default=2.0, ge=0)
    """A file is taken once its size has not changed for this long."""
    default_field: Literal["disc", "macula"] = "macula"
    """Field recorded for files whose name does not say (``disc`` / ``macula`` in the name wins)."""
    recursive: bool = True
    """Also look in sub-folders (cameras often export into one folder per day or patient)."""

    @model_validator(mode="after")
    def _path(self) -> FolderSection:
        if self.enabled and self.path is None:
            raise ValueError("an enabled folder source needs path")
        return self


class ModelSection(_Section):
    """Triage model (ONNX)."""

    path: Path | None = None
    """ONNX file; default: the model installed with ``gateway model install`` (``<state_dir>/models/active``), else
    the model shipped in ``models/triage/``. Setting it pins that file: installs are then not picked up."""
    signing_key_file: Path | None = None
    """Ed25519 public key (PEM) of whoever may publish models: when set, ``gateway model install`` refuses a model
    without a valid detached signature over its sidecar (``<model>.json.sig``)."""
    watch_interval_s: float = Field(default=5.0, gt=0, le=3600)
    """How often the daemon looks for a newly installed (or rolled back) model; it switches between captures."""
    threads: int = Field(default=1, ge=1, le=8)
    low_memory: bool = True
    """onnxruntime without memory arena/patterns and layout-changing graph rewrites: with an EfficientNet-Lite0
    at 256 px the process stays near 190 MB instead of about 300 MB; inference ~25 % slower (bench/retina_intake.py)."""


class RetinaSection(_Section):
    """Retinal photo intake."""

    camera: CameraSection = CameraSection()
    folder: FolderSection = FolderSection()
    model: ModelSection = ModelSection()
    max_image_mb: float = Field(default=30.0, gt=0)
    max_pixels: int = Field(default=40_000_000, ge=1)


class GlucoseSection(_Section):
    """How the nurse's pages show glucose: the unit, the consensus ranges, the visit's window, the GMI's rule."""

    unit: Literal["mmol/L", "mg/dL"] = "mmol/L"
    """The unit the pages show (readings keep the unit the meter measured in besides)."""
    low_mmol_l: float = Field(default=3.9, gt=0)
    """Below this a reading is below range, and marked as hypoglycaemia (Low)."""
    high_mmol_l: float = Field(default=10.0, gt=0)
    """Above this a reading is above the target range."""
    very_high_mmol_l: float = Field(default=13.9, gt=0)
    """Above this a reading is marked as hyperglycaemia (High)."""
    visit_window_days: int = Field(default=90, ge=1, le=366)
    """The visit's picture shows readings since the patient's last visit, at most this many days back."""
    gmi_min_days: float = Field(default=14.0, ge=0)
    """The GMI (estimated HbA1c) is given only when the readings span at least this many days ..."""
    gmi_min_readings: int = Field(default=28, ge=1)
    """... and number at least this many."""

    @model_validator(mode="after")
    def _ordered(self) -> GlucoseSection:
        if not self.low_mmol_l < self.high_mmol_l <= self.very_high_mmol_l:
            raise ValueError("need low_mmol_l < high_mmol_l <= very_high_mmol_l")
        return self


class DemoSection(_Section):
    """Synthetic sources for the demo."""

    synthetic_readings: bool = False
    synthetic_interval_s: float = Field(default=5.0, gt=0)


class LoggingSection(_Section):
    """Application logs (journald reads stderr)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class GatewayConfig(_Section):
    """The whole configuration tree."""

    gateway: GatewaySection
    store: StoreSection = StoreSection()
    forward: ForwardSection = ForwardSection()
    clock: ClockSection = ClockSection()
    web: WebSection = WebSection()
    health: HealthSection = HealthSection()
    meters: MetersSection = MetersSection()
    retina: RetinaSection = RetinaSection()
    glucose: GlucoseSection = GlucoseSection()
    demo: DemoSection = DemoSection()
    logging: LoggingSection = LoggingSection()

    # Derived values, so no caller re-derives them.
    @property
    def db_path(self) -> Path:
        return self.store.path or self.gateway.state_dir / "gateway.db"

    @property
    def image_dir(self) -> Path:
        return self.store.image_dir or self.gateway.state_dir / "images"

    @property
    def topic_prefix(self) -> str:
        return self.forward.topic_prefix.format(site_id=self.gateway.site_id, gateway_id=self.gateway.gateway_id)

    @property
    def client_id(self) -> str:
        return self.forward.client_id or f"cg-{self.gateway.site_id}-{self.gateway.gateway_id}"

    @property
    def web_secret_path(self) -> Path:
        return self.web.secret_key_file or self.gateway.state_dir / "web-secret"


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return ``data`` with ``CG_SECTION__KEY`` environment variables applied."""
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[path[-1]] = _env_value(raw)
    return data


def user_name(uid: int) -> str:
    """The login name of ``uid`` (its number when the system does not know it)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def secret_problem(path: Path, reader_uid: int | None = None) -> str | None:
    """What keeps ``path`` from being a usable secret file for ``reader_uid`` (default: this process), or None.

    The one rule for secret files, applied by :func:`read_secret` and ``gateway config check``: the file
    exists, nobody but its owner has any access (mode 0600 or stricter), its owner may read it, and its owner
    is the user who reads it. Root reads any file, so for root the owner is not checked (``config check --user``
    checks as the service's user instead).
    """
    reader = os.geteuid() if reader_uid is None else reader_uid
    try:
        st = path.stat()
    except OSError as exc:
        return f"secret file {path} cannot be read ({exc.strerror})"
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"secret file {path} is readable by others (mode {mode:04o}); chmod 600 it"
    if reader not in (0, st.st_uid):  # root reads any file
        owner, name = user_name(st.st_uid), user_name(reader)
        return f"secret file {path} is owned by {owner} (mode {mode:04o}) but read as {name}; chown {name} it"
    if not mode & stat.S_IRUSR:
        return f"secret file {path} is not readable by its owner (mode {mode:04o}); chmod 600 it"
    return None


def secret_files(cfg: GatewayConfig) -> list[tuple[str, Path]]:
    """Every secret file the daemon will read, with the key that names it.

    The web session secret counts at its default place too (``<state_dir>/web-secret``) once it exists: the
    daemon reads it there, and creates it (0600) only when it is missing.
    """
    web_secret = cfg.web.secret_key_file
    if web_secret is None and cfg.web.enabled:
        try:
            present = cfg.web_secret_path.exists()
        except PermissionError:  # the state directory is closed to us: secret_problem() says so
            present = True
        web_secret = cfg.web_secret_path if present else None
    candidates: list[tuple[str, Path | None]] = [
        ("forward.password_file", cfg.forward.password_file),
        ("forward.tls.key_file", cfg.forward.tls.key_file if cfg.forward.tls else None),
        ("web.secret_key_file", web_secret),
        ("web.status_token_file", cfg.web.status_token_file),
    ]
    return [(key, path) for key, path in candidates if path is not None]


def _file_problems(cfg: GatewayConfig, reader_uid: int | None) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for key, path in secret_files(cfg):
        if msg := secret_problem(path, reader_uid):
            problems.append((key, msg))
    if cfg.forward.password_file is not None and cfg.forward.username is None:
        problems.append(("forward.username", "password_file is set but username is missing"))
    if cfg.forward.tls is not None:
        for key, p in (
            ("forward.tls.ca_file", cfg.forward.tls.ca_file),
            ("forward.tls.cert_file", cfg.forward.tls.cert_file),
        ):
            if p is not None and not p.is_file():
                problems.append((key, f"file {p} does not exist"))
    if cfg.retina.model.path is not None and not cfg.retina.model.path.is_file():
        problems.append(("retina.model.path", f"file {cfg.retina.model.path} does not exist"))
    signing_key = cfg.retina.model.signing_key_file
    if signing_key is not None and not signing_key.is_file():
        problems.append(("retina.model.signing_key_file", f"file {signing_key} does not exist"))
    return problems


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return key, "unknown key"
    if err["type"] == "missing":
        return key, "required key is missing"
    got = err.get("input")
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] not in {"model_type"} and not isinstance(got, dict | list):
        msg = f"{msg}, got {got!r}"
    return key, msg


def parse_config(
    data: Mapping[str, Any], source: str = "config", *, check_files: bool = True, reader_uid: int | None = None
) -> GatewayConfig:
    """Validate a config mapping; raise ConfigError naming every problem's key path.

    With ``check_files``, the files it names must exist and its secret files must pass :func:`secret_problem`
    for ``reader_uid`` (default: this process).
    """
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors()], source) from None
    if check_files and (problems := _file_problems(cfg, reader_uid)):
        raise ConfigError(problems, source)
    return cfg


def decode_config_text(raw: bytes, source: str) -> str:
    """The text of a config file: UTF-8, with a leading byte-order mark accepted and dropped.

    Windows editors (Notepad's "UTF-8 with BOM") write the mark; it carries no meaning in UTF-8. Any other
    encoding (a GBK comment from a Chinese Windows editor, UTF-16) is one :class:`ConfigError` naming the
    byte offset, line and column of the first byte that is not UTF-8.
    """
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        hint = "it is UTF-16: save it as UTF-8"
    else:
        hint = "save it as UTF-8"
    line_start = raw.rfind(b"\n", 0, offset) + 1
    line = raw.count(b"\n", 0, offset) + 1
    column = len(raw[line_start:offset].decode("utf-8", "replace")) + 1
    where = f"byte 0x{raw[offset]:02x} at offset {offset} (line {line}, column {column})"
    raise ConfigError([("(file)", f"not UTF-8 text: {where}; {hint}")], source)


def load_config(
    path: Path, environ: Mapping[str, str] | None = None, *, reader_uid: int | None = None
) -> GatewayConfig:
    """Load, override from the environment and validate the TOML file at ``path``.

    ``reader_uid``: whose secret files they must be (default: this process's; see :func:`secret_problem`).
    """
    try:
        text = decode_config_text(path.read_bytes(), str(path))
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read: {exc.strerror}")], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(file)", f"not valid TOML: {exc}")], str(path)) from None
    data = apply_env_overrides(data, os.environ if environ is None else environ)
    return parse_config(data, str(path), reader_uid=reader_uid)


def read_secret(path: Path) -> str:
    """Read a secret file, refusing one that others can read. Trailing newlines are stripped."""
    if msg := secret_problem(path):
        raise ConfigError([("(secret)", msg)], str(path))
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [("(secret)", f"secret file {path} is not UTF-8 text (offset {exc.start})")], str(path)
        ) from None
