"""The books of a job: the counts gathered while reading and mapping, the rejects file, distinct counting,
the warnings, and the equation every run must balance.

Accounting is the point of this module: every row read ends as sent, rejected (with its reason, in
the rejects file) or filtered (by a named rule). What a person sees of these books (the summary, the
preflight report, ``status``, progress bars) is drawn by posthog_migrate.render, as text or JSON.
"""

from __future__ import annotations

import math
import os
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from posthog_migrate.event import MICROSECONDS_PER_DAY, RECENT_EVENT_AGE_US, format_timestamp, json_default
from posthog_migrate.profiles import PROFILE_SOURCES

# Event names tracked one by one for "top events"; beyond this, counted under OTHER_EVENTS.
MAX_TRACKED_EVENT_NAMES = 10_000
OTHER_EVENTS = "(other event names)"
OTHER_ILLEGAL_IDS = "(other illegal ids)"
# HyperLogLog precision: 2^14 registers, ~0.8% error, 16 KiB, whatever the number of people.
HLL_PRECISION = 14


def day_name(day_number: int) -> str:
    return format_timestamp(day_number * MICROSECONDS_PER_DAY)[:10]


def _day_number(day: str) -> int:
    return (date.fromisoformat(day) - date(1970, 1, 1)).days


def _bit_length(values: np.ndarray) -> np.ndarray:
    """int.bit_length of each uint64, exactly: frexp's exponent is the bit length, and every 32-bit half
    converts to a float64 without rounding (a whole 64-bit value might round up to the next power of 2)."""
    high = (values >> np.uint64(32)).astype(np.float64)
    low = (values & np.uint64(0xFFFF_FFFF)).astype(np.float64)
    return np.where(high > 0, 32 + np.frexp(high)[1], np.frexp(low)[1]).astype(np.int64)


class DistinctCounter:
    """HyperLogLog over 64-bit hashes: counts distinct ids in constant memory."""

    def __init__(self, registers: bytes | None = None):
        self.registers = bytearray(registers or bytes(1 << HLL_PRECISION))

    def add_many(self, hashes: np.ndarray) -> None:
        """Count an array of uint64 hashes. Each hash's first HLL_PRECISION bits pick a register, which keeps
        the largest rank seen: the 1-based position of the first 1 bit in the bits after them."""
        if not len(hashes):
            return
        index = (hashes >> np.uint64(64 - HLL_PRECISION)).astype(np.intp)
        rest = hashes << np.uint64(HLL_PRECISION)  # uint64 arithmetic drops the index bits
        rank = np.where(rest != 0, 65 - _bit_length(rest), 64 - HLL_PRECISION + 1).astype(np.uint8)
        np.maximum.at(np.frombuffer(self.registers, dtype=np.uint8), index, rank)

    def merge(self, other: DistinctCounter) -> None:
        # With numpy: byte by byte in Python took ~3 ms per merge, 10 s for the results of 3,000 input files.
        registers = np.frombuffer(self.registers, dtype=np.uint8)
        np.maximum(registers, np.frombuffer(other.registers, dtype=np.uint8), out=registers)

    def estimate(self) -> int:
        m = len(self.registers)
        alpha = 0.7213 / (1 + 1.079 / m)
        raw = alpha * m * m / sum(2.0 ** -r for r in self.registers)
        zeros = self.registers.count(0)
        if raw <= 2.5 * m and zeros:  # small counts: linear counting is the better estimate
            return round(m * math.log(m / zeros))
        return round(raw)


def _count_capped(counter: Counter, counts: Counter, other: str | None = OTHER_EVENTS) -> None:
    """Add ``counts`` (in first-seen order) to ``counter``, which tracks at most MAX_TRACKED_EVENT_NAMES
    keys; the counts of keys beyond that go to ``other`` (or nowhere when it is None)."""
    for key, count in counts.items():
        if key in counter or len(counter) < MAX_TRACKED_EVENT_NAMES:
            counter[key] += count
        elif other is not None:
            counter[other] += count


class EventTally:
    """The numbers :class:`PrepareStats` needs of each event, gathered with a few appends per event and
    counted a chunk at a time by :meth:`PrepareStats.add_tally` (counting each event on its own cost ~5%
    of prepare). The mapping loop appends to the lists directly; other callers use :meth:`add`."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.source_names: list[str | None] = []
        self.timestamps = array("q")
        self.people = array("Q")
        self.added = 0

    def add(self, name: str, source_name: str | None, timestamp_us: int, person: int, added: bool) -> None:
        self.names.append(name)
        self.source_names.append(source_name)
        self.timestamps.append(timestamp_us)
        self.people.append(person)
        self.added += added

    def clear(self) -> None:
        """Empty, in place: the mapping loop holds these lists' bound ``append`` methods."""
        del self.names[:], self.source_names[:], self.timestamps[:], self.people[:]
        self.added = 0


