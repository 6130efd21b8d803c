"""What a resume trusts in a work directory, checked before anything is sent from it.

Prepare records each run's size and checksum in ``manifest.json``; send records its watermark in
``state.json``. Between two runs of a job anything may have changed them: a disk error, a copy cut short,
a hand edit, a run file of another job. Arrow notices only some of that (a flipped bit in a compressed
payload reads back as a wrong event), and the send phase would index runs with whatever cursor it finds.
So :func:`check_prepared_job` compares the work directory with what the job wrote, and a damaged job
says what is damaged instead of sending from it, or ending in a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from posthog_migrate.accounting import PrepareStats, books
from posthog_migrate.checkpoint import SendProgress, read_json
from posthog_migrate.errors import DamagedJob
from posthog_migrate.spool import RunFile, file_checksum

# The send checkpoint's counts and positions: each a non-negative integer.
SEND_COUNTS = ("next_seq", "window_first_seq", "events_sent", "rows_sent", "batches_sent",
               "server_rejected_events", "server_rejected_rows", "rejects_bytes", "retries", "requests")


def check_prepared_job(root: Path, manifest: dict) -> None:
    """Raise :class:`DamagedJob` naming every damaged part, before anything is read from the runs."""
    problems = prepared_job_problems(root, manifest)
    if problems:
        raise DamagedJob(root, problems)


def prepared_job_problems(root: Path, manifest: dict) -> list[str]:
    """What in a prepared job's work directory differs from what the job wrote there (nothing: [])."""
    runs = _recorded_runs(manifest)
    if runs is None:
        return ["manifest.json's list of runs is not one the job wrote"]
    problems = run_problems(root / "runs", runs)
    events = sum(run.rows for run in runs)
    if events != manifest["stats"]["events"]:
        problems.append(f"manifest.json's runs hold {events:,} events, its counts say {manifest['stats']['events']:,}")
    state = read_json(root / "state.json")  # not valid JSON: read_json says so
    if state is None:  # nothing sent yet
        send = {}
    else:
        send = state.get("send", {}) if isinstance(state, dict) else None
    rejects_path = root / "rejects.jsonl"
    rejects_bytes = rejects_path.stat().st_size if rejects_path.exists() else 0
    return problems + send_state_problems(send, manifest, runs, rejects_bytes)


def _recorded_runs(manifest: dict) -> list[RunFile] | None:
    listed = manifest.get("runs")
    if not isinstance(listed, list) or not all(
        isinstance(run, dict) and isinstance(run.get("file"), str) and _is_count(run.get("rows")) for run in listed
    ):
        return None
    return [RunFile.from_dict(run) for run in listed]


def run_problems(runs_dir: Path, runs: list[RunFile]) -> list[str]:
    """Each run file that is missing, or whose size or checksum is not what was recorded when it was written.

    Reads every run once (~5 GB/s from the page cache with isal's CRC-32, 2.4 GB/s with zlib's).
    """
    problems = []
    for run in runs:
        path = runs_dir / run.file
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif run.bytes is not None and path.stat().st_size != run.bytes:
            problems.append(f"{path} is {path.stat().st_size:,} bytes; {run.bytes:,} were written")
        elif run.checksum is not None and file_checksum(path) != run.checksum:
            problems.append(f"{path} was changed after it was written (its checksum differs)")
    return problems


def send_state_problems(send: Any, manifest: dict, runs: list[RunFile], rejects_bytes: int) -> list[str]:
    """Impossible values in state.json's send checkpoint, given the manifest and the rejects file's size."""
    if not isinstance(send, dict):
        return ["state.json's send checkpoint is not an object"]
    problems = [f"state.json's {name} is {send[name]!r}, not a count" for name in SEND_COUNTS
                if name in send and not _is_count(send[name])]
    kinds = {"cursor": list, "layout": dict, "window_start": dict, "host": str, "finished": bool}
    problems += [f"state.json's {name} is {send[name]!r}" for name, kind in kinds.items()
                 if name in send and not isinstance(send[name], kind)]
    window_start = send.get("window_start", {})
    if isinstance(window_start, dict) and not all(
        name in SendProgress.COUNTERS and _is_count(value) for name, value in window_start.items()
    ):
        problems.append(f"state.json's window_start is {window_start!r}")
    if problems:
        return problems
    progress = SendProgress.from_dict(send)
    if not progress.cursor:  # sending starts from the first batch, with counts of its own (see pipeline.send)
        return problems
    cursor_problems = _cursor_problems(progress.cursor, runs)
    problems += cursor_problems
    counted = progress.events_sent + progress.server_rejected_events
    if counted > manifest["stats"]["events"]:
        problems.append(f"state.json counts {counted:,} events sent or refused; the job has "
                        f"{manifest['stats']['events']:,}")
    elif not cursor_problems and sum(progress.cursor) > counted:  # events before the cursor were all counted
        problems.append(f"state.json's cursor is past the events it counts as sent "
                        f"({sum(progress.cursor):,} > {counted:,})")
    if progress.window_first_seq > progress.next_seq:
        problems.append(f"state.json's window starts at batch {progress.window_first_seq:,}, after its next "
                        f"batch {progress.next_seq:,}")
    if progress.rows_sent > progress.events_sent or progress.server_rejected_rows > progress.server_rejected_events:
        problems.append("state.json counts more rows than events")
    job_books = books(PrepareStats.from_dict(manifest["stats"]), progress)
    if job_books.accounted > job_books.rows_read:
        problems.append(f"state.json accounts for more rows than were read ({job_books.equation()})")
    if not manifest["rejects_bytes"] <= progress.rejects_bytes <= rejects_bytes:
        problems.append(f"state.json says the rejects file holds {progress.rejects_bytes:,} bytes; it holds "
                        f"{rejects_bytes:,} (at least {manifest['rejects_bytes']:,} from prepare)")
    return problems


def _cursor_problems(cursor: list, runs: list[RunFile]) -> list[str]:
    if not all(_is_count(taken) for taken in cursor):
        return [f"state.json's cursor {cursor!r} is not a list of counts"]
    if len(cursor) != len(runs):
        return [f"state.json's cursor has {len(cursor):,} positions for {len(runs):,} runs"]
    return [f"state.json's cursor is at row {taken:,} of {run.file}, which holds {run.rows:,}"
            for taken, run in zip(cursor, runs, strict=True) if taken > run.rows]


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0
