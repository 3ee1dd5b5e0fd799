"""The drain loop: outbox -> broker -> platform ``ack`` -> outbox, as a daemon component.

What it supports:

- Drains the outbox in ``seq`` order (``Outbox.claim_batch``) with at most ``forward.inflight_window``
  messages sent but not yet confirmed by the platform.
- A message is confirmed only when the platform's ``ack`` names its ``message_id`` (PUBACK only proves the
  broker has it). Unconfirmed messages go back to the queue after ``forward.ack_timeout_s``, measured on
  the monotonic clock: the wall clock of a Pi without RTC may jump by years when NTP syncs late.
- What is in flight lives in memory (the outbox's and ours): what was in flight when we stopped goes out
  again (the platform deduplicates on ``message_id``).
- A message the broker refuses (PUBACK failure code, or a link dropped over it: 0x95 Packet too large)
  is parked with the reason, and the rest keeps draining. A body that cannot be read is parked too.
- Failures get a named state (``auth_refused``, ``tls_error``, ``unreachable``...) with the error text,
  and exponential backoff with jitter before the next attempt; nothing is lost meanwhile (all in SQLite).
  While the broker is unreachable, its port is probed (a bare TCP connect every
  ``forward.reconnect_probe_s``) and the backoff ends as soon as it answers: the link resumes within about
  a second of the broker's return, while a broker that answers but refuses us still gets the full backoff.
- Downlink: ``<prefix>ack`` and ``<prefix>cmd/referral``, each message checked on its own
  (:mod:`gateway.wire.downlink`). A valid referral is stored once per referral_id (held for review when
  its patient disagrees with its photo's); an ack is applied only to messages actually sent. A message that
  fails the contract is kept as a dead letter with its reason (:mod:`gateway.store.dead_letters`), counted,
  logged by size and reason only, and never stops the link or its neighbours. Every message is acknowledged
  to the broker (PUBACK, paho's manual-ack mode) only after its outcome is committed, so one we stop over
  is redelivered.

State for the status page comes from :meth:`Forwarder.snapshot` (no patient data).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict, deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway import __version__
from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.errors import (
    BrokerAuthError,
    BrokerTLSError,
    BrokerUnavailable,
    ConfigError,
    ContractError,
    ErrorInfo,
    ForwardError,
    GatewayError,
    MessageRejected,
    StoreError,
)
from gateway.forward.mqtt import (
    Connected,
    Disconnected,
    LinkEvent,
    MqttLink,
    PublishHandle,
    Received,
    Rejected,
    broker_answers,
    settings_from_config,
)
from gateway.health import LinkFacts
from gateway.records import OutboxMessage, Referral
from gateway.runtime import Component, Runtime
from gateway.store import Store
from gateway.store.db import iso
from gateway.store.dead_letters import add_dead_letter
from gateway.store.events import add_event
from gateway.store.outbox import Outbox
from gateway.store.referrals import add_referral
from gateway.wire import contract, downlink

_logger = logging.getLogger(__name__)

IDLE_POLL_S = 0.1
"""How often an empty outbox is looked at again (other components write rows without telling us)."""
CLAIM_MAX = 500
"""Most messages claimed in one transaction (the next claim follows at once while the window has room)."""
ACK_GATHER_S = 0.02
"""Platform acks that arrive within this long of each other are applied in one durable transaction: one fsync
on the SD card instead of one per ack message (the platform acks a few dozen messages at a time). What they
confirm counts, and their downlink messages are PUBACKed, only once that transaction is committed."""
RATE_WINDOW_S = 60.0
HEALTHY_BEAT_S = 120.0
PROBE_TIMEOUT_S = 2.0
LOGGED_IDS = 20
"""At most this many message ids in one log line (the event carries up to 100)."""


class LinkState(StrEnum):
    """What the forwarder's link to the broker is doing (status page, metrics)."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    ONLINE = "online"
    AUTH_REFUSED = "auth_refused"
    TLS_ERROR = "tls_error"
    UNREACHABLE = "unreachable"
    CONFIG_ERROR = "config_error"
    BACKOFF = "backoff"


