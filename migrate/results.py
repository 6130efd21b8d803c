"""What each command found or did, as data: :class:`RunResult` (run), :class:`InspectResult` (inspect),
:class:`StatusResult` (status) and :class:`VerifyResult` (verify).

Each is made from a job's books (posthog_migrate.accounting) and is shown two ways: ``asdict()``, the one
JSON document ``--json`` prints (``"schema": 1``, see the README), and ``asstr()``, the text the command
prints (drawn by posthog_migrate.render). The Python API returns them; an error raised by a run carries
the RunResult so far as ``error.result``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posthog_migrate.accounting import Books, PrepareStats, books, unbalanced_message
from posthog_migrate.checkpoint import JobState, SendProgress, read_json
from posthog_migrate.errors import DamagedJob, ExitStatus, MigrateError, error_kind
from posthog_migrate.event import format_timestamp
from posthog_migrate.sender import SendCounters

# The version of the documents ``asdict()`` returns: raised when a key changes meaning or goes away (new keys
# may appear without it).
JSON_SCHEMA = 1


def _time_range(stats: PrepareStats | None) -> dict[str, str | None]:
    def moment(timestamp_us: int | None) -> str | None:
        return None if timestamp_us is None else format_timestamp(timestamp_us)

    return {"first": moment(stats.first_us) if stats else None, "last": moment(stats.last_us) if stats else None}


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _skipped(skipped: list) -> list[dict[str, str]]:
    return [{"uri": item.uri, "why": item.why} for item in skipped]


def _rejected_by_reason(stats: PrepareStats | None, send: SendProgress) -> dict[str, int]:
    reasons = dict(stats.rejected) if stats else {}
    if send.server_rejected_rows:
        reasons["server_rejected"] = send.server_rejected_rows
    return reasons


@dataclass(repr=False)
class RunResult:
    """What a run did: its prepare phase's counts, its send phase's progress and effort, where things are.

    ``read``, ``sent``, ``rejected`` and ``filtered`` are rows (every row read ends as one of the other three);
    ``events_sent`` counts events, the ``$identify`` and ``$groupidentify`` the job adds included. A result
    carried by an error holds what the run had done when it stopped, as checkpointed: a resume goes on from
    there. Its counts are None where the run did not get that far.
    """

    job_root: Path
    job_id: str = ""
    format_name: str = ""
    target: str = ""
    # Where the run got: "opening" (listing the inputs), "preparing", "sending" or "done".
    stage: str = "opening"
    # The prepare phase's counts: the job's, once prepared; before that, what its finished files add up to.
    stats: PrepareStats | None = None
    prepare_reused: bool = False  # prepared by an earlier run
    prepare_seconds: float | None = None
    send: SendProgress = field(default_factory=SendProgress)
    counters: SendCounters = field(default_factory=SendCounters)
    send_seconds: float = 0.0
    resumed_from: int = 0  # events an earlier run had sent
    skipped: list = field(default_factory=list)  # SkippedInputs: files the arguments hold that are not read
    gone_inputs: list[str] = field(default_factory=list)
    dry_run_dir: Path | None = None
    received_path: Path | None = None
    exit_status: ExitStatus = ExitStatus.DONE
    error: MigrateError | None = None

    @property
    def rejects_path(self) -> Path:
        return self.job_root / "rejects.jsonl"

    @property
    def prepared(self) -> bool:
        return self.stage in ("sending", "done")

    @property
    def books(self) -> Books | None:
        return books(self.stats, self.send) if self.stats is not None else None

    @property
    def read(self) -> int | None:
        return self.stats.rows_read if self.stats is not None else None

    @property
    def sent(self) -> int:
        return self.send.rows_sent

    @property
    def rejected(self) -> int | None:
        return self.books.rejected if self.stats is not None else None

    @property
    def filtered(self) -> int | None:
        return self.stats.filtered_total if self.stats is not None else None

    @property
    def events_sent(self) -> int:
        return self.send.events_sent

    @property
    def has_rejects(self) -> bool:
        return bool(self.rejected)

    def _phase_state(self, done: bool, started: bool) -> str:
        if done:
            return "done"
        if not started:
            return "not started"
        return "interrupted" if self.exit_status in (ExitStatus.INTERRUPTED_SIGINT,
                                                     ExitStatus.INTERRUPTED_SIGTERM) else "failed"

    def asdict(self) -> dict[str, Any]:
        """The run as the JSON document of ``run --json`` (see the README for every key)."""
        stats, job_books = self.stats, self.books
        prepare_state = "reused" if self.prepare_reused else self._phase_state(self.prepared,
                                                                              self.stage != "opening")
        return {
            "schema": JSON_SCHEMA,
            "command": "run",
            "exit_status": int(self.exit_status),
            "job": {"root": str(self.job_root), "id": self.job_id, "format": self.format_name},
            "target": self.target or None,
            "rows": {"read": self.read, "sent": self.sent, "rejected": self.rejected, "filtered": self.filtered,
                     "balanced": job_books.balanced if job_books else None},
            "events": {"sent": self.send.events_sent, "added": stats.added_events if stats else None,
                       "total": stats.events if stats and self.prepared else None,
                       "batches": self.send.batches_sent},
            "rejected_by_reason": _rejected_by_reason(stats, self.send),
            "filtered_by_rule": dict(stats.filtered) if stats else {},
            "rejects_path": str(self.rejects_path),
            "received_path": _path(self.received_path),
            "dry_run_dir": _path(self.dry_run_dir),
            "phases": {
                "prepare": {"state": prepare_state, "seconds": self.prepare_seconds,
                            "files": stats.files if stats else None},
                "send": {"state": self._phase_state(self.send.finished, self.stage in ("sending", "done")),
                         "seconds": round(self.send_seconds, 3), "resumed_from_events": self.resumed_from,
                         "requests": self.counters.requests, "retries": self.counters.retries,
                         "splits": self.counters.splits, "answers": dict(self.counters.statuses)},
            },
            "time_range": _time_range(stats),
            "distinct_ids": stats.people.estimate() if stats and self.prepared else None,
            "people": people_document(stats) if stats and self.prepared else None,
            "warnings": dict(stats.warnings) if stats else {},
            "skipped_files": _skipped(self.skipped),
            "gone_inputs": self.gone_inputs,
            "error": None if self.error is None else {"type": error_kind(self.error), "message": str(self.error)},
        }

    def asstr(self) -> str:
        """The run's summary as ``run`` prints it: the accounting equation first."""
        from posthog_migrate.render import partial_run_text, run_summary

        if self.stats is None or not self.prepared:
            return partial_run_text(self)
        return run_summary(
            self.stats, self.send, self.counters, self.send_seconds, target=self.target,
            rejects_path=self.rejects_path, dry_run_dir=self.dry_run_dir, received_path=self.received_path,
            resumed_from=self.resumed_from, prepare_seconds=self.prepare_seconds, skipped_files=len(self.skipped),
        )

    __str__ = asstr

    def __repr__(self) -> str:
        return (f"RunResult(exit_status={int(self.exit_status)}, read={self.read}, sent={self.sent}, "
                f"rejected={self.rejected}, filtered={self.filtered}, rejects_path={str(self.rejects_path)!r})")


