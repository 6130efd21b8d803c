"""The prepare phase: read → map → validate → sorted runs, one input file at a time, on every core.

Each input file is a unit of work (:func:`prepare_file`), run in a pool of worker processes when the
job is big enough to pay for them. A file's unit writes its own sorted runs, its own rejects part and
its own pairs for the identity pass, and checkpoints itself after every spill, so a killed prepare
redoes only the rows after each unfinished file's last spill. The coordinator (:func:`prepare`)
records every finished file in ``prepare.json``; when all are done it runs the identity pass, joins
the rejects parts in file order, and writes ``manifest.json``: from then on the sources are never
read again.

Work directory while preparing::

    prepare.json               the fingerprint the parts below belong to
    parts/result-NNNNN.json    a finished file's runs, counts and rejects length
    parts/progress-NNNNN.json  an unfinished file's last spill: row, runs, counts, rejects length
    parts/rejects-NNNNN.jsonl  a file's rejected rows (joined into rejects.jsonl at the end)
    runs/run-NNNNN-MMMM.arrow  sorted runs, named by input file
    identity/pairs-NNNNN-MMMM.arrow   (user, device) pairs seen, for the identity pass
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from posthog_migrate.accounting import EventTally, PrepareStats, RejectsWriter
from posthog_migrate.adapters import adapter_class
from posthog_migrate.adapters.base import BadRow, SourceFile, input_bytes_read, take_warnings
from posthog_migrate.checkpoint import atomic_write_json, crash_point, read_json
from posthog_migrate.distinct_ids import PassedOver, describe_passed_over
from posthog_migrate.errors import ConfigError, Interrupted
from posthog_migrate.event import (
    MAX_EVENT_BYTES,
    MICROSECONDS_PER_DAY,
    RECENT_EVENT_AGE_US,
    Event,
    Rejection,
    retimed,
    utc_now_us,
    validate,
)
from posthog_migrate.identity import (
    MERGE_PROPERTIES,
    REFUSED_MERGE_RULE,
    IdentityCollector,
    decide,
    identify_event,
    merges_its_link,
)
from posthog_migrate.job import Job, fingerprint_changes, first_rows_problem, job_fingerprint, person_hash
from posthog_migrate.mapping import Filtered
from posthog_migrate.render import NullBar, ReadingProgress
from posthog_migrate.spool import (
    EVENT_ADDED,
    EVENT_FROM_ROW,
    MAX_EVENTS_PER_ROW,
    TIEBREAK_SUB_BITS,
    RunFile,
    RunWriter,
    compact_runs,
    make_tiebreak,
    rows_to_compact,
)

MANIFEST_VERSION = 1
# The sorted runs take this share of the memory budget (split between workers); the rest is for
# reading, mapping and, later, merging.
RUN_SHARE_OF_MEMORY = 4
MIN_RUN_BYTES = 256 * 1024
# Below this much input, worker processes cost more to start than they save.
MIN_BYTES_FOR_WORKERS = 16 * 1024 * 1024
# How often a worker checks that its coordinator is still alive.
PARENT_CHECK_SECONDS = 0.2
# Allocations between two collections of the young generation while mapping (Python's default: 700).
YOUNG_COLLECTION_THRESHOLD = 50_000
# Joining the rejects parts copies this much at a time (and moves its progress bar as often).
COPY_CHUNK_BYTES = 1 << 20
# Distinct ids whose person hash map_rows remembers: a person's events come in runs (sessions), and a lookup costs
# a tenth of the hash. Emptied when full, so its memory stays a few MB.
PERSON_HASH_CACHE_SIZE = 32_768
# The identity pass counts its events into the stats this many at a time.
IDENTIFY_EVENTS_PER_TALLY = 5_000
# PostHog's MAX_GROUP_TYPES_PER_TEAM.
MAX_GROUP_TYPES = 5
# The warning for profiles without a time in a job without dated events (a profiles-only job).
UNTIMED_PROFILES_WARNING = ("profiles without a time, in a job without dated events: placed at the start of the day "
                            "48 h before the run (PostHog's age for historical events; it applies $sets in the order "
                            "it receives them, so a profiles job sent after the events' job still wins)")


# --- reading and mapping rows ------------------------------------------------------------------------

def person_shard(person: int, shards: int) -> int:
    """The shard (0-based) of a person: the hash's high half, so lanes (its low bits) stay balanced."""
    return (person >> 32) % shards


