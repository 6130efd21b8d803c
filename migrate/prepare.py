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
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from adapters import adapter_class
from adapters.base import BadRow, SourceFile, take_warnings
from migrate.checkpoint import atomic_write_json, crash_point, read_json
from migrate.errors import ConfigError
from migrate.event import MAX_EVENT_BYTES, Rejection, utc_now_us, validate
from migrate.identity import IdentityCollector, identify_event
from migrate.job import Job, describe_fingerprint_change, job_fingerprint, person_hash
from migrate.mapping import Filtered
from migrate.report import EventTally, PrepareStats, RejectsWriter, progress_bar
from migrate.sender import Interrupted
from migrate.spool import (
    EVENT_ADDED,
    EVENT_FROM_ROW,
    MAX_EVENTS_PER_ROW,
    TIEBREAK_SUB_BITS,
    RunWriter,
    compact_runs,
    make_tiebreak,
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


# --- reading and mapping rows ------------------------------------------------------------------------

def person_shard(person: int, shards: int) -> int:
    """The shard (0-based) of a person: the hash's high half, so lanes (its low bits) stay balanced."""
    return (person >> 32) % shards


def position_shard(file_index: int, row_number: int, shards: int) -> int:
    """The shard that reports a row that has no usable person (a rejected row)."""
    return person_hash(f"{file_index}:{row_number}") % shards


def map_rows(job: Job, source: SourceFile, on_event: Callable, on_reject: Callable, stats: PrepareStats,
             skip_rows: int = 0, after_chunk: Callable[[int], None] | None = None,
             on_progress: Callable[[int], None] | None = None) -> None:
    """Read one source, map and validate every row; hand events and rejects to the callbacks.

    Shared by :func:`prepare_file` (which spills events to runs) and :func:`inspect_sources` (which
    only counts). ``skip_rows`` resumes after a checkpoint; ``after_chunk(last_row)`` is called after
    each chunk of rows: a clean point to spill and checkpoint, since no row is ever half-handled there.
    """
    now_us = utc_now_us()
    adapter, finisher, shard = job.adapter, job.finisher, job.settings.shard_pair()
    other_shard = f"belongs to another shard than {job.settings.shard}"

    def reject(reason: str, detail: str, row_number: int, original: object, mine: bool = False) -> None:
        # With --shard, each rejected row is reported by one shard only: the shard of its person when the
        # row got that far (``mine``), else the one its position picks.
        if shard is None or mine or position_shard(source.index, row_number, shard[1]) == shard[0]:
            on_reject(reason, detail, source, row_number, original)
        else:
            stats.filtered[other_shard] += 1

    # Bound once: this loop runs for every row of the job.
    to_events, person_of, finish = adapter.to_events, adapter.person_of, finisher.finish
    tally = EventTally()  # counted into stats after each chunk
    tally_name, tally_source = tally.names.append, tally.source_names.append
    tally_time, tally_person = tally.timestamps.append, tally.people.append
    file_bits = make_tiebreak(source.index, 0)
    take_warnings()  # a columns() check's, noted again by this reading if they hold: not this file's
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
                reject(rejection.reason, rejection.detail, row_number, record, mine)
                continue
            except Filtered as rule:
                stats.filtered[rule.rule] += 1
                continue
            except Exception as error:  # an adapter bug must cost one row, not the migration
                reject("mapping_error", f"{type(error).__name__}: {error}", row_number, record, mine)
                continue
            stats.rows_kept += 1
            # Sub-event 0 of every row is kept free for the $identify the identity pass may add.
            row_bits = file_bits | (row_number << TIEBREAK_SUB_BITS)
            for sub_event, (event, payload) in enumerate(zip(events, payloads, strict=True), start=1):
                person = person_hash(event.distinct_id)
                tally_name(event.event)
                tally_source(event.source_event)
                tally_time(event.timestamp_us)
                tally_person(person)
                if event.added:
                    tally.added += 1
                on_event(event, payload, row_bits | sub_event, person)
        stats.add_tally(tally, now_us)
        _collect_warnings(stats)
        if on_progress is not None:
            on_progress(len(chunk))
        if after_chunk is not None and chunk:
            after_chunk(chunk[-1][0])
    _collect_warnings(stats)
    stats.files += 1


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
                 on_progress: Callable[[int], None] | None = None) -> dict:
    """Read, map and spill one input file, resuming from its own last spill; return its result."""
    index = source.index
    progress = read_json(_progress_path(job, index))
    writer = RunWriter(job.runs_dir, run_bytes, prefix=f"run-{index:05d}-")
    identities = IdentityCollector(job.identity_dir, run_bytes // 2, prefix=f"pairs-{index:05d}-")
    stats, skip_rows = PrepareStats(), 0
    if progress is not None:
        runs = progress["runs"]
        writer.adopt([job.runs_dir / run["file"] for run in runs], [run["rows"] for run in runs])
        identities.run_names = list(progress["identity_runs"])
        stats, skip_rows = PrepareStats.from_dict(progress["stats"]), progress["row"]
    keep = {run["file"] for run in progress["runs"]} | set(progress["identity_runs"]) if progress else set()
    for stale in [*job.runs_dir.glob(f"run-{index:05d}-*"), *job.identity_dir.glob(f"pairs-{index:05d}-*")]:
        if stale.name not in keep:  # written after the last checkpoint: those rows are redone
            stale.unlink()
    rejects = RejectsWriter(_rejects_part(job, index), truncate_to=progress["rejects_bytes"] if progress else 0)

    def on_event(event, payload, tiebreak, person) -> None:
        writer.add(event.timestamp_us, tiebreak, person, EVENT_ADDED if event.added else EVENT_FROM_ROW, payload)
        if event.link is not None:
            identities.see(*event.link, event.timestamp_us, tiebreak)

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
            map_rows(job, source, on_event, on_reject, stats, skip_rows, after_chunk, on_progress)
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
    return [{"file": p.name, "rows": n} for p, n in zip(writer.run_paths, writer.run_rows, strict=True)]


# --- worker processes --------------------------------------------------------------------------------

_rows_counter = None


def _worker_init(counter, coordinator: int) -> None:
    """Workers leave Ctrl-C to the coordinator, which stops them; they report rows read through ``counter``;
    and they die with the coordinator (kill -9 included), so no orphan keeps writing into the job.

    ``coordinator`` is its pid as the coordinator says it, not os.getppid() read here: a worker can start
    after the coordinator died, and would then take its new parent (init) for the coordinator, and wait
    forever (holding open the dead run's output pipes).
    """
    global _rows_counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _rows_counter = counter
    parent = coordinator

    def exit_when_orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=exit_when_orphaned, daemon=True).start()


