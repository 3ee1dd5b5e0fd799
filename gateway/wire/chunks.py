"""Images in chunks: the split plan, body references, MQTT user properties and reassembly (PURE).

An image travels as one ``retina/capture`` metadata message plus ``total`` chunk messages on
``retina/image/{capture_id}``. Each chunk is its own outbox row (so its own acknowledgement): an
interrupted image resumes at the first chunk the platform has not acknowledged, and a chunk sent twice
is harmless. Chunk rows carry no bytes in SQLite: their ``body_ref`` (``image:<sha256>:<offset>:<length>``)
names a slice of the stored image, read at send time by ``gateway.store.captures.read_body``.

Every chunk message carries these MQTT 5 user properties (strings): ``capture_id``, ``index`` (0-based),
``total`` and ``sha256`` (of the whole image). The receiver feeds them with the payload to a
:class:`Reassembler`, which accepts chunks in any order, ignores duplicates and checks the SHA-256::

    reassembler = Reassembler()
    image = reassembler.add_message(properties, payload)   # bytes of the image once complete, else None

Only the standard library and ``gateway.errors``; errors are :class:`~gateway.errors.FrameError`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from gateway.errors import FrameError

BODY_REF_PREFIX: Final = "image"
_BODY_REF = re.compile(r"^image:([0-9a-f]{64}):(\d{1,15}):(\d{1,12})$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CAPTURE_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_CHUNKS: Final = 100_000
"""Upper bound on chunks per image (a 40-MP TIFF at 1 KiB chunks stays below it)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One slice of an image: ``index`` of ``total``, ``length`` bytes from ``offset``."""

    index: int
    total: int
    offset: int
    length: int


def plan(size: int, chunk_size: int) -> list[Chunk]:
    """Split ``size`` bytes into chunks of ``chunk_size`` (the last one shorter).

    Raises:
        ValueError: ``size`` or ``chunk_size`` below 1.
    """
    if size < 1 or chunk_size < 1:
        raise ValueError(f"size and chunk_size must be >= 1, got {size} and {chunk_size}")
    total = -(-size // chunk_size)
    return [
        Chunk(index=i, total=total, offset=i * chunk_size, length=min(chunk_size, size - i * chunk_size))
        for i in range(total)
    ]


def body_ref(sha256: str, offset: int, length: int) -> str:
    """The outbox ``body_ref`` for a slice of the image stored under ``sha256``."""
    return f"{BODY_REF_PREFIX}:{sha256}:{offset}:{length}"


def parse_body_ref(ref: str) -> tuple[str, int, int]:
    """``(sha256, offset, length)`` from an image ``body_ref``; FrameError when it is not one."""
    match = _BODY_REF.match(ref)
    if match is None:
        raise FrameError(f"not an image body reference: {ref[:100]!r}")
    return match.group(1), int(match.group(2)), int(match.group(3))


def chunk_properties(capture_id: str, chunk: Chunk, sha256: str) -> dict[str, str]:
    """MQTT 5 user properties of one chunk message."""
    return {"capture_id": capture_id, "index": str(chunk.index), "total": str(chunk.total), "sha256": sha256}


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """The user properties of a chunk message, checked."""

    capture_id: str
    index: int
    total: int
    sha256: str


def parse_properties(properties: Mapping[str, str]) -> ChunkHeader:
    """Check a chunk's user properties; FrameError naming the missing or bad one."""
    values: dict[str, str] = {}
    for key in ("capture_id", "index", "total", "sha256"):
        value = properties.get(key)
        if not isinstance(value, str):
            raise FrameError(f"image chunk: user property {key!r} is missing")
        values[key] = value
    if not _CAPTURE_ID.match(values["capture_id"]):
        raise FrameError("image chunk: capture_id is not 32 hex digits")
    if not _SHA256.match(values["sha256"]):
        raise FrameError("image chunk: sha256 is not 64 lowercase hex digits")
    try:
        index, total = int(values["index"]), int(values["total"])
    except ValueError:
        raise FrameError("image chunk: index and total must be integers") from None
    if not 1 <= total <= MAX_CHUNKS or not 0 <= index < total:
        raise FrameError(f"image chunk: index {index} of total {total} is out of range")
    return ChunkHeader(capture_id=values["capture_id"], index=index, total=total, sha256=values["sha256"])


@dataclass(slots=True)
class _Partial:
    total: int
    sha256: str
    parts: dict[int, bytes] = field(default_factory=dict)


class Reassembler:
    """Collects the chunks of many images, in any order, duplicates ignored; verifies each image's SHA-256.

    State is in memory: a receiver that restarts relies on the gateway re-sending the chunks it has not
    acknowledged. A receiver should therefore acknowledge a chunk only after :meth:`add` returned (and the
    finished image, once returned, only after it stored it).
    """

    def __init__(self) -> None:
        self._partial: dict[str, _Partial] = {}
        self._done: dict[str, str] = {}

    def add_message(self, properties: Mapping[str, str], payload: bytes) -> bytes | None:
        """:meth:`add` for a chunk message as it arrives (user properties + payload)."""
        head = parse_properties(properties)
        return self.add(head.capture_id, head.index, head.total, head.sha256, payload)

    def add(self, capture_id: str, index: int, total: int, sha256: str, data: bytes) -> bytes | None:
        """Add one chunk; return the whole image when this chunk completes it, else None.

        A chunk of an image already completed, or an index already held, is a duplicate: ignored.

        Raises:
            FrameError: the chunk contradicts earlier ones (other total or sha256, same index with other
                bytes), an empty chunk, or the completed image's SHA-256 does not match (the partial image
                is dropped so that re-sent chunks can rebuild it).
        """
        if not 0 <= index < total:
            raise FrameError(f"image {capture_id}: chunk index {index} out of range 0..{total - 1}")
        if not data:
            raise FrameError(f"image {capture_id}: chunk {index} is empty")
        if capture_id in self._done:
            if self._done[capture_id] != sha256:
                raise FrameError(f"image {capture_id}: chunk names another sha256 than the completed image")
            return None
        partial = self._partial.setdefault(capture_id, _Partial(total=total, sha256=sha256))
        if (partial.total, partial.sha256) != (total, sha256):
            raise FrameError(
                f"image {capture_id}: chunk {index} says total={total}, but earlier chunks said total={partial.total}"
                if partial.total != total
                else f"image {capture_id}: chunk {index} names another sha256 than earlier chunks"
            )
        held = partial.parts.get(index)
        if held is not None:
            if held != data:
                raise FrameError(f"image {capture_id}: chunk {index} arrived twice with different bytes")
            return None
        partial.parts[index] = data
        if len(partial.parts) < total:
            return None
        image = b"".join(partial.parts[i] for i in range(total))
        del self._partial[capture_id]
        actual = hashlib.sha256(image).hexdigest()
        if actual != sha256:
            raise FrameError(f"image {capture_id}: SHA-256 mismatch after reassembly (got {actual[:12]}...)")
        self._done[capture_id] = sha256
        return image

    def missing(self, capture_id: str) -> list[int]:
        """Chunk indexes not yet received for an image in progress (empty when unknown or complete)."""
        partial = self._partial.get(capture_id)
        if partial is None:
            return []
        return [i for i in range(partial.total) if i not in partial.parts]

    def is_complete(self, capture_id: str) -> bool:
        """True once the image was reassembled and its hash verified."""
        return capture_id in self._done

    def in_progress(self) -> dict[str, tuple[int, int]]:
        """``capture_id -> (chunks held, total)`` for every incomplete image."""
        return {cid: (len(p.parts), p.total) for cid, p in self._partial.items()}