def position_shard(file_index: int, row_number: int, shards: int) -> int:
    """The shard that reports a row that has no usable person (a rejected row)."""
    return person_hash(f"{file_index}:{row_number}") % shards


def map_rows(job: Job, source: SourceFile, writer: RunWriter | None, on_reject: Callable, stats: PrepareStats,
             identities: IdentityCollector, skip_rows: int = 0, after_chunk: Callable[[int], None] | None = None,
             on_progress: Callable[[int, int], None] | None = None) -> None:
    """Read one source, map and validate every row; add the events to ``writer`` a chunk at a time (none: only
    count them) and hand rejects to ``on_reject``.

    Shared by :func:`prepare_file` (which spills events to runs) and :func:`inspect_sources` (which
    only counts). What the identity pass decides at the end goes to ``identities`` instead: the rows' links
    of a device to a user, their merge events, and profiles without a time (see posthog_migrate.identity).
    ``skip_rows`` resumes after a checkpoint; ``after_chunk(last_row)`` is called after
    each chunk of rows: a clean point to spill and checkpoint, since no row is ever half-handled there.
    ``on_progress(rows, bytes)`` is told after each chunk how many rows and bytes of the file were read
    since the last call; by the end, the bytes add up to the file's size.
    """
    now_us, suspicious_before_us = utc_now_us(), job.settings.suspicious_before_us()
    adapter, finisher, shard = job.adapter, job.finisher, job.settings.shard_pair()
    other_shard = f"belongs to another shard than {job.settings.shard}"

    def reject(reason: str, detail: str, row_number: int, original: object, mine: bool = False,
               illegal_ids: PassedOver = ()) -> None:
        # With --shard, each rejected row is reported by one shard only: the shard of its person when the
        # row got that far (``mine``), else the one its position picks.
        if shard is None or mine or position_shard(source.index, row_number, shard[1]) == shard[0]:
            on_reject(reason, detail, source, row_number, original)
            count_illegal_ids(illegal_ids)
        else:
            stats.filtered[other_shard] += 1

    def count_illegal_ids(illegal_ids: PassedOver) -> None:
        stats.add_illegal_ids([describe_passed_over(field, text) for field, text in illegal_ids])

    # Bound once: this loop runs for every row of the job.
    to_events, person_of, finish = adapter.to_events, adapter.person_of, finisher.finish
    tally = EventTally()  # counted into stats after each chunk
    tally_name, tally_source = tally.names.append, tally.source_names.append
    tally_time, tally_person = tally.timestamps.append, tally.people.append
    # The rest of the writer's columns for the chunk (its times and people are the tally's): see RunWriter.add_many.
    tiebreaks, kinds, payloads_kept = array("q"), array("B"), []
    keep_tiebreak, keep_kind, keep_payload = tiebreaks.append, kinds.append, payloads_kept.append
    file_bits = make_tiebreak(source.index, 0)
    person_hashes: dict[str, int] = {}  # distinct_id → person_hash(distinct_id), see PERSON_HASH_CACHE_SIZE
    take_warnings()  # a columns() check's, noted again by this reading if they hold: not this file's
    bytes_before, bytes_shown = input_bytes_read(), 0
    for chunk in adapter.read(source):
        if job.stop.is_set():
            raise Interrupted
        rows = chunk
        if skip_rows and chunk and chunk[0][0] <= skip_rows:  # resuming: these rows are in a spilled run
            rows = [(row_number, record) for row_number, record in chunk if row_number > skip_rows]
        stats.rows_read += len(rows)
        for row_number, record in rows:
            if type(record) is BadRow:
                reject(record.reason, record.detail, row_number, record.raw)
                continue
            mine = False  # True once the row's person is known to belong to this shard
            if shard is not None and type(row_person := _person_of(person_of, record)) is str:
                # Decided before mapping (every shard answers the same for a row): other shards' rows
                # cost a read, not a mapping.
                if person_shard(person_hash(row_person), shard[1]) != shard[0]:
                    stats.filtered[other_shard] += 1
                    continue
                mine = True
            try:
                events = finish(to_events(record))
                if len(events) >= MAX_EVENTS_PER_ROW:  # sub-event numbers are 8 bits of the sort key
                    raise Rejection("too_many_events", f"the row maps to {len(events)} events; at most "
                                    f"{MAX_EVENTS_PER_ROW - 1} per row")
                if shard is not None and not mine:
                    if person_shard(person_hash(events[-1].distinct_id), shard[1]) != shard[0]:
                        stats.filtered[other_shard] += 1  # a row goes with its own event's person
                        continue
                    mine = True
                payloads = [validate(event, now_us, MAX_EVENT_BYTES) for event in events]
            except Rejection as rejection:
                reject(rejection.reason, rejection.detail, row_number, record, mine, rejection.illegal_ids)
                continue
            except Filtered as rule:
                stats.filtered[rule.rule] += 1
                continue
            except Exception as error:  # an adapter bug must cost one row, not the migration
                reject("mapping_error", f"{type(error).__name__}: {error}", row_number, record, mine)
                continue
            stats.rows_kept += 1
            own = events[-1]
            if own.illegal_ids:
                count_illegal_ids(own.illegal_ids)
            for note in own.notes:
                stats.warnings[note] += 1
            # Sub-event 0 of every row is kept free for the $identify the identity pass may add.
            row_bits = file_bits | (row_number << TIEBREAK_SUB_BITS)
            for sub_event, (event, payload) in enumerate(zip(events, payloads, strict=True), start=1):
                person = person_hashes.get(event.distinct_id)
                if person is None:
                    if len(person_hashes) >= PERSON_HASH_CACHE_SIZE:
                        person_hashes.clear()
                    person = person_hashes[event.distinct_id] = person_hash(event.distinct_id)
                properties = event.properties
                if "$groups" in properties or event.event == "$groupidentify":
                    count_group_types(stats.group_types, event)
                if event.link is not None:
                    if event.event in MERGE_PROPERTIES and merges_its_link(event):  # the identity pass decides
                        identities.hold_merge(event, row_bits | sub_event, person, _kind(event), payload)
                        continue
                    identities.see(*event.link, event.timestamp_us, row_bits | sub_event)
                if event.after_last_event:  # a profile without a time: placed by the identity pass
                    identities.hold_untimed(event, row_bits | sub_event, person, _kind(event), payload)
                    continue
                tally_name(event.event)
                tally_source(event.source_event)
                tally_time(event.timestamp_us)
                tally_person(person)
                keep_tiebreak(row_bits | sub_event)
                keep_payload(payload)
                if event.added:
                    tally.added += 1
                    keep_kind(EVENT_ADDED)
                else:
                    keep_kind(EVENT_FROM_ROW)
        if writer is not None:
            writer.add_many(tally.timestamps, tiebreaks, tally.people, kinds, payloads_kept)
        del tiebreaks[:], kinds[:], payloads_kept[:]
        stats.add_tally(tally, now_us, suspicious_before_us)
        _collect_warnings(stats)
        if on_progress is not None:
            bytes_now = min(input_bytes_read() - bytes_before, source.size)
            on_progress(len(chunk), bytes_now - bytes_shown)
            bytes_shown = bytes_now
        if after_chunk is not None and chunk:
            after_chunk(chunk[-1][0])
    if on_progress is not None:
        on_progress(0, source.size - bytes_shown)  # what readers that bypass the count read (Parquet, zip)
    _collect_warnings(stats)
    stats.files += 1


