"""Chunk plans, body references and the receiver's Reassembler (any order, duplicates, hash check)."""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import FrameError
from gateway.wire import chunks

CAPTURE_ID = "0123456789abcdef0123456789abcdef"


def split(data: bytes, size: int) -> list[tuple[chunks.Chunk, bytes]]:
    return [(c, data[c.offset : c.offset + c.length]) for c in chunks.plan(len(data), size)]


@given(st.integers(1, 10_000_000), st.integers(1024, 1_000_000))
def test_plan_covers_every_byte_once(size: int, chunk_size: int) -> None:
    plan = chunks.plan(size, chunk_size)
    assert plan[0].offset == 0
    assert sum(c.length for c in plan) == size
    assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(plan))
    assert all(c.total == len(plan) and 0 < c.length <= chunk_size for c in plan)
    assert [c.index for c in plan] == list(range(len(plan)))


def test_plan_of_default_chunk_size() -> None:
    plan = chunks.plan(300 * 1024, 128 * 1024)
    assert [(c.offset, c.length) for c in plan] == [(0, 131072), (131072, 131072), (262144, 45056)]


@pytest.mark.parametrize("bad", [(0, 10), (10, 0), (-1, 5)])
def test_plan_refuses_empty(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        chunks.plan(*bad)


def test_body_ref_round_trip_and_refusals() -> None:
    sha = "a" * 64
    assert chunks.parse_body_ref(chunks.body_ref(sha, 131072, 4096)) == (sha, 131072, 4096)
    for bad in ("image:xyz:0:1", "file:" + sha + ":0:1", f"image:{sha}:-1:5", f"image:{sha}:0"):
        with pytest.raises(FrameError):
            chunks.parse_body_ref(bad)


def test_properties_round_trip_and_refusals() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    props = chunks.chunk_properties(CAPTURE_ID, chunks.Chunk(index=2, total=5, offset=0, length=1), sha)
    assert props == {"capture_id": CAPTURE_ID, "index": "2", "total": "5", "sha256": sha}
    assert chunks.parse_properties(props) == chunks.ChunkHeader(CAPTURE_ID, 2, 5, sha)
    for key, value in (("index", "5"), ("total", "0"), ("index", "x"), ("sha256", "ABC"), ("capture_id", "1")):
        with pytest.raises(FrameError):
            chunks.parse_properties({**props, key: value})
    with pytest.raises(FrameError, match="missing"):
        chunks.parse_properties({k: v for k, v in props.items() if k != "total"})


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=5000), st.integers(1, 700), st.randoms(use_true_random=False))
def test_reassembles_in_any_order_with_duplicates(data: bytes, size: int, rnd: random.Random) -> None:
    sha = hashlib.sha256(data).hexdigest()
    parts = split(data, size)
    sends = parts + [rnd.choice(parts) for _ in range(len(parts) // 2 + 1)]  # at-least-once: repeats
    rnd.shuffle(sends)
    r = chunks.Reassembler()
    results = [r.add_message(chunks.chunk_properties(CAPTURE_ID, c, sha), body) for c, body in sends]
    done = [x for x in results if x is not None]
    assert done == [data]  # exactly once, whatever the order and repeats
    assert r.is_complete(CAPTURE_ID) and r.in_progress() == {}
    # A late duplicate after completion changes nothing.
    c, body = parts[0]
    assert r.add(CAPTURE_ID, c.index, c.total, sha, body) is None


def test_missing_reports_the_gaps() -> None:
    data = bytes(range(256)) * 10
    sha = hashlib.sha256(data).hexdigest()
    parts = split(data, 500)
    r = chunks.Reassembler()
    for c, body in parts[::2]:
        r.add(CAPTURE_ID, c.index, c.total, sha, body)
    assert r.missing(CAPTURE_ID) == [c.index for c, _ in parts[1::2]]
    assert r.in_progress() == {CAPTURE_ID: (len(parts[::2]), len(parts))}


def test_hash_mismatch_is_refused_and_the_image_can_be_rebuilt() -> None:
    data = b"retina" * 1000
    sha = hashlib.sha256(data).hexdigest()
    parts = split(data, 1024)
    r = chunks.Reassembler()
    for c, body in parts[:-1]:
        r.add(CAPTURE_ID, c.index, c.total, sha, body)
    last, body = parts[-1]
    with pytest.raises(FrameError, match="SHA-256 mismatch"):
        r.add(CAPTURE_ID, last.index, last.total, sha, b"X" + body[1:])
    assert not r.is_complete(CAPTURE_ID)
    results = [r.add(CAPTURE_ID, c.index, c.total, sha, b) for c, b in parts]  # the gateway re-sends
    assert results[-1] == data


def test_contradicting_chunks_are_refused() -> None:
    data = b"abcdef" * 100
    sha = hashlib.sha256(data).hexdigest()
    r = chunks.Reassembler()
    r.add(CAPTURE_ID, 0, 3, sha, data[:200])
    with pytest.raises(FrameError, match="total"):
        r.add(CAPTURE_ID, 1, 4, sha, data[200:400])
    with pytest.raises(FrameError, match="sha256"):
        r.add(CAPTURE_ID, 1, 3, "b" * 64, data[200:400])
    with pytest.raises(FrameError, match="different bytes"):
        r.add(CAPTURE_ID, 0, 3, sha, data[1:201])
    with pytest.raises(FrameError, match="empty"):
        r.add(CAPTURE_ID, 2, 3, sha, b"")


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["capture_id", "index", "total", "sha256", "other"]),
        st.one_of(st.text(max_size=70), st.integers().map(str), st.just(CAPTURE_ID), st.just("a" * 64)),
    ),
    st.binary(max_size=64),
)
def test_any_chunk_message_gives_bytes_none_or_frame_error(props: dict[str, str], payload: bytes) -> None:
    r = chunks.Reassembler()
    try:
        result = r.add_message(props, payload)
    except FrameError:
        return
    assert result is None or isinstance(result, bytes)
