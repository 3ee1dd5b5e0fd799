"""A TCP relay between one MQTT client and a real broker that can hold back the broker's answers.

It passes the broker's first packet (CONNACK) and then, while ``holding``, keeps every later packet from
the broker (SUBACKs, PUBACKs) to itself, so the client sees no PUBACK at all. Meanwhile it counts the
PUBLISH packets the client sends upstream. That makes MQTT 5 flow control observable on the wire: with no
PUBACK coming back, a compliant client stops after the broker's Receive Maximum.
"""

from __future__ import annotations

import contextlib
import socket
import threading

PUBLISH = 3


def split_packets(buffer: bytearray) -> list[bytes]:
    """Remove and return the complete MQTT packets at the front of ``buffer`` (fixed header + body)."""
    packets: list[bytes] = []
    while len(buffer) >= 2:
        length, multiplier, pos = 0, 1, 1
        while True:
            if pos >= len(buffer):
                return packets  # the remaining-length field is not complete yet
            byte = buffer[pos]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            pos += 1
            if not byte & 0x80:
                break
        end = pos + length
        if len(buffer) < end:
            return packets
        packets.append(bytes(buffer[:end]))
        del buffer[:end]
    return packets


class WithholdingRelay:
    """Listen on a free loopback port; relay one client at a time to ``upstream_port``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.holding = threading.Event()
        self.publishes_upstream = 0
        self._held: list[bytes] = []
        self._lock = threading.Lock()
        self._client: socket.socket | None = None
        self._closed = False
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def hold(self) -> None:
        """From the next packet after CONNACK on, keep the broker's packets from the client."""
        self.holding.set()

    def release(self) -> None:
        """Send everything held to the client and pass what follows straight through."""
        with self._lock:
            self.holding.clear()
            held, self._held = self._held, []
            if self._client is not None:
                for packet in held:
                    self._client.sendall(packet)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._client = client
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        buffer = bytearray()
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                buffer.extend(data)
                for packet in split_packets(buffer):
                    if packet[0] >> 4 == PUBLISH:
                        with self._lock:
                            self.publishes_upstream += 1
                    upstream.sendall(packet)
        with contextlib.suppress(OSError):
            upstream.close()

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        buffer = bytearray()
        first = True
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                buffer.extend(data)
                for packet in split_packets(buffer):
                    with self._lock:
                        if self.holding.is_set() and not first:
                            self._held.append(packet)
                        else:
                            client.sendall(packet)
                    first = False
        with contextlib.suppress(OSError):
            client.close()
