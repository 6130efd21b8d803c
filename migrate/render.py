"""What a person sees of a job: progress while it runs, and the texts drawn from its books afterwards.

The counts live in posthog_migrate.accounting and the result objects (posthog_migrate.results); this module
only draws them: the run summary, the preflight report of ``inspect``, the ``status`` text, and the
progress a job shows through a :class:`Progress` object it is given. The command line passes tqdm bars on
stderr; the Python API passes nothing (silent) unless asked for ``"tqdm"`` (``tqdm.auto``: widgets in a
notebook) or ``"log"`` (lines through :mod:`logging`, for orchestrators).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from posthog_migrate.accounting import PrepareStats, books, day_name
from posthog_migrate.errors import ConfigError

if TYPE_CHECKING:
    from posthog_migrate.results import InspectResult, StatusResult, VerifyResult


# --- progress ----------------------------------------------------------------------------------------

class Bar(Protocol):
    """What the pipeline does with a progress bar (tqdm's names). ``total`` may grow while it runs (a download
    split in two), then ``refresh()`` shows it."""

    total: int | None

    def update(self, n: int = 1) -> Any: ...

    def refresh(self) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def close(self) -> None: ...


class NullBar:
    """A bar that draws nothing: silent progress, or a step with no work to show."""

    total: int | None = None

    def update(self, n: int = 1) -> None:
        pass

    def refresh(self) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    """How a job shows what it is doing: a bar for each long step, and notes for a person watching (a file
    skipped, a retry, a warning). This one shows nothing, the Python API's default; subclasses draw."""

    def bar(self, total: int | None, unit: str, description: str, *, leave: bool = True, initial: int = 0,
            delay: float = 0.0) -> Bar:
        """A bar counting ``unit`` up to ``total`` (None: a count without an ETA). The unit ``"B"`` counts bytes
        (in KiB, MiB...). ``leave=False``: erased when closed, for a step worth watching while it runs but not
        a line of its own afterwards. ``initial``: what an earlier run did, shown but not counted in the rate.
        ``delay``: drawn only once that many seconds passed."""
        return NullBar()

    def note(self, text: str) -> None:
        """A line a person watching should see, even with --quiet: a warning, a file skipped, a retry."""

    def info(self, text: str) -> None:
        """A line shown along with the bars only: the job's name and format as it starts."""


