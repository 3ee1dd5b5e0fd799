"""The reference receiver: the hospital platform's stand-in for the demo and the tests.

It subscribes to every gateway's up topics (``cg/v1/+/+/glucose``, ``glucose/assignment``, ``qc``,
``blood-pressure``, ``blood-pressure/assignment``, ``retina/#``, ``events``, ``status``), validates each payload
against the contract's JSON Schemas (a glucose message may be ``cg.glucose/1`` or a FHIR Observation, a meter's
quality-control result ``cg.qc/1`` or its FHIR form, kept apart from every patient's readings, a blood pressure
message ``cg.blood-pressure/1`` or its FHIR panel; an assignment of readings sent without a patient,
``cg.assignment/1`` on either kind's assignment topic, applied per reading), deduplicates on ``message_id``, stores
everything in its own SQLite database (:class:`~gateway.emulate.platform_store.PlatformStore`), reassembles image
chunks and checks their SHA-256, and acknowledges on ``<prefix>ack`` in batches, *only after its own durable
commit*. It can send a referral decision down to a gateway (``cmd/referral``).

An invalid message is stored in the ``invalid`` table with the reason and acknowledged too (the platform
has durably kept it; re-sending it would not make it valid). A duplicate is counted and acknowledged again.

Use it as a library (``Receiver(settings).start()`` ... ``stop()``: threads in this process) or as a
process (``gateway receiver --db PATH``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.emulate.platform_store import PlatformStore
from gateway.errors import ContractError, FrameError, GatewayError
from gateway.forward.mqtt import set_nodelay
from gateway.records import Referral
from gateway.wire import chunks, contract

_logger = logging.getLogger(__name__)


UP_TOPICS = (
    "cg/v1/+/+/glucose",
    "cg/v1/+/+/glucose/assignment",
    "cg/v1/+/+/qc",
    "cg/v1/+/+/blood-pressure",
    "cg/v1/+/+/blood-pressure/assignment",
    "cg/v1/+/+/retina/#",
    "cg/v1/+/+/events",
    "cg/v1/+/+/status",
)
ACK_MAX_IDS = 10_000  # cg.ack/1 maxItems
ACK_BATCH_MAX_DEFAULT = 2000
"""Most messages the receiver stores, and then acknowledges in one ack, together (``ReceiverSettings``)."""


@dataclass(frozen=True, slots=True)
class ReceiverSettings:
    """Where the receiver connects and keeps its data."""

    host: str
    port: int
    db_path: Path
    client_id: str = "cg-platform-receiver"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    session_expiry_s: int = 24 * 3600
    ack_interval_s: float = 0.05
    """Idle wake-up of the worker (arrivals wake it at once)."""
    ack_batch_max: int = ACK_BATCH_MAX_DEFAULT
    """Most messages stored (and acknowledged) in one transaction."""


@dataclass(frozen=True, slots=True)
class _Incoming:
    topic: str
    payload: bytes
    properties: dict[str, str]


def split_topic(topic: str) -> tuple[str, str, str, str] | None:
    """``(prefix, site_id, gateway_id, relative)`` of an up topic ``cg/v1/<site>/<gw>/<relative>``."""
    parts = topic.split("/", 4)
    if len(parts) < 5 or parts[0] != "cg" or parts[1] != "v1":
        return None
    return "/".join(parts[:4]) + "/", parts[2], parts[3], parts[4]


class Receiver:
    """Subscribe, validate, deduplicate, store, reassemble, acknowledge; send referrals down."""

    def __init__(self, settings: ReceiverSettings) -> None:
        self.settings = settings
        self.store = PlatformStore(settings.db_path)
        self.ack_enabled = True
        """Tests switch acknowledgements off to play a platform that stores but does not confirm."""
        self._queue: list[_Incoming] = []
        self._qlock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._client: Client | None = None
        self._connected = threading.Event()
        self.acks_sent = 0

    @classmethod
    def for_demo(cls, host: str, port: int, db_path: Path) -> Receiver:
        """A receiver on a private loopback broker (no credentials)."""
        return cls(ReceiverSettings(host=host, port=port, db_path=db_path))

    # -- life cycle ------------------------------------------------------------------------------
    def start(self, wait_s: float = 10.0) -> None:
        """Connect (persistent session) and start processing; returns once subscribed, or after ``wait_s``."""
        s = self.settings
        client = Client(CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.suppress_exceptions = True
        client.max_inflight_messages_set(1000)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(s.ca_file))
            if s.cert_file is not None and s.key_file is not None:
                ctx.load_cert_chain(str(s.cert_file), str(s.key_file))
            client.tls_set_context(ctx)
        client.reconnect_delay_set(0.05, 1.0)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry_s
        self._client = client
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="receiver-worker", daemon=True)
        self._worker.start()
        client.connect_async(s.host, s.port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()
        self._connected.wait(wait_s)

    def stop(self) -> None:
        """Process what has arrived, acknowledge it, and disconnect."""
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(10.0)
            self._worker = None
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._connected.clear()
        self.store.close()

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def alive(self) -> bool:
        """True while started and its worker still runs (the demo says so loudly when it stops)."""
        return self._client is not None and self._worker is not None and self._worker.is_alive()

    # -- paho callbacks (network thread) ---------------------------------------------------------
    def _on_connect(
        self, client: Client, _u: Any, _flags: ConnectFlags, rc: ReasonCode, _props: Properties | None
    ) -> None:
        if rc.is_failure:
            _logger.warning("receiver: broker refused the connection: %s", rc.getName())
            return
        set_nodelay(client)  # acks are small and latency-bound (see gateway.forward.mqtt.set_nodelay)

        def subscribed(*_args: Any) -> None:
            self._connected.set()

        client.on_subscribe = subscribed
        client.subscribe([(t, 1) for t in UP_TOPICS])

    def _on_disconnect(
        self, _client: Client, _u: Any, _flags: DisconnectFlags, _rc: ReasonCode, _props: Properties | None
    ) -> None:
        self._connected.clear()

    def _on_message(self, _client: Client, _u: Any, message: MQTTMessage) -> None:
        props = dict(getattr(message.properties, "UserProperty", None) or [])
        with self._qlock:
            self._queue.append(_Incoming(message.topic, bytes(message.payload), props))
        # Process at once: batches form by themselves while the previous one commits.
        self._wake.set()

    # -- processing ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            self._wake.wait(self.settings.ack_interval_s)
            self._wake.clear()
            with self._qlock:
                cut = self.settings.ack_batch_max
                batch, self._queue = self._queue[:cut], self._queue[cut:]
                if self._queue:
                    self._wake.set()
            if batch:
                try:
                    self.process(batch)
                except GatewayError:
                    _logger.exception("receiver: batch of %d not stored; it will be re-sent", len(batch))
            if self._stop.is_set():
                with self._qlock:
                    if not self._queue:
                        return

    def process(self, batch: list[_Incoming]) -> None:
        """Store a batch in one durable transaction, then acknowledge it (per gateway)."""
        acks: dict[str, list[str]] = {}
        with self.store.batch() as db:
            for item in batch:
                prefix, message_id = self._store_one(db, item)
                if prefix is not None and message_id is not None:
                    acks.setdefault(prefix, []).append(message_id)
        # Only now, after COMMIT, does the platform say it has them.
        if not self.ack_enabled:
            return
        client = self._client
        if client is None:
            return
        for prefix, ids in acks.items():
            for start in range(0, len(ids), ACK_MAX_IDS):
                part = ids[start : start + ACK_MAX_IDS]
                client.publish(prefix + contract.TOPIC_ACK, contract.ack_payload(part), qos=1)
                self.acks_sent += len(part)

    def _store_one(self, db: PlatformStore, item: _Incoming) -> tuple[str | None, str | None]:
        """Validate and store one message; return ``(prefix, message_id)`` to acknowledge (or Nones)."""
        where = split_topic(item.topic)
        if where is None:
            db.add_invalid(item.topic, None, "topic is not cg/v1/<site>/<gateway>/...", item.payload)
            return None, None
        prefix, site_id, gateway_id, relative = where
        message_id = item.properties.get("message_id")
        try:
            if relative == contract.TOPIC_STATUS:
                doc = contract.loads(item.payload, "status")
                contract.validate(contract.SCHEMA_STATUS, doc)
                db.set_status(site_id, gateway_id, doc)
                return None, None  # retained status is not an outbox message: nothing to acknowledge
            if relative.startswith("retina/image/"):
                if message_id is None:
                    raise ContractError("image chunk without a message_id user property")
                head = chunks.parse_properties(item.properties)
                new = db.add_message(
                    message_id, item.topic, site_id=site_id, gateway_id=gateway_id, kind="image_chunk", payload=None
                )
                if new:
                    self._chunk(db, head, item.payload)
                return prefix, message_id
            ids = {"site_id": site_id, "gateway_id": gateway_id}
            doc = contract.loads(item.payload, relative)
            if not isinstance(doc, dict):
                raise ContractError(f"{relative}: payload is not a JSON object")
            doc_id = contract.message_id_of(doc)
            message_id = doc_id or message_id
            if relative == contract.TOPIC_GLUCOSE:
                fhir = doc.get("resourceType") == "Observation"
                contract.validate(contract.SCHEMA_FHIR if fhir else contract.SCHEMA_GLUCOSE, doc)
                if db.add_message(str(message_id), item.topic, **ids, kind="glucose", payload=item.payload):
                    db.add_reading(str(message_id), doc, "fhir" if fhir else "json")
            elif relative in (contract.TOPIC_ASSIGNMENT, contract.TOPIC_BLOOD_PRESSURE_ASSIGNMENT):
                contract.validate(contract.SCHEMA_ASSIGNMENT, doc)
                if db.add_message(str(message_id), item.topic, **ids, kind="assignment", payload=item.payload):
                    db.assign(str(message_id), doc)  # reading ids are unique across kinds
            elif relative == contract.TOPIC_QC:
                fhir = doc.get("resourceType") == "Observation"
                contract.validate(contract.SCHEMA_FHIR_QC if fhir else contract.SCHEMA_QC, doc)
                if db.add_message(str(message_id), item.topic, **ids, kind="qc", payload=item.payload):
                    db.add_qc(str(message_id), doc, "fhir" if fhir else "json")
            elif relative == contract.TOPIC_BLOOD_PRESSURE:
                fhir = doc.get("resourceType") == "Observation"
                contract.validate(contract.SCHEMA_FHIR_BLOOD_PRESSURE if fhir else contract.SCHEMA_BLOOD_PRESSURE, doc)
                if db.add_message(str(message_id), item.topic, **ids, kind="blood_pressure", payload=item.payload):
                    db.add_blood_pressure(str(message_id), doc, "fhir" if fhir else "json")
            elif relative == contract.TOPIC_CAPTURE:
                contract.validate(contract.SCHEMA_CAPTURE, doc)
                if db.add_message(str(message_id), item.topic, **ids, kind="capture", payload=item.payload):
                    db.add_capture(str(message_id), doc)
            elif relative == contract.TOPIC_EVENTS:
                contract.validate(contract.SCHEMA_EVENT, doc)
                if db.add_message(str(message_id), item.topic, **ids, kind="event", payload=item.payload):
                    db.add_event(str(message_id), doc)
            else:
                raise ContractError(f"unknown up topic {relative!r}")
        except (ContractError, FrameError) as exc:
            db.add_invalid(item.topic, message_id, str(exc), item.payload)
            db.bump("invalid")
            _logger.warning("receiver: invalid message on %s: %s", relative, exc)
        return (prefix, message_id) if message_id else (None, None)

    def _chunk(self, db: PlatformStore, head: chunks.ChunkHeader, data: bytes) -> None:
        parts = db.add_chunk(head.capture_id, head.index, head.total, head.sha256, data)
        if parts is None:
            return
        reassembler = chunks.Reassembler()
        image: bytes | None = None
        for index, total, sha256, part in db.chunk_rows(head.capture_id):
            image = reassembler.add(head.capture_id, index, total, sha256, part)
        if image is None:
            raise FrameError(f"image {head.capture_id}: chunks do not complete the image")
        db.add_image(head.capture_id, head.sha256, image)

    # -- downlink ---------------------------------------------------------------------------------
    def send_referral(self, prefix: str, referral: Referral, timeout_s: float = 5.0) -> bool:
        """Publish a referral decision to a gateway (``<prefix>cmd/referral``); True once the broker has it."""
        client = self._client
        if client is None:
            return False
        info = client.publish(prefix + contract.TOPIC_REFERRAL, contract.referral_payload(referral), qos=1)
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(timeout_s)
        return info.is_published()

    def publish_raw(self, topic: str, payload: bytes) -> None:
        """Publish arbitrary bytes (tests: malformed acks and commands)."""
        client = self._client
        if client is not None:
            client.publish(topic, payload, qos=1).wait_for_publish(5.0)

    # -- reads --------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """How many readings, captures, images, events, invalid and duplicate messages it holds."""
        return self.store.counts()

    def readings(self) -> list[dict[str, Any]]:
        """Stored readings in arrival order, with their documents parsed and ``patient_id``: the patient the
        platform files each under (an assignment's, else the reading's own; FHIR: the subject's identifier)."""
        return self._with_patient("readings")

    def _with_patient(self, table: str) -> list[dict[str, Any]]:
        rows = self.store.query(
            f"SELECT r.*, a.patient_id AS assigned_patient_id FROM {table} r "
            "LEFT JOIN assignments a ON a.reading_id = r.reading_id ORDER BY r.id"
        )
        for row in rows:
            row["doc"] = doc = json.loads(row["doc"])
            own = (
                ((doc.get("subject") or {}).get("identifier") or {}).get("value")
                if row["format"] == "fhir"
                else (doc.get("patient_id"))
            )
            row["patient_id"] = row.pop("assigned_patient_id") or own
        return rows

    def blood_pressure(self) -> list[dict[str, Any]]:
        """Stored blood pressure readings in arrival order, with their documents parsed and ``patient_id``, as
        :meth:`readings` files them."""
        return self._with_patient("blood_pressure")

    def qc_results(self) -> list[dict[str, Any]]:
        """Stored quality-control results (the meters', apart from the readings), documents parsed."""
        rows = self.store.query("SELECT * FROM qc_results ORDER BY id")
        for row in rows:
            row["doc"] = json.loads(row["doc"])
        return rows

    def wait_for(self, condition: Callable[[Receiver], bool], timeout_s: float = 20.0) -> bool:
        """Poll ``condition(self)`` until true or ``timeout_s``; True when it became true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self):
                return True
            time.sleep(0.02)
        return condition(self)


def send_referral_once(settings: ReceiverSettings, prefix: str, referral: Referral, timeout_s: float = 10.0) -> bool:
    """Connect with a short-lived client (not the receiver's session), send one referral, disconnect."""
    s = settings
    client = Client(CallbackAPIVersion.VERSION2, client_id=f"{s.client_id}-refer", protocol=MQTTProtocolVersion.MQTTv5)
    if s.username is not None:
        client.username_pw_set(s.username, s.password)
    if s.ca_file is not None:
        ctx = ssl.create_default_context(cafile=str(s.ca_file))
        if s.cert_file is not None and s.key_file is not None:
            ctx.load_cert_chain(str(s.cert_file), str(s.key_file))
        client.tls_set_context(ctx)
    client.connect(s.host, s.port)
    client.loop_start()
    try:
        info = client.publish(prefix + contract.TOPIC_REFERRAL, contract.referral_payload(referral), qos=1)
        info.wait_for_publish(timeout_s)
        return info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()
