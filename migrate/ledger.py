"""What a job sent, per (UTC day, event name): the ledger ``verify`` compares with what PostHog holds.

The ledger is not counted while sending: it is *derived* from what the checkpoint says was acknowledged.
The checkpoint (``state.json``, replaced atomically) records exactly which events the server acknowledged:
every run's rows before its window ``cursor``, plus the batches of the current window numbered below
``next_seq`` (the batch layout is a pure function of the runs and the recorded settings, so the window is
cut again exactly as it was sent), minus the events the server refused (``server_rejected`` in the rejects
file, up to the checkpoint's ``rejects_bytes``). A ledger computed from a checkpoint is therefore exact
whatever crashed when, never double-counts a window a resume sent again, and costs the send phase nothing:
no payload is parsed while sending. It is kept in ``WORKDIR/ledger.json`` with the checkpoint it covers,
and computed again only when that checkpoint has moved.

Counts are of *distinct uuids* per group, as PostHog counts them: two rows that map to the same uuid (an
export that repeats a row) are one event in PostHog, and one in the ledger. The scan reads the runs in
time order, one UTC day at a time, so it holds one day's uuids (24 bytes an event) at a time. It also
samples, for the person checks: distinct ids (the smallest hashes, so the sample is the same every time)
and the merges the job asked for (``$identify`` with ``$anon_distinct_id``, ``$create_alias`` and
``$merge_dangerously`` with ``alias``), every claim on each sampled merged-away id kept, so that a device
two users claimed shows as such. A job's ``retry-*`` jobs (retry-rejects) tag their events with the same
job id: their events are in its ledger too.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from posthog_migrate.accounting import day_name
from posthog_migrate.batches import LAYOUT_VERSION, BatchLayout, cut_windows
from posthog_migrate.capture.persons import MERGE_EVENTS, merged_pair
from posthog_migrate.checkpoint import JobState, SendProgress, atomic_write_json, digest, read_json
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import MICROSECONDS_PER_DAY
from posthog_migrate.integrity import check_prepared_job
from posthog_migrate.job import person_hash
from posthog_migrate.spool import MergeCursor, MergedSlice, merge_slices

LEDGER_NAME = "ledger.json"
LEDGER_VERSION = 1
# Every payload starts so (Event.to_json's fixed key order, a canonical uuid): three columns in one regex pass.
_HEAD = (r'^\{"uuid":"(?P<uuid>[0-9a-f-]{36})","event":"(?P<event>(?:[^"\\]|\\.)*)",'
         r'"distinct_id":"(?P<distinct_id>(?:[^"\\]|\\.)*)"')
# Where the 32 hex digits of a hyphenated uuid are.
_HEX_COLUMNS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])
_HEX_VALUES = np.zeros(256, dtype=np.uint8)
_HEX_VALUES[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


@dataclass(frozen=True)
class MergeClaim:
    """A merge the job asked PostHog for: ``event`` merges ``other_id`` into ``distinct_id``."""

    event: str
    distinct_id: str
    other_id: str


@dataclass
class Ledger:
    """What a job sent: distinct events per (UTC day, event), and samples for the person checks."""

    groups: dict[tuple[str, str], int] = field(default_factory=dict)
    claims: list[MergeClaim] = field(default_factory=list)  # every claim on each sampled merged-away id
    distinct_ids: list[str] = field(default_factory=list)  # a sample of the distinct ids sent

    @property
    def total(self) -> int:
        return sum(self.groups.values())

    @property
    def days(self) -> tuple[str, str] | None:
        """The first and last UTC day with an event sent."""
        return (min(self.groups)[0], max(self.groups)[0]) if self.groups else None

    def to_dict(self) -> dict:
        return {"groups": [[day, event, count] for (day, event), count in sorted(self.groups.items())],
                "claims": [[claim.event, claim.distinct_id, claim.other_id] for claim in self.claims],
                "distinct_ids": self.distinct_ids}

    @classmethod
    def from_dict(cls, data: dict) -> Ledger:
        return cls({(day, event): count for day, event, count in data["groups"]},
                   [MergeClaim(*claim) for claim in data["claims"]], list(data["distinct_ids"]))


def job_ledger(root: Path, sample: int) -> Ledger:
    """The ledger of the job in ``root`` (and of its retry-rejects jobs), as of their checkpoints: read from
    ``ledger.json`` when it covers them, else computed from the runs and saved there."""
    covers = {"version": LEDGER_VERSION, "sample": sample, "jobs": _checkpoints(root)}
    saved = read_json(root / LEDGER_NAME)
    if saved is not None and saved.get("covers") == covers:
        return Ledger.from_dict(saved["ledger"])
    scan = _Scan(sample)
    for job_root in job_roots(root):
        scan.job(job_root)
    ledger = scan.ledger()
    atomic_write_json(root / LEDGER_NAME, {"covers": covers, "ledger": ledger.to_dict()})
    return ledger


def job_roots(root: Path) -> list[Path]:
    """The job and its retry-rejects jobs that have sent anything."""
    retries = sorted(path for path in root.glob("retry-*") if (path / "manifest.json").exists())
    return [root, *(path for path in retries if (path / "state.json").exists())]


def _checkpoints(root: Path) -> list[dict]:
    """What the ledger of ``root`` depends on: each job's runs and checkpoint."""
    covered = []
    for job_root in job_roots(root):
        manifest = read_json(job_root / "manifest.json") or {}
        covered.append({"job": job_root.name, "runs": digest(manifest.get("runs", [])),
                        "send": JobState(job_root / "state.json").data.get("send", {}).get("updated_at")})
    return covered


