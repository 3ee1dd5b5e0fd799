"""What the binary serial codecs share: a receive buffer that skips line noise up to a frame's start byte.

PURE (sans-I/O). :class:`StartSync` is the base of ``lifescan_binary.FrameDecoder`` and ``taidoc.FrameDecoder``.
"""

from __future__ import annotations


class StartSync:
    """Bytes read from a port, aligned on the next ``start`` byte; ``skipped`` counts the noise dropped."""

    def __init__(self, start: int) -> None:
        self._start = bytes([start])
        self._buffer = bytearray()
        self.skipped = 0
        """Noise bytes skipped so far (for diagnostics)."""

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the port."""
        self._buffer += data

    def clear(self) -> None:
        """Forget buffered bytes."""
        self._buffer.clear()

    def _align(self) -> bool:
        """Drop the bytes before the next start byte; False (buffer emptied) when there is none."""
        start = self._buffer.find(self._start)
        if start < 0:
            self.skipped += len(self._buffer)
            self._buffer.clear()
            return False
        if start:
            self.skipped += start
            del self._buffer[:start]
        return True
