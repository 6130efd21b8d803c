"""What the user sees: the rejects file, the counts behind the summary, progress bars and reports.

Accounting is the point of this module: every row read ends as sent, rejected (with its reason, in
the rejects file) or filtered (by a named rule), and the summary prints the equation so a user can
check it balances.
"""

from __future__ import annotations

import math
import os
import sys
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from posthog_migrate.event import MICROSECONDS_PER_DAY, RECENT_EVENT_AGE_US, format_timestamp, json_default
from posthog_migrate.profiles import PROFILE_SOURCES
from tqdm import tqdm

# Event names tracked one by one for "top events"; beyond this, counted under OTHER_EVENTS.
MAX_TRACKED_EVENT_NAMES = 10_000
OTHER_EVENTS = "(other event names)"
OTHER_ILLEGAL_IDS = "(other illegal ids)"
# HyperLogLog precision: 2^14 registers, ~0.8% error, 16 KiB, whatever the number of people.
HLL_PRECISION = 14


def _day_name(day_number: int) -> str:
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
            "per_day": {_day_name(day): n for day, n in sorted(self.per_day.items())},
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


def progress_bar(total: int | None, unit: str, description: str, quiet: bool, leave: bool = True,
                 initial: int = 0, delay: float = 0.0) -> tqdm:
    """A tqdm bar on stderr: count, rate and ETA (with a total); silent with --quiet.

    The unit ``"B"`` counts bytes (in KiB, MiB...). ``leave=False`` erases the bar when it closes: for a
    step that is worth watching while it runs but not a line of its own afterwards. ``initial`` is what an
    earlier run did: shown, but not counted in the rate. ``delay``: shown only once that many seconds passed.
    """
    in_bytes = unit == "B"
    return tqdm(
        total=total, initial=initial, unit=unit if in_bytes else f" {unit}", unit_scale=True,
        unit_divisor=1024 if in_bytes else 1000, desc=description, disable=quiet, leave=leave, file=sys.stderr,
        dynamic_ncols=True, mininterval=0.5, smoothing=0.1, delay=delay,
    )


class ReadingProgress:
    """The reading bar of run and inspect: bytes of input read out of the inputs' total size, so that it has
    an ETA, with the rows read so far beside the rate."""

    def __init__(self, total_bytes: int, description: str, quiet: bool, rows_done: int = 0, bytes_done: int = 0):
        self.rows = rows_done
        self._bar = progress_bar(total_bytes or None, "B", description, quiet, initial=bytes_done)
        self._bar.set_postfix_str(f"{self.rows:,} rows", refresh=False)

    def advance(self, rows: int, read_bytes: int) -> None:
        self.rows += rows
        self._bar.set_postfix_str(f"{self.rows:,} rows", refresh=False)
        self._bar.update(read_bytes)

    def close(self) -> None:
        self._bar.close()


def human_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def day_of(timestamp_us: int | None) -> str:
    if timestamp_us is None:
        return "-"
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=timestamp_us)).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_counter(counter: Counter, indent: str = "    ", limit: int = 20) -> list[str]:
    lines = [f"{indent}{count:>12,}  {name}" for name, count in counter.most_common(limit)]
    if len(counter) > limit:
        lines.append(f"{indent}{'':>12}  … and {len(counter) - limit} more")
    return lines


