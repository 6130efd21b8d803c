"""The two phases of a job, wired from the stages: prepare (read → map → validate → sort) and send.

A job lives in its work directory::

    manifest.json   written once when prepare completes: inputs' fingerprints, runs, counts
    prepare.json    while preparing: the last spill's position in the inputs (resume point)
    runs/           sorted run files (Arrow IPC, LZ4): each event's sort key, person hash and JSON
    state.json      the send watermark, replaced atomically after every acknowledged batch
    rejects.jsonl   every rejected row: reason, detail, file, row, original
    dry-run/        request bodies written by --dry-run
    local-capture/  what the built-in capture server received (--host local)

Prepare checkpoints after each spilled run and writes ``manifest.json`` last; a job without a
manifest continues preparing from its last spill. Send resumes from ``state.json`` without reading
the sources again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from adapters import adapter_class, detect_format
from adapters.base import Adapter, BadRow, SourceFile
from adapters.rejects import RejectsAdapter, is_retriable
from migrate.batches import BatchLayout, Window, build_body, cut_windows
from migrate.checkpoint import JobState, SendProgress, atomic_write_json, crash_point, digest, read_json
from migrate.config import Settings
from migrate.errors import ConfigError
from migrate.event import MAX_EVENT_BYTES, Rejection, utc_now_us, validate
from migrate.identity import IdentityCollector, identify_event
from migrate.mapping import ColumnMapping, Filtered
from migrate.report import PrepareStats, RejectsWriter, progress_bar
from migrate.sender import BatchResult, Dispatcher, Interrupted, SendCounters, Sender, SendSettings
from migrate.sources import describe_changes, expand_sources, fingerprint
from migrate.spool import (
    EVENT_ADDED,
    EVENT_FROM_ROW,
    MAX_EVENTS_PER_ROW,
    MergeCursor,
    RunWriter,
    make_tiebreak,
    merge_runs,
    split_tiebreak,
)
from migrate.transform import EventFinisher

MANIFEST_VERSION = 1
# The sorted runs take this share of the memory budget; the rest is for reading, mapping and merging.
RUN_SHARE_OF_MEMORY = 4
MIN_RUN_BYTES = 256 * 1024
# Rows between checks for Ctrl-C during prepare.
ROWS_BETWEEN_STOP_CHECKS = 5_000


def person_hash(distinct_id: str) -> int:
    """A stable 64-bit hash of a distinct_id: picks the send lane (and the shard) of a person."""
    return int.from_bytes(hashlib.blake2b(distinct_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little")


@dataclass
class Job:
    """A migration job: its settings, inputs, adapter and work directory."""

    settings: Settings
    root: Path
    sources: list[SourceFile]
    adapter: Adapter
    format_name: str
    mapping: ColumnMapping
    job_id: str = ""
    import_source: str = ""  # what $import_source says: the format the rows came in (csv, amplitude, ...)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.finisher = EventFinisher(self.mapping, self.import_source or self.format_name, self.job_id)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def prepare_progress_path(self) -> Path:
        return self.root / "prepare.json"

    @property
    def identity_dir(self) -> Path:
        return self.root / "identity"

    @property
    def rejects_path(self) -> Path:
        return self.root / "rejects.jsonl"

    def source_name(self, index: int) -> str:
        return self.sources[index].uri if index < len(self.sources) else f"input #{index}"


def load_mapping(settings: Settings, cli_overrides: dict) -> ColumnMapping:
    mapping = ColumnMapping.from_toml(settings.mapping_path) if settings.mapping_path else ColumnMapping()
    return mapping.override(**cli_overrides).validated()


def choose_format(settings: Settings, sources: list[SourceFile]) -> str:
    if settings.format != "auto":
        adapter_class(settings.format)  # unknown names fail here, with the list of known ones
        return settings.format
    formats = {detect_format(s.uri) for s in sources}
    if None in formats:
        unknown = next(s.uri for s in sources if detect_format(s.uri) is None)
        raise ConfigError(f"{unknown}: cannot tell its format from the name; give --format")
    if len(formats) > 1:
        raise ConfigError(
            f"the inputs mix formats ({', '.join(sorted(formats))}); run one job per format, or give --format"
        )
    return formats.pop()


def open_job(settings: Settings, cli_overrides: dict, create: bool = True) -> Job:
    """Find the inputs, pick the adapter and check the mapping against the files: all before any work."""
    sources = expand_sources(settings.sources, explicit_format=settings.format != "auto")
    format_name = choose_format(settings, sources)
    mapping = load_mapping(settings, cli_overrides)
    adapter = adapter_class(format_name)(mapping)
    columns = adapter.columns(sources[0])
    if columns is not None and format_name in ("csv", "jsonl", "parquet"):
        mapping.check_columns(columns, sources[0].uri)
    root = settings.job_directory()
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return Job(settings, root, sources, adapter, format_name, mapping, job_id=settings.job_id())


class JobLock:
    """One process per job at a time: two would send the same batches and race on state.json."""

    def __init__(self, root: Path):
        self.path = root / ".lock"
        self._handle = None

    def __enter__(self) -> JobLock:
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise ConfigError(
                f"another posthog-migrate process is running this job ({self.path.parent}); wait for it, "
                "or stop it (Ctrl-C saves its checkpoint)"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


# --- prepare -----------------------------------------------------------------------------------------

def job_fingerprint(job: Job) -> dict:
    """What a prepared job depends on; a resume refuses when any of it changed.

    Round-tripped through JSON so it compares equal to the copy read back from the manifest.
    """
    return orjson.loads(orjson.dumps({
        "format": job.format_name,
        "mapping": job.mapping.to_dict(),
        "inputs": [fingerprint(source) for source in job.sources],
    }))


def describe_fingerprint_change(old: dict, new: dict) -> str:
    lines = []
    if old.get("format") != new["format"]:
        lines.append(f"format: {old.get('format')} → {new['format']}")
    if old.get("mapping") != new["mapping"]:
        changed = sorted(k for k in new["mapping"] if old.get("mapping", {}).get(k) != new["mapping"][k])
        lines.append(f"mapping changed ({', '.join(changed)})")
    lines += describe_changes(old.get("inputs", []), new["inputs"])
    return "; ".join(lines) or "settings changed"


def map_rows(job: Job, on_event: Callable, on_reject: Callable, stats: PrepareStats, quiet: bool,
             start: tuple[int, int] = (0, 0), after_chunk: Callable[[SourceFile, int], None] | None = None) -> None:
    """Read every source, map and validate every row; hand events and rejects to the callbacks.

    Shared by ``prepare`` (which spills events to runs) and ``inspect`` (which only counts).
    ``start`` = (file index, rows already done in it) resumes an interrupted prepare; ``after_chunk``
    is called after each chunk of rows with the chunk's file and last row number: a clean point to
    spill and checkpoint, since no row is ever half-handled there.
    """
    now_us = utc_now_us()
    adapter, finisher = job.adapter, job.finisher
    start_file, rows_done = start
    bar = progress_bar(None, "rows", "reading", quiet)
    bar.update(stats.rows_read)
    try:
        for source in job.sources[start_file:]:
            bar.set_description(f"reading {source.index + 1}/{len(job.sources)}")
            skip = rows_done if source.index == start_file else 0
            for chunk in adapter.read(source):
                if job.stop.is_set():
                    raise Interrupted
                for row_number, record in chunk:
                    if row_number <= skip:
                        continue
                    stats.rows_read += 1
                    if isinstance(record, BadRow):
                        on_reject(record.reason, record.detail, source, row_number, record.raw)
                        continue
                    try:
                        events = finisher.finish(adapter.to_events(record))
                        payloads = [validate(event, now_us, MAX_EVENT_BYTES) for event in events]
                    except Rejection as rejection:
                        on_reject(rejection.reason, rejection.detail, source, row_number, record)
                        continue
                    except Filtered as rule:
                        stats.filtered[rule.rule] += 1
                        continue
                    except Exception as error:  # an adapter bug must cost one row, not the migration
                        on_reject("mapping_error", f"{type(error).__name__}: {error}", source, row_number, record)
                        continue
                    stats.rows_kept += 1
                    # Sub-event 0 of every row is kept free for the $identify the identity pass may add.
                    for sub_event, (event, payload) in enumerate(zip(events, payloads, strict=True), start=1):
                        person = person_hash(event.distinct_id)
                        stats.add_event(event.event, event.timestamp_us, person, now_us, event.added,
                                        event.source_event)
                        on_event(event, payload, make_tiebreak(source.index, row_number, sub_event), person)
                bar.update(len(chunk))
                if after_chunk is not None and chunk:
                    after_chunk(source, chunk[-1][0])
        stats.files = len(job.sources)
    finally:
        bar.close()


def _start_or_resume_prepare(job: Job, fingerprint_now: dict) -> tuple[dict | None, PrepareStats]:
    """The progress of an interrupted prepare of the same inputs, or a clean slate."""
    progress = read_json(job.prepare_progress_path)
    if progress is not None and progress.get("fingerprint") == fingerprint_now:
        keep = {run["file"] for run in progress["runs"]} | set(progress.get("identity_runs", []))
        for path in [*job.runs_dir.glob("run-*.arrow"), *job.identity_dir.glob("pairs-*.arrow")]:
            if path.name not in keep:  # written after the last prepare checkpoint: its rows are redone
                path.unlink()
        return progress, PrepareStats.from_dict(progress["stats"])
    # Nothing usable: nothing was sent yet, so whatever a killed prepare left is redone from scratch.
    for directory in (job.runs_dir, job.identity_dir):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    for leftover in (job.rejects_path, job.state_path, job.prepare_progress_path):
        leftover.unlink(missing_ok=True)
    return None, PrepareStats()


def prepare(job: Job) -> dict:
    """Run (or reuse, or resume) the prepare phase; return the manifest.

    While it runs, every spilled run is followed by a prepare checkpoint (the runs so far, the position
    in the inputs, the counts, the rejects file's size), so a killed prepare redoes only the rows after
    its last spill.
    """
    new_fingerprint = job_fingerprint(job)
    manifest = read_json(job.manifest_path)
    if manifest is not None:
        if manifest.get("fingerprint") != new_fingerprint:
            raise ConfigError(
                f"job {job.root} was prepared from different inputs or mapping: "
                f"{describe_fingerprint_change(manifest.get('fingerprint', {}), new_fingerprint)}. "
                "To migrate the new inputs as a new job, give --job NAME; to start this job over "
                "(events already sent are re-sent with the same uuids, which PostHog collapses), add --restart."
            )
        return manifest
    progress, stats = _start_or_resume_prepare(job, new_fingerprint)
    share = max(MIN_RUN_BYTES, job.settings.memory // RUN_SHARE_OF_MEMORY)
    writer = RunWriter(job.runs_dir, share)
    identities = IdentityCollector(job.identity_dir, share // 2, progress.get("identity_runs") if progress else None)
    start = (0, 0)
    if progress is not None:
        runs = progress["runs"]
        writer.adopt([job.runs_dir / run["file"] for run in runs], [run["rows"] for run in runs])
        start = (progress["position"]["file"], progress["position"]["row"])
    rejects = RejectsWriter(job.rejects_path, truncate_to=progress["rejects_bytes"] if progress else 0)

    def on_event(event, payload, tiebreak, person) -> None:
        writer.add(event.timestamp_us, tiebreak, person, EVENT_ADDED if event.added else EVENT_FROM_ROW, payload)
        if event.link is not None:
            identities.see(*event.link, event.timestamp_us, tiebreak)

    def on_reject(reason, detail, source, row, original) -> None:
        stats.rejected[reason] += 1
        rejects.write(reason, detail, source.uri, row, original)

    def after_chunk(source: SourceFile, last_row: int) -> None:
        if not (writer.full or identities.full):
            return
        writer.spill()
        identities.spill()
        atomic_write_json(job.prepare_progress_path, {
            "fingerprint": new_fingerprint, "position": {"file": source.index, "row": last_row},
            "runs": _runs_list(writer), "identity_runs": identities.run_names, "stats": stats.to_dict(),
            "rejects_bytes": rejects.sync(),
        })
        crash_point("after-prepare-checkpoint")

    try:
        map_rows(job, on_event, on_reject, stats, job.settings.quiet, start, after_chunk)
        writer.spill()
        _add_identify_events(job, identities, writer, stats)
        rejects_bytes = rejects.sync()
    finally:
        rejects.close()
    manifest = {
        "version": MANIFEST_VERSION,
        "fingerprint": new_fingerprint,
        "job_id": job.job_id,
        "sources": [s.uri for s in job.sources],
        "runs": _runs_list(writer),
        "stats": stats.to_dict(),
        "rejects_bytes": rejects_bytes,
        "prepared_at": time.time(),
    }
    crash_point("before-manifest")
    atomic_write_json(job.manifest_path, manifest)
    job.prepare_progress_path.unlink(missing_ok=True)
    crash_point("after-prepare")
    return manifest


def _add_identify_events(job: Job, identities: IdentityCollector, writer: RunWriter, stats: PrepareStats) -> None:
    """The identity pass: one $identify per (user, device) pair, at the pair's first event.

    Each goes at sub-event 0 of the row where the pair first appears (that row's own events are 1, 2, …),
    with the same timestamp, so the merge sorts it just before that event.
    """
    now_us = utc_now_us()
    for user, device, ts, tiebreak in identities.first_sightings():
        try:
            events = job.finisher.finish([identify_event(user, device, ts)])
            payload = validate(events[0], now_us, MAX_EVENT_BYTES)
        except (Rejection, Filtered):
            continue  # e.g. an id too long for PostHog: the row's own event was already judged on its own
        person = person_hash(user)
        writer.add(ts, tiebreak & ~(MAX_EVENTS_PER_ROW - 1), person, EVENT_ADDED, payload)
        stats.add_event(events[0].event, ts, person, now_us, True, events[0].source_event)
        if writer.full:
            writer.spill()
    writer.spill()


def _runs_list(writer: RunWriter) -> list[dict]:
    return [{"file": p.name, "rows": n} for p, n in zip(writer.run_paths, writer.run_rows, strict=True)]


def inspect_sources(job: Job, quiet: bool) -> tuple[PrepareStats, list[dict]]:
    """Read and map everything, keep only counts and a few example rejects: the preflight report."""
    stats = PrepareStats()
    examples: list[dict] = []

    def on_reject(reason, detail, source, row, original) -> None:
        stats.rejected[reason] += 1
        if len(examples) < 10:
            examples.append({"reason": reason, "detail": detail, "file": source.uri, "row": row})

    map_rows(job, lambda *_: None, on_reject, stats, quiet)
    return stats, examples


# --- send --------------------------------------------------------------------------------------------

@dataclass
class SendOutcome:
    progress: SendProgress
    counters: SendCounters
    elapsed: float
    total_events: int
    dry_run_dir: Path | None = None
    resumed_from: int = 0


def _layout(settings: Settings) -> BatchLayout:
    return BatchLayout(lanes=settings.concurrency, max_events=settings.batch_size, max_bytes=settings.batch_bytes)


def _windows(job: Job, manifest: dict, cursor: MergeCursor, first_seq: int, layout: BatchLayout):
    run_paths = [job.runs_dir / run["file"] for run in manifest["runs"]]
    return cut_windows(merge_runs(run_paths, cursor), cursor, first_seq, layout)


def send(job: Job, manifest: dict, url: str, api_key: str, host_label: str) -> SendOutcome:
    """Send every prepared event not yet acknowledged; the checkpoint advances after each batch.

    ``host_label`` is what the checkpoint records as the target (``local`` for the built-in server,
    whose port changes from run to run); a resume to another target is refused.
    """
    settings = job.settings
    layout = _layout(settings)
    state = JobState(job.state_path)
    progress = state.send
    if progress.host and progress.host != host_label:
        raise ConfigError(
            f"job {job.root} was being sent to {progress.host}; it cannot continue to {host_label}. "
            "Use --restart to send everything to the new host, or --job NAME for a separate job."
        )
    runs = len(manifest["runs"])
    if not progress.cursor:
        progress = SendProgress(cursor=[0] * runs, rejects_bytes=manifest["rejects_bytes"])
    layout_dict = {"lanes": layout.lanes, "max_events": layout.max_events, "max_bytes": layout.max_bytes}
    if progress.layout and progress.layout != layout_dict:
        # Batches are cut differently now: restart at the window holding the watermark, numbered anew.
        progress.next_seq = progress.window_first_seq
    progress.layout, progress.host = layout_dict, host_label
    resumed_from = progress.events_sent
    total = manifest["stats"]["events"]
    rejects = RejectsWriter(job.rejects_path, truncate_to=progress.rejects_bytes)
    counters = SendCounters()
    stop = job.stop
    sender = Sender(
        SendSettings(host=url, api_key=api_key, concurrency=settings.concurrency, rate=settings.rate,
                     max_retries=settings.max_retries, retry_base=settings.retry_delay, timeout=settings.timeout),
        counters, stop,
    )
    bar = progress_bar(total, "events", "sending", settings.quiet)
    bar.update(progress.events_sent + progress.server_rejected_events)
    started = time.monotonic()

    def on_acknowledged(window: Window, result: BatchResult) -> None:
        batch = result.batch
        for index, message in sorted(result.rejected.items()):
            file_index, row, _ = split_tiebreak(batch.tiebreaks[index])
            rejects.write("server_rejected", message, job.source_name(file_index), row,
                          orjson.loads(batch.payloads[index]))
        accepted_rows = sum(1 for i, k in enumerate(batch.kinds) if k == EVENT_FROM_ROW and i not in result.rejected)
        rejected_rows = sum(1 for i in result.rejected if batch.kinds[i] == EVENT_FROM_ROW)
        progress.events_sent += batch.n_events - len(result.rejected)
        progress.rows_sent += accepted_rows
        progress.server_rejected_events += len(result.rejected)
        progress.server_rejected_rows += rejected_rows
        progress.batches_sent += 1
        progress.requests += result.requests
        progress.retries += result.retries
        progress.next_seq = batch.seq + 1
        at_window_end = progress.next_seq >= window.end_seq
        progress.window_first_seq = window.end_seq if at_window_end else window.first_seq
        progress.cursor = list((window.end if at_window_end else window.start).taken)
        progress.rejects_bytes = rejects.sync() if result.rejected else progress.rejects_bytes
        crash_point("after-send-before-checkpoint")
        state.save_send(progress)
        crash_point("after-checkpoint")
        bar.update(batch.n_events)

    try:
        windows = _windows(job, manifest, MergeCursor(tuple(progress.cursor)), progress.window_first_seq, layout)
        Dispatcher(sender, settings.concurrency, stop).run(windows, progress.next_seq, on_acknowledged)
        progress.finished = True
        state.save_send(progress)
    finally:
        bar.close()
        rejects.close()
    return SendOutcome(progress, counters, time.monotonic() - started, total, resumed_from=resumed_from)


def dry_run(job: Job, manifest: dict, out_dir: Path) -> SendOutcome:
    """Everything but the network: cut the same batches and write each request body to ``out_dir``.

    The project key is replaced by a placeholder: it never lands on disk.
    """
    layout = _layout(job.settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("batch-*.json"):
        old.unlink()
    progress = SendProgress()
    started = time.monotonic()
    counters = SendCounters()
    cursor = MergeCursor.start(len(manifest["runs"]))
    for window in _windows(job, manifest, cursor, 0, layout):
        for batch in window.batches:
            body = build_body(batch.payloads, DRY_RUN_KEY_PLACEHOLDER)
            (out_dir / f"batch-{batch.seq:06d}.json").write_bytes(body)
            counters.count("dry-run", len(body))
            progress.batches_sent += 1
            progress.events_sent += batch.n_events
            progress.rows_sent += sum(1 for k in batch.kinds if k == EVENT_FROM_ROW)
    return SendOutcome(progress, counters, time.monotonic() - started, manifest["stats"]["events"],
                       dry_run_dir=out_dir)


DRY_RUN_KEY_PLACEHOLDER = "<your project API key>"


def reset_job(root: Path) -> None:
    """--restart: forget everything about the job (the local capture server's output is kept)."""
    for name in ("manifest.json", "state.json", "rejects.jsonl"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "runs", ignore_errors=True)


def job_size_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def environment_has_key() -> bool:
    return bool(os.environ.get("POSTHOG_API_KEY"))


# --- retrying rejected rows --------------------------------------------------------------------------

@dataclass
class RetryPlan:
    job: Job
    retriable: int
    unreadable: Counter


def open_retry_job(settings: Settings, original_root: Path, cli_overrides: dict) -> RetryPlan:
    """A job of its own, under the original's work directory, whose input is the retriable rejects.

    The mapping is the original job's unless ``--mapping`` or mapping options are given; each mapping
    gets its own retry job (``retry-<hash>``), so a retry with a fixed mapping never mixes with an earlier one.
    """
    manifest = read_json(original_root / "manifest.json")
    if manifest is None:
        raise ConfigError(f"{original_root} is not a prepared job (no manifest.json): run it first")
    original_format = manifest["fingerprint"]["format"]
    if settings.mapping_path:
        mapping = ColumnMapping.from_toml(settings.mapping_path)
    else:
        mapping = ColumnMapping.from_dict(manifest["fingerprint"]["mapping"])
    mapping = mapping.override(**cli_overrides).validated()
    rejects_path = original_root / "rejects.jsonl"
    lines: list[bytes] = []
    unreadable: Counter = Counter()
    if rejects_path.exists():
        for line in rejects_path.read_bytes().splitlines():
            reject = orjson.loads(line)
            if is_retriable(reject):
                lines.append(line)
            else:
                unreadable[reject["reason"]] += 1
    root = original_root / f"retry-{digest(mapping.to_dict())[:8]}"
    root.mkdir(parents=True, exist_ok=True)
    input_path = root / "rejected-rows.jsonl"
    content = b"".join(line + b"\n" for line in lines)
    if not input_path.exists() or input_path.read_bytes() != content:
        input_path.write_bytes(content)  # rewritten only when it changes, so a resumed retry matches its fingerprint
    sources = expand_sources([str(input_path)], explicit_format=True)
    adapter = RejectsAdapter(mapping, adapter_class(original_format))
    job = Job(replace(settings, sources=(str(input_path),)), root, sources, adapter, f"rejects of {original_format}",
              mapping, job_id=manifest.get("job_id", original_root.name), import_source=original_format)
    return RetryPlan(job, len(lines), unreadable)