def _kind(event: Event) -> int:
    return EVENT_ADDED if event.added else EVENT_FROM_ROW


def count_group_types(group_types: Counter, event: Event) -> None:
    """Count an event under each group type it names: its ``$groups``' keys, a ``$groupidentify``'s type."""
    groups = event.properties.get("$groups")
    if isinstance(groups, dict):
        for group_type in groups:
            group_types[group_type] += 1
    group_type = event.properties.get("$group_type") if event.event == "$groupidentify" else None
    if isinstance(group_type, str) and not (isinstance(groups, dict) and group_type in groups):
        group_types[group_type] += 1


def _collect_warnings(stats: PrepareStats) -> None:
    """The reader's warnings about the file, into its stats: each names its file, so each counts once
    however often it was noted (a resumed file reads its header again)."""
    for warning in take_warnings():
        stats.warnings[warning] = 1


def _person_of(person_of: Callable[[dict], str | None], record: dict) -> str | None:
    """An adapter's person_of, where a failure means "not known before mapping" (mapping then decides)."""
    try:
        return person_of(record)
    except Exception:  # a plugin's bug must not stop the file: the row is mapped and judged as usual
        return None


# --- one input file ----------------------------------------------------------------------------------

def _progress_path(job: Job, index: int) -> Path:
    return job.parts_dir / f"progress-{index:05d}.json"


