"""The MQTT link itself, on a real mosquitto: one link object connected, closed and connected again on the same
event loop (the end of the first connection, reported on the loop's next turn, must not end the second)."""

from __future__ import annotations

import asyncio

from gateway.forward.mqtt import Connected, Disconnected, LinkEvent, LinkSettings, MqttLink


def test_a_link_closed_and_connected_again_stays_connected(broker) -> None:
    events: list[LinkEvent] = []

    async def go() -> None:
        link = MqttLink(LinkSettings(host="127.0.0.1", port=broker.port, client_id="link-twice"), events.append)
        await link.connect()
        link.close()  # a clean DISCONNECT: paho closes the socket, the end is reported on the next turn
        await link.connect()
        for _ in range(5):  # turns enough for any stale report of the first connection to run
            await asyncio.sleep(0)
        assert link.connected
        handle = link.publish("t/after", b"{}", message_id="m-1")
        for _ in range(1000):  # up to 10 s: a deadline for a wedged broker, not a measure of speed
            if handle.is_published():
                break
            await asyncio.sleep(0.01)
        assert handle.is_published()
        link.close()

    asyncio.run(go())
    kinds = [type(e) for e in events]
    assert kinds.count(Connected) == 2
    assert kinds.count(Disconnected) <= 2