def acknowledged_slices(root: Path, manifest: dict, progress: SendProgress) -> Iterator[MergedSlice]:
    """The events of a job that its checkpoint says were acknowledged, in send order (server-refused ones
    included: see :func:`server_refused`)."""
    run_paths = [root / "runs" / run["file"] for run in manifest["runs"]]
    if progress.finished:
        yield from merge_slices(run_paths)
        return
    if not progress.cursor:
        return  # nothing acknowledged yet
    window_start = MergeCursor(tuple(progress.cursor))
    before_window = window_start.position
    for merged in merge_slices(run_paths):
        if merged.num_rows >= before_window:
            if before_window:
                yield merged.slice(0, before_window)
            break
        before_window -= merged.num_rows
        yield merged
    if progress.next_seq == progress.window_first_seq:
        return
    if progress.layout.get("version") != LAYOUT_VERSION:
        raise ConfigError(f"job {root} was stopped in the middle of batches an earlier version cut: run it again "
                          "to finish sending, then verify")
    layout = BatchLayout(progress.layout["lanes"], progress.layout["max_events"], progress.layout["max_bytes"])
    window = next(cut_windows(merge_slices(run_paths, window_start), window_start, progress.window_first_seq, layout))
    yield _slice_of_payloads([payload for batch in window.batches if batch.seq < progress.next_seq
                              for payload in batch.payloads])