def _result_path(job: Job, index: int) -> Path:
    return job.parts_dir / f"result-{index:05d}.json"


def _rejects_part(job: Job, index: int) -> Path:
    return job.parts_dir / f"rejects-{index:05d}.jsonl"


def prepare_file(job: Job, source: SourceFile, run_bytes: int,
                 on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Read, map and spill one input file, resuming from its own last spill; return its result."""
    index = source.index
    progress = read_json(_progress_path(job, index))
    writer = RunWriter(job.runs_dir, run_bytes, prefix=f"run-{index:05d}-")
    identities = IdentityCollector(job.identity_dir, run_bytes // 2, tag=f"{index:05d}-")
    stats, skip_rows = PrepareStats(), 0
    if progress is not None:
        writer.adopt([RunFile.from_dict(run) for run in progress["runs"]])
        identities.run_names = list(progress["identity_runs"])
        stats, skip_rows = PrepareStats.from_dict(progress["stats"]), progress["row"]
    keep = {run["file"] for run in progress["runs"]} | set(progress["identity_runs"]) if progress else set()
    for stale in [*job.runs_dir.glob(f"run-{index:05d}-*"), *job.identity_dir.glob(f"pairs-{index:05d}-*"),
                  *job.identity_dir.glob(f"untimed-{index:05d}-*")]:
        if stale.name not in keep:  # written after the last checkpoint: those rows are redone
            stale.unlink()
    rejects = RejectsWriter(_rejects_part(job, index), truncate_to=progress["rejects_bytes"] if progress else 0)

    def on_reject(reason, detail, source, row, original) -> None:
        stats.rejected[reason] += 1
        rejects.write(reason, detail, source.uri, row, original)

    def checkpoint(last_row: int) -> None:
        writer.spill()
        identities.spill()
        atomic_write_json(_progress_path(job, index), {
            "row": last_row, "runs": _runs_list(writer), "identity_runs": identities.run_names,
            "stats": stats.to_dict(), "rejects_bytes": rejects.sync(),
        })
        crash_point("after-prepare-checkpoint")

    def after_chunk(last_row: int) -> None:
        if writer.full or identities.full:
            checkpoint(last_row)

    try:
        with _rare_young_collections():
            map_rows(job, source, writer, on_reject, stats, identities, skip_rows, after_chunk, on_progress)
        writer.spill()
        identities.spill()
        rejects_bytes = rejects.sync()
    finally:
        rejects.close()
    return {"runs": _runs_list(writer), "identity_runs": identities.run_names, "stats": stats.to_dict(),
            "rejects_bytes": rejects_bytes}


@contextlib.contextmanager
def _rare_young_collections() -> Iterator[None]:
    """Mapping allocates a few dicts per row and frees them a moment later, never in cycles. Python's
    default collects the young generation every 700 such allocations, which costs ~5% of prepare for
    nothing; collect every YOUNG_COLLECTION_THRESHOLD instead (memory stays bounded: it is a count)."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _runs_list(writer: RunWriter) -> list[dict]:
    """The writer's runs as the checkpoints and the manifest record them: name, rows, size and checksum."""
    return [run.to_dict() for run in writer.runs]


# --- worker processes --------------------------------------------------------------------------------

# Shared with the coordinator: [rows read, bytes read], what its reading bar shows.
_read_counter = None


def _worker_init(counter, coordinator: int) -> None:
    """Workers leave Ctrl-C to the coordinator, which stops them; they report rows and bytes read through
    ``counter``; and they die with the coordinator (kill -9 included), so no orphan keeps writing into the job.

    ``coordinator`` is its pid as the coordinator says it, not os.getppid() read here: a worker can start
    after the coordinator died, and would then take its new parent (init) for the coordinator, and wait
    forever (holding open the dead run's output pipes).
    """
    global _read_counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _read_counter = counter
    parent = coordinator

    def exit_when_orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=exit_when_orphaned, daemon=True).start()


