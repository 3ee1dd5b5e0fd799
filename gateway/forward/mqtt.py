"""ADAPTER: the MQTT link to the platform's broker (paho-mqtt 2.x), and the only module that imports paho.

Supports: MQTT 5, QoS 1, a persistent session (``clean_start=False`` AND a non-zero
``SessionExpiryInterval``: MQTT 5 keeps no session without both), plain TCP, TLS and mutual TLS,
username/password, a retained Last Will (``status`` = offline) and a retained ``status`` = online on every
connect. Every paho return code, reason code and socket/TLS exception is translated here, once, into
:mod:`gateway.errors` (``BrokerAuthError``, ``BrokerTLSError``, ``BrokerUnavailable``, ``MessageRejected``).

One :class:`MqttLink` holds at most one connection. Each :meth:`MqttLink.connect` builds a *fresh* paho
client, driven by the asyncio loop that connects it (no network thread), with paho's own reconnect switched
off:

- the gateway's outbox, not paho's in-memory queue, decides what is re-sent (so nothing is sent twice
  on paho's initiative, and a message the broker refuses cannot be replayed forever by paho);
- every end of a connection (the broker's DISCONNECT or ours, a socket error, keepalive, an error paho lets
  through) emits one :class:`Disconnected` event, and the forwarder backs off and reconnects.

The broker refusing one message: a PUBACK with a reason code >= 0x80 marks that message rejected. But
mosquitto answers a PUBLISH over ``message_size_limit`` with PUBACK reason 0x95 (Packet too large), which is
not a valid PUBACK reason in MQTT 5; paho 2.2 cannot decode it ("Received malformed packet"), closes the
socket with "Protocol error" and, left to itself, would reconnect and replay the same message forever.
Brokers with ``max_packet_size`` instead DISCONNECT with 0x95. Brokers answer a connection's PUBLISHes in
order, so when the link drops for one of these reasons the oldest PUBLISH still unanswered is the one refused:
the :class:`Disconnected` event names it in ``rejected``, and every other unanswered one in ``unconfirmed``.

Flow control: MQTT 5 (§3.3.4) lets a client have at most the server's *Receive Maximum* (CONNACK property,
65,535 when absent) QoS 1 PUBLISHes unanswered by PUBACK; a broker may disconnect a client that sends more
(0x93). Mosquitto 2.0 announces 20. paho 2.x ignores the property, so the link meters its PUBLISHes itself: at
most the smaller of it and ``forward.inflight_window`` go unanswered, the rest wait in the link's queue, in
order, and each PUBACK lets the next one out. (paho's own in-flight limit would do the same, but paho can only
be given it through a private attribute once the broker has named its maximum, and on every PUBACK it walks its
list of messages from the front to find the next one to send; paho's limit is off.)

Downlink (acks, referral decisions): paho's manual-ack mode. A QoS 1 message from the broker is
acknowledged (PUBACK) only when the forwarder calls :meth:`MqttLink.acknowledge`, after what it did with the
message is committed; a message we crash or disconnect over is redelivered by the broker (persistent
session) to the next connection. The CONNECT announces a Maximum Packet Size
(:data:`gateway.wire.downlink.MAX_PACKET_SIZE`), so the broker drops anything larger instead of making
us read it into memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import GatewayConfig, read_secret
from gateway.errors import BrokerAuthError, BrokerTLSError, BrokerUnavailable, ForwardError, MessageRejected
from gateway.wire import contract, downlink

_logger = logging.getLogger(__name__)

QOS = 1
RECEIVE_MAXIMUM_DEFAULT = 65_535
"""The server's Receive Maximum when its CONNACK does not give one (MQTT 5 §3.2.2.3.3)."""
# CONNACK reason codes that mean "your credentials / certificate identity are refused" (MQTT 5 §3.2.2.2).
_AUTH_REFUSED = {0x86, 0x87, 0x8A, 0x8C}  # bad user name or password, not authorized, banned, bad auth
# DISCONNECT reasons after which the oldest unanswered PUBLISH is the one the broker refused.
_MESSAGE_REFUSED_DISCONNECT = {0x81, 0x82, 0x95, 0x97, 0x99}  # malformed, protocol error, too large, quota, format
_CONNECTIONS = itertools.count(1)
"""Connection numbers, unique in the process: a message's mid means nothing on another connection."""
_PUBLISH_OVERHEAD = 512
"""Bytes for the fixed header, topic and properties, when checking a payload against the broker's limit."""
MQTT_MAX_PAYLOAD = 268_435_455
"""paho's limit on one payload (MQTT's largest Remaining Length)."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS to the broker; ``cert_file`` + ``key_file`` for mutual TLS."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_hostname: bool = False


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Everything needed to connect; built from the config by :func:`settings_from_config`."""

    host: str
    port: int
    client_id: str
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None
    will_topic: str | None = None
    will_payload: bytes | None = None
    subscriptions: tuple[str, ...] = ()
    max_inflight: int = 50
    connect_timeout_s: float = 10.0
    max_packet_size: int | None = downlink.MAX_PACKET_SIZE
    """Announced in CONNECT: the broker sends us no larger packet (None: no limit announced)."""