def _count_rows(rows: int) -> None:
    with _rows_counter.get_lock():
        _rows_counter.value += rows


def _prepare_file_in_worker(job_parts: tuple, source: SourceFile, run_bytes: int) -> tuple[int, dict]:
    settings, root, sources, format_name, mapping, job_id, import_source = job_parts
    job = Job(settings, root, sources, adapter_class(format_name)(mapping), format_name, mapping,
              job_id=job_id, import_source=import_source)
    return source.index, prepare_file(job, source, run_bytes, _count_rows)


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
    if state is not None and state.get("fingerprint") == fingerprint_now:
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
    """Run (or reuse, or resume) the prepare phase; return the manifest."""
    fingerprint_now = job_fingerprint(job)
    manifest = read_json(job.manifest_path)
    if manifest is not None:
        if manifest.get("fingerprint") != fingerprint_now:
            raise ConfigError(
                f"job {job.root} was prepared from different inputs or mapping: "
                f"{describe_fingerprint_change(manifest.get('fingerprint', {}), fingerprint_now)}. "
                "To migrate the new inputs as a new job, give --job NAME; to start this job over "
                "(events already sent are re-sent with the same uuids, which PostHog collapses), add --restart."
            )
        return manifest
    _start_or_resume(job, fingerprint_now)
    done = finished_files(job)
    pending = [s for s in job.sources if s.index not in done]
    workers = _worker_count(job, pending)
    run_bytes = max(MIN_RUN_BYTES, job.settings.memory // RUN_SHARE_OF_MEMORY // workers)
    bar = progress_bar(None, "rows", f"reading ({workers} worker{'s' * (workers > 1)})", job.settings.quiet)
    bar.update(sum(result["stats"]["rows_read"] for result in done.values()))

    def finished(index: int, result: dict) -> None:
        atomic_write_json(_result_path(job, index), result)
        _progress_path(job, index).unlink(missing_ok=True)
        crash_point("after-prepare-file")

    try:
        if workers == 1:
            for source in pending:
                finished(source.index, prepare_file(job, source, run_bytes, bar.update))
        else:
            _prepare_in_workers(job, pending, workers, run_bytes, bar, finished)
    finally:
        bar.close()
    return _finish(job, fingerprint_now, run_bytes)


def _prepare_in_workers(job: Job, pending: list[SourceFile], workers: int, run_bytes: int, bar,
                        finished: Callable[[int, dict], None]) -> None:
    context = multiprocessing.get_context("spawn")  # no fork: the parent has threads (progress, signals)
    counter = context.Value("q", 0)
    parts = (job.settings, job.root, job.sources, job.format_name, job.mapping, job.job_id, job.import_source)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                               initargs=(counter, os.getpid()))
    futures = {pool.submit(_prepare_file_in_worker, parts, source, run_bytes) for source in pending}
    shown = 0
    try:
        while futures:
            done, futures = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                finished(*future.result())
            if job.stop.is_set():
                raise Interrupted
            bar.update(counter.value - shown)
            shown = counter.value
    except BaseException:
        # Ctrl-C, a crash in a worker: stop them all. Unfinished files resume from their last spill.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _finish(job: Job, fingerprint_now: dict, run_bytes: int) -> dict:
    """All files done: the identity pass, the rejects joined in file order, then the manifest."""
    done = finished_files(job)
    results = [done[source.index] for source in job.sources]
    stats = PrepareStats()
    for result in results:
        stats.merge(PrepareStats.from_dict(result["stats"]))
    runs = [run for result in results for run in result["runs"]]
    for stale in job.identity_dir.glob("pairs-merged-*"):
        stale.unlink()  # from an identity pass that was interrupted: redone
    identities = IdentityCollector(job.identity_dir, run_bytes // 2,
                                   [name for result in results for name in result["identity_runs"]])
    writer = RunWriter(job.runs_dir, run_bytes, prefix="run-identify-")
    for stale in job.runs_dir.glob("run-identify-*"):
        stale.unlink()  # from an identity pass that was interrupted: redone
    _add_identify_events(job, identities, writer, stats)
    runs += _runs_list(writer)
    for stale in job.runs_dir.glob("merged-*"):
        stale.unlink()  # from a compaction that was interrupted: redone
    compacted = compact_runs(job.runs_dir, [(run["file"], run["rows"]) for run in runs])
    runs = [{"file": name, "rows": rows} for name, rows in compacted]
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
    return manifest