def preflight_report(stats: PrepareStats, format_name: str, skipped: Sequence[Any] = (),
                     person_mode: str | None = None) -> str:
    """The text of ``inspect``: what a run would send, and what it would refuse, before sending anything.

    ``skipped`` are the SkippedInputs of the listing: each is named, with the reason. ``person_mode`` (the
    mapping's ``[person] mode``) is explained among the lines about people.
    """
    lines = [
        f"Files read:        {stats.files:,} ({format_name})",
        *([f"Files skipped:     {len(skipped):,} (not read):"] if skipped else []),
        *(f"    {item.uri}: {item.why}" for item in skipped),
        f"Rows read:         {stats.rows_read:,}",
        f"Events to send:    {stats.events:,}"
        + (f" (including {stats.added_events:,} added: $identify, $groupidentify…)" if stats.added_events else ""),
        f"Rejected rows:     {stats.rejected_total:,}",
        f"Filtered rows:     {stats.filtered_total:,}",
        f"Time range:        {day_of(stats.first_us)}  →  {day_of(stats.last_us)}",
        f"Distinct ids:      ≈{stats.people.estimate():,}",
        *people_lines(stats, person_mode),
    ]
    if stats.recent_events:
        lines.append(
            f"Warning: {stats.recent_events:,} events are less than 48 hours old; PostHog asks that "
            "historical imports be at least 48 h old (send them later, or filter with the mapping's until)."
        )
    if stats.event_names:
        lines.append("Top event names:")
        lines += format_counter(stats.event_names, limit=15)
    if stats.renamed:
        lines.append("Mapped from the source's names (source → PostHog):")
        lines += format_counter(stats.renamed, limit=30)
    if stats.per_day:
        lines.append("Events per day:")
        days = [(_day_name(day), n) for day, n in sorted(stats.per_day.items())]
        shown = days if len(days) <= 31 else days[:15] + [("…", 0)] + days[-15:]
        lines += [f"    {day}  {count:>12,}" if day != "…" else "    …" for day, count in shown]
    if stats.rejected:
        lines.append("Rejected, by reason:")
        lines += format_counter(stats.rejected)
    if stats.filtered:
        lines.append("Filtered, by rule:")
        lines += format_counter(stats.filtered)
    lines += warning_lines(stats)
    return "\n".join(lines)


# What each [person] mode does, for inspect.
PERSON_MODE_TEXT = {
    "set": ("set: $set overwrites person properties, oldest first (a new project; into one with live data, use "
            "--person-properties set_once, or history overwrites newer values)"),
    "set_once": ("set_once: every $set is sent as a $set_once: persons get the values they lack and keep those they "
                 "have (for a project with live data)"),
    "skip": "skip: no person properties are sent; $set events (profiles) are filtered",
}


def people_lines(stats: PrepareStats, person_mode: str | None = None) -> list[str]:
    """What the job does to PostHog's persons, for inspect and the run summary: the person-properties mode, ids
    PostHog will not merge through, devices claimed by more than one user, profiles, group types (nothing about
    what the job does not have)."""
    lines = []
    if person_mode is not None:
        lines.append(f"Person properties: {PERSON_MODE_TEXT.get(person_mode, person_mode)}")
    if stats.illegal_ids:
        lines.append(f"Illegal ids:       {sum(stats.illegal_ids.values()):,} rows had an id PostHog will not merge "
                     "persons through; their next id was used, else the row is rejected (illegal_distinct_id):")
        lines += [f"    {count:>12,}  rows have {what}" for what, count in stats.illegal_ids.most_common(20)]
    if stats.shared_devices:
        lines.append(f"Shared devices:    {stats.shared_devices:,} devices (or anonymous ids) used by more than one "
                     "user: each is merged into its first user only (PostHog would refuse or mis-merge the others)")
    for what, count in stats.profiles.most_common():
        lines.append(f"Profiles:          {count:,}  {what}")
    if stats.group_types:
        lines.append(f"Group types:       {len(stats.group_types)} (PostHog keeps 5 per project): "
                     + ", ".join(f"{name} ({count:,} events)" for name, count in stats.group_types.most_common()))
    return lines


def suspicious_warning(suspicious_before_us: int) -> str:
    """The warning that counts events dated before ``suspicious_before_us``: a time of 0 or 1 (1970), a negative
    number (before 1970) or a wrong unit put real events there, and a migration should not send them unseen."""
    moment = format_timestamp(suspicious_before_us)
    moment = moment[:10] if moment.endswith("T00:00:00.000000Z") else moment
    return (f"events dated before {moment}: suspicious (a time of 0, 1 or below zero? a wrong timestamp unit?); "
            "drop them with the mapping's [filter] since, or move this limit with [run] suspicious_before")