def settings_from_config(config: GatewayConfig, *, will_payload: bytes | None = None) -> LinkSettings:
    """The link settings of a gateway config; the password comes from ``forward.password_file`` (0600)."""
    fwd = config.forward
    prefix = config.topic_prefix
    password = read_secret(fwd.password_file) if fwd.password_file is not None else None
    tls = None
    if fwd.tls is not None:
        tls = TlsSettings(
            ca_file=fwd.tls.ca_file,
            cert_file=fwd.tls.cert_file,
            key_file=fwd.tls.key_file,
            insecure_skip_hostname=fwd.tls.insecure_skip_hostname,
        )
    return LinkSettings(
        host=fwd.host,
        port=fwd.port,
        client_id=config.client_id,
        keepalive_s=fwd.keepalive_s,
        session_expiry_s=fwd.session_expiry_s,
        username=fwd.username,
        password=password,
        tls=tls,
        will_topic=prefix + contract.TOPIC_STATUS,
        will_payload=will_payload,
        subscriptions=(prefix + contract.TOPIC_ACK, prefix + contract.TOPIC_REFERRAL),
        max_inflight=fwd.inflight_window,
        connect_timeout_s=max(5.0, float(fwd.keepalive_s)),
    )


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """An SSL context that trusts ``ca_file`` (and presents our certificate for mutual TLS).

    Raises BrokerTLSError when a file cannot be loaded; the key is a secret file checked for its mode.
    """
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file))
        if tls.cert_file is not None and tls.key_file is not None:
            read_secret(tls.key_file)  # refuses a key others can read (ConfigError names the file)
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if tls.insecure_skip_hostname:
            ctx.check_hostname = False
    except (OSError, ssl.SSLError) as exc:
        raise BrokerTLSError(f"cannot load TLS files: {exc}") from exc
    return ctx


# -- events the link emits (on the event loop, from paho's callbacks) ----------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """CONNACK success. ``session_present``: the broker kept our session (subscriptions, queued acks)."""

    session_present: bool
    max_packet_size: int | None
    receive_maximum: int = RECEIVE_MAXIMUM_DEFAULT


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection ended (exactly one per successful connect).

    ``rejected``: ``(message_id, reason)`` of a message the broker refused by dropping the link;
    ``unconfirmed``: message ids published on this connection without a PUBACK (re-send them).
    """

    error: ForwardError
    rejected: tuple[tuple[str, str], ...] = ()
    unconfirmed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A PUBACK with a failure reason code: the broker refused this one message."""

    message_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    """A message on one of our subscriptions, not yet acknowledged to the broker.

    Hand it back to :meth:`MqttLink.acknowledge` once what it caused is committed; ``mid`` and ``qos`` are
    the broker's, valid only on ``connection`` (the link's connection counter at arrival).
    """

    topic: str
    payload: bytes
    mid: int = 0
    qos: int = 0
    connection: int = 0


LinkEvent = Connected | Disconnected | Rejected | Received