@dataclass(repr=False)
class InspectResult:
    """What ``inspect`` found: what a run would send and refuse, read and mapped, nothing sent."""

    stats: PrepareStats
    format_name: str
    skipped: list  # SkippedInputs
    examples: list[dict]  # the first rejected rows: reason, detail, file, row
    work_root: Path  # where a run's work directory would be
    disk_estimate: int  # bytes of temporary disk a run would need there
    person_mode: str = "set"  # the mapping's [person] mode, explained in the report
    exit_status: ExitStatus = ExitStatus.DONE

    @property
    def read(self) -> int:
        return self.stats.rows_read

    @property
    def kept(self) -> int:
        """Rows that map to events (those a run sends)."""
        return self.stats.rows_kept

    @property
    def rejected(self) -> int:
        return self.stats.rejected_total

    @property
    def filtered(self) -> int:
        return self.stats.filtered_total

    @property
    def events(self) -> int:
        return self.stats.events

    def asdict(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "schema": JSON_SCHEMA,
            "command": "inspect",
            "exit_status": int(self.exit_status),
            "format": self.format_name,
            "files": stats.files,
            "rows": {"read": stats.rows_read, "kept": stats.rows_kept, "rejected": self.rejected,
                     "filtered": self.filtered},
            "events": {"to_send": stats.events, "added": stats.added_events, "recent": stats.recent_events},
            "time_range": _time_range(stats),
            "distinct_ids": stats.people.estimate(),
            "people": people_document(stats, self.person_mode),
            "event_names": dict(stats.event_names.most_common()),
            "renamed": dict(stats.renamed),
            "per_day": stats.to_dict()["per_day"],
            "rejected_by_reason": dict(stats.rejected),
            "filtered_by_rule": dict(stats.filtered),
            "warnings": dict(stats.warnings),
            "skipped_files": _skipped(self.skipped),
            "first_rejects": self.examples,
            "temporary_disk_bytes": self.disk_estimate,
            "work_directory": str(self.work_root),
        }

    def asstr(self) -> str:
        from posthog_migrate.render import inspect_text

        return inspect_text(self)

    __str__ = asstr

    def __repr__(self) -> str:
        return (f"InspectResult(format={self.format_name!r}, read={self.read}, events={self.events}, "
                f"rejected={self.rejected}, filtered={self.filtered})")


