"""Cutting the merged event stream into size-capped batches, and the batch's request body.

Batches are cut in *windows* of the merged stream. Each window holds a little less than ``lanes``
batches' worth of events, split into ``lanes`` by a hash of the distinct_id, and each lane's share is
cut into batches under the caps (usually one). Two batches of different lanes never share a person,
so they can be in flight at once; a batch only waits for the previous batch of its own lane. That
keeps every person's events in order with several requests in flight, while the window keeps the
whole stream close to oldest-first.

A window starts at a :class:`~posthog_migrate.spool.MergeCursor`, so the send phase can resume at the window
holding its first unacknowledged batch. The layout is a pure function of the sorted events and the
settings (lanes, caps): the same job always produces the same batches.

Everything here works on whole columns (numpy, Arrow kernels), never an event at a time: a batch's
payloads are gathered by one Arrow ``take`` straight into the comma-joined bytes of its request body.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
from posthog_migrate.spool import MergeCursor, MergedSlice, arrow_view

# PostHog's /batch/ takes at most 20 MiB; we cap the *uncompressed* body there, so the gzip'd one fits too.
MAX_BATCH_BYTES = 20 * 1024 * 1024
DEFAULT_BATCH_BYTES = 5 * 1024 * 1024     # posthog-python's cap; big enough to amortise a request
DEFAULT_BATCH_EVENTS = 2_000
# Room kept in each batch for {"api_key":"...","historical_migration":true,"batch":[...]}.
ENVELOPE_BYTES = 256
BODY_SUFFIX = b"]}"
# Bumped whenever the same settings cut or number batches differently (2: windows filled to WINDOW_FILL,
# lanes interleaved). A checkpoint of another version sends its current window again, numbered anew.
LAYOUT_VERSION = 2
# How full a window of several lanes is, as a share of ``lanes`` full batches (see BatchLayout).
WINDOW_FILL = 0.9
# Gathered between payloads: the take that orders a batch's events also puts the commas in.
_COMMA = pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(np.array([0, 1], np.int32)), pa.py_buffer(b",")])


def body_prefix(api_key: str) -> bytes:
    """Everything in a request body before its first event."""
    return b'{"api_key":' + orjson.dumps(api_key) + b',"historical_migration":true,"batch":['


def build_body(payloads: list[bytes], api_key: str) -> bytes:
    """The JSON request body. Events were serialised once, in prepare; here they are only joined."""
    return b"".join((body_prefix(api_key), b",".join(payloads), BODY_SUFFIX))


class Batch:
    """One request's events, in send order. ``tiebreaks`` say where each came from (for rejects).

    The payloads are held as the request body holds them: one buffer ``data`` of the events joined by
    commas, event ``i`` at ``data[starts[i]:ends[i]]``. Any run of consecutive events (the whole batch,
    or a half when a refused batch is bisected) is then one slice of it, with no per-event work.
    """

    __slots__ = ("seq", "lane", "data", "starts", "ends", "tiebreaks", "kinds")

    def __init__(self, seq: int, lane: int, data: memoryview, starts: np.ndarray, ends: np.ndarray,
                 tiebreaks: np.ndarray, kinds: np.ndarray):
        self.seq = seq
        self.lane = lane
        self.data = data
        self.starts = starts
        self.ends = ends
        self.tiebreaks = tiebreaks
        self.kinds = kinds

    @classmethod
    def from_payloads(cls, seq: int, lane: int, payloads: list[bytes], tiebreaks: list[int],
                      kinds: list[int]) -> Batch:
        """A batch of the given serialised events (for tests and tools; the send path gathers instead)."""
        sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
        starts = np.concatenate(([0], np.cumsum(sizes + 1)[:-1])) if len(payloads) else sizes
        return cls(seq, lane, memoryview(b",".join(payloads)), starts, starts + sizes,
                   np.asarray(tiebreaks, dtype=np.int64), np.asarray(kinds, dtype=np.uint8))

    def __repr__(self) -> str:
        return f"Batch(seq={self.seq}, lane={self.lane}, n_events={self.n_events}, bytes={len(self.data)})"

    @property
    def n_events(self) -> int:
        return len(self.starts)

    def payload(self, index: int) -> bytes:
        return bytes(self.data[self.starts[index]:self.ends[index]])

    @property
    def payloads(self) -> list[bytes]:
        return [self.payload(index) for index in range(self.n_events)]

    def joined(self, start: int = 0, end: int | None = None) -> memoryview:
        """Events ``start:end``, comma-joined: the middle of a request body (a view, not a copy)."""
        end = self.n_events if end is None else end
        return self.data[self.starts[start]:self.ends[end - 1]] if end > start else self.data[:0]

    def body(self, api_key: str, start: int = 0, end: int | None = None) -> bytes:
        """The request body of events ``start:end``; byte for byte what :func:`build_body` makes."""
        return b"".join((body_prefix(api_key), self.joined(start, end), BODY_SUFFIX))

    def count_kind(self, kind: int) -> int:
        return int(np.count_nonzero(self.kinds == kind))


@dataclass
class Window:
    first_seq: int
    start: MergeCursor
    end: MergeCursor
    batches: list[Batch]

    @property
    def end_seq(self) -> int:
        return self.first_seq + len(self.batches)


@dataclass(frozen=True)
class BatchLayout:
    """The settings that decide how events fall into batches; recorded in the checkpoint."""

    lanes: int = 1
    max_events: int = DEFAULT_BATCH_EVENTS
    max_bytes: int = DEFAULT_BATCH_BYTES

    @property
    def max_payload_bytes(self) -> int:
        return self.max_bytes - ENVELOPE_BYTES

    @property
    def window_events(self) -> int:
        return self._window_share(self.max_events)

    @property
    def window_bytes(self) -> int:
        return self._window_share(self.max_payload_bytes)

    def _window_share(self, cap: int) -> int:
        # A window of exactly ``lanes`` full batches would put a little over a batch in about half of the
        # lanes (a hash splits it, so each lane's share varies by a few percent), and each of those would
        # go as two half batches. With some room, each lane's share is one batch.
        if self.lanes == 1:
            return cap
        return max(self.lanes, int(self.lanes * cap * WINDOW_FILL))

    def as_dict(self) -> dict:
        """As recorded in the checkpoint: a resume that cuts differently resends its current window."""
        return {"lanes": self.lanes, "max_events": self.max_events, "max_bytes": self.max_bytes,
                "version": LAYOUT_VERSION}


def _cut_lane(sizes: np.ndarray, layout: BatchLayout) -> list[tuple[int, int]]:
    """Split one lane's events (their serialised ``sizes``) into batches of even size under both caps.

    Returns index ranges. Works a batch at a time on cumulative sizes, not an event at a time.
    """
    count = len(sizes)
    if count == 0:
        return []
    # Each event costs its size plus a comma; a batch's payload is that sum minus the last comma.
    ends = np.cumsum(sizes.astype(np.int64) + 1)
    limit = layout.max_payload_bytes
    pieces = max(math.ceil(count / layout.max_events), math.ceil(int(ends[-1]) / limit))
    target = math.ceil(count / pieces)
    cuts: list[tuple[int, int]] = []
    start = 0
    while start < count:
        before = int(ends[start - 1]) if start else 0
        # the furthest end whose payload (minus its trailing comma) still fits, at least one event
        fits = int(np.searchsorted(ends, before + limit + 1, side="right"))
        end = max(start + 1, min(start + target, fits, count))
        cuts.append((start, end))
        start = end
    return cuts


def _gather(source: pa.Array, rows: np.ndarray, comma: int) -> tuple[memoryview, np.ndarray, np.ndarray]:
    """Source rows ``rows`` joined by commas, in one take: (joined bytes, each event's start and end).

    The take's indices alternate event, comma, event, ..., so its values buffer *is* the comma-joined
    payloads and its offsets give where each event starts (even ones) and ends (odd ones).
    """
    count = len(rows)
    indices = np.full(2 * count - 1, comma, dtype=np.int64)
    indices[0::2] = rows
    taken = source.take(arrow_view(indices, pa.int64()))
    # One int32 offset per element plus the end (binary offsets are 32-bit: see _window_batches).
    offsets = np.frombuffer(taken.buffers()[1], dtype=np.int32, count=2 * count,
                            offset=taken.offset * 4).astype(np.int64)
    data = memoryview(taken.buffers()[2])[offsets[0]:offsets[-1]]
    offsets -= offsets[0]
    return data, offsets[0::2], offsets[1::2]


def _payload_source(parts: list[MergedSlice]) -> tuple[pa.Array, np.ndarray, int]:
    """The window's payloads as one contiguous array to take from, then the comma (a take from a chunked array
    would concatenate it anyway, once per call); each window row's index in it; and the comma's index.

    Only the rows the window uses are copied. A window is often a slice of a longer merged step, and a slice
    shares the step's pieces: every run's rows of the whole step. With many runs a step holds up to
    MAX_MERGE_WINDOWS_BYTES and spans several windows, and concatenating all its pieces for each window copied
    the step's payloads once per window (send's cost per event grew with the number of runs). A run's rows in a
    window are consecutive rows of that run, since the merge keeps each run's order, so each piece is cut to the
    span between its first and last used row. A window holds at most lanes x max_bytes <= 64 x 20 MiB, so the
    array's 32-bit offsets suffice.
    """
    pieces: list[pa.Array] = []
    rows_in_source: list[np.ndarray] = []
    base = 0
    for part in parts:
        lengths = np.fromiter(map(len, part.pieces), dtype=np.int64, count=len(part.pieces))
        ends = np.cumsum(lengths)
        starts = ends - lengths
        used = np.sort(part.order)
        first_used, past_used = np.searchsorted(used, starts), np.searchsorted(used, ends)
        shift = np.zeros(len(part.pieces), dtype=np.int64)  # a piece's row index in the part → in the source
        for index, piece in enumerate(part.pieces):
            if first_used[index] == past_used[index]:
                continue  # none of this piece's rows is in the window
            low, high = int(used[first_used[index]]), int(used[past_used[index] - 1]) + 1
            pieces.append(piece.slice(low - int(starts[index]), high - low))
            shift[index] = base - low
            base += high - low
        # The piece of each row: the last one starting at or before it (an empty piece shares its start with the next).
        piece_of_row = np.searchsorted(starts, part.order, side="right") - 1
        rows_in_source.append(part.order + shift[piece_of_row])
    return pa.concat_arrays([*pieces, _COMMA]), np.concatenate(rows_in_source), base


def _window_batches(parts: list[MergedSlice], first_seq: int, layout: BatchLayout) -> list[Batch]:
    person = np.concatenate([part.person for part in parts])
    tiebreak = np.concatenate([part.tiebreak for part in parts])
    kind = np.concatenate([part.kind for part in parts])
    sizes = np.concatenate([part.sizes for part in parts])
    source, source_rows, comma = _payload_source(parts)
    lanes = person % np.uint64(layout.lanes)
    # Each lane's batches (index ranges), then numbered round robin: every lane's first batch, then every
    # second one, ... Batches start in number order and a lane's second batch must wait for its first,
    # so numbering a lane's batches one after another would hold up the lanes after it.
    cuts_by_lane: list[tuple[int, np.ndarray, list[tuple[int, int]]]] = []
    for lane in range(layout.lanes):
        indices = np.flatnonzero(lanes == lane)
        if len(indices):
            cuts_by_lane.append((lane, indices, _cut_lane(sizes[indices], layout)))
    batches: list[Batch] = []
    for turn in range(max((len(cuts) for _, _, cuts in cuts_by_lane), default=0)):
        for lane, indices, cuts in cuts_by_lane:
            if turn < len(cuts):
                start, end = cuts[turn]
                rows = indices[start:end]
                data, starts, ends = _gather(source, source_rows[rows], comma)
                batches.append(Batch(first_seq + len(batches), lane, data, starts, ends, tiebreak[rows],
                                     kind[rows]))
    return batches


def cut_windows(
    chunks: Iterable[MergedSlice], start: MergeCursor, first_seq: int, layout: BatchLayout
) -> Iterator[Window]:
    """Group the merged stream (:func:`~posthog_migrate.spool.merge_slices`) into windows of about ``lanes``
    full batches each."""
    window_events, window_bytes = layout.window_events, layout.window_bytes
    pending: list[MergedSlice] = []
    pending_events = pending_bytes = 0
    cursor, seq = start, first_seq

    def emit() -> Window:
        nonlocal pending, pending_events, pending_bytes, cursor, seq
        end = cursor.advanced(np.concatenate([part.run for part in pending]))
        window = Window(seq, cursor, end, _window_batches(pending, seq, layout))
        cursor, seq = end, window.end_seq
        pending, pending_events, pending_bytes = [], 0, 0
        return window

    for chunk in chunks:
        while chunk.num_rows:
            sizes = np.cumsum(chunk.sizes.astype(np.int64) + 1)
            fits_bytes = int(np.searchsorted(sizes, window_bytes - pending_bytes, side="right"))
            take = min(window_events - pending_events, fits_bytes, chunk.num_rows)
            if take == 0 and not pending:
                take = 1  # a single event larger than the window's byte budget still moves on
            if take:
                pending.append(chunk.slice(0, take))
                pending_events += take
                pending_bytes += int(sizes[take - 1])
                chunk = chunk.slice(take)
            # Rows left in the chunk mean the window is full (by events or bytes).
            if chunk.num_rows or pending_events >= window_events:
                yield emit()
    if pending:
        yield emit()