def _slice_of_payloads(payloads: list[bytes]) -> MergedSlice:
    """A window's acknowledged events, known by their payloads, as one MergedSlice in time order."""
    events = [orjson.loads(payload) for payload in payloads]
    ts = np.array([int(np.datetime64(event["timestamp"][:-1], "us").astype(np.int64)) for event in events],
                  dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    count = len(payloads)
    return MergedSlice(ts[order], np.zeros(count, np.int64),
                       np.array([person_hash(str(event["distinct_id"])) for event in events], np.uint64)[order],
                       np.zeros(count, np.uint8), np.zeros(count, np.int32),
                       np.array([len(p) for p in payloads], np.int64)[order], order.astype(np.int64),
                       [pa.array(payloads, pa.binary())])


def server_refused(root: Path, rejects_bytes: int) -> set[tuple[str, str, str]]:
    """The (day, event, uuid) of the events the server refused in acknowledged batches: the rejects file's
    ``server_rejected`` lines within the checkpoint's ``rejects_bytes``."""
    refused: set[tuple[str, str, str]] = set()
    path = root / "rejects.jsonl"
    if rejects_bytes and path.exists():
        with open(path, "rb") as handle:
            for line in handle.read(rejects_bytes).splitlines():
                reject = orjson.loads(line) if line.strip() else {}
                if reject.get("reason") == "server_rejected" and isinstance(reject.get("original"), dict):
                    event = reject["original"]
                    refused.add((str(event.get("timestamp", ""))[:10], str(event.get("event")), str(event.get("uuid"))))
    return refused


class _Scan:
    """Reads jobs' acknowledged events a merged slice at a time: the groups' distinct uuids, one day at a
    time, and the samples."""

    def __init__(self, sample: int):
        self.sample = sample
        self.groups: Counter[tuple[str, str]] = Counter()
        self._names: dict[bytes, int] = {}  # an event name as its payload spells it (JSON-escaped) → its code
        self._people: dict[int, bytes] = {}  # sampled person hashes → distinct id (JSON-escaped)
        self._people_bound = np.uint64(np.iinfo(np.uint64).max)
        self._claims: dict[str, tuple[int, list[MergeClaim]]] = {}  # merged-away id → (its hash, claims on it)
        self._claims_bound = 1 << 64
        self._merge_codes: set[int] = set()
        self._day_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def job(self, root: Path) -> None:
        manifest = read_json(root / "manifest.json")
        if manifest is None:
            raise ConfigError(f"{root} is not a prepared job (no manifest.json): run it first")
        check_prepared_job(root, manifest)  # never count from a damaged run
        progress = JobState(root / "state.json").send
        for merged in acknowledged_slices(root, manifest, progress):
            self._add(merged)
        self._flush_days(None)
        self.groups -= Counter((day, event) for day, event, _ in server_refused(root, progress.rejects_bytes))

    def _add(self, merged: MergedSlice) -> None:
        if not merged.num_rows:
            return
        payloads = merged.payloads()
        heads = pc.extract_regex(payloads, _HEAD)
        if heads.null_count:
            raise ConfigError("an event in the job's runs does not start as posthog-migrate writes events; was the "
                              "job prepared by another program? Run it with --restart")
        uuids, names, distinct_ids = (heads.field(name) for name in ("uuid", "event", "distinct_id"))
        days = merged.ts // MICROSECONDS_PER_DAY  # floor division: days before 1970 stay whole days
        codes = self._codes(names)
        self._flush_days(int(days[0]))
        self._day_parts.append((days, codes, _uuid_words(uuids)))
        self._sample_people(merged.person, distinct_ids)
        if self._merge_codes:
            merges = np.flatnonzero(np.isin(codes, list(self._merge_codes)))
            if len(merges):
                self._sample_claims(payloads.take(pa.array(merges)))

    def _codes(self, names: pa.Array) -> np.ndarray:
        encoded = names.dictionary_encode()
        mapping = np.empty(len(encoded.dictionary), dtype=np.int32)
        for index, raw in enumerate(encoded.dictionary.to_pylist()):
            code = self._names.get(raw)
            if code is None:
                code = self._names[raw] = len(self._names)
                if orjson.loads(b'"' + raw + b'"') in MERGE_EVENTS:
                    self._merge_codes.add(code)
            mapping[index] = code
        return mapping[encoded.indices.to_numpy(zero_copy_only=False)]

    def _flush_days(self, before: int | None) -> None:
        """Count the distinct uuids of every day before ``before`` (all days when None): the runs are read in
        time order, so those days are complete."""
        if not self._day_parts:
            return
        days, codes, words = (np.concatenate(column) for column in zip(*self._day_parts, strict=True))
        done = days < before if before is not None else np.ones(len(days), dtype=bool)
        self._day_parts = [(days[~done], codes[~done], words[~done])] if not done.all() else []
        if not done.any():
            return
        days, codes, words = days[done], codes[done], words[done]
        order = np.lexsort((words[:, 1], words[:, 0], codes, days))
        days, codes, words = days[order], codes[order], words[order]
        first = np.ones(len(days), dtype=bool)
        first[1:] = (days[1:] != days[:-1]) | (codes[1:] != codes[:-1]) | (words[1:] != words[:-1]).any(axis=1)
        names = {code: orjson.loads(b'"' + raw + b'"') for raw, code in self._names.items()}
        keys, counts = np.unique(np.stack([days[first], codes[first]], axis=1), axis=0, return_counts=True)
        for (day, code), count in zip(keys.tolist(), counts.tolist(), strict=True):
            self.groups[(day_name(day), names[code])] += count

    def _sample_people(self, persons: np.ndarray, distinct_ids: pa.Array) -> None:
        """Keep the ``sample`` distinct ids with the smallest person hashes."""
        candidates = np.flatnonzero(persons <= self._people_bound)
        if not len(candidates):
            return
        for person, raw in zip(persons[candidates].tolist(), distinct_ids.take(pa.array(candidates)).to_pylist(),
                               strict=True):
            self._people.setdefault(person, raw)
        if len(self._people) > 2 * self.sample:
            kept = heapq.nsmallest(self.sample, self._people)
            self._people = {person: self._people[person] for person in kept}
            self._people_bound = np.uint64(kept[-1])

    def _sample_claims(self, payloads: pa.Array) -> None:
        """Keep every claim on the ``sample`` merged-away ids with the smallest hashes."""
        for payload in payloads.to_pylist():
            event = orjson.loads(payload)
            pair = merged_pair(event)
            if pair is None:
                continue
            hashed = person_hash(pair[1])
            if hashed > self._claims_bound:
                continue
            claims = self._claims.setdefault(pair[1], (hashed, []))[1]
            claim = MergeClaim(event["event"], *pair)
            if claim not in claims:
                claims.append(claim)
            if len(self._claims) > 2 * self.sample:
                kept = heapq.nsmallest(self.sample, self._claims.items(), key=lambda item: item[1][0])
                self._claims = dict(kept)
                self._claims_bound = kept[-1][1][0]

    def ledger(self) -> Ledger:
        people = sorted(self._people.items())[:self.sample]
        claims = sorted(self._claims.values(), key=lambda item: item[0])[:self.sample]
        return Ledger(dict(sorted(self.groups.items())),
                      [claim for _, group in claims for claim in group],
                      sorted(orjson.loads(b'"' + raw + b'"') for _, raw in people))


def _uuid_words(uuids: pa.Array) -> np.ndarray:
    """Hyphenated uuids as two 64-bit words each (n, 2): compact and quick to sort."""
    fixed = uuids.cast(pa.binary(36))
    text = np.frombuffer(fixed.buffers()[1], dtype=np.uint8, count=36 * (fixed.offset + len(fixed)))
    digits = _HEX_VALUES[text[36 * fixed.offset:].reshape(-1, 36)[:, _HEX_COLUMNS]]
    packed = np.ascontiguousarray((digits[:, 0::2] << 4) | digits[:, 1::2])
    return packed.view(np.uint64).reshape(-1, 2)