def state_for(error: BaseException) -> LinkState:
    """The link state a connection failure puts us in."""
    if isinstance(error, BrokerAuthError):
        return LinkState.AUTH_REFUSED
    if isinstance(error, BrokerTLSError):
        return LinkState.TLS_ERROR
    if isinstance(error, BrokerUnavailable):
        return LinkState.UNREACHABLE
    if isinstance(error, ConfigError):
        return LinkState.CONFIG_ERROR
    return LinkState.BACKOFF


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half of ``min(max, initial * 2**attempt)`` plus a random half.

    Jitter keeps many gateways from reconnecting in lock-step after the platform's broker comes back.
    """
    ceiling = min(max_s, initial_s * float(2 ** min(attempt, 30)))
    jitter: float = (rng or random.Random()).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


@dataclass(slots=True)
class _Inflight:
    seq: int
    kind: str
    sent_mono: float
    handle: PublishHandle | None


class Forwarder:
    """Daemon component ``forwarder``: drains the outbox to the platform and applies its acks and commands."""

    name = "forwarder"

    def __init__(self, config: GatewayConfig, store: Store, clock: Clock, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.outbox = Outbox(store)
        self.prefix = config.topic_prefix
        self._rng = rng or random.Random()
        self._inflight: OrderedDict[str, _Inflight] = OrderedDict()
        self._acked: deque[tuple[float, int]] = deque()
        self._gathered_ids: list[str] = []
        """Message ids named by platform acks received but not yet applied (see ACK_GATHER_S)."""
        self._gathered_acks: list[Received] = []
        self._gather_until: float | None = None
        self._beat = clock.monotonic()
        self.state = LinkState.STOPPED
        self.last_error: ErrorInfo | None = None
        """The error of the last failed connect or link loss, as data."""
        self.last_error_at: str | None = None
        self._down_since_mono: float | None = clock.monotonic()
        """When the link was last seen leaving ONLINE (at start: not online yet); None while online."""
        self.last_ack_at: str | None = None
        self._last_ack_mono: float | None = None
        self.retry_in_s: float | None = None
        self.loops = 0
        """Passes of the drain loop (tests wait on it instead of on time)."""
        self.counters = {
            "sent": 0,
            "acked": 0,
            "resent_after_timeout": 0,
            "parked": 0,
            "connect_attempts": 0,
            "connects": 0,
            "downlink_received": 0,
            "dead_letters": 0,
            "ack_not_sent": 0,
            "referrals_held": 0,
        }
        self._link: MqttLink | None = None
        self._probe_trusted = True
        """False once a probe said "up" and the connect still failed (e.g. a proxy in front of a dead broker)."""

    # -- status ---------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """False when the loop has stopped turning (a broker outage is not unhealthy: we back off)."""
        return self.clock.monotonic() - self._beat < HEALTHY_BEAT_S

    def drain_rate(self) -> float:
        """Confirmed messages per second over the last minute."""
        now = self.clock.monotonic()
        while self._acked and now - self._acked[0][0] > RATE_WINDOW_S:
            self._acked.popleft()
        return round(sum(n for _, n in self._acked) / RATE_WINDOW_S, 2)

    def link_status(self) -> LinkFacts:
        """The link's state, how long it has been down, and its last error (the health model's input)."""
        down_since = self._down_since_mono
        return LinkFacts(
            state=str(self.state),
            online=self.state is LinkState.ONLINE,
            down_for_s=None if down_since is None else round(max(0.0, self.clock.monotonic() - down_since), 1),
            last_error=self.last_error,
            last_error_at=self.last_error_at,
        )

    def snapshot(self) -> dict[str, Any]:
        """The link's state for the status page (no patient data)."""
        try:
            stats = self.outbox.stats()
            depth: int | None = stats.total_unsent
            parked: int | None = stats.parked
        except GatewayError:
            depth = parked = None
        return {
            "state": str(self.state),
            "connected": self.state is LinkState.ONLINE,
            "broker": f"{self.config.forward.host}:{self.config.forward.port}",
            "tls": self.config.forward.tls is not None,
            "last_error": None if self.last_error is None else str(self.last_error),
            "last_error_at": self.last_error_at,
            "down_for_s": self.link_status().down_for_s,
            "last_ack_at": self.last_ack_at,
            "last_ack_age_s": None
            if self._last_ack_mono is None
            else round(self.clock.monotonic() - self._last_ack_mono, 1),
            "in_flight": len(self._inflight),
            "drain_rate_per_s": self.drain_rate(),
            "outbox_depth": depth,
            "parked": parked,
            "retry_in_s": self.retry_in_s,
            "counters": dict(self.counters),
        }

    def _set_state(self, state: LinkState, error: BaseException | None = None) -> None:
        if error is not None:
            self.last_error = ErrorInfo.of(error)
            self.last_error_at = iso(self.clock.utc_now())
        if state is LinkState.ONLINE:
            self._down_since_mono = None
        elif self._down_since_mono is None:
            self._down_since_mono = self.clock.monotonic()
        if state is not self.state:
            _logger.info("broker link %s -> %s%s", self.state, state, f" ({self.last_error})" if error else "")
            self.state = state

    def _online_payload(self) -> bytes:
        health: dict[str, Any] = {
            "version": __version__,
            "at": iso(self.clock.utc_now()),
            "clock_synchronised": self.clock.is_synchronised(),
        }
        with contextlib.suppress(GatewayError):
            stats = self.outbox.stats()
            health.update(outbox_unsent=stats.total_unsent, outbox_parked=stats.parked)
        gw = self.config.gateway
        return contract.status_payload("online", site_id=gw.site_id, gateway_id=gw.gateway_id, **health)

    def _offline_payload(self) -> bytes:
        gw = self.config.gateway
        return contract.status_payload("offline", site_id=gw.site_id, gateway_id=gw.gateway_id)

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, drain, back off on failure; until cancelled."""
        events: asyncio.Queue[LinkEvent] = asyncio.Queue()
        on_event = events.put_nowait  # the link calls it on this loop (an unbounded queue: never blocks)

        requeued = self.outbox.requeue_in_flight()  # a restart by the supervisor: our memory is still there
        if requeued:
            _logger.info("requeued %d messages that were in flight when the drain stopped", requeued)
        self._inflight.clear()
        attempt = 0
        cut_short = False
        try:
            while True:
                self._beat = self.clock.monotonic()
                self._set_state(LinkState.CONNECTING)
                self.counters["connect_attempts"] += 1
                try:
                    settings = settings_from_config(self.config, will_payload=self._offline_payload())
                    link = self._link = MqttLink(settings, on_event, online_payload=self._online_payload)
                    await link.connect()
                except (ForwardError, ConfigError) as exc:
                    self._set_state(state_for(exc), exc)
                    _logger.warning("cannot connect to the broker: %s: %s", type(exc).__name__, exc)
                    if cut_short and self.state is LinkState.UNREACHABLE:
                        # The port answered but the broker did not: something else holds the port (a proxy, a
                        # load balancer). Probes prove nothing until the next real connection.
                        self._probe_trusted = False
                else:
                    attempt = 0
                    self.retry_in_s = None
                    self._probe_trusted = True
                    self.counters["connects"] += 1
                    self._set_state(LinkState.ONLINE)
                    _logger.info(
                        "connected to the broker (session present: %s, receive maximum %d)",
                        link.session_present,
                        link.receive_maximum,
                    )
                    error = await self._drain(link, events)
                    self._set_state(state_for(error), error)
                    _logger.warning("broker link lost: %s", error)
                delay = backoff_delay(
                    attempt, self.config.forward.backoff_initial_s, self.config.forward.backoff_max_s, self._rng
                )
                attempt += 1
                self.retry_in_s = round(delay, 2)
                cut_short = await self._sleep_processing(events, delay, probe=self._may_probe())
                if cut_short:
                    _logger.info("the broker's port answers again: reconnecting before the backoff ends")
        finally:
            link_now, self._link = self._link, None
            if link_now is not None:
                link_now.close(offline_payload=self._offline_payload())
            self._set_state(LinkState.STOPPED)

    def _may_probe(self) -> bool:
        """Probe during this backoff? Only for an unreachable broker (a refusal would only be refused again
        sooner), when probing is configured, and while probes have not been caught lying."""
        return self.config.forward.reconnect_probe_s > 0 and self.state is LinkState.UNREACHABLE and self._probe_trusted

    async def _sleep_processing(self, events: asyncio.Queue[LinkEvent], delay: float, *, probe: bool = False) -> bool:
        """Back off for ``delay`` seconds; late events (acks already received) are still applied.

        With ``probe``, the broker's port is tried about every ``forward.reconnect_probe_s`` (jittered, so
        that many gateways do not probe in step); True when it answered and the backoff was cut short.
        """
        now = self.clock.monotonic()
        deadline = now + delay
        interval = self.config.forward.reconnect_probe_s
        next_probe = now + interval * self._rng.uniform(0.5, 1.0)
        while (left := deadline - (now := self.clock.monotonic())) > 0:
            self._beat = now
            wait = min(left, 1.0, max(0.001, next_probe - now)) if probe else min(left, 1.0)
            event = await self._next_event(events, wait)
            if event is not None:
                self._apply([event, *self._pending(events)], gather=False)
            self._expire()
            if probe and self.clock.monotonic() >= next_probe:
                fwd = self.config.forward
                if await asyncio.to_thread(broker_answers, fwd.host, fwd.port, PROBE_TIMEOUT_S):
                    return True
                next_probe = self.clock.monotonic() + interval * self._rng.uniform(0.5, 1.0)
        return False

    @staticmethod
    async def _next_event(events: asyncio.Queue[LinkEvent], timeout: float) -> LinkEvent | None:
        """The next link event, or None after ``timeout`` seconds."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that races with
        # the result, and the daemon must be able to stop us.
        try:
            async with asyncio.timeout(timeout):
                return await events.get()
        except TimeoutError:
            return None

    @staticmethod
    def _pending(events: asyncio.Queue[LinkEvent]) -> list[LinkEvent]:
        out: list[LinkEvent] = []
        while True:
            try:
                out.append(events.get_nowait())
            except asyncio.QueueEmpty:
                return out

    async def _drain(self, link: MqttLink, events: asyncio.Queue[LinkEvent]) -> ForwardError:
        """Send and confirm until the connection ends; return why it ended."""
        window = self.config.forward.inflight_window
        while True:
            self.loops += 1
            self._beat = self.clock.monotonic()
            sent_any = False
            room = min(window - len(self._inflight), CLAIM_MAX)
            if room > 0 and link.connected:
                batch = self.outbox.claim_batch(room)
                sent_any = bool(batch)
                now = self.clock.monotonic()  # one send time for the batch: its ack deadlines start together
                for i, message in enumerate(batch):
                    if not self._send(link, message, now):
                        # not connected any more: the rest of the batch goes back, in order
                        self.outbox.requeue([m.message_id for m in batch[i:]])
                        break
            timeout = 0.0 if sent_any and len(self._inflight) < window else self._wait_s()
            quiet = False
            if timeout > 0:
                first = await self._next_event(events, timeout)
                quiet = first is None  # a whole wait without news: gathered acks are applied now
            else:  # more to claim at once; first let the loop write what was just published and read what came
                await asyncio.sleep(0)
                first = None
            batch_events = ([first] if first is not None else []) + self._pending(events)
            ended = self._apply(batch_events, gather=not quiet)
            self._expire()
            if ended is not None:
                return ended
            if not link.connected and not batch_events:
                # The link reports every end; this guards against a link that is down without saying so.
                await asyncio.sleep(0)

    def _wait_s(self) -> float:
        """How long to wait for events: until the oldest ack deadline or the gathered acks are due, at most the
        idle poll."""
        now = self.clock.monotonic()
        due = IDLE_POLL_S
        if self._inflight:
            oldest = next(iter(self._inflight.values()))
            due = min(due, oldest.sent_mono + self.config.forward.ack_timeout_s - now)
        if self._gather_until is not None:
            due = min(due, self._gather_until - now)
        return max(0.001, due)

    def _send(self, link: MqttLink, message: OutboxMessage, sent_mono: float) -> bool:
        """Publish one claimed message (sent at ``sent_mono``); False when the link is down (the caller requeues)."""
        try:
            body = message.payload if message.payload is not None else self._read_body(message)
            handle = link.publish(
                self.prefix + message.topic, body, message_id=message.message_id, properties=message.properties
            )
        except MessageRejected as exc:
            self._park(message.message_id, message.kind, f"broker refused the message: {exc.reason}")
            return True
        except StoreError as exc:
            self._park(message.message_id, message.kind, f"message body cannot be read: {exc}")
            return True
        except BrokerUnavailable:
            return False
        self._inflight[message.message_id] = _Inflight(message.seq, message.kind, sent_mono, handle)
        self.counters["sent"] += 1
        return True

    def _read_body(self, message: OutboxMessage) -> bytes:
        """Bytes of a row stored by reference (image chunks), read at send time."""
        try:
            from gateway.store.captures import read_body
        except ImportError as exc:  # pragma: no cover - the retina area ships it
            raise StoreError("gateway.store.captures.read_body is not available to resolve body_ref") from exc
        return read_body(self.store, message.body_ref or "")

    def _park(self, message_id: str, kind: str, reason: str) -> None:
        self._inflight.pop(message_id, None)
        self.outbox.park(message_id, reason)
        self.counters["parked"] += 1
        _logger.warning("parked message %s (%s): %s", message_id, kind, reason)
        with contextlib.suppress(GatewayError):
            add_event(
                self.store,
                "message_parked",
                f"a {kind} message was set aside: {reason}",
                level="warning",
                detail={"message_id": message_id, "kind": kind},
            )

    def _expire(self) -> None:
        """Requeue messages the platform has not confirmed within ack_timeout_s (monotonic clock)."""
        if not self._inflight:
            return
        limit = self.clock.monotonic() - self.config.forward.ack_timeout_s
        late: list[str] = []
        for mid, flight in self._inflight.items():  # in send order: the late ones are at the front
            if flight.sent_mono > limit:
                break
            late.append(mid)
        if not late:
            return
        for mid in late:
            del self._inflight[mid]
        requeued = self.outbox.requeue(late)
        self.counters["resent_after_timeout"] += requeued
        _logger.info("no platform ack within %.0f s for %d messages; re-sending", self.config.forward.ack_timeout_s,
                     requeued)  # fmt: skip

    def _apply(self, events: list[LinkEvent], *, gather: bool = True) -> ForwardError | None:
        """Apply a batch of link events; return the error when the connection ended.

        Each downlink message is handled on its own. A platform ack is gathered with those that follow it
        within ACK_GATHER_S by the clock, or until a wait passes without news (``gather=False``: everything
        gathered is applied now; the link is quiet, or we are backing off), then all are applied in one
        transaction, and their messages are acknowledged to the broker (PUBACK) only after it is committed;
        any other downlink message is acknowledged once its outcome is committed. A StoreError propagates
        without acknowledging: the supervisor restarts us and the broker redelivers.
        """
        ended: ForwardError | None = None
        for event in events:
            match event:
                case Received():
                    ids = self._downlink(event)
                    if ids:
                        self._gathered_ids.extend(ids)
                        self._gathered_acks.append(event)
                        if self._gather_until is None:
                            self._gather_until = self.clock.monotonic() + ACK_GATHER_S
                    else:
                        self._acknowledge(event)
                case Rejected(message_id=mid, reason=reason):
                    info = self._inflight.get(mid)
                    self._park(mid, info.kind if info else "unknown", reason)
                case Disconnected(error=error, rejected=rejected, unconfirmed=unconfirmed):
                    for mid, reason in rejected:
                        info = self._inflight.get(mid)
                        if info is not None:
                            self._park(mid, info.kind, reason)
                    lost = [mid for mid in unconfirmed if self._inflight.pop(mid, None) is not None]
                    if lost:
                        self.outbox.requeue(lost)
                    ended = error
                case Connected():
                    pass
        due = self._gather_until
        if due is not None and (
            not gather or ended is not None or len(self._gathered_ids) >= CLAIM_MAX or self.clock.monotonic() >= due
        ):
            self._apply_gathered()
        return ended

    def _apply_gathered(self) -> None:
        """Apply the gathered acks in one durable transaction, then PUBACK their downlink messages."""
        ids, acks = self._gathered_ids, self._gathered_acks
        self._gathered_ids, self._gathered_acks, self._gather_until = [], [], None
        self._confirm(ids)
        for event in acks:
            self._acknowledge(event)

    def _acknowledge(self, message: Received) -> None:
        """PUBACK a handled downlink message (a no-op once its connection ended: it comes again)."""
        link = self._link
        if link is not None:
            link.acknowledge(message)

    def _confirm(self, message_ids: list[str]) -> None:
        result = self.outbox.ack(message_ids)
        for mid in message_ids:
            self._inflight.pop(mid, None)
        now = self.clock.monotonic()
        self._acked.append((now, result.applied))
        self._last_ack_mono = now
        self.last_ack_at = iso(self.clock.utc_now())
        self.counters["acked"] += result.applied
        if result.never_sent:
            self._refuse_ack(result.never_sent)

    def _refuse_ack(self, never_sent: tuple[str, ...]) -> None:
        """An ack naming messages we never sent: a platform bug or a forged ack. Not applied; said loudly."""
        self.counters["ack_not_sent"] += len(never_sent)
        shown = ", ".join(never_sent[:LOGGED_IDS]) + (" ..." if len(never_sent) > LOGGED_IDS else "")
        _logger.warning("platform ack names %d message(s) never sent; not applied: %s", len(never_sent), shown)
        with contextlib.suppress(GatewayError):
            add_event(
                self.store,
                "ack_for_unsent",
                f"the platform acknowledged {len(never_sent)} message(s) the gateway never sent; ignored",
                level="warning",
                detail={"count": len(never_sent), "message_ids": list(never_sent[:100])},
            )

    def _downlink(self, message: Received) -> list[str]:
        """Handle one downlink message on its own; return the message ids it acknowledges (applied by the
        caller). Whatever else it causes (a referral, a dead letter) is committed when this returns."""
        relative = message.topic.removeprefix(self.prefix)
        self.counters["downlink_received"] += 1
        try:
            parsed = downlink.parse(relative, message.payload)
            if isinstance(parsed, Referral):
                self._store_referral(parsed)
                return []
            return parsed
        except ContractError as exc:
            self._dead_letter(relative, message.payload, exc)
        except GatewayError:
            raise  # the store failed: not acknowledged, so the broker redelivers once we are restarted
        except Exception as exc:  # a bug of ours on this message: keep it for IT, never crash-loop over it
            place = _raised_at(exc)
            _logger.error("bug while handling a downlink message (%d bytes): %s at %s", len(message.payload),
                          type(exc).__name__, place)  # fmt: skip
            reason = f"internal error (a bug): {type(exc).__name__} at {place}"
            self._dead_letter(relative, message.payload, ContractError(reason, what="downlink", where="(bug)"))
        return []

    def _store_referral(self, referral: Referral) -> None:
        added = add_referral(self.store, referral)
        if added is None:
            return  # a re-send: stored already
        if added.held is None:
            _logger.info("referral %s received (%s)", referral.referral_id, referral.decision)
            return
        self.counters["referrals_held"] += 1
        _logger.warning("referral %s received (%s) and held for review: %s", referral.referral_id,
                        referral.decision, added.held)  # fmt: skip
        with contextlib.suppress(GatewayError):
            add_event(
                self.store,
                "referral_held",
                f"a referral decision was held for review: {added.held}",
                level="warning",
                detail={"referral_id": referral.referral_id, "reason": str(added.held)},
            )

    def _dead_letter(self, relative: str, payload: bytes, error: ContractError) -> None:
        """Keep a message that failed the contract, with its reason; count it; log its size and reason only."""
        topic = relative if relative in downlink.TOPIC_LIMITS else "(other)"
        with self.store.transaction(durable=True):
            new = add_dead_letter(
                self.store, topic=topic, what=error.what, field=error.where, reason=error.reason, payload=payload
            )
            if new:
                add_event(
                    self.store,
                    "downlink_dead_letter",
                    f"a downlink {error.what} message failed the contract and was set aside: "
                    f"{error.where}: {error.reason}",
                    level="warning",
                    detail={"topic": topic, "what": error.what, "field": error.where, "reason": error.reason,
                            "size_bytes": len(payload)},
                )  # fmt: skip
        if new:
            self.counters["dead_letters"] += 1
        _logger.warning("dead letter: a downlink %s on %s (%d bytes) fails the contract: %s: %s%s", error.what,
                        topic, len(payload), error.where, error.reason, "" if new else " (again)")  # fmt: skip


def _raised_at(exc: BaseException) -> str:
    """``file:line`` where an exception was raised (for a bug report without the exception's text, which
    may quote the payload)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"


def components(runtime: Runtime) -> list[Component]:
    """The forwarder, for the daemon."""
    return [Forwarder(runtime.config, runtime.store, runtime.clock)]
