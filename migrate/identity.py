"""One ``$identify`` per (user id, device id) pair per job, just before the first event that shows it.

Platform exports tell us, row by row, that an anonymous device belongs to a known user (Amplitude's
``device_id`` + ``user_id``, Segment's ``anonymousId`` + ``userId``...). PostHog learns it from an
``$identify`` event with ``distinct_id = user`` and ``$anon_distinct_id = device``; sending it once, at the
pair's first appearance in time, merges the device's earlier events into the person without flooding
ingestion with merges.

"First appearance" is a property of the whole job, and a job may hold more pairs than fit in memory, so
this is an external "group by pair, keep the minimum" in bounded memory: pairs are kept in a dict with
their earliest (timestamp, tie-breaker) until it reaches its budget, then spilled as a run sorted by
pair; at the end the runs are merged pair by pair and each pair's minimum wins.
"""

from __future__ import annotations

import heapq
import itertools
import os
import uuid as uuid_module
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
from posthog_migrate.errors import DamagedJob
from posthog_migrate.event import Event, uuid5_text
from posthog_migrate.spool import MAX_MERGE_FAN_IN

IDENTIFY_NAMESPACE = uuid_module.UUID("6f1c2d3e-4a5b-5c6d-8e7f-8091a2b3c4d5")
# What one remembered pair costs in the dict: two short strings, a tuple and two ints.
BYTES_PER_PAIR = 200
PAIR_SCHEMA = pa.schema([("user", pa.string()), ("device", pa.string()), ("ts", pa.int64()),
                         ("tiebreak", pa.int64())])
# Rows read from each pair run at a time during the final merge (which reads up to MAX_MERGE_FAN_IN runs).
PAIR_READ_ROWS = 1_024


class IdentityCollector:
    """Remembers the earliest sighting of each (user, device) pair, spilling sorted runs to disk."""

    def __init__(self, directory: Path, budget_bytes: int, run_names: list[str] | None = None,
                 prefix: str = "pairs-", on_read: Callable[[int], None] | None = None):
        self.directory = directory
        self.prefix = prefix
        self.on_read = on_read  # told of every n pairs read back from the runs: the identity pass's progress
        self.max_pairs = max(1_000, budget_bytes // BYTES_PER_PAIR)
        self.run_names: list[str] = list(run_names or [])
        self._first: dict[tuple[str, str], tuple[int, int]] = {}

    def see(self, user: str, device: str, ts: int, tiebreak: int) -> None:
        key = (user, device)
        seen = self._first.get(key)
        if seen is None or (ts, tiebreak) < seen:
            self._first[key] = (ts, tiebreak)

    @property
    def full(self) -> bool:
        return len(self._first) >= self.max_pairs

    def spill(self) -> None:
        """Write the remembered pairs as a run sorted by pair (fsync'd), and forget them."""
        if not self._first:
            return
        pairs = sorted(self._first.items())
        self._first = {}
        name = f"{self.prefix}{len(self.run_names):04d}.arrow"
        self._write_run(name, ((user, device, ts, tiebreak) for (user, device), (ts, tiebreak) in pairs))
        self.run_names.append(name)

    def _write_run(self, name: str, rows: Iterator[tuple[str, str, int, int]]) -> None:
        path = self.directory / name
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, PAIR_SCHEMA) as writer:
            while block := list(itertools.islice(rows, PAIR_READ_ROWS)):
                writer.write_batch(pa.record_batch([pa.array(column) for column in zip(*block, strict=True)],
                                                   schema=PAIR_SCHEMA))
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())

    def _compact(self) -> None:
        """Merge pair runs in groups until at most MAX_MERGE_FAN_IN remain: the final merge opens every
        run at once, and there is at least one per input file."""
        level = 0
        while len(self.run_names) > MAX_MERGE_FAN_IN:
            compacted = []
            for start in range(0, len(self.run_names), MAX_MERGE_FAN_IN):
                group = self.run_names[start:start + MAX_MERGE_FAN_IN]
                if len(group) == 1:
                    compacted.append(group[0])
                    continue
                name = f"{self.prefix}merged-{level}-{start // MAX_MERGE_FAN_IN:05d}.arrow"
                self._write_run(name, self._earliest_of_each_pair(group))
                compacted.append(name)
            self.run_names = compacted
            level += 1

    def first_sightings(self) -> Iterator[tuple[str, str, int, int]]:
        """Every pair once, with its earliest (ts, tiebreak); pairs in sorted order."""
        if not self.run_names:
            for (user, device), (ts, tiebreak) in sorted(self._first.items()):
                yield user, device, ts, tiebreak
            return
        self.spill()
        self._compact()
        yield from self._earliest_of_each_pair(self.run_names)

    def _earliest_of_each_pair(self, names: list[str]) -> Iterator[tuple[str, str, int, int]]:
        merged = heapq.merge(*(self._read_run(name) for name in names))
        current: tuple[str, str, int, int] | None = None
        for user, device, ts, tiebreak in merged:
            if current is not None and (user, device) == current[:2]:
                continue  # merged in (pair, ts, tiebreak) order: the first of a pair is its earliest
            if current is not None:
                yield current
            current = (user, device, ts, tiebreak)
        if current is not None:
            yield current

    def _read_run(self, name: str) -> Iterator[tuple[str, str, int, int]]:
        """A pairs run's rows, a record batch at a time. A file that Arrow cannot read (left by an interrupted
        prepare and damaged since) is a damaged job, not a traceback."""
        path = self.directory / name
        try:
            reader = pa.ipc.open_file(pa.OSFile(str(path), "rb"))
            for index in range(reader.num_record_batches):
                batch = reader.get_batch(index)
                if self.on_read is not None:
                    self.on_read(batch.num_rows)
                yield from zip(*(batch.column(i).to_pylist() for i in range(4)), strict=True)
        except (pa.ArrowException, OSError) as error:
            raise DamagedJob(self.directory.parent, [f"{path} cannot be read ({error})"]) from None


def identify_event(user: str, device: str, timestamp_us: int) -> Event:
    """The ``$identify`` merging ``device`` into ``user``; its uuid depends on the pair only (once per job)."""
    return Event(
        event="$identify", distinct_id=user, timestamp_us=timestamp_us,
        uuid=uuid5_text(IDENTIFY_NAMESPACE, f"{user}\x00{device}"),
        # $geoip_disable: without it PostHog would geolocate the migration machine's IP onto the person.
        properties={"$anon_distinct_id": device, "$geoip_disable": True}, added=True,
        source_event="(device linked to user)",
    )