class PublishHandle:
    """One message in flight to the broker (like paho's ``MQTTMessageInfo``).

    ``state``: ``queued`` until the broker answers (waiting in the link's queue, then sent), then
    ``published`` (PUBACK success), ``rejected`` (with ``reason``) or ``lost`` (the connection ended first).
    ``mid`` is paho's packet id once sent (0 while waiting). PUBACK only proves the broker has it; the forwarder
    still waits for the platform's ``ack``.
    """

    __slots__ = ("message_id", "mid", "reason", "size", "state")

    def __init__(self, message_id: str, mid: int, size: int) -> None:
        self.message_id = message_id
        self.mid = mid
        self.size = size
        self.state = "queued"
        self.reason: str | None = None

    def is_published(self) -> bool:
        """True once the broker acknowledged (PUBACK with a success code)."""
        return self.state == "published"

    def _finish(self, state: str, reason: str | None = None) -> None:
        self.state, self.reason = state, reason


@dataclass(slots=True)  # not frozen: one is made for every message, and a frozen one costs ~3x to build
class _Waiting:
    """A PUBLISH held back by flow control until a PUBACK frees a slot."""

    topic: str
    payload: bytes
    properties: Properties | None
    retain: bool
    handle: PublishHandle


def _reason_text(rc: ReasonCode | int | MQTTErrorCode) -> str:
    if isinstance(rc, ReasonCode):
        return f"{rc.getName()} (0x{rc.value:02x})"
    return str(rc)


def _reason_value(rc: ReasonCode | int) -> int:
    return rc.value if isinstance(rc, ReasonCode) else int(rc)


def connack_error(rc: ReasonCode | int) -> ForwardError:
    """Translate a failed CONNACK reason code into the gateway's error tree."""
    value = _reason_value(rc)
    text = _reason_text(rc)
    if value in _AUTH_REFUSED:
        return BrokerAuthError(f"broker refused the credentials: {text}")
    return BrokerUnavailable(f"broker refused the connection: {text}")