def skipped_files_line(skipped: Sequence[Any], shown: int = 3) -> str:
    """One line for the start of ``run``: how many files are not read, the first few, where to see all."""
    names = ", ".join(f"{item.uri} ({item.why})" for item in skipped[:shown])
    more = f" and {len(skipped) - shown:,} more (`posthog-migrate inspect` lists them)" if len(skipped) > shown else ""
    return f"Skipped {len(skipped):,} file(s), not read: {names}{more}"


def warning_lines(stats: PrepareStats) -> list[str]:
    """The stats' warnings, for inspect and the run summary (nothing when there are none)."""
    if not stats.warnings:
        return []
    return ["Warnings:", *format_counter(stats.warnings)]


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


def run_summary(stats: PrepareStats, sent: Any, counters: Any, elapsed: float, *, target: str,
                rejects_path: Path, dry_run_dir: Path | None = None, received_path: Path | None = None,
                resumed_from: int = 0, prepare_seconds: float | None = None, skipped_files: int = 0) -> str:
    """The closing summary of ``run``: the accounting equation first, then the effort and the files.

    ``sent`` is the send phase's SendProgress; ``counters`` its SendCounters; ``skipped_files`` how many files
    the inputs hold that were not read.
    """
    job_books = books(stats, sent)
    rejected_total = job_books.rejected
    verb = "written" if dry_run_dir else "sent"
    lines = [
        f"Target:            {target}",
        f"Rows read:         {stats.rows_read:,}",
        f"  {verb:<16} {sent.rows_sent:,}",
        f"  rejected         {rejected_total:,}",
        f"  filtered         {stats.filtered_total:,}",
        f"  check            {job_books.equation()}  {'✓ balanced' if job_books.balanced else '✗ NOT balanced'}",
        f"{'Events ' + verb + ':':<19}{sent.events_sent:,} in {sent.batches_sent:,} batches"
        + (f" (including {stats.added_events:,} added: $identify, $groupidentify…)" if stats.added_events else ""),
    ]
    if resumed_from:
        lines.append(f"Resumed:           {resumed_from:,} events were already sent by an earlier run")
    if prepare_seconds is not None:
        rows_rate = stats.rows_read / prepare_seconds if prepare_seconds > 0 else 0.0
        lines.append(f"Prepared:          {human_duration(prepare_seconds)} (read, mapped, sorted; "
                     f"{rows_rate:,.0f} rows/s)")
    if not dry_run_dir:
        rate = (sent.events_sent - resumed_from) / elapsed if elapsed > 0 else 0.0
        lines.append(
            f"Sent:              {human_duration(elapsed)}, {rate:,.0f} events/s; {counters.requests:,} requests "
            f"({counters.retries:,} retries, {counters.splits:,} splits)"
        )
        if counters.statuses:
            answers = ", ".join(f"{status}×{n:,}" for status, n in sorted(counters.statuses.items()))
            lines.append(f"Answers:           {answers}")
    reasons = stats.rejected + Counter({"server_rejected": sent.server_rejected_rows} if sent.server_rejected_rows
                                       else {})
    if reasons:
        lines.append("Rejected, by reason:")
        lines += format_counter(reasons)
    if stats.filtered:
        lines.append("Filtered, by rule:")
        lines += format_counter(stats.filtered)
    lines += people_lines(stats)
    if stats.recent_events:
        lines.append(f"Warning: {stats.recent_events:,} events are less than 48 h old (PostHog asks for older).")
    lines += warning_lines(stats)
    if skipped_files:
        lines.append(f"Files skipped:     {skipped_files:,} (not read; `posthog-migrate inspect` lists them)")
    if rejected_total:
        lines.append(f"Rejects file:      {rejects_path}")
    if dry_run_dir:
        lines.append(f"Request bodies:    {dry_run_dir}")
    if received_path:
        lines.append(f"Received events:   {received_path}")
    return "\n".join(lines)
