"""Pure meter codecs: bytes in, values out; raise only ProtocolError. No I/O, no asyncio, no clock."""