@dataclass(repr=False)
class StatusResult:
    """Where a job stands, from what its work directory records (manifest.json, state.json, the prepare's
    parts, job.log): the same counts as a run's, so far."""

    root: Path
    # "downloading", "not prepared", "preparing", "prepared", "sending", "done" or "damaged"
    phase: str
    next_step: str  # what a resume does, or how to repair the job
    stats: PrepareStats | None = None
    send: SendProgress = field(default_factory=SendProgress)
    files: int = 0  # input files
    files_done: int = 0  # of them, those whose prepare finished
    chunks: int = 0  # of an export API's pull (amplitude://, mixpanel://): its chunks (or pages)
    chunks_done: int = 0  # of them, those downloaded whole
    damage: str | None = None  # the message, when the job is damaged
    damaged_parts: list[str] = field(default_factory=list)  # what in the work directory is damaged
    last_run: dict | None = None  # the last run's start and end, from job.log
    exit_status: ExitStatus = ExitStatus.DONE

    @property
    def books(self) -> Books | None:
        return books(self.stats, self.send) if self.stats is not None else None

    def asdict(self) -> dict[str, Any]:
        stats, job_books = self.stats, self.books
        prepared = self.phase not in ("downloading", "not prepared", "preparing")
        send_started = bool(self.send.batches_sent) or self.send.finished
        return {
            "schema": JSON_SCHEMA,
            "command": "status",
            "exit_status": int(self.exit_status),
            "job": {"root": str(self.root)},
            "phase": self.phase,
            "next_step": self.next_step,
            "rows": {"read": stats.rows_read if stats else 0, "sent": self.send.rows_sent,
                     "rejected": job_books.rejected if job_books else 0,
                     "filtered": stats.filtered_total if stats else 0,
                     "balanced": job_books.balanced if job_books and self.send.finished else None},
            "events": {"sent": self.send.events_sent, "added": stats.added_events if stats else 0,
                       "total": stats.events if stats and prepared else None, "batches": self.send.batches_sent},
            "rejected_by_reason": _rejected_by_reason(stats, self.send),
            "filtered_by_rule": dict(stats.filtered) if stats else {},
            "rejects_path": str(self.root / "rejects.jsonl"),
            "phases": {
                "pull": {"chunks": self.chunks, "chunks_done": self.chunks_done},
                "prepare": {"state": "done" if prepared else "in progress" if self.phase == "preparing"
                            else "not started", "files": self.files, "files_done": self.files_done},
                "send": {"state": "done" if self.send.finished else "in progress" if send_started else "not started",
                         "batches": self.send.batches_sent, "next_batch": self.send.next_seq,
                         "host": self.send.host or None, "last_checkpoint": self.send.updated_at or None},
            },
            "time_range": _time_range(stats),
            "damage": self.damage,
            "last_run": self.last_run,
        }

    def asstr(self) -> str:
        from posthog_migrate.render import status_text

        return status_text(self)

    __str__ = asstr

    def __repr__(self) -> str:
        return f"StatusResult(root={str(self.root)!r}, phase={self.phase!r})"