def _count_read(rows: int, read_bytes: int) -> None:
    with _read_counter.get_lock():
        _read_counter[0] += rows
        _read_counter[1] += read_bytes


def _prepare_file_in_worker(job_parts: tuple, source: SourceFile, run_bytes: int) -> tuple[int, dict]:
    settings, root, sources, format_name, mapping, job_id, import_source = job_parts
    job = Job(settings, root, sources, adapter_class(format_name)(mapping), format_name, mapping,
              job_id=job_id, import_source=import_source)
    return source.index, prepare_file(job, source, run_bytes, _count_read)


def _worker_count(job: Job, pending: list[SourceFile]) -> int:
    """Worker processes pay when there are several files and enough data (or --workers asks for them);
    otherwise the work is done in-process."""
    wanted = job.settings.workers or os.cpu_count() or 1
    small = sum(s.size for s in pending) < MIN_BYTES_FOR_WORKERS and not job.settings.workers
    if len(pending) < 2 or small:
        return 1
    try:
        adapter_class(job.format_name)  # only registered formats can be rebuilt in a worker
    except ConfigError:
        return 1
    if type(job.adapter) is not adapter_class(job.format_name):
        return 1
    return max(1, min(wanted, len(pending)))


# --- the coordinator ---------------------------------------------------------------------------------

def _start_or_resume(job: Job, fingerprint_now: dict) -> None:
    """Keep an interrupted prepare of the same inputs, or start from a clean slate (nothing was sent yet).

    ``prepare.json`` holds only the fingerprint; each finished file's result is a file of its own, so
    recording one more finished file costs the same however many there are.
    """
    state = read_json(job.prepare_progress_path)
    if state is not None and not fingerprint_changes(state.get("fingerprint", {}), fingerprint_now):
        return
    for directory in (job.runs_dir, job.identity_dir, job.parts_dir):
        shutil.rmtree(directory, ignore_errors=True)
    for leftover in (job.rejects_path, job.state_path):
        leftover.unlink(missing_ok=True)
    for directory in (job.runs_dir, job.identity_dir, job.parts_dir):
        directory.mkdir(parents=True)
    atomic_write_json(job.prepare_progress_path, {"fingerprint": fingerprint_now})


def finished_files(job: Job) -> dict[int, dict]:
    """The results of the input files an unfinished prepare has already done, by file index."""
    return {source.index: result for source in job.sources
            if (result := read_json(_result_path(job, source.index))) is not None}


