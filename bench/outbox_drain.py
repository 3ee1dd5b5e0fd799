"""Benchmark: drain 20,000 queued readings into a local mosquitto, with the platform's confirmations.

Four figures, measured in the same round on the same broker:

- ``store_records_per_s``: readings into the store with ``add_readings`` (reading + outbox row, one durable
  transaction per batch of ``--batch`` readings).
- ``bare_msgs_per_s``: a bare paho QoS 1 loop publishing the same payloads (MQTT 5, same in-flight limit),
  from the first PUBLISH to the last PUBACK, to a topic nobody subscribes to.
- ``drain_msgs_per_s``: the real forwarder draining the outbox to the reference receiver (its own process,
  storing durably and acknowledging in batches), until the forwarder has committed an ack for every message
  (the store is checked afterwards: every row ``acked``).
- ``broker_ack_msgs_per_s``: the forwarder alone (no receiver, so no platform acks: its in-flight window is
  made large enough to hold every message), from its start until the broker has PUBACKed every message; each
  message's ``sent`` row is committed before it is published.

Ratios (targets in the JSON):

- ``ratio`` = drain / bare (target >= 0.8): end to end, including the receiver's work (its own process, on the
  same cores).
- ``ratio_broker_ack`` = broker_ack / bare (target >= 0.8): the forwarder's own send path.
- ``cpu_ratio`` = the gateway's CPU per message in the drain / the bare loop's CPU per message (target <= 1.5):
  what the outbox, the acks and the bookkeeping cost on top of paho. Measured in turns (below); each side's CPU
  is its own process's (the gateway's asyncio loop, which also drives paho; the bare loop's two threads).
  ``cpu_ratio_sequential`` is the same ratio from the bare loop and the drain above, seconds apart.

Turns: on a shared VM the same Python work costs up to twice the CPU from one second to the next, so figures
measured seconds apart compare the machine's moods as much as the code. After the drain, a fresh gateway store
and a bare loop in a process of its own (same CPU, same broker) take the same readings in turns of ``--chunk``
messages, each side first in every other pair; the first turn of each warms up and is not counted.

CPUs: the bench process (the bare loop, then the gateway) runs on the first CPU it may use, the brokers and the
receiver on the others (on a one-CPU machine, all on that one). The gateway and the bare loop are then measured
alike, neither competing with the emulated platform for its core: on a Pi the platform is elsewhere. Unpinned,
on a shared 2-core machine, a round's ratio swung by half with how fast the receiver happened to run.

The platform's acks: the gateway's CPU per message depends on how many ack messages come for how many messages
(each one an MQTT PUBLISH to read, parse, validate and PUBACK). The reference receiver acknowledges each batch
it stores in one ack, and batches form while the previous one commits; ``ids_per_ack_message`` says what that
gave. ``--platform-ack-batch 1`` runs a platform that stores and acknowledges each message on its own.

The last line is one JSON object.

    .venv/bin/python bench/outbox_drain.py [--readings 20000] [--window 500] [--rounds 9] [--chunk 2000]
        [--platform-ack-batch N]

Each round prints its figures on stderr; the last line (stdout) holds the medians. On this shared VM single
rounds of ``cpu_ratio`` spread from about 1.1 to 1.8 while their median moves little, so the JSON also gives
``cpu_ratio_median_interval`` (and ``ratio_broker_ack_median_interval``): a distribution-free interval that
holds the median of the rounds' distribution with the ``confidence`` it names (:func:`median_interval`). Nine
rounds (the default, ~6 minutes here) give the 2nd to 8th smallest at 0.96; three rounds only their range, at
0.75. A target is met when the whole interval is on its side, missed when the whole interval is on the other,
and not told apart when the interval holds it. It speaks for the machine it ran on (a Pi's cores and caches
may give another ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.clock import SystemClock
from gateway.config import ForwardSection, parse_config
from gateway.emulate.broker import BrokerOptions, MosquittoBroker
from gateway.emulate.platform import ACK_BATCH_MAX_DEFAULT
from gateway.forward.forwarder import Forwarder
from gateway.forward.mqtt import QOS, RECEIVE_MAXIMUM_DEFAULT, set_nodelay
from gateway.records import GlucoseReading, Unit
from gateway.store import Store, open_store
from gateway.store.db import Origin
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings

NODELAY = "set_tcp_nodelay true"
"""Without it mosquitto delivers small packets under Nagle + delayed ACK (~40 ms a hop)."""
TARGET_RATIO = 0.8
TARGET_CPU_RATIO = 1.5
CONFIDENCE = 0.95
"""The confidence asked of the intervals printed around the ratios' medians (see :func:`median_interval`)."""


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of what ``values`` were drawn from.

    The interval between the k-th smallest and the k-th largest of n values holds the median with probability
    1 - 2 P(Binomial(n, 1/2) <= k - 1), whatever the distribution (the values independent). Returns (low, high,
    that probability) for the narrowest such interval of at least ``confidence``; with too few values for it,
    the smallest and the largest and the (lower) confidence they give: 9 values give the 2nd and 8th at 0.961,
    3 values only their range at 0.75.
    """
    ordered = sorted(values)
    n = len(ordered)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / (1 << n)

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def _interval_of(rounds: list[dict[str, Any]], key: str) -> dict[str, float]:
    low, high, confidence = median_interval([r[key] for r in rounds])
    return {"low": round(low, 3), "high": round(high, 3), "confidence": round(confidence, 3)}


def make_readings(n: int) -> list[GlucoseReading]:
    base = datetime(2026, 11, 1, 7, 0)
    return [
        GlucoseReading(
            meter_id="bench:0001",
            sequence=i,
            meter_time=base + timedelta(minutes=i),
            clock_offset_s=3.0,
            corrected_time=(base + timedelta(minutes=i, seconds=3)).replace(tzinfo=UTC),
            time_trusted=True,
            value=float(70 + i % 200),
            unit=Unit.MG_DL,
            patient_id=f"P-{i % 50:04d}",
        )
        for i in range(1, n + 1)
    ]


def fill_store(store: Store, n: int, batch: int) -> float:
    """Readings per second into the store."""
    readings = make_readings(n)
    start = time.perf_counter()
    for i in range(0, n, batch):
        add_readings(store, readings[i : i + batch])
    return n / (time.perf_counter() - start)


def broker_receive_maximum(port: int) -> int:
    """The Receive Maximum the broker announces in its CONNACK (65,535 when it names none)."""
    announced: list[int] = []
    connected = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, _rc: Any, props: Any) -> None:
        announced.append(int(getattr(props, "ReceiveMaximum", 0) or RECEIVE_MAXIMUM_DEFAULT))
        connected.set()

    client = Client(CallbackAPIVersion.VERSION2, client_id="bench-probe", protocol=MQTTProtocolVersion.MQTTv5)
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    client.disconnect()
    client.loop_stop()
    return announced[0]


class BareLoop:
    """A bare paho QoS 1 publisher, connected once, publishing payloads on demand.

    Like the gateway (like with like): MQTT 5, QoS 1, the same payloads, at most the smaller of the window and the
    broker's Receive Maximum PUBLISHes unanswered (the gateway's paho limit), and Nagle off on its socket as the
    gateway's link has it (with Nagle on, paho's small writes would share TCP segments the gateway's cannot).
    paho's own network thread (``loop_start``) reads and writes; :meth:`publish_all` publishes from the caller's.
    """

    def __init__(self, port: int, inflight: int, client_id: str = "bench-bare") -> None:
        self._remaining = 0
        self._done = threading.Event()
        connected = threading.Event()
        client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.max_inflight_messages_set(min(inflight, broker_receive_maximum(port)))
        client.max_queued_messages_set(0)
        client.on_publish = self._published
        client.on_connect = lambda *_a: connected.set()
        client.connect("127.0.0.1", port)
        set_nodelay(client)
        client.loop_start()
        connected.wait(10)
        self._client = client

    def _published(self, *_args: Any) -> None:
        self._remaining -= 1
        if self._remaining == 0:
            self._done.set()

    def publish_all(self, payloads: list[bytes]) -> tuple[float, float]:
        """Publish ``payloads`` and wait for every PUBACK: wall seconds (first PUBLISH to last PUBACK) and the
        process's CPU seconds meanwhile."""
        self._done.clear()
        self._remaining = len(payloads)
        start, cpu = time.perf_counter(), time.process_time()
        for payload in payloads:
            self._client.publish("bench/bare/glucose", payload, qos=QOS)
        self._done.wait(300)
        return time.perf_counter() - start, time.process_time() - cpu

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def bare_loop(port: int, payloads: list[bytes], inflight: int) -> tuple[float, float]:
    """Messages per second of a bare paho QoS 1 publisher (first PUBLISH to last PUBACK), and CPU us/message."""
    bare = BareLoop(port, inflight)
    try:
        elapsed, cpu = bare.publish_all(payloads)
    finally:
        bare.close()
    return len(payloads) / elapsed, cpu / len(payloads) * 1e6