def prepared_so_far(root: Path) -> tuple[PrepareStats, int]:
    """What an unfinished prepare has checkpointed: the counts of its finished input files and of each
    unfinished one up to its last spill, and how many files are finished."""
    stats, done = PrepareStats(), 0
    for pattern in ("result-*.json", "progress-*.json"):
        for path in sorted((root / "parts").glob(pattern)):
            part = read_json(path)
            if part is None:  # finished (or spilled again) since it was listed: counted under its new name
                continue
            stats.merge(PrepareStats.from_dict(part["stats"]))
            done += pattern.startswith("result")
    return stats, done


def job_status(root: Path) -> StatusResult:
    """Where the job in ``root`` stands: what ``status`` shows. Raises ConfigError when a file it reads is
    not valid JSON."""
    from posthog_migrate.batches import LAYOUT_VERSION
    from posthog_migrate.integrity import prepared_job_problems
    from posthog_migrate.joblog import last_run
    from posthog_migrate.render import as_sentence

    run = last_run(root)
    manifest = read_json(root / "manifest.json")
    if manifest is None:
        partial = read_json(root / "prepare.json")
        downloads = read_json(root / "downloads" / "pull.json")
        if partial is None and downloads is not None:
            chunks = [chunk for entry in downloads["sources"].values()
                      for chunk in entry.get("chunks", entry.get("pages", []))]
            return StatusResult(root, "downloading", "A resume downloads the chunks still missing (complete ones "
                                "are kept).", chunks=len(chunks),
                                chunks_done=sum(1 for chunk in chunks if "bytes" in chunk), last_run=run)
        if partial is None:
            return StatusResult(root, "not prepared", "A resume reads and sorts the sources from the start; nothing "
                                "has been sent.", last_run=run)
        stats, done = prepared_so_far(root)
        return StatusResult(root, "preparing", "A resume skips the finished files and continues each unfinished "
                            "one after its last spill.", stats=stats, files=len(partial["fingerprint"]["inputs"]),
                            files_done=done, last_run=run)
    stats = PrepareStats.from_dict(manifest["stats"])
    files = len(manifest["sources"])
    problems = prepared_job_problems(root, manifest)
    if problems:
        damage = str(DamagedJob(root, problems))
        return StatusResult(root, "damaged", as_sentence(damage), stats=stats, files=files, files_done=files,
                            damage=damage, damaged_parts=problems, last_run=run)
    progress = JobState(root / "state.json").send
    job_books = books(stats, progress)
    damage = None
    if progress.finished and not job_books.balanced:
        phase = "damaged"
        damage = unbalanced_message(root, job_books)
        next_step = as_sentence(damage)
    elif progress.finished:
        phase = "done"
        next_step = "A re-run does nothing more (add --restart to send everything again)."
    elif progress.batches_sent and progress.layout.get("version") != LAYOUT_VERSION:
        phase = "sending"
        next_step = (f"A resume sends again from batch {progress.window_first_seq:,}, the start of its window: an "
                     "earlier version cut these batches (same uuids: PostHog collapses what it already has).")
    elif progress.batches_sent:
        phase = "sending"
        next_step = (f"A resume continues with batch {progress.next_seq:,}, at most {progress.layout.get('lanes', 1)} "
                     "batches may be re-sent (same uuids: PostHog collapses them).")
    else:
        phase = "prepared"
        next_step = "A resume starts sending from the first batch; the sources are not read again."
    return StatusResult(root, phase, next_step, stats=stats, send=progress, files=files, files_done=files,
                        damage=damage, last_run=run)


def checkpointed_send(root: Path) -> SendProgress:
    """The send phase's progress as its checkpoint holds it (what a resume starts from), or nothing sent when
    the checkpoint cannot be read (damaged: the error that stopped the run says so)."""
    try:
        return JobState(root / "state.json").send
    except MigrateError:
        return SendProgress()


@dataclass(frozen=True)
class GroupCheck:
    """One (UTC day, event) group: distinct events the job sent, and those PostHog holds with the job's id."""

    day: str
    event: str
    sent: int
    found: int

    @property
    def missing(self) -> int:
        return max(self.sent - self.found, 0)

    @property
    def extra(self) -> int:
        return max(self.found - self.sent, 0)

    def asdict(self) -> dict[str, Any]:
        return {"day": self.day, "event": self.event, "sent": self.sent, "found": self.found,
                "missing": self.missing, "extra": self.extra}


