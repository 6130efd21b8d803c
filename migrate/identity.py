"""The identity pass: which merges of persons the job sends, decided once the whole job has been read.

Platform exports tell us, row by row, that an anonymous device belongs to a known user (Amplitude's
``device_id`` + ``user_id``, Segment's ``anonymousId`` + ``userId``, Mixpanel's ``$device_id`` + ``$user_id``...).
PostHog learns it from an ``$identify`` event with ``distinct_id = user`` and ``$anon_distinct_id = device``; sent
once, at the pair's first appearance in time, it merges the device's earlier events into the person without
flooding ingestion with merges. Some rows *are* such a merge (a Segment identify call, Mixpanel's ``$identify``
and ``$create_alias``): those are held back here too, so that each device is merged once, by one event.

A device claimed by two users (``$identify(alice, tablet)``, later ``$identify(bob, tablet)``) is the hard case:
PostHog refuses the second merge when bob already has a person (``cannot_merge_already_identified``), and when he
has none yet it adds bob's id to alice's person, so that all of bob's events become alice's. So only the device's
first claimant (by time, as PostHog would process them) gets a merge: later claimants get none. Their held
``$identify`` events are sent without ``$anon_distinct_id`` (their person properties still count), their held
``$create_alias`` events are filtered (they do nothing else), and their own events stay on their own person. The
devices this happens to are counted for inspect and the summary.

Profiles without a time of their own (posthog_migrate.profiles) are held back as well: they go just after the
job's last event, which is known only now.

All of this is a property of the whole job, and a job may hold more than fits in memory, so the collector keeps
what it is told in memory up to its budget, then spills it as a run sorted by (device, time, position); at the
end the runs are merged, each device's claims arrive together in time order, and one look at each decides.

Each input file spills its own runs, so a device seen in many files has its pair in many runs: a year of hourly
files can hold a busy pair thousands of times, and the claims grow faster than the events. Only a pair's
earliest sighting matters, so the merge works on Arrow columns, a stretch of devices at a time, and drops the
later sightings there (see _ClaimMerge): Python looks at each pair once, whatever the number of files.
"""

from __future__ import annotations

import itertools
import os
import uuid as uuid_module
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from posthog_migrate.errors import DamagedJob
from posthog_migrate.event import Event, uuid5_text
from posthog_migrate.spool import MAX_MERGE_FAN_IN, arrow_column

IDENTIFY_NAMESPACE = uuid_module.UUID("6f1c2d3e-4a5b-5c6d-8e7f-8091a2b3c4d5")
# What one remembered sighting costs in memory: a few short strings, a tuple and ints. A held event costs this
# plus its payloads.
BYTES_PER_PAIR = 200
CLAIM_SCHEMA = pa.schema([
    ("device", pa.string()), ("ts", pa.int64()), ("tiebreak", pa.int64()), ("user", pa.string()),
    # The rest is set for a held merge event only (a sighting has nulls): what the pass needs to send it.
    ("person", pa.uint64()), ("kind", pa.uint8()), ("name", pa.string()), ("source", pa.string()),
    ("merge", pa.binary()),   # the event as the source made it: the merge
    ("plain", pa.binary()),   # the event without the merge ($identify without $anon_distinct_id); null: filter it
])
UNTIMED_SCHEMA = pa.schema([("tiebreak", pa.int64()), ("person", pa.uint64()), ("kind", pa.uint8()),
                            ("name", pa.string()), ("source", pa.string()), ("payload", pa.binary())])
# Rows read from each run at a time during the final merge (which reads up to MAX_MERGE_FAN_IN runs).
PAIR_READ_ROWS = 1_024
# The property holding the other id of each merge event.
MERGE_PROPERTIES = {"$identify": "$anon_distinct_id", "$create_alias": "alias", "$merge_dangerously": "alias"}
REFUSED_MERGE_RULE = "$create_alias of an id another user merged first (PostHog would refuse it)"


class Claim(NamedTuple):
    """A device's link to a user at one moment: a sighting (a row showing both), or a held merge event."""

    device: str
    ts: int
    tiebreak: int
    user: str
    person: int | None = None
    kind: int | None = None
    name: str | None = None
    source: str | None = None
    merge: bytes | None = None
    plain: bytes | None = None

    @property
    def held(self) -> bool:
        return self.merge is not None


class Untimed(NamedTuple):
    """A held event without a time of its own (a profile): placed after the job's last event."""

    tiebreak: int
    person: int
    kind: int
    name: str
    source: str | None
    payload: bytes