def connect_exception(exc: BaseException, where: str) -> ForwardError:
    """Translate a socket / TLS exception raised while connecting."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BrokerTLSError(f"{where}: broker certificate not trusted: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return BrokerTLSError(f"{where}: TLS handshake failed: {exc.reason or exc}")
    if isinstance(exc, socket.gaierror):
        return BrokerUnavailable(f"{where}: cannot resolve host ({exc.strerror})")
    if isinstance(exc, TimeoutError | socket.timeout):
        return BrokerUnavailable(f"{where}: timed out")
    if isinstance(exc, OSError):
        return BrokerUnavailable(f"{where}: {exc.strerror or exc}")
    return BrokerUnavailable(f"{where}: {type(exc).__name__}: {exc}")


def broker_answers(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when a TCP connection to the broker's port opens (closed again at once, nothing sent).

    The forwarder's cheap probe while it backs off from an unreachable broker: a refused or unanswered
    SYN costs neither side anything, unlike a TLS handshake and an MQTT CONNECT.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:  # refused, unreachable, timed out, cannot resolve
        return False


def set_nodelay(client: Client) -> None:
    """Switch Nagle off on paho's socket (paho does not): otherwise the last PUBLISH of a window and the
    platform's small ack wait for the peer's delayed ACK, ~40 ms a hop, and a 50-message window drains at
    ~650 messages/s instead of thousands (bench/outbox_drain.py)."""
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]


class _LastError(logging.Handler):
    """Hands the text of each record it gets to ``keep`` (paho's error lines, see MqttLink)."""

    def __init__(self, keep: Callable[[str], None]) -> None:
        super().__init__(logging.ERROR)
        self._keep = keep

    def emit(self, record: logging.LogRecord) -> None:
        self._keep(record.getMessage())


class MqttLink:
    """One connection at a time to the broker, driven by the asyncio event loop that calls :meth:`connect`.

    paho runs without a thread of its own (its "external event loop" mode, as aiomqtt uses it): the loop
    watches the socket and calls paho's ``loop_read``/``loop_write``, and ``loop_misc`` once a second for
    keepalive. Everything (paho's callbacks, :meth:`publish`, :meth:`acknowledge`, the events) happens on the
    loop's thread, so the link needs no locks, and a publish never races a PUBACK or the end of the
    connection. One thread also means no GIL hand-offs between a network thread and the drain: the
    forwarder's CPU per message fell by about a quarter (bench/outbox_drain.py, issue 17).

    ``on_event`` is called on the loop's thread and must not block or raise. ``online_payload`` builds the
    retained ``status`` published after each successful connect.
    """

    def __init__(
        self,
        settings: LinkSettings,
        on_event: Callable[[LinkEvent], None],
        *,
        online_payload: Callable[[], bytes] | None = None,
    ) -> None:
        self.settings = settings
        self._on_event = on_event
        self._online_payload = online_payload
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Client | None = None
        self._sock: Any = None
        """The socket the loop watches (paho's, until the connection ends)."""
        self._tick: asyncio.TimerHandle | None = None
        self._handles: dict[int, PublishHandle] = {}  # mid -> handle of each unanswered PUBLISH, in send order
        self._waiting: deque[_Waiting] = deque()  # PUBLISHes held back by flow control, in publish order
        self._send_limit = 0
        """At most this many unanswered PUBLISHes (set at CONNACK)."""
        self._connack: asyncio.Future[ReasonCode | None] | None = None
        self._connack_rc: ReasonCode | None = None
        self._disconnect_rc: ReasonCode | None = None
        self._loop_error: ForwardError | None = None
        self._connected = False
        self._ended = False
        self.max_packet_size: int | None = None
        self.receive_maximum = RECEIVE_MAXIMUM_DEFAULT
        self.session_present = False
        self.connection = 0
        """Counts connects: a Received message can be acknowledged only on the connection it came on."""
        # paho only logs some socket and TLS errors (the reason a broker closed before CONNACK): a private
        # logger, outside logging's tree, keeps the last one for connect()'s message.
        self._paho_errors = logging.Logger(f"{__name__}.paho", logging.ERROR)  # noqa: LOG001 - one per link
        self._paho_errors.propagate = False
        self._paho_errors.addHandler(_LastError(self._paho_error))
        self._last_socket_error: str | None = None

    # -- connection --------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the end of the connection."""
        return self._connected

    def _new_client(self) -> Client:
        s = self.settings
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=True,  # PUBACK a downlink message only once it is stored (acknowledge())
        )
        client.suppress_exceptions = True  # a bug in a callback must not end the connection
        client.max_inflight_messages_set(0)  # no limit of paho's: the link meters its PUBLISHes (module docstring)
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls is not None:
            client.tls_set_context(tls_context(s.tls))
        if s.will_topic is not None and s.will_payload is not None:
            client.will_set(s.will_topic, s.will_payload, qos=QOS, retain=True)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        # paho's error lines until CONNACK (not on_log, which formats a line for every packet)
        client.enable_logger(self._paho_errors)
        return client

    async def connect(self) -> Connected:
        """Connect (TCP, TLS and CONNECT in a worker thread; CONNACK on the loop) and watch the socket.

        Raises BrokerUnavailable, BrokerTLSError or BrokerAuthError; the link is then closed.
        """
        self.close()
        s = self.settings
        loop = self._loop = asyncio.get_running_loop()
        client = self._new_client()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry_s  # without it MQTT 5 drops the session at disconnect
        if s.max_packet_size is not None:
            props.MaximumPacketSize = s.max_packet_size  # the broker drops larger messages to us, unread
        self._connack = loop.create_future()
        self._connack_rc = None
        self._disconnect_rc = None
        self._loop_error = None
        self._last_socket_error = None
        self._handles.clear()
        self._waiting.clear()
        self._ended = False
        self.connection = next(_CONNECTIONS)
        where = f"{s.host}:{s.port}"
        try:
            # Blocking: name lookup, TCP, the TLS handshake; paho writes CONNECT itself (no socket callbacks yet).
            await asyncio.to_thread(
                client.connect, s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props
            )
        except Exception as exc:  # socket and TLS errors, translated once here
            with contextlib.suppress(Exception):
                half_open = client.socket()
                if half_open is not None:
                    half_open.close()
            raise connect_exception(exc, where) from exc
        sock: Any = client.socket()  # a socket or an SSL socket (paho types it as a protocol without fileno)
        if sock is None:
            raise BrokerUnavailable(f"{where}: connection closed while connecting")
        set_nodelay(client)
        self._watch(loop, client, sock)
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                rc = await self._connack
        except TimeoutError:
            self.close()
            raise BrokerUnavailable(f"{where}: no CONNACK within {s.connect_timeout_s:g} s") from None
        except BaseException:  # cancelled while waiting: leave nothing open
            self.close()
            raise
        if rc is None:  # the connection ended before a CONNACK: the broker closed it (TLS alert, refused)
            error = self._loop_error or self._closed_before_connack(where)
            self.close()
            raise error
        if rc.is_failure:
            self.close()
            raise connack_error(rc)
        return Connected(
            session_present=self.session_present,
            max_packet_size=self.max_packet_size,
            receive_maximum=self.receive_maximum,
        )

    def _watch(self, loop: asyncio.AbstractEventLoop, client: Client, sock: Any) -> None:
        """Hand paho's socket to the loop: reads always, writes while paho has bytes queued."""
        self._client = client
        self._sock = sock
        client.on_socket_close = self._socket_closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._wrote_all
        loop.add_reader(sock, self._readable)
        if client.want_write():  # CONNECT only partly written in connect(): paho thinks it is registered already
            loop.add_writer(sock, self._writable)
        self._tick = loop.call_later(1.0, self._keepalive)

    def _step(self, step: Callable[[Client], object]) -> bool:
        """One of paho's network steps, on the loop. False when there is no connection, or when the step raised
        (a socket or TLS error paho let through, or a bug): the connection then ends."""
        client = self._client
        if client is None or self._sock is None:
            return False
        try:
            step(client)
        except Exception as exc:
            self._abort(connect_exception(exc, "network loop"))
            return False
        return self._sock is not None

    def _readable(self) -> None:
        sock = self._sock
        # TLS: bytes already decrypted wait in the SSL object, where the selector cannot see them
        if self._step(Client.loop_read) and hasattr(sock, "pending") and sock.pending() and self._loop is not None:
            self._loop.call_soon(self._readable)

    def _writable(self) -> None:
        self._step(Client.loop_write)

    def _keepalive(self) -> None:
        # PINGREQ when due; ends the connection when the broker stopped answering
        if self._step(Client.loop_misc) and self._loop is not None:
            self._tick = self._loop.call_later(1.0, self._keepalive)

    def _want_write(self, _client: Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None and sock is self._sock:
            self._loop.add_writer(sock, self._writable)

    def _wrote_all(self, _client: Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None and sock is self._sock:
            self._loop.remove_writer(sock)

    def _socket_closed(self, _client: Client, _userdata: Any, sock: Any) -> None:
        """paho closes its socket on every end of a connection (read error, the broker's DISCONNECT, ours,
        keepalive): stop watching it now (paho closes it next), and report the end once paho is done (its
        on_disconnect, with the broker's reason, may come right after this)."""
        self._unwatch(sock)
        self._connected = False
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting for the event
                self._loop.call_soon(self._connection_ended, self.connection)

    def _unwatch(self, sock: Any) -> None:
        if sock is None or sock is not self._sock:
            return
        self._sock = None
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(sock)
            loop.remove_writer(sock)

    def _abort(self, error: ForwardError) -> None:
        """End the connection over an error paho did not handle itself."""
        _logger.warning("MQTT network loop ended: %s", error)
        self._loop_error = error
        sock = self._sock
        self._unwatch(sock)
        self._connected = False
        with contextlib.suppress(Exception):
            sock.close()
        self._connection_ended(self.connection)

    def _connection_ended(self, connection: int) -> None:
        """Once per connection: wake connect() when it ended before CONNACK, else emit Disconnected. (A report
        scheduled for a connection that a new connect() has replaced since is dropped.)"""
        if self._ended or connection != self.connection:
            return
        self._ended = True
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # connect() reports the failure itself
            return
        rc = self._connack_rc
        if rc is not None and not rc.is_failure:
            self._emit(self._disconnected_event(self._loop_error))

    def _closed_before_connack(self, where: str) -> ForwardError:
        # With TLS 1.3 a server that wants our client certificate says so in an alert after the handshake;
        # paho reads it in loop_read and only logs it ("failed to receive on socket: [SSL: ...]").
        text = self._last_socket_error
        if text and any(word in text.lower() for word in ("ssl", "tls", "certificate")):
            return BrokerTLSError(f"{where}: the broker ended the TLS session: {text}")
        return BrokerUnavailable(f"{where}: connection closed before CONNACK" + (f" ({text})" if text else ""))

    def _paho_error(self, text: str) -> None:
        self._last_socket_error = text

    def _disconnected_event(self, error: ForwardError | None) -> Disconnected:
        """The end of the connection, with the refused and the unanswered messages."""
        rc = self._disconnect_rc
        reason = _reason_text(rc) if rc is not None else "connection lost"
        pending = [h for h in self._handles.values() if h.state == "queued"]  # sent, in send order
        waiting = [w.handle for w in self._waiting]  # never sent: they cannot be the one refused
        self._handles.clear()
        self._waiting.clear()
        rejected: list[tuple[str, str]] = []
        if rc is not None and _reason_value(rc) in _MESSAGE_REFUSED_DISCONNECT and pending:
            culprit = pending.pop(0)
            text = f"broker refused the message ({culprit.size} bytes) and dropped the link: {reason}"
            if _reason_value(rc) in (0x81, 0x82):
                # paho could not decode the broker's answer to it: mosquitto's PUBACK 0x95 for message_size_limit
                text += "; most likely too large for the broker (its message_size_limit)"
            culprit._finish("rejected", text)
            rejected.append((culprit.message_id, text))
        pending += waiting
        for handle in pending:
            handle._finish("lost", reason)
        return Disconnected(
            error=error or BrokerUnavailable(f"disconnected: {reason}"),
            rejected=tuple(rejected),
            unconfirmed=tuple(h.message_id for h in pending),
        )

    def close(self, offline_payload: bytes | None = None) -> None:
        """Disconnect cleanly (publishing ``offline_payload`` as retained status first); at most ~2 s.

        When flow control has no slot for the status (as many PUBLISHes unanswered as the broker allows), the
        link ends without a DISCONNECT instead, and the broker publishes our Last Will (the same status).
        """
        client = self._client
        self._client = None
        if client is None:
            return
        with contextlib.suppress(Exception):
            clean = True
            if offline_payload is not None and self._connected and self.settings.will_topic:
                clean = len(self._handles) < self._send_limit
                if clean:
                    client.publish(self.settings.will_topic, offline_payload, qos=QOS, retain=True)
            if self._sock is not None and clean:
                client.disconnect()  # a clean DISCONNECT: the broker does not publish our Last Will
                _flush(client, deadline=time.monotonic() + CLOSE_FLUSH_S)
        sock = self._sock
        self._unwatch(sock)
        with contextlib.suppress(Exception):
            if sock is not None:
                sock.close()
        self._connected = False

    # -- publishing --------------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        message_id: str,
        properties: Mapping[str, str] | None = None,
        retain: bool = False,
    ) -> PublishHandle:
        """Publish at QoS 1 with ``message_id`` (and ``properties``) as MQTT 5 user properties.

        Raises MessageRejected when the broker said it takes no packet this large, BrokerUnavailable
        when there is no connection.
        """
        client = self._client
        if client is None or not self._connected:
            raise BrokerUnavailable("not connected to the broker")
        limit = self.max_packet_size
        if limit is not None and len(payload) + len(topic) + _PUBLISH_OVERHEAD > limit:
            raise MessageRejected(
                f"message of {len(payload)} bytes exceeds the broker's maximum packet size {limit}",
                reason="Packet too large (broker maximum packet size)",
            )
        if len(payload) > MQTT_MAX_PAYLOAD:
            raise MessageRejected(f"message of {len(payload)} bytes is too large for MQTT", reason="Payload too large")
        props = None
        if properties:
            # Rows without JSON (image chunks) carry their message id as a user property. JSON payloads carry
            # it inside; building paho Properties costs ~0.2 ms a message, as much as the rest of a publish.
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("message_id", message_id), *properties.items()]
        waiting = _Waiting(topic, payload, props, retain, PublishHandle(message_id, 0, len(payload)))
        if self._waiting or len(self._handles) >= self._send_limit:
            self._waiting.append(waiting)
        elif not self._send(client, waiting):
            raise BrokerUnavailable("not connected to the broker")
        return waiting.handle

    def _send(self, client: Client, waiting: _Waiting) -> bool:
        """Hand one PUBLISH to paho; False when paho has no connection any more (its end is being reported)."""
        # paho only queues here (the loop writes when the socket is writable): no PUBACK can come before the
        # handle is recorded, and the connection cannot end in between.
        info = client.publish(waiting.topic, waiting.payload, qos=QOS, retain=waiting.retain,
                              properties=waiting.properties)  # fmt: skip
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        waiting.handle.mid = info.mid
        self._handles[info.mid] = waiting.handle
        return True

    def _send_waiting(self, client: Client) -> None:
        """Let out held-back PUBLISHes while flow control has slots for them."""
        while self._waiting and len(self._handles) < self._send_limit:
            if not self._send(client, self._waiting[0]):
                return  # the connection is ending: the Disconnected event names what still waits
            self._waiting.popleft()

    def subscribe(self, topics: Sequence[str]) -> None:
        """Subscribe at QoS 1 (the persistent session keeps them, and queues messages while we are away)."""
        client = self._client
        if client is not None and topics:
            client.subscribe([(t, QOS) for t in topics])

    # -- paho callbacks (on the loop; never raise) --------------------------------------------
    def _emit(self, event: LinkEvent) -> None:
        try:
            self._on_event(event)
        except Exception:  # the consumer's bug must not end the connection
            _logger.exception("MQTT link event handler failed")

    def _handle_connect(
        self, client: Client, _userdata: Any, flags: ConnectFlags, rc: ReasonCode, props: Properties | None
    ) -> None:
        self._connack_rc = rc
        if not rc.is_failure:
            client.disable_logger()  # connected: paho's per-packet debug lines would cost ~1 us each from here on
            self.session_present = bool(flags.session_present)
            self.max_packet_size = getattr(props, "MaximumPacketSize", None) if props is not None else None
            announced = getattr(props, "ReceiveMaximum", None) if props is not None else None
            self.receive_maximum = int(announced) if announced else RECEIVE_MAXIMUM_DEFAULT
            self._send_limit = min(self.settings.max_inflight, self.receive_maximum)
            self._connected = True
            if self.settings.subscriptions:
                client.subscribe([(t, QOS) for t in self.settings.subscriptions])
            if self._online_payload is not None and self.settings.will_topic:
                try:
                    self.publish(self.settings.will_topic, self._online_payload(), message_id="status", retain=True)
                except Exception:
                    _logger.exception("could not publish the online status")
            self._emit(Connected(self.session_present, self.max_packet_size, self.receive_maximum))
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_result(rc)

    def _handle_disconnect(
        self, _client: Client, _userdata: Any, _flags: DisconnectFlags, rc: ReasonCode, _props: Properties | None
    ) -> None:
        self._disconnect_rc = rc
        self._connected = False

    def _handle_publish(
        self, client: Client, _userdata: Any, mid: int, rc: ReasonCode, _props: Properties | None
    ) -> None:
        handle = self._handles.pop(mid, None)
        if handle is None:
            return  # the offline status that close() publishes
        if rc.is_failure:
            text = f"broker refused the message: {_reason_text(rc)}"
            handle._finish("rejected", text)
            self._emit(Rejected(handle.message_id, text))
        else:
            handle._finish("published")
        self._send_waiting(client)

    def _handle_message(self, _client: Client, _userdata: Any, message: MQTTMessage) -> None:
        self._emit(Received(message.topic, bytes(message.payload), message.mid, message.qos, self.connection))

    def acknowledge(self, message: Received) -> bool:
        """PUBACK a received message (call once what it caused is committed). False when its connection has
        ended: the broker then redelivers it to the next one, and handling it again must be harmless."""
        client = self._client
        if client is None or message.qos == 0 or message.connection != self.connection or not self._connected:
            return False
        return client.ack(message.mid, message.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS


CLOSE_FLUSH_S = 2.0
"""How long :meth:`MqttLink.close` waits for the socket to take the offline status and the DISCONNECT."""


def _flush(client: Client, *, deadline: float) -> None:
    """Write what paho has queued, waiting for the socket (at most until ``deadline``): the loop is not
    running the socket any more when the link closes."""
    while client.want_write() and (sock := client.socket()) is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        select.select([], [sock], [], left)
        if client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