@dataclass(frozen=True)
class PairCheck:
    """A merge the job asked for (``event`` merging ``other_id`` into ``distinct_id``) and whether PostHog made it;
    ``reason`` is what the job knows of why not (an illegal id, an id claimed twice), when it knows."""

    event: str
    distinct_id: str
    other_id: str
    merged: bool
    reason: str | None = None

    def asdict(self) -> dict[str, Any]:
        return {"event": self.event, "distinct_id": self.distinct_id, "other_id": self.other_id,
                "merged": self.merged, "reason": self.reason}


@dataclass(repr=False)
class VerifyResult:
    """What ``verify`` found: per (day, event) group what the job sent and what PostHog holds, whether the merges
    the job asked for were made, and whether sampled distinct ids have a person. ``exit_status`` is 0 when
    everything the job sent is there, 4 (NOT_ALL_LANDED) when events are missing or merges were refused."""

    job_root: Path
    job_id: str = ""
    api_host: str = ""
    project_id: str = ""
    groups: list[GroupCheck] = field(default_factory=list)
    pairs: list[PairCheck] = field(default_factory=list)
    distinct_ids_checked: int = 0
    without_person: list[str] = field(default_factory=list)
    waited_seconds: float = 0.0
    gave_up_waiting: str | None = None  # why verify stopped waiting for PostHog while events were still missing
    resent: dict[str, int] | None = None  # what --resend-missing sent: events, batches, requests
    queries: int = 0
    exit_status: ExitStatus = ExitStatus.DONE
    error: MigrateError | None = None

    @property
    def sent(self) -> int:
        return sum(group.sent for group in self.groups)

    @property
    def found(self) -> int:
        return sum(min(group.found, group.sent) for group in self.groups)

    @property
    def missing(self) -> int:
        return sum(group.missing for group in self.groups)

    @property
    def extra(self) -> int:
        return sum(group.extra for group in self.groups)

    @property
    def short_groups(self) -> list[GroupCheck]:
        return [group for group in self.groups if group.missing]

    @property
    def pairs_not_merged(self) -> list[PairCheck]:
        return [pair for pair in self.pairs if not pair.merged]

    @property
    def landed(self) -> bool:
        """Everything the job sent is in PostHog, and its merges were made."""
        return not self.missing and not self.pairs_not_merged and not self.without_person

    def asdict(self) -> dict[str, Any]:
        """The report as ``verify --json`` writes it (see the README)."""
        return {
            "schema": JSON_SCHEMA,
            "command": "verify",
            "exit_status": int(self.exit_status),
            "job": {"root": str(self.job_root), "id": self.job_id},
            "api_host": self.api_host or None,
            "project_id": self.project_id or None,
            "total": {"sent": self.sent, "found": self.found, "missing": self.missing, "extra": self.extra},
            "groups": [group.asdict() for group in self.groups],
            "people": {"pairs_checked": len(self.pairs), "pairs_not_merged": len(self.pairs_not_merged),
                       "not_merged": [pair.asdict() for pair in self.pairs_not_merged],
                       "distinct_ids_checked": self.distinct_ids_checked,
                       "without_person": len(self.without_person), "without_person_ids": self.without_person},
            "waited_seconds": round(self.waited_seconds, 1),
            "gave_up_waiting": self.gave_up_waiting,
            "resent": self.resent,
            "queries": self.queries,
            "error": None if self.error is None else {"type": error_kind(self.error), "message": str(self.error)},
        }

    def asstr(self) -> str:
        from posthog_migrate.render import verify_text

        return verify_text(self)

    __str__ = asstr

    def __repr__(self) -> str:
        return (f"VerifyResult(exit_status={int(self.exit_status)}, sent={self.sent}, found={self.found}, "
                f"missing={self.missing}, extra={self.extra}, pairs_not_merged={len(self.pairs_not_merged)})")


def people_document(stats: PrepareStats, person_mode: str | None = None) -> dict[str, Any]:
    """What the job does to PostHog's persons, for --json (the text is render.people_lines)."""
    return {
        **({"person_properties": person_mode} if person_mode is not None else {}),
        "illegal_ids": dict(stats.illegal_ids.most_common()),
        "shared_devices": stats.shared_devices,
        "profiles": dict(stats.profiles.most_common()),
        "group_types": dict(stats.group_types.most_common()),
    }