def _join_rejects(job: Job) -> int:
    """The per-file rejects parts, in file order, as the job's one rejects file (written atomically)."""
    temporary = job.rejects_path.with_name(".rejects.jsonl.tmp")
    with open(temporary, "wb") as out:
        for source in job.sources:
            part = _rejects_part(job, source.index)
            if part.exists():
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out)
        out.flush()
        os.fsync(out.fileno())
        size = out.tell()
    os.replace(temporary, job.rejects_path)
    return size


def _add_identify_events(job: Job, identities: IdentityCollector, writer: RunWriter, stats: PrepareStats) -> None:
    """The identity pass: one $identify per (user, device) pair, at the pair's first event.

    Each goes at sub-event 0 of the row where the pair first appears (that row's own events are 1, 2, …),
    with the same timestamp, so the merge sorts it just before that event.
    """
    now_us = utc_now_us()
    tally = EventTally()
    for user, device, ts, tiebreak in identities.first_sightings():
        try:
            events = job.finisher.finish([identify_event(user, device, ts)])
            payload = validate(events[0], now_us, MAX_EVENT_BYTES)
        except (Rejection, Filtered):
            continue  # e.g. an id too long for PostHog: the row's own event was already judged on its own
        person = person_hash(user)
        writer.add(ts, tiebreak & ~(MAX_EVENTS_PER_ROW - 1), person, EVENT_ADDED, payload)
        tally.add(events[0].event, events[0].source_event, ts, person, True)
        if writer.full:
            writer.spill()
            stats.add_tally(tally, now_us)
    writer.spill()
    stats.add_tally(tally, now_us)


# --- inspect -----------------------------------------------------------------------------------------

def inspect_sources(job: Job) -> tuple[PrepareStats, list[dict]]:
    """Read and map everything, keep only counts and a few example rejects: the preflight report."""
    stats = PrepareStats()
    examples: list[dict] = []

    def on_reject(reason, detail, source, row, original) -> None:
        stats.rejected[reason] += 1
        if len(examples) < 10:
            examples.append({"reason": reason, "detail": detail, "file": source.uri, "row": row})

    bar = progress_bar(None, "rows", "reading", job.settings.quiet)
    try:
        for source in job.sources:
            map_rows(job, source, lambda *_: None, on_reject, stats, on_progress=bar.update)
    finally:
        bar.close()
    return stats, examples