class TqdmProgress(Progress):
    """tqdm bars on stderr, with count, rate and ETA; the notes written between them. ``bars=False`` (--quiet)
    keeps only the notes. ``notebook=True`` takes ``tqdm.auto``: widgets in Jupyter (imported only then: it
    needs ipywidgets there, and warns without them)."""

    def __init__(self, bars: bool = True, notebook: bool = False):
        if notebook:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        self._tqdm = tqdm
        self.bars = bars

    def bar(self, total: int | None, unit: str, description: str, *, leave: bool = True, initial: int = 0,
            delay: float = 0.0) -> Bar:
        if not self.bars:
            return NullBar()
        in_bytes = unit == "B"
        return self._tqdm(
            total=total, initial=initial, unit=unit if in_bytes else f" {unit}", unit_scale=True,
            unit_divisor=1024 if in_bytes else 1000, desc=description, leave=leave, file=sys.stderr,
            dynamic_ncols=True, mininterval=0.5, smoothing=0.1, delay=delay,
        )

    def note(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def info(self, text: str) -> None:
        if self.bars:
            self.note(text)


LOGGER_NAME = "posthog_migrate"


class LogProgress(Progress):
    """Progress as log lines through :mod:`logging` (logger ``posthog_migrate``), for orchestrators and pods,
    whose logs keep lines, not bars: each step says how far it got every ``interval`` seconds, and when it ends."""

    def __init__(self, interval: float = 30.0, logger: logging.Logger | None = None):
        self.interval = interval
        self.logger = logger or logging.getLogger(LOGGER_NAME)

    def bar(self, total: int | None, unit: str, description: str, *, leave: bool = True, initial: int = 0,
            delay: float = 0.0) -> Bar:
        return LogBar(self.logger, total, unit, description, initial, self.interval)

    def note(self, text: str) -> None:
        self.logger.warning(text)

    def info(self, text: str) -> None:
        self.logger.info(text)


class LogBar:
    """One step of :class:`LogProgress`: a line every ``interval`` seconds while it moves, and one at its end."""

    def __init__(self, logger: logging.Logger, total: int | None, unit: str, description: str, initial: int,
                 interval: float):
        self.logger, self.total, self.unit, self.description = logger, total, unit, description
        self.n = self.initial = initial
        self.interval = interval
        self.postfix = ""
        self._started = self._logged = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._logged >= self.interval:
            self._log("")

    def refresh(self) -> None:
        pass  # a line goes out at the next interval, with the new total

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self.n > self.initial:
            self._log(" (done)" if self.total is None or self.n >= self.total else " (stopped)")

    def _log(self, ending: str) -> None:
        self._logged = now = time.monotonic()
        rate = (self.n - self.initial) / max(now - self._started, 1e-9)
        text = f"{self.description}: {self._amount(self.n)}"
        if self.total:
            text += f" of {self._amount(self.total)} ({100 * self.n / self.total:.0f}%)"
        text += f", {self._amount(rate)}/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", about {human_duration((self.total - self.n) / rate)} left"
        self.logger.info(text + (f", {self.postfix}" if self.postfix else "") + ending)

    def _amount(self, count: float) -> str:
        if self.unit == "B":
            return f"{count / 2 ** 20:,.1f} MiB"
        return f"{count:,.0f} {self.unit}"


def progress_from(choice: Any, quiet: bool = False) -> Progress:
    """The Python API's ``progress=``: None or False (silent, the default), True or ``"tqdm"`` (``tqdm.auto``),
    ``"log"`` (lines through logging) or a Progress object. ``quiet`` (the ``quiet=True`` setting) silences
    the bars of the first two kinds."""
    if isinstance(choice, Progress):
        return choice
    if choice is None or choice is False:
        return Progress()
    if choice is True or choice == "tqdm":
        return TqdmProgress(bars=not quiet, notebook=True)
    if choice == "log":
        return LogProgress()
    raise ConfigError(f"progress={choice!r}: give None (silent), 'tqdm' (bars, widgets in a notebook), 'log' "
                      "(lines through the logging module) or a posthog_migrate.render.Progress object")


class ReadingProgress:
    """The reading bar of run and inspect: bytes of input read out of the inputs' total size, so that it has
    an ETA, with the rows read so far beside the rate."""

    def __init__(self, progress: Progress, total_bytes: int, description: str, rows_done: int = 0,
                 bytes_done: int = 0):
        self.rows = rows_done
        self._bar = progress.bar(total_bytes or None, "B", description, initial=bytes_done)
        self._bar.set_postfix_str(f"{self.rows:,} rows", refresh=False)

    def advance(self, rows: int, read_bytes: int) -> None:
        self.rows += rows
        self._bar.set_postfix_str(f"{self.rows:,} rows", refresh=False)
        self._bar.update(read_bytes)

    def close(self) -> None:
        self._bar.close()


# --- texts -------------------------------------------------------------------------------------------

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
        days = [(day_name(day), n) for day, n in sorted(stats.per_day.items())]
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


def as_sentence(message: str) -> str:
    """An error message (which starts in lower case, after "Error: ") as a sentence of its own."""
    return message[:1].upper() + message[1:]


def partial_run_text(result: Any) -> str:
    """What a run that stopped before its job was prepared had done (a RunResult carried by its error)."""
    if result.stats is None:
        return f"Job {result.job_root}: stopped before any input was read; nothing has been sent."
    return (f"Job {result.job_root}: stopped while preparing, {result.stats.rows_read:,} rows read and "
            f"checkpointed ({result.stats.files:,} file(s) finished); nothing has been sent.")


def inspect_text(result: InspectResult) -> str:
    """What ``inspect`` prints: the preflight report, the temporary disk a run needs, the first rejected rows."""
    from posthog_migrate.diskspace import human_bytes

    lines = [
        preflight_report(result.stats, result.format_name, result.skipped, person_mode=result.person_mode),
        f"Temporary disk:    about {human_bytes(result.disk_estimate)} in {result.work_root} while the job runs",
    ]
    if result.examples:
        lines.append("First rejected rows:")
        lines += [f"    {example['file']} row {example['row']}: {example['reason']}: {example['detail']}"
                  for example in result.examples]
    return "\n".join(lines)


def status_text(status: StatusResult) -> str:
    """What ``status`` prints: the phase, the counts so far, the last checkpoint and what a resume does."""
    root, stats, progress = status.root, status.stats, status.send
    if status.phase == "downloading":
        lines = [f"Job {root}: downloading from the export API: {status.chunks_done:,} of {status.chunks:,} chunks "
                 "complete; nothing has been sent.", status.next_step]
    elif status.phase == "not prepared":
        lines = [f"Job {root}: not prepared (never run, or stopped before its first checkpoint).", status.next_step]
    elif status.phase == "preparing":
        lines = [f"Job {root}: preparing: {status.files_done} of {status.files} input files done, "
                 f"{stats.rows_read:,} rows read; nothing has been sent.", status.next_step]
    elif status.damaged_parts:
        lines = [f"Job {root}: damaged", status.next_step]
    else:
        total = stats.events
        done = progress.events_sent + progress.server_rejected_events
        lines = [
            f"Job {root}: {status.phase}",
            f"Sources:   {status.files:,} file(s), {stats.rows_read:,} rows, {stats.events:,} events",
            f"Sent:      {progress.events_sent:,} of {total:,} events ({100 * done / total if total else 100:.1f}%), "
            f"{progress.batches_sent:,} batches" + (f" to {progress.host}" if progress.host else ""),
            f"Rejected:  {stats.rejected_total + progress.server_rejected_rows:,} rows → {root / 'rejects.jsonl'}",
            f"Filtered:  {stats.filtered_total:,} rows",
            f"Time range: {day_of(stats.first_us)} → {day_of(stats.last_us)}",
        ]
        if progress.updated_at:
            lines.append(f"Last checkpoint: {human_duration(time.time() - progress.updated_at)} ago")
        lines.append(status.next_step)
    if status.last_run is not None:
        lines.append(last_run_line(status.last_run, root))
    return "\n".join(lines)


def last_run_line(run: dict, root: Path) -> str:
    """The last run of a job, as its log tells it: when it ended and how, or that it recorded no end."""
    def ago(moment: str | None) -> str:
        try:
            when = datetime.fromisoformat(str(moment).replace("Z", "+00:00"))
        except ValueError:
            return "some time"
        return human_duration((datetime.now(UTC) - when).total_seconds())

    log = root / "job.log"
    if "ended" not in run:
        return f"Last run:  started {ago(run['started'])} ago and recorded no end (killed, or still running); see {log}"
    error = run.get("error")
    how = f": {error['type']}: {error['message']}" if error else ""
    return f"Last run:  ended {ago(run['ended'])} ago with exit status {run['exit_status']}{how} (all of it in {log})"


# Rows of verify's table shown as text; the --json report has them all.
VERIFY_ROWS_SHOWN = 40


def verify_text(result: VerifyResult) -> str:
    """What ``verify`` prints: the (day, event) groups that differ first, a total line, then the person checks and
    the verdict."""
    groups = sorted(result.groups, key=lambda group: (not (group.missing or group.extra), group.day, group.event))
    shown = groups[:VERIFY_ROWS_SHOWN]
    width = max([len(group.event) for group in shown] + [5])
    header = f"{'day':<10}  {'event':<{width}}  {'sent':>10}  {'found':>10}  {'missing':>9}  {'extra':>7}"
    lines = [f"Job {result.job_root} (id {result.job_id}) in project {result.project_id} at {result.api_host}", header]
    for group in shown:
        mark = "  ✗" if group.missing else "  +" if group.extra else ""
        lines.append(f"{group.day:<10}  {group.event:<{width}}  {group.sent:>10,}  {group.found:>10,}  "
                     f"{group.missing:>9,}  {group.extra:>7,}{mark}")
    if len(groups) > len(shown):
        differing = sum(1 for group in groups[len(shown):] if group.missing or group.extra)
        lines.append(f"… and {len(groups) - len(shown):,} more groups ({differing:,} of them differ): "
                     "--json FILE has every one")
    lines.append(f"{'total':<10}  {'':<{width}}  {result.sent:>10,}  {result.found + result.extra:>10,}  "
                 f"{result.missing:>9,}  {result.extra:>7,}")
    if result.extra:
        lines.append(f"Extra: {result.extra:,} events carry the job's id but were not sent by it (another job of the "
                     "same name, or another shard of it?). Reported only: verify never deletes anything.")
    if result.resent is not None:
        lines.append(f"Resent: {result.resent['events']:,} events of the missing groups, byte-identical, in "
                     f"{result.resent['batches']:,} batches (what had arrived collapses in PostHog)")
    if result.gave_up_waiting:
        lines.append(f"Waited {human_duration(result.waited_seconds)} for PostHog's ingestion, then stopped: "
                     f"{result.gave_up_waiting}")
    elif result.waited_seconds >= 1:
        lines.append(f"Waited {human_duration(result.waited_seconds)} for PostHog's ingestion.")
    not_merged = result.pairs_not_merged
    lines.append(f"Merges:  {len(result.pairs):,} checked (a sample of the $identify / $create_alias the job sent), "
                 f"{len(not_merged):,} not made")
    for pair in not_merged[:VERIFY_ROWS_SHOWN]:
        why = pair.reason or ("PostHog holds no such merge: the event asking for it may be among the missing "
                              "ones, or PostHog refused it (see Data management → Ingestion warnings)")
        lines.append(f"    {pair.event} {pair.distinct_id!r} ← {pair.other_id!r}: not the same person. {why}")
    lines.append(f"Persons: {result.distinct_ids_checked:,} distinct ids checked (a sample), "
                 f"{len(result.without_person):,} without a person"
                 + (f": {', '.join(repr(i) for i in result.without_person[:10])}" if result.without_person else ""))
    if result.landed:
        lines.append("Verified: every event the job sent is in PostHog, and its merges were made.")
    else:
        merges = f"{len(not_merged):,} merge{'s' if len(not_merged) > 1 else ''} not made"
        problems = [f"{result.missing:,} events missing in {len(result.short_groups):,} (day, event) groups"
                    if result.missing else "", merges if not_merged else "",
                    f"{len(result.without_person):,} distinct ids without a person" if result.without_person else ""]
        fix = (" Run verify again with --resend-missing to send the missing groups again (byte-identical: what "
               "arrived collapses)." if result.missing and result.resent is None else "")
        lines.append(f"Not all landed: {'; '.join(p for p in problems if p)}.{fix}")
    return "\n".join(lines)