def prepare(job: Job) -> dict:
    """Run (or reuse, or resume) the prepare phase; return the manifest. A job naming more group types than
    PostHog keeps is refused here, before anything is sent (see too_many_group_types)."""
    fingerprint_now = job_fingerprint(job)
    manifest = read_json(job.manifest_path)
    if manifest is not None:
        if changes := fingerprint_changes(manifest.get("fingerprint", {}), fingerprint_now):
            raise ConfigError(
                f"job {job.root} was prepared from different inputs or mapping: {'; '.join(changes)}. "
                "To migrate the new inputs as a new job, give --job NAME; to start this job over "
                "(events already sent are re-sent with the same uuids, which PostHog collapses), add --restart."
            )
        _refuse_too_many_group_types(manifest)
        return manifest
    _stop_on_a_wrong_format(job)
    _start_or_resume(job, fingerprint_now)
    done = finished_files(job)
    pending = [s for s in job.sources if s.index not in done]
    workers = _worker_count(job, pending)
    run_bytes = max(MIN_RUN_BYTES, job.settings.memory // RUN_SHARE_OF_MEMORY // workers)
    bar = ReadingProgress(job.progress, sum(source.size for source in job.sources),
                          f"reading ({workers} worker{'s' * (workers > 1)})",
                          rows_done=sum(result["stats"]["rows_read"] for result in done.values()),
                          bytes_done=sum(source.size for source in job.sources if source.index in done))

    def finished(index: int, result: dict) -> None:
        atomic_write_json(_result_path(job, index), result)
        _progress_path(job, index).unlink(missing_ok=True)
        crash_point("after-prepare-file")

    try:
        if workers == 1:
            for source in pending:
                finished(source.index, prepare_file(job, source, run_bytes, bar.advance))
        else:
            _prepare_in_workers(job, pending, workers, run_bytes, bar, finished)
    finally:
        bar.close()
    return _finish(job, fingerprint_now, run_bytes)


def _prepare_in_workers(job: Job, pending: list[SourceFile], workers: int, run_bytes: int, bar: ReadingProgress,
                        finished: Callable[[int, dict], None]) -> None:
    context = multiprocessing.get_context("spawn")  # no fork: the parent has threads (progress, signals)
    counter = context.Array("q", 2)  # see _read_counter
    parts = (job.settings, job.root, job.sources, job.format_name, job.mapping, job.job_id, job.import_source)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                               initargs=(counter, os.getpid()))
    with _ctrl_c_held_back():  # the workers are started by the submits
        futures = {pool.submit(_prepare_file_in_worker, parts, source, run_bytes) for source in pending}
    shown_rows = shown_bytes = 0
    try:
        while futures:
            done, futures = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                finished(*future.result())
            if job.stop.is_set():
                raise Interrupted
            rows, read_bytes = counter[:]
            bar.advance(rows - shown_rows, read_bytes - shown_bytes)
            shown_rows, shown_bytes = rows, read_bytes
    except BaseException:
        # Ctrl-C, a crash in a worker: stop them all. Unfinished files resume from their last spill.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def _ctrl_c_held_back() -> Iterator[None]:
    """Hold back SIGINT while worker processes start: they inherit the blocked signal, so a terminal's Ctrl-C
    (sent to every process of the group) cannot kill one with a traceback while it is still importing,
    before _worker_init ignores it. The coordinator gets its own SIGINT as soon as the block is lifted."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _stop_on_a_wrong_format(job: Job) -> None:
    problem = first_rows_problem(job)
    if problem is not None:
        raise ConfigError(problem)


def _finish(job: Job, fingerprint_now: dict, run_bytes: int) -> dict:
    """All files done: the identity pass, the compaction of the runs, the rejects joined in file order, then
    the manifest. Each step that has work to do shows a progress bar while it runs."""
    results = []
    stats = PrepareStats()
    with _step_progress(job, "adding up the files' counts", "files", len(job.sources), draw=len(job.sources) > 1,
                        ) as added:
        for source in job.sources:
            results.append(read_json(_result_path(job, source.index)))
            stats.merge(PrepareStats.from_dict(results[-1]["stats"]))
            added(1)
    runs = [run for result in results for run in result["runs"]]
    for stale in job.identity_dir.glob("pairs-merged-*"):
        stale.unlink()  # from an identity pass that was interrupted: redone
    pair_runs = [name for result in results for name in result["identity_runs"]]
    writer = RunWriter(job.runs_dir, run_bytes, prefix="run-identify-")
    for stale in job.runs_dir.glob("run-identify-*"):
        stale.unlink()  # from an identity pass that was interrupted: redone
    with _step_progress(job, "identity pass (linking devices to users)", "pairs", None, draw=bool(pair_runs)
                        ) as pairs_read:
        identities = IdentityCollector(job.identity_dir, run_bytes // 2, pair_runs, on_read=pairs_read)
        for timestamp_us, tiebreak, person, kind, payload in identity_pass(job, identities, stats):
            writer.add(timestamp_us, tiebreak, person, kind, payload)
            if writer.full:
                writer.spill()
        writer.spill()
    runs += _runs_list(writer)
    if job.format_note:
        stats.warnings[job.format_note] = stats.files
    for stale in job.runs_dir.glob("merged-*"):
        stale.unlink()  # from a compaction that was interrupted: redone
    run_files = [RunFile.from_dict(run) for run in runs]
    merging = rows_to_compact(run_files)
    with _step_progress(job, f"merging {len(runs):,} sorted runs", "events", merging, draw=merging > 0) as merged:
        compacted = compact_runs(job.runs_dir, run_files, on_rows=merged)
    runs = [run.to_dict() for run in compacted]
    rejects_bytes = _join_rejects(job)
    manifest = {
        "version": MANIFEST_VERSION,
        "fingerprint": fingerprint_now,
        "job_id": job.job_id,
        "sources": [s.uri for s in job.sources],
        "runs": runs,
        "stats": stats.to_dict(),
        "rejects_bytes": rejects_bytes,
        "prepared_at": time.time(),
    }
    crash_point("before-manifest")
    atomic_write_json(job.manifest_path, manifest)
    kept = {run["file"] for run in runs}
    for path in job.runs_dir.iterdir():  # runs merged into others, at every level of the compaction
        if path.name not in kept:
            path.unlink()
    job.prepare_progress_path.unlink(missing_ok=True)
    shutil.rmtree(job.parts_dir, ignore_errors=True)
    shutil.rmtree(job.identity_dir, ignore_errors=True)  # the pairs are in the identify run now
    crash_point("after-prepare")
    _refuse_too_many_group_types(manifest)
    return manifest


def too_many_group_types(stats: PrepareStats) -> str | None:
    """Why the job cannot be sent as it is when it names more group types than PostHog keeps per project (the
    groups of any further type are dropped silently by PostHog), with the types, their events and the fix; else
    None. Which types matter is the user's call, so none is dropped without being asked."""
    if len(stats.group_types) <= MAX_GROUP_TYPES:
        return None
    types = ", ".join(f"{name} ({count:,} events)" for name, count in stats.group_types.most_common())
    least = ", ".join('"' + name + '"' for name, _ in stats.group_types.most_common()[MAX_GROUP_TYPES:])
    return (f"the job names {len(stats.group_types)} group types: {types}. PostHog keeps {MAX_GROUP_TYPES} per project "
            "(fewer if the project has some already) and silently ignores the groups of any other type. Choose "
            "which to leave out, e.g. with the mapping's [transform] drop_group_types = "
            f"[{least}], and run again with --restart")