async def _drain(forwarder: Forwarder, outbox: Outbox, n: int) -> tuple[float, float]:
    """Until the platform's acks confirmed every message: messages per second and CPU us per message.

    The forwarder counts what its committed ack transactions changed; the store is asked only afterwards (its
    queries would add the bench's own CPU to the gateway's).
    """
    figures = await _run_until(forwarder, n, lambda: forwarder.counters["acked"] >= n)
    assert outbox.ack_activity()[0] == n, "the store holds every message acked"
    return figures


def _all_at_the_broker(forwarder: Forwarder, n: int) -> bool:
    """Every message PUBACKed by the broker (the forwarder holds them in flight: no platform acks come)."""
    inflight = forwarder._inflight  # a bench may look inside: the forwarder has no use for this count
    if len(inflight) < n:
        return False
    # The broker answers a connection's PUBLISHes in order: look at the last one sent, then (once) at all.
    last = next(reversed(inflight.values()))
    if last.handle is None or not last.handle.is_published():
        return False
    return all(f.handle is not None and f.handle.is_published() for f in inflight.values())


async def _run_until(forwarder: Forwarder, n: int, done: Callable[[], bool]) -> tuple[float, float]:
    task = asyncio.create_task(forwarder.run())
    start, cpu = time.perf_counter(), time.process_time()
    while True:
        await asyncio.sleep(0.02)
        if done():
            break
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return n / elapsed, cpu / n * 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def queued_payloads(store: Store, n: int) -> list[bytes]:
    """The payloads the outbox holds, in order (claimed and put back: the rows stay pending)."""
    outbox = Outbox(store)
    messages = outbox.claim_batch(n)
    outbox.requeue([m.message_id for m in messages])
    return [bytes(m.payload or b"") for m in messages]


