"""Cutting the merged event stream into size-capped batches, and the batch's request body.

Batches are cut in *windows* of the merged stream. Each window holds about ``lanes`` batches' worth of
events, split into ``lanes`` by a hash of the distinct_id, and each lane's share is cut into batches
under the caps. Two batches of one window never share a person, so they can be in flight at once;
a batch only waits for the previous batch of its own lane. That keeps every person's events in order
with several requests in flight, while the window keeps the whole stream close to oldest-first.

A window starts at a :class:`~migrate.spool.MergeCursor`, so the send phase can resume at the window
holding its first unacknowledged batch. The layout is a pure function of the sorted events and the
settings (lanes, caps): the same job always produces the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from migrate.spool import MergeCursor

# PostHog's /batch/ takes at most 20 MiB; we cap the *uncompressed* body there, so the gzip'd one fits too.
MAX_BATCH_BYTES = 20 * 1024 * 1024
DEFAULT_BATCH_BYTES = 5 * 1024 * 1024     # posthog-python's cap; big enough to amortise a request
DEFAULT_BATCH_EVENTS = 2_000
# Room kept in each batch for {"api_key":"...","historical_migration":true,"batch":[...]}.
ENVELOPE_BYTES = 256


def build_body(payloads: list[bytes], api_key: str) -> bytes:
    """The JSON request body. Events were serialised once, in prepare; here they are only joined."""
    return b"".join((
        b'{"api_key":', orjson.dumps(api_key), b',"historical_migration":true,"batch":[',
        b",".join(payloads), b"]}",
    ))


@dataclass
class Batch:
    """One request's events, in send order. ``tiebreaks`` say where each came from (for rejects)."""

    seq: int
    lane: int
    payloads: list[bytes]
    tiebreaks: list[int]
    kinds: list[int]

    @property
    def n_events(self) -> int:
        return len(self.payloads)



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


def _window_batches(table: pa.Table, first_seq: int, layout: BatchLayout) -> list[Batch]:
    lanes = (table.column("person").to_numpy() % layout.lanes).astype(np.int64)
    batches: list[Batch] = []
    for lane in range(layout.lanes):
        indices = np.flatnonzero(lanes == lane)
        if len(indices) == 0:
            continue
        part = table.take(pa.array(indices))
        sizes = pc.binary_length(part.column("payload")).to_numpy()
        payloads = part.column("payload").to_pylist()
        tiebreaks = part.column("tiebreak").to_pylist()
        kinds = part.column("kind").to_pylist()
        for start, end in _cut_lane(sizes, layout):
            batches.append(Batch(first_seq + len(batches), lane, payloads[start:end],
                                 tiebreaks[start:end], kinds[start:end]))
    return batches


def cut_windows(
    chunks: Iterator[pa.Table], start: MergeCursor, first_seq: int, layout: BatchLayout
) -> Iterator[Window]:
    """Group the merged stream into windows of about ``lanes`` full batches each."""
    window_events = layout.lanes * layout.max_events
    window_bytes = layout.lanes * layout.max_payload_bytes
    pending: list[pa.Table] = []
    pending_events = pending_bytes = 0
    cursor, seq = start, first_seq

    def emit() -> Window:
        nonlocal pending, pending_events, pending_bytes, cursor, seq
        table = pa.concat_tables(pending)
        end = cursor.advanced(table.column("run").to_numpy())
        window = Window(seq, cursor, end, _window_batches(table, seq, layout))
        cursor, seq = end, window.end_seq
        pending, pending_events, pending_bytes = [], 0, 0
        return window

    for chunk in chunks:
        while chunk.num_rows:
            sizes = np.cumsum(pc.binary_length(chunk.column("payload")).to_numpy().astype(np.int64) + 1)
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