def _refuse_too_many_group_types(manifest: dict) -> None:
    if (problem := too_many_group_types(PrepareStats.from_dict(manifest["stats"]))) is not None:
        raise ConfigError(problem)


@contextlib.contextmanager
def _step_progress(job: Job, description: str, unit: str, total: int | None, draw: bool,
                   ) -> Iterator[Callable[[int], None]]:
    """A progress bar for one step of finishing the prepare, erased when the step is done (none when
    ``draw`` is false: no work to show). The ``advance(n)`` it yields also stops the step on Ctrl-C:
    every step is redone from its start by the next run."""
    bar = job.progress.bar(total, unit, description, leave=False) if draw else NullBar()

    def advance(count: int) -> None:
        if job.stop.is_set():
            raise Interrupted
        bar.update(count)

    try:
        yield advance
    finally:
        bar.close()


def _join_rejects(job: Job) -> int:
    """The per-file rejects parts, in file order, as the job's one rejects file (written atomically)."""
    parts = [part for source in job.sources if (part := _rejects_part(job, source.index)).exists()]
    total = sum(part.stat().st_size for part in parts)
    temporary = job.rejects_path.with_name(".rejects.jsonl.tmp")
    with (_step_progress(job, "joining the rejected rows", "B", total, draw=total > 0) as copied,
          open(temporary, "wb") as out):
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(COPY_CHUNK_BYTES):
                    out.write(chunk)
                    copied(len(chunk))
        out.flush()
        os.fsync(out.fileno())
        size = out.tell()
    os.replace(temporary, job.rejects_path)
    return size


