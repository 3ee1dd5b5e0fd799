"""``/metrics`` in the Prometheus text format, built per scrape from the facade's status (no patient data).

A custom collector on a fresh registry per scrape (never the process-global one), so two apps in one
process (tests, the demo) do not share metrics, and every value is read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.services import GatewayServices, Health, ProblemKind

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTBOX_STATES = ("pending", "acked", "parked")
"""The stored states (in flight is the forwarder's memory: ``cg_outbox_in_flight``)."""


def _broker_connected(broker: dict[str, Any]) -> float:
    """1 when the forwarder's snapshot says the link is up (it reports ``connected`` or ``state``)."""
    if isinstance(broker.get("connected"), bool):
        return 1.0 if broker["connected"] else 0.0
    return 1.0 if str(broker.get("state", "")).lower() in {"connected", "online", "up"} else 0.0


class GatewayCollector(Collector):
    """Gauges from one ``services.status()`` call per scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]], health: Callable[[], Health]) -> None:
        self._status = status
        self._health = health

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield from _health_metrics(self._health())
        outbox = GaugeMetricFamily("cg_outbox_messages", "Outbox messages by kind and state", labels=["kind", "state"])
        for kind, by_state in sorted(status["outbox"]["by_kind"].items()):
            for state in OUTBOX_STATES:
                outbox.add_metric([kind, state], float(by_state.get(state, 0)))
        yield outbox
        yield GaugeMetricFamily(
            "cg_outbox_in_flight",
            "Messages sent and not yet acknowledged by the platform (the forwarder's memory; pending when stored)",
            value=float(status["broker"].get("in_flight") or 0),
        )
        oldest = status["outbox"]["oldest_unsent_age_s"]
        yield GaugeMetricFamily(
            "cg_outbox_oldest_unsent_age_seconds",
            "Age of the oldest message not yet acknowledged (0 when none)",
            value=float(oldest or 0.0),
        )
        yield GaugeMetricFamily(
            "cg_broker_connected",
            "1 while the MQTT link to the platform is up",
            value=_broker_connected(status["broker"]),
        )
        yield GaugeMetricFamily(
            "cg_disk_free_bytes", "Free space on the store's file system", value=status["disk"]["free_mb"] * 1024 * 1024
        )
        yield GaugeMetricFamily(
            "cg_clock_synchronised",
            "1 while the system clock is NTP-synchronised",
            value=float(status["clock"]["synchronised"]),
        )
        yield GaugeMetricFamily(
            "cg_uptime_seconds", "Seconds since the daemon started", value=float(status["gateway"]["uptime_s"])
        )
        healthy = GaugeMetricFamily(
            "cg_component_healthy", "1 while a daemon component is healthy", labels=["component"]
        )
        for name, info in sorted(status["components"].items()):
            healthy.add_metric([name], 1.0 if info.get("healthy") else 0.0)
        yield healthy
        info = GaugeMetricFamily(
            "cg_build_info", "Gateway identity and version", labels=["site_id", "gateway_id", "version"]
        )
        gw = status["gateway"]
        info.add_metric([gw["site_id"], gw["gateway_id"], gw["version"]], 1.0)
        yield info


def _health_metrics(health: Health) -> Iterator[Metric]:
    """The health model's answer: its level, and every problem kind as 0/1 (an alert rule per kind)."""
    yield GaugeMetricFamily(
        "cg_health_level", "The status badge: 0 green, 1 amber, 2 red (/healthz answers 503)", value=health.level.rank
    )
    problems = GaugeMetricFamily(
        "cg_health_problem",
        "1 while the health model names this problem (subject: the component, for component problems)",
        labels=["problem", "level", "subject"],
    )
    named = {p.kind for p in health.problems}
    for p in health.problems:
        problems.add_metric([str(p.kind), str(p.level), p.subject or ""], 1.0)
    for kind in ProblemKind:  # the absent ones as 0, so that a rule sees the problem end
        if kind not in named:
            problems.add_metric([str(kind), "", ""], 0.0)
    yield problems
    down = next((p.value for p in health.problems if p.kind is ProblemKind.BROKER_DOWN), None)
    yield GaugeMetricFamily(
        "cg_broker_down_seconds", "How long the link to the broker has been down (0 while up)", value=float(down or 0)
    )


def metrics_text(services: GatewayServices) -> bytes:
    """One scrape's worth of metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(services.status, services.health))
    return generate_latest(registry)