@dataclass
class PrepareStats:
    """Counts gathered while reading and mapping; saved in the manifest, shown by inspect and run."""

    rows_read: int = 0
    rows_kept: int = 0
    events: int = 0
    added_events: int = 0
    rejected: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)
    event_names: Counter = field(default_factory=Counter)
    per_day: Counter = field(default_factory=Counter)
    first_us: int | None = None
    last_us: int | None = None
    recent_events: int = 0
    people: DistinctCounter = field(default_factory=DistinctCounter)
    files: int = 0
    # "source name → PostHog name" for events the adapter renamed: inspect's mapping table.
    renamed: Counter = field(default_factory=Counter)
    # Things the user should know that are neither rejects nor filters (text → how many rows, events or
    # files it concerns): shown by inspect and at the end of run, kept in the manifest.
    warnings: Counter = field(default_factory=Counter)
    # People (see posthog_migrate.distinct_ids, posthog_migrate.identity, posthog_migrate.profiles):
    # rows by the illegal id they had ("user_id 'null'"), devices claimed by more than one user, profile events
    # ("(person profile) → $set"), and events by group type.
    illegal_ids: Counter = field(default_factory=Counter)
    shared_devices: int = 0
    profiles: Counter = field(default_factory=Counter)
    group_types: Counter = field(default_factory=Counter)

    def add_tally(self, tally: EventTally, now_us: int, suspicious_before_us: int | None = None) -> None:
        """Count a chunk's events at once (the numbers by numpy, the names by Counter), and empty the tally.

        Events dated before ``suspicious_before_us`` are counted under a warning (see suspicious_warning).
        """
        if not tally.names:
            return
        self.events += len(tally.names)
        self.added_events += tally.added
        _count_capped(self.event_names, Counter(tally.names))
        renamed = Counter()
        for (source, name), count in Counter(zip(tally.source_names, tally.names, strict=True)).items():
            if source is not None and source != name:
                renamed[f"{source} → {name}"] += count
                if source in PROFILE_SOURCES:
                    self.profiles[f"{source} → {name}"] += count
        if renamed:
            _count_capped(self.renamed, renamed, other=None)
        # Copies, not views: a view would keep the arrays from being emptied for the next chunk.
        timestamps = np.frombuffer(tally.timestamps, dtype=np.int64).copy()
        days, counts = np.unique(timestamps // MICROSECONDS_PER_DAY, return_counts=True)
        for day, count in zip(days.tolist(), counts.tolist(), strict=True):
            self.per_day[day] += count
        first, last = int(timestamps.min()), int(timestamps.max())
        if self.first_us is None or first < self.first_us:
            self.first_us = first
        if self.last_us is None or last > self.last_us:
            self.last_us = last
        self.recent_events += int(np.count_nonzero(timestamps > now_us - RECENT_EVENT_AGE_US))
        if suspicious_before_us is not None and first < suspicious_before_us:
            self.warnings[suspicious_warning(suspicious_before_us)] += int(
                np.count_nonzero(timestamps < suspicious_before_us))
        self.people.add_many(np.frombuffer(tally.people, dtype=np.uint64).copy())
        tally.clear()

    def merge(self, other: PrepareStats) -> None:
        """Add another file's counts to these (prepare counts each input file on its own)."""
        for name in ("rows_read", "rows_kept", "events", "added_events", "recent_events", "files", "shared_devices"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("rejected", "filtered", "per_day", "renamed", "warnings", "profiles", "group_types"):
            getattr(self, name).update(getattr(other, name))
        _count_capped(self.illegal_ids, other.illegal_ids, OTHER_ILLEGAL_IDS)
        for name, count in other.event_names.items():
            if name in self.event_names or len(self.event_names) < MAX_TRACKED_EVENT_NAMES:
                self.event_names[name] += count
            else:
                self.event_names[OTHER_EVENTS] += count
        known = [t for t in (self.first_us, other.first_us) if t is not None]
        self.first_us = min(known) if known else None
        known = [t for t in (self.last_us, other.last_us) if t is not None]
        self.last_us = max(known) if known else None
        self.people.merge(other.people)

    def add_illegal_ids(self, described: list[str]) -> None:
        """Count a row under each illegal id it had (``user_id 'null'``), up to MAX_TRACKED_EVENT_NAMES kinds."""
        _count_capped(self.illegal_ids, Counter(described), OTHER_ILLEGAL_IDS)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def filtered_total(self) -> int:
        return sum(self.filtered.values())

    def to_dict(self) -> dict:
        return {
            "rows_read": self.rows_read, "rows_kept": self.rows_kept, "events": self.events,
            "added_events": self.added_events, "rejected": dict(self.rejected), "filtered": dict(self.filtered),
            "event_names": dict(self.event_names),
            "per_day": {day_name(day): n for day, n in sorted(self.per_day.items())},
            "first_us": self.first_us, "last_us": self.last_us, "recent_events": self.recent_events,
            "people_registers": self.people.registers.hex(), "files": self.files, "renamed": dict(self.renamed),
            "warnings": dict(self.warnings), "illegal_ids": dict(self.illegal_ids),
            "shared_devices": self.shared_devices, "profiles": dict(self.profiles),
            "group_types": dict(self.group_types),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PrepareStats:
        return cls(
            rows_read=data["rows_read"], rows_kept=data["rows_kept"], events=data["events"],
            added_events=data["added_events"], rejected=Counter(data["rejected"]),
            filtered=Counter(data["filtered"]), event_names=Counter(data["event_names"]),
            per_day=Counter({_day_number(day): n for day, n in data["per_day"].items()}),
            first_us=data["first_us"], last_us=data["last_us"],
            recent_events=data["recent_events"], people=DistinctCounter(bytes.fromhex(data["people_registers"])),
            files=data["files"], renamed=Counter(data.get("renamed", {})),
            warnings=Counter(data.get("warnings", {})), illegal_ids=Counter(data.get("illegal_ids", {})),
            shared_devices=data.get("shared_devices", 0), profiles=Counter(data.get("profiles", {})),
            group_types=Counter(data.get("group_types", {})),
        )


class RejectsWriter:
    """Appends rejected rows as JSON lines: reason, detail, file, row, and the original row."""

    def __init__(self, path: Path, truncate_to: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_to is not None and path.exists():
            # A resume drops what was written after the last checkpoint: it will be written again.
            with open(path, "r+b") as handle:
                handle.truncate(truncate_to)
        self._handle: IO[bytes] = open(path, "ab")  # noqa: SIM115 - kept open for the whole phase, closed by close()

    def write(self, reason: str, detail: str, source: str, row: int | None, original: Any) -> None:
        line = orjson.dumps(
            {"reason": reason, "detail": detail, "file": source, "row": row, "original": original},
            default=_lenient_default, option=orjson.OPT_NON_STR_KEYS,
        )
        self._handle.write(line + b"\n")

    def sync(self) -> int:
        """Flush and fsync; return the file's size (what a checkpoint records)."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        return self._handle.tell()

    def close(self) -> None:
        self._handle.close()


def _lenient_default(value: Any) -> Any:
    try:
        return json_default(value)
    except TypeError:
        return repr(value)


def suspicious_warning(suspicious_before_us: int) -> str:
    """The warning that counts events dated before ``suspicious_before_us``: a time of 0 or 1 (1970), a negative
    number (before 1970) or a wrong unit put real events there, and a migration should not send them unseen."""
    moment = format_timestamp(suspicious_before_us)
    moment = moment[:10] if moment.endswith("T00:00:00.000000Z") else moment
    return (f"events dated before {moment}: suspicious (a time of 0, 1 or below zero? a wrong timestamp unit?); "
            "drop them with the mapping's [filter] since, or move this limit with [run] suspicious_before")


@dataclass(frozen=True)
class Books:
    """The accounting equation of a job: every row read ends as exactly one of sent, rejected or filtered."""

    rows_read: int
    rows_sent: int
    rejected: int
    filtered: int

    @property
    def accounted(self) -> int:
        return self.rows_sent + self.rejected + self.filtered

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.accounted

    def equation(self) -> str:
        return f"{self.rows_read:,} = {self.rows_sent:,} + {self.rejected:,} + {self.filtered:,}"


def books(stats: PrepareStats, sent: Any) -> Books:
    """The one place that decides whether a job's books balance: the summary, run's exit status and status
    all ask it. ``sent`` is the send phase's SendProgress (rows it sent and rows the server refused)."""
    return Books(stats.rows_read, sent.rows_sent, stats.rejected_total + sent.server_rejected_rows,
                 stats.filtered_total)


def unbalanced_message(root: Path, job_books: Books) -> str:
    """Why a job whose books do not balance cannot be trusted, and the fix (a failed run, and ``status``)."""
    return (f"the books do not balance: rows read = sent + rejected + filtered says {job_books.equation()}. "
            f"Something changed the work directory {root} while the job ran (a run file, state.json or "
            "manifest.json). Run the same command with --restart to migrate the sources again (events already "
            "sent are sent again with the same uuids, which PostHog collapses).")