def identity_pass(job: Job, identities: IdentityCollector,
                  stats: PrepareStats) -> Iterator[tuple[int, int, int, int, bytes]]:
    """The identity pass (see posthog_migrate.identity), counted into ``stats``; yields each event it sends as
    (timestamp, tie-breaker, person hash, kind, payload).

    A new $identify goes at sub-event 0 of the row where its pair first appears (that row's own events are 1, 2,
    …), with the same timestamp, so the merge sorts it just before that event; a held event keeps its own place.
    Profiles without a time go 1 µs after the job's last event. Prepare writes the events to a run; inspect only
    counts them, so that it announces the events a run sends.
    """
    now_us, suspicious_before_us = utc_now_us(), job.settings.suspicious_before_us()
    tally = EventTally()

    def counted(event_name: str, source: str | None, ts: int, person: int, kind: int) -> None:
        tally.add(event_name, source, ts, person, kind == EVENT_ADDED)
        if len(tally.names) >= IDENTIFY_EVENTS_PER_TALLY:  # counted as they come: memory stays bounded
            stats.add_tally(tally, now_us, suspicious_before_us)

    def filtered(kind: int, rule: str) -> None:
        if kind == EVENT_FROM_ROW:  # the row's own event: the row is filtered (an added one just is not sent)
            stats.filtered[rule] += 1
            stats.rows_kept -= 1

    def shared(_device: str) -> None:
        stats.shared_devices += 1

    for decision in decide(identities.claims(), shared):
        claim = decision.claim
        if decision.action == "filter":
            filtered(claim.kind, REFUSED_MERGE_RULE)
        elif decision.action == "send":
            counted(claim.name, claim.source, claim.ts, claim.person, claim.kind)
            yield claim.ts, claim.tiebreak, claim.person, claim.kind, decision.payload
        else:
            try:
                events = job.finisher.finish([identify_event(claim.user, claim.device, claim.ts)])
                payload = validate(events[0], now_us, MAX_EVENT_BYTES)
            except (Rejection, Filtered):
                continue  # e.g. an id too long for PostHog: the row's own event was already judged on its own
            person = person_hash(claim.user)
            counted(events[0].event, events[0].source_event, claim.ts, person, EVENT_ADDED)
            yield claim.ts, claim.tiebreak & ~(MAX_EVENTS_PER_ROW - 1), person, EVENT_ADDED, payload
    stats.add_tally(tally, now_us, suspicious_before_us)
    # Last, the profiles without a time: after every other event of the job, the held ones included. A job of
    # profiles alone has no event to follow: the start of the day 48 h ago, the same for a re-run that day (a
    # profile's uuid does not depend on its time, but PostHog's dedup counts the day).
    if stats.last_us is not None:
        place_at = stats.last_us + 1
    else:
        recent_limit = now_us - RECENT_EVENT_AGE_US
        place_at = recent_limit - recent_limit % MICROSECONDS_PER_DAY
    for held in identities.untimed():
        if stats.last_us is None:
            stats.warnings[UNTIMED_PROFILES_WARNING] += 1
        counted(held.name, held.source, place_at, held.person, held.kind)
        yield place_at, held.tiebreak, held.person, held.kind, retimed(held.payload, place_at)
    stats.add_tally(tally, now_us, suspicious_before_us)


# --- inspect -----------------------------------------------------------------------------------------

def inspect_sources(job: Job) -> tuple[PrepareStats, list[dict]]:
    """Read and map everything, keep only counts and a few example rejects: the preflight report.

    The identity pass's claims are collected as prepare collects them (spilled to a temporary folder beyond
    the memory budget), so that the count of events includes the $identify events a run adds and leaves out
    the merges it holds back.
    """
    _stop_on_a_wrong_format(job)
    stats = PrepareStats()
    examples: list[dict] = []

    def on_reject(reason, detail, source, row, original) -> None:
        stats.rejected[reason] += 1
        if len(examples) < 10:
            examples.append({"reason": reason, "detail": detail, "file": source.uri, "row": row})

    bar = ReadingProgress(job.progress, sum(source.size for source in job.sources), "reading")
    with tempfile.TemporaryDirectory(prefix="posthog-migrate-inspect-") as pairs_folder:
        identities = IdentityCollector(Path(pairs_folder), job.settings.memory // RUN_SHARE_OF_MEMORY // 2)

        def after_chunk(_last_row: int) -> None:
            if identities.full:
                identities.spill()

        try:
            for source in job.sources:
                map_rows(job, source, None, on_reject, stats, identities, after_chunk=after_chunk,
                         on_progress=bar.advance)
        finally:
            bar.close()
        for _ in identity_pass(job, identities, stats):
            pass
    if job.format_note:
        stats.warnings[job.format_note] = stats.files
    return stats, examples