def merges_its_link(event: Event) -> bool:
    """Whether ``event`` is itself the merge of its link's pair (an ``$identify`` of the link's device, or a
    ``$create_alias`` of it): then it is held for the identity pass instead of being sent as it is."""
    key = MERGE_PROPERTIES.get(event.event)
    return key is not None and event.link is not None and event.properties.get(key) == event.link[1]


def without_merge(event: Event) -> bytes | None:
    """What to send of a held merge event when its merge must not happen: an ``$identify`` without its
    ``$anon_distinct_id`` (its person properties still count), or None (a ``$create_alias`` does nothing else)."""
    if event.event != "$identify":
        return None
    properties = {key: value for key, value in event.properties.items() if key != "$anon_distinct_id"}
    return Event(event.event, event.distinct_id, event.timestamp_us, event.uuid, properties).to_json()


class IdentityCollector:
    """Collects a job's claims and untimed events, spilling sorted runs to disk beyond its memory budget."""

    def __init__(self, directory: Path, budget_bytes: int, run_names: list[str] | None = None, tag: str = "",
                 on_read: Callable[[int], None] | None = None):
        self.directory = directory
        self.tag = tag  # in the run names (the input file's index): prepare cleans up a file's runs by it
        self.on_read = on_read  # told of every n claims read back from the runs: the identity pass's progress
        self.budget_bytes = max(1_000 * BYTES_PER_PAIR, budget_bytes)
        self.run_names: list[str] = list(run_names or [])
        self._first: dict[tuple[str, str], tuple[int, int]] = {}
        self._held: list[Claim] = []
        self._untimed: list[Untimed] = []
        self._held_bytes = 0

    def see(self, user: str, device: str, ts: int, tiebreak: int) -> None:
        """A row shows ``device`` used by ``user`` at (ts, tiebreak); only a pair's earliest sighting matters."""
        key = (device, user)
        seen = self._first.get(key)
        if seen is None or (ts, tiebreak) < seen:
            self._first[key] = (ts, tiebreak)

    def hold_merge(self, event: Event, tiebreak: int, person: int, kind: int, payload: bytes) -> None:
        """Hold a row's merge event (see merges_its_link); the pass sends it, or its plain form, or nothing."""
        user, device = event.link
        plain = without_merge(event)
        self._held.append(Claim(device, event.timestamp_us, tiebreak, user, person, kind, event.event,
                                event.source_event, payload, plain))
        self._held_bytes += BYTES_PER_PAIR + len(payload) + len(plain or b"")

    def hold_untimed(self, event: Event, tiebreak: int, person: int, kind: int, payload: bytes) -> None:
        """Hold an event to be placed after the job's last event (its payload's time is a placeholder)."""
        self._untimed.append(Untimed(tiebreak, person, kind, event.event, event.source_event, payload))
        self._held_bytes += BYTES_PER_PAIR + len(payload)

    @property
    def full(self) -> bool:
        return len(self._first) * BYTES_PER_PAIR + self._held_bytes >= self.budget_bytes

    def spill(self) -> None:
        """Write what is remembered as runs (fsync'd): claims sorted by (device, ts, tiebreak), untimed events."""
        if self._first or self._held:
            claims = sorted([*(Claim(device, ts, tiebreak, user) for (device, user), (ts, tiebreak)
                               in self._first.items()), *self._held], key=_claim_order)
            self.run_names.append(self._write_run(f"pairs-{self.tag}{len(self.run_names):04d}.arrow", CLAIM_SCHEMA,
                                                  iter(claims)))
        if self._untimed:
            self.run_names.append(self._write_run(f"untimed-{self.tag}{len(self.run_names):04d}.arrow",
                                                  UNTIMED_SCHEMA, iter(self._untimed)))
        self._first, self._held, self._untimed, self._held_bytes = {}, [], [], 0

    def _write_run(self, name: str, schema: pa.Schema, rows: Iterator[tuple]) -> str:
        path = self.directory / name
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            while block := list(itertools.islice(rows, PAIR_READ_ROWS)):
                writer.write_batch(pa.record_batch([arrow_column(column, field.type) for column, field
                                                    in zip(zip(*block, strict=True), schema, strict=True)],
                                                   schema=schema))
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        return name

    def _compact(self) -> None:
        """Merge claim runs in groups until at most MAX_MERGE_FAN_IN remain: the final merge opens every run at
        once, and there is at least one per input file."""
        level = 0
        while len(claim_runs := self._runs("pairs-")) > MAX_MERGE_FAN_IN:
            compacted = []
            for start in range(0, len(claim_runs), MAX_MERGE_FAN_IN):
                group = claim_runs[start:start + MAX_MERGE_FAN_IN]
                if len(group) == 1:
                    compacted.append(group[0])
                    continue
                name = f"pairs-merged-{level}-{start // MAX_MERGE_FAN_IN:05d}.arrow"
                path = self.directory / name
                with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, CLAIM_SCHEMA) as writer:
                    for table in self._merged_tables(group):
                        writer.write_table(table, max_chunksize=PAIR_READ_ROWS)
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
                compacted.append(name)
            self.run_names = [*compacted, *self._runs("untimed-")]
            level += 1

    def _runs(self, prefix: str) -> list[str]:
        return [name for name in self.run_names if name.startswith(prefix)]

    def claims(self) -> Iterator[Claim]:
        """The claims that matter, in (device, ts, tiebreak, user) order: each device's claims together, earliest
        first. A sighting of a pair already claimed earlier is left out (spilled runs may repeat a pair): it
        changes no decision."""
        if not self.run_names:
            yield from sorted([*(Claim(device, ts, tiebreak, user) for (device, user), (ts, tiebreak)
                                 in self._first.items()), *self._held], key=_claim_order)
            return
        self.spill()
        self._compact()
        yield from self._merged(self._runs("pairs-"))

    def untimed(self) -> Iterator[Untimed]:
        """Every held untimed event (call after claims(), which spills what is still in memory)."""
        yield from self._untimed
        for name in self._runs("untimed-"):
            for batch in self._read_batches(name):
                yield from (Untimed(*row) for row in zip(*(column.to_pylist() for column in batch.columns),
                                                         strict=True))

    def _merged(self, names: list[str]) -> Iterator[Claim]:
        for table in self._merged_tables(names):
            yield from (Claim(*row) for row in zip(*(column.to_pylist() for column in table.columns), strict=True))

    def _merged_tables(self, names: list[str]) -> Iterator[pa.Table]:
        window_rows = max(PAIR_READ_ROWS, self.budget_bytes // BYTES_PER_PAIR // max(1, len(names)))
        return _ClaimMerge([self._read_batches(name) for name in names], window_rows).tables()

    def _read_batches(self, name: str) -> Iterator[pa.RecordBatch]:
        """A run's record batches, in order. A file that Arrow cannot read (left by an interrupted prepare and
        damaged since) is a damaged job, not a traceback."""
        path = self.directory / name
        try:
            reader = pa.ipc.open_file(pa.OSFile(str(path), "rb"))
            for index in range(reader.num_record_batches):
                batch = reader.get_batch(index)
                if self.on_read is not None:
                    self.on_read(batch.num_rows)
                yield batch
        except (pa.ArrowException, OSError) as error:
            raise DamagedJob(self.directory.parent, [f"{path} cannot be read ({error})"]) from None


CLAIM_SORT_KEYS = [("device", "ascending"), ("ts", "ascending"), ("tiebreak", "ascending"), ("user", "ascending")]


class _ClaimMerge:
    """The k-way merge of claim runs (each sorted by device, ts, tiebreak, user), a stretch of devices at a time.

    A row-by-row heap merge in Python cost ~2 µs a claim, and claims repeat across runs (one run or more per
    input file). Here each step takes, from every run, the rows of the devices below the smallest "last device"
    among the runs' buffers (those devices' claims are all buffered), sorts them with Arrow and drops the
    sightings of pairs already claimed earlier in the stretch. A step costs a few Arrow calls per run and takes
    about one buffer's worth of rows, so each run's buffer holds ``window_rows`` (the collector's memory budget
    shared between the runs), plus the claims of one device when a buffer holds nothing else.
    """

    def __init__(self, runs: list[Iterator[pa.RecordBatch]], window_rows: int):
        self._runs = runs
        self._window_rows = window_rows
        self._buffers: list[pa.Table | None] = [None] * len(runs)

    def _fill(self, index: int) -> None:
        """Read the run's batches into its buffer until it holds ``window_rows`` claims (or the run ends)."""
        while self._runs[index] is not None and self._buffered(index) < self._window_rows:
            self._read_more(index)

    def _buffered(self, index: int) -> int:
        buffer = self._buffers[index]
        return 0 if buffer is None else buffer.num_rows

    def _read_more(self, index: int) -> None:
        """Append the run's next batch to its buffer (or mark the run finished)."""
        batch = next(self._runs[index], None)
        if batch is None:
            self._runs[index] = None
            return
        table = pa.Table.from_batches([batch])
        buffer = self._buffers[index]
        self._buffers[index] = table if buffer is None or not buffer.num_rows else pa.concat_tables([buffer, table])

    def tables(self) -> Iterator[pa.Table]:
        while True:
            for index in range(len(self._runs)):
                self._fill(index)
            unfinished = [index for index, run in enumerate(self._runs) if run is not None]
            if not unfinished:  # everything left is buffered
                parts = [self._take(index, None) for index in range(len(self._buffers))]
            else:
                bound_index = min(unfinished, key=self._last_device)
                bound = self._last_device(bound_index)
                parts = [self._take(index, bound) for index in range(len(self._buffers))]
                if not any(part.num_rows for part in parts):
                    self._read_more(bound_index)  # its buffer holds only the bound's claims so far
                    continue
            parts = [part for part in parts if part.num_rows]
            if parts:
                yield _first_claims(pa.concat_tables(parts).combine_chunks())
            if not unfinished:
                return

    def _last_device(self, index: int) -> str:
        buffer = self._buffers[index]
        return buffer.column(0)[-1].as_py() if buffer is not None and buffer.num_rows else ""

    def _take(self, index: int, bound: str | None) -> pa.Table:
        """The buffered rows of devices below ``bound`` (all of them when None), removed from the buffer."""
        buffer = self._buffers[index]
        if buffer is None:
            return CLAIM_SCHEMA.empty_table()
        below = buffer.num_rows if bound is None else pc.sum(pc.less(buffer.column(0), bound)).as_py() or 0
        self._buffers[index] = buffer.slice(below)
        return buffer.slice(0, below)


def _first_claims(table: pa.Table) -> pa.Table:
    """The claims of whole devices in (device, ts, tiebreak, user) order, less the sightings of a pair that was
    claimed earlier (a pair's earliest claim and every held merge event stay)."""
    table = table.take(pc.sort_indices(table, sort_keys=CLAIM_SORT_KEYS))
    table = table.append_column("position", pa.array(range(table.num_rows), pa.int64()))
    firsts = table.group_by(["device", "user"], use_threads=False).aggregate([("position", "min")])
    keep = pc.or_(pc.is_in(table.column("position"), firsts.column("position_min")),
                  pc.is_valid(table.column("merge")))
    return table.filter(keep).drop_columns(["position"])


def _claim_order(claim: Claim) -> tuple[str, int, int, str]:
    return claim.device, claim.ts, claim.tiebreak, claim.user


class Decision(NamedTuple):
    """What the pass does with a claim: ``identify`` (send a new $identify for its pair, at the claim), ``send``
    (a held event, as ``payload``), or ``filter`` (a held event not sent, under ``rule``)."""

    action: str
    claim: Claim
    payload: bytes | None = None


def decide(claims: Iterator[Claim], on_shared_device: Callable[[str], None]) -> Iterator[Decision]:
    """Each device's first claimant is merged with it, once: by its held merge event if its earliest claim is one
    (or one at that same instant, as when a Segment identify call comes with a page call), else by a new $identify
    at its earliest claim. Its later held merges are sent without the merge ($identify) or as they are
    ($create_alias: a merge of ids already merged does nothing). Claims of any other user get no merge (see the
    module's docstring); ``on_shared_device`` is told of each device claimed by more than one user, once."""
    device = claimant = None
    merged = shared = False
    pending: Claim | None = None  # the first claim, a sighting: its $identify waits for a held merge at its instant
    for claim in claims:
        if pending is not None and (claim.device != pending.device or claim.ts != pending.ts):
            yield Decision("identify", pending)
            pending = None
        if claim.device != device:
            device, claimant, merged, shared = claim.device, claim.user, False, False
        if claim.user == claimant:
            if not merged:
                merged = True
                if claim.held:
                    yield Decision("send", claim, claim.merge)
                else:
                    pending = claim
            elif claim.held and pending is not None:  # the source's own merge, at the pair's first instant
                pending = None
                yield Decision("send", claim, claim.merge)
            elif claim.held:
                yield Decision("send", claim, claim.merge if claim.plain is None else claim.plain)
            continue
        if not shared:
            shared = True
            on_shared_device(device)
        if claim.held:
            yield Decision("send", claim, claim.plain) if claim.plain is not None else Decision("filter", claim)
    if pending is not None:
        yield Decision("identify", pending)


def identify_event(user: str, device: str, timestamp_us: int) -> Event:
    """The ``$identify`` merging ``device`` into ``user``; its uuid depends on the pair only (once per job)."""
    return Event(
        event="$identify", distinct_id=user, timestamp_us=timestamp_us,
        uuid=uuid5_text(IDENTIFY_NAMESPACE, f"{user}\x00{device}"),
        # $geoip_disable: without it PostHog would geolocate the migration machine's IP onto the person.
        properties={"$anon_distinct_id": device, "$geoip_disable": True}, added=True,
        source_event="(device linked to user)",
    )