def write_payloads(path: Path, payloads: list[bytes]) -> None:
    """Payloads, each after its length (4 bytes), for the bare loop's process in the turns."""
    with path.open("wb") as out:
        for payload in payloads:
            out.write(len(payload).to_bytes(4, "big") + payload)


def read_payloads(path: Path) -> list[bytes]:
    data, payloads, at = path.read_bytes(), [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        payloads.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return payloads


def bare_child(port: int, inflight: int, payload_file: Path) -> None:
    """The bare loop of the turns, in a process of its own (each side's CPU is then its own process's):
    each line ``N`` on stdin publishes the next N payloads and answers, once all are PUBACKed, with their CPU."""
    payloads = read_payloads(payload_file)
    bare = BareLoop(port, inflight, client_id="bench-bare-turns")
    print("ready", flush=True)
    sent = 0
    for line in sys.stdin:
        count = int(line)
        _elapsed, cpu = bare.publish_all(payloads[sent : sent + count])
        sent += count
        print(json.dumps({"cpu_s": cpu}), flush=True)
    bare.close()


async def _take_turns(
    forwarder: Forwarder, store: Store, chunks: list[list[GlucoseReading]], batch: int, bare: asyncio.subprocess.Process
) -> tuple[float, float]:
    """CPU seconds of the bare loop and of the drain, over the same chunks of messages taken in turns.

    The first chunk warms both up and is not counted; the turns go drain, bare, bare, drain, drain, bare, ...
    (each side first in every other pair). A drain turn adds its chunk's readings to the store (not counted),
    then counts the gateway process's CPU until the platform's acks confirmed them all.
    """
    outbox = Outbox(store)
    task = asyncio.create_task(forwarder.run())
    acked = 0

    to_bare, from_bare = bare.stdin, bare.stdout
    assert to_bare is not None and from_bare is not None

    async def bare_turn(count: int) -> float:
        to_bare.write(f"{count}\n".encode())
        await to_bare.drain()
        return float(json.loads(await from_bare.readline())["cpu_s"])

    async def drain_turn(chunk: list[GlucoseReading]) -> float:
        nonlocal acked
        for i in range(0, len(chunk), batch):
            add_readings(store, chunk[i : i + batch])
        acked += len(chunk)
        cpu = time.process_time()
        while forwarder.counters["acked"] < acked:
            await asyncio.sleep(0.02)
        cpu = time.process_time() - cpu
        assert outbox.ack_activity()[0] == acked, "the store holds every message acked"
        return cpu

    bare_cpu = drain_cpu = 0.0
    try:
        for i, chunk in enumerate(chunks):
            if i % 2 == 1:
                bare_s = await bare_turn(len(chunk))
                drain_s = await drain_turn(chunk)
            else:
                drain_s = await drain_turn(chunk)
                bare_s = await bare_turn(len(chunk))
            if i > 0:
                bare_cpu, drain_cpu = bare_cpu + bare_s, drain_cpu + drain_s
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return bare_cpu, drain_cpu


def turns_round(
    work: Path, port: int, payloads: list[bytes], window: int, batch: int, chunk: int
) -> tuple[float, float]:
    """The bare loop and the drain in turns, ``chunk`` messages a turn: CPU us a message of each (the module's
    docstring says why). The bare loop publishes ``payloads``; the gateway stores the same readings anew."""
    readings = make_readings(len(payloads))
    chunks = [readings[i : i + chunk] for i in range(0, len(readings), chunk)]
    write_payloads(work / "payloads.bin", payloads[: len(readings)])
    clock = SystemClock("assume_synced")
    store = open_store(work / "gwi" / "gateway.db", work / "gwi" / "images", clock=clock,
                       origin=Origin("bench", "gw-turns", "json"))  # fmt: skip
    config = parse_config(
        {
            "gateway": {"site_id": "bench", "gateway_id": "gw-turns", "state_dir": str(work / "gwi")},
            "forward": {"port": port, "inflight_window": window, "ack_timeout_s": 120},
            "clock": {"sync_check": "assume_synced"},
        }
    )

    async def run() -> tuple[float, float]:
        bare = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--bare-child", str(port), str(window), str(work / "payloads.bin"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert bare.stdout is not None
            await bare.stdout.readline()  # "ready": connected
            return await _take_turns(Forwarder(config, store, clock), store, chunks, batch, bare)
        finally:
            assert bare.stdin is not None
            bare.stdin.close()
            await bare.wait()

    try:
        bare_cpu, drain_cpu = asyncio.run(run())
    finally:
        store.close()
    counted = len(readings) - len(chunks[0])
    return bare_cpu / counted * 1e6, drain_cpu / counted * 1e6


_CPUS = sorted(os.sched_getaffinity(0))
BENCH_CPUS = {_CPUS[0]}
PLATFORM_CPUS = set(_CPUS[1:]) or BENCH_CPUS
"""The bench process's CPU, and the brokers' and the receiver's (see the module's docstring)."""


def on_platform_cpus(pid: int) -> None:
    os.sched_setaffinity(pid, PLATFORM_CPUS)


def broker_ack_round(work: Path, readings: int, batch: int) -> tuple[float, float]:
    """The forwarder alone on a fresh store and a broker of its own (the receiver, subscribed to every gateway's
    topics on the other one, would acknowledge): messages per second until the broker PUBACKed them all."""
    broker = MosquittoBroker(work / "alone-broker", BrokerOptions(persistence=False, extra_lines=[NODELAY]))
    broker.start()
    assert broker.process is not None
    on_platform_cpus(broker.process.pid)
    try:
        return _forwarder_alone(broker.port, work, readings, batch)
    finally:
        broker.stop()


def _forwarder_alone(port: int, work: Path, readings: int, batch: int) -> tuple[float, float]:
    clock = SystemClock("assume_synced")
    store = open_store(work / "alone" / "gateway.db", work / "alone" / "images", clock=clock,
                       origin=Origin("bench", "gw-alone", "json"))  # fmt: skip
    try:
        fill_store(store, readings, batch)
        config = parse_config(
            {
                "gateway": {"site_id": "bench", "gateway_id": "gw-alone", "state_dir": str(work / "alone")},
                "forward": {"port": port, "ack_timeout_s": 3600},
                "clock": {"sync_check": "assume_synced"},
            }
        )
        # No platform acks come, so the in-flight window must hold every message: past what the config allows
        # (1,000), hence a copy without validation. paho still keeps the broker's Receive Maximum in flight.
        forward = config.forward.model_copy(update={"inflight_window": readings})
        forwarder = Forwarder(config.model_copy(update={"forward": forward}), store, clock)
        return asyncio.run(_run_until(forwarder, readings, lambda: _all_at_the_broker(forwarder, readings)))
    finally:
        store.close()


def one_round(readings: int, batch: int, window: int, platform_ack_batch: int, chunk: int) -> dict[str, Any]:
    """Fill a fresh store, time the bare loop, the forwarder alone, the real drain, then the bare loop and the
    drain in turns; on a fresh broker and receiver (storing and acknowledging at most ``platform_ack_batch``
    messages together)."""
    with tempfile.TemporaryDirectory(prefix="cg-bench-") as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "broker", BrokerOptions(persistence=False, extra_lines=[NODELAY]))
        broker.start()
        receiver = subprocess.Popen(
            [sys.executable, "-m", "gateway", "receiver", "--port", str(broker.port), "--db", str(work / "p.db"),
             "--report-s", "3600", "--ack-batch-max", str(platform_ack_batch)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert broker.process is not None
        on_platform_cpus(broker.process.pid)
        on_platform_cpus(receiver.pid)
        try:
            clock = SystemClock("assume_synced")
            store = open_store(work / "gw" / "gateway.db", work / "gw" / "images", clock=clock,
                               origin=Origin("bench", "gw-bench", "json"))  # fmt: skip
            store_rate = fill_store(store, readings, batch)
            payloads = queued_payloads(store, readings)
            receive_maximum = broker_receive_maximum(broker.port)
            others = {"broker": broker.process.pid, "receiver": receiver.pid}
            before = {name: cpu_seconds(pid) for name, pid in others.items()}
            bare_rate, bare_cpu = bare_loop(broker.port, payloads, window)
            bare_broker_cpu = (cpu_seconds(others["broker"]) - before["broker"]) / len(payloads) * 1e6
            alone_rate, alone_cpu = broker_ack_round(work, readings, batch)
            config = parse_config(
                {
                    "gateway": {"site_id": "bench", "gateway_id": "gw-bench", "state_dir": str(work / "gw")},
                    "forward": {"port": broker.port, "inflight_window": window, "ack_timeout_s": 120},
                    "clock": {"sync_check": "assume_synced"},
                }
            )
            time.sleep(1.0)  # the receiver process is subscribed by now
            before = {name: cpu_seconds(pid) for name, pid in others.items()}
            forwarder = Forwarder(config, store, clock)
            drain_rate, drain_cpu = asyncio.run(_drain(forwarder, Outbox(store), readings))
            ack_messages = forwarder.counters["downlink_received"]
            drain_other_cpu = {name: (cpu_seconds(pid) - before[name]) / readings * 1e6 for name, pid in others.items()}
            store.close()
            turns_bare_cpu, turns_drain_cpu = turns_round(work, broker.port, payloads, window, batch, chunk)
        finally:
            receiver.terminate()
            receiver.wait(30)
            broker.stop()
    return {
        "store_records_per_s": store_rate,
        "bare_msgs_per_s": bare_rate,
        "drain_msgs_per_s": drain_rate,
        "ratio": drain_rate / bare_rate,
        "broker_ack_msgs_per_s": alone_rate,
        "ratio_broker_ack": alone_rate / bare_rate,
        "bare_cpu_us_per_msg": bare_cpu,
        "drain_cpu_us_per_msg": drain_cpu,
        "broker_ack_cpu_us_per_msg": alone_cpu,
        "cpu_ratio": turns_drain_cpu / turns_bare_cpu,
        "cpu_ratio_sequential": drain_cpu / bare_cpu,
        "turns_bare_cpu_us_per_msg": turns_bare_cpu,
        "turns_drain_cpu_us_per_msg": turns_drain_cpu,
        "broker_receive_maximum": receive_maximum,
        "bare_broker_cpu_us_per_msg": bare_broker_cpu,
        "drain_broker_cpu_us_per_msg": drain_other_cpu["broker"],
        "drain_receiver_cpu_us_per_msg": drain_other_cpu["receiver"],
        "ack_messages": ack_messages,
        "ids_per_ack_message": readings / max(ack_messages, 1),
    }


def main() -> None:
    if sys.argv[1:2] == ["--bare-child"]:  # the bare loop of the turns (bare_child)
        bare_child(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="readings per add_readings call")
    parser.add_argument(
        "--window",
        type=int,
        default=ForwardSection().inflight_window,
        help="forward.inflight_window (default: the gateway's)",
    )
    parser.add_argument("--rounds", type=int, default=9, help="figures are the median over the rounds")
    parser.add_argument(
        "--platform-ack-batch",
        type=int,
        default=ACK_BATCH_MAX_DEFAULT,
        help="most messages the receiver stores and acknowledges together (default: the receiver's; 1: an ack each)",
    )
    parser.add_argument("--chunk", type=int, default=2000, help="messages a turn (cpu_ratio)")
    args = parser.parse_args()

    os.sched_setaffinity(0, BENCH_CPUS)
    rounds = []
    for i in range(args.rounds):
        figures = one_round(args.readings, args.batch, args.window, args.platform_ack_batch, args.chunk)
        rounds.append(figures)
        print(f"round {i + 1}: " + json.dumps({k: round(v, 3) for k, v in figures.items()}), file=sys.stderr)
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    ratios = [r["ratio"] for r in rounds]
    result = {
        "readings": args.readings,
        "window": args.window,
        "rounds": args.rounds,
        "broker_receive_maximum": rounds[0]["broker_receive_maximum"],
        "store_records_per_s": round(median["store_records_per_s"]),
        "bare_msgs_per_s": round(median["bare_msgs_per_s"]),
        "drain_msgs_per_s": round(median["drain_msgs_per_s"]),
        "broker_ack_msgs_per_s": round(median["broker_ack_msgs_per_s"]),
        "ratio": round(median["ratio"], 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "ratio_broker_ack": round(median["ratio_broker_ack"], 3),
        "ratio_broker_ack_median_interval": _interval_of(rounds, "ratio_broker_ack"),
        "cpu_ratio": round(median["cpu_ratio"], 3),
        "cpu_ratio_min": round(min(r["cpu_ratio"] for r in rounds), 3),
        "cpu_ratio_max": round(max(r["cpu_ratio"] for r in rounds), 3),
        "cpu_ratio_median_interval": _interval_of(rounds, "cpu_ratio"),
        "cpu_ratio_sequential": round(median["cpu_ratio_sequential"], 3),
        "turns_bare_cpu_us_per_msg": round(median["turns_bare_cpu_us_per_msg"], 1),
        "turns_drain_cpu_us_per_msg": round(median["turns_drain_cpu_us_per_msg"], 1),
        "turn_messages": args.chunk,
        "bare_cpu_us_per_msg": round(median["bare_cpu_us_per_msg"], 1),
        "drain_cpu_us_per_msg": round(median["drain_cpu_us_per_msg"], 1),
        "broker_ack_cpu_us_per_msg": round(median["broker_ack_cpu_us_per_msg"], 1),
        "bare_broker_cpu_us_per_msg": round(median["bare_broker_cpu_us_per_msg"], 1),
        "drain_broker_cpu_us_per_msg": round(median["drain_broker_cpu_us_per_msg"], 1),
        "drain_receiver_cpu_us_per_msg": round(median["drain_receiver_cpu_us_per_msg"], 1),
        "platform_ack_batch_max": args.platform_ack_batch,
        "ack_messages": round(median["ack_messages"]),
        "ids_per_ack_message": round(median["ids_per_ack_message"], 1),
        "target_ratio": TARGET_RATIO,
        "target_ratio_broker_ack": TARGET_RATIO,
        "target_cpu_ratio": TARGET_CPU_RATIO,
        # what the bare loop and the gateway share, so that the ratios compare like with like
        "like_with_like": {
            "protocol": "MQTT 5",
            "qos": QOS,
            "inflight_limit": min(args.window, rounds[0]["broker_receive_maximum"]),  # paho's (bare), the link's
            "tcp_nodelay": "both",
            "cpus": {"bench": sorted(BENCH_CPUS), "brokers_and_receiver": sorted(PLATFORM_CPUS)},
            "threads": "bare: the publishing thread and paho's network thread (loop_start); gateway: its event loop",
            "cpu": f"cpu_ratio: turns of {args.chunk} messages, each side's own process's CPU",
            "payloads": "the same bytes",
            "durability": "bare: none; gateway: each reading durable before its claim, each platform ack committed "
            "durably (synchronous=FULL) before it counts",
        },
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
