"""``verify --resend-missing``: send again, byte-identical, the events of every (day, event) group PostHog lacks.

The events come from the job's own sorted runs: those its checkpoint counts as acknowledged (see
``ledger``), in the selected groups, minus those the server refused. They are written as a small job of
their own in ``WORKDIR/resend/`` (sorted runs and a manifest, as prepare writes them) and sent by the send
phase itself: same batches, lanes, rate limit, retries and checkpoint, so a resend stopped at any point
continues where it stopped when the same command runs again. Every event keeps its uuid and bytes, so
whatever of a group had arrived collapses with its copy in PostHog.

A job's retry-rejects jobs (``retry-*``) sent events of their own: each job's missing events are re-sent
from its own runs, in ``resend/`` beside them.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from posthog_migrate.accounting import PrepareStats
from posthog_migrate.adapters.base import SourceFile
from posthog_migrate.checkpoint import JobState, atomic_write_json, digest, read_json
from posthog_migrate.config import Settings
from posthog_migrate.errors import Interrupted
from posthog_migrate.job import Job
from posthog_migrate.ledger import MICROSECONDS_PER_DAY, acknowledged_slices, job_roots, server_refused
from posthog_migrate.mapping import ColumnMapping
from posthog_migrate.pipeline import SendOutcome, send
from posthog_migrate.render import Progress
from posthog_migrate.sender import SendCounters
from posthog_migrate.spool import EVENT_FROM_ROW, RunWriter

RESEND_DIR = "resend"
RESEND_VERSION = 1
# The resend's sorted runs are spilled at this size (their events are already in order).
RUN_BYTES = 64 * 1024 * 1024
_HEAD = r'^\{"uuid":"(?P<uuid>[0-9a-f-]{36})","event":"(?P<event>(?:[^"\\]|\\.)*)"'


def unfinished_resends(root: Path) -> list[Path]:
    """The resends of the job (and its retry-rejects jobs) that were stopped before they were done."""
    return [resend for job_root in job_roots(root) if (resend := job_root / RESEND_DIR / "manifest.json").exists()
            and not JobState(resend.parent / "state.json").send.finished]


def resend(root: Path, groups: Iterable[tuple[str, str]], settings: Settings, api_key: str, url: str,
           host_label: str, progress: Progress, stop: threading.Event, counters: SendCounters) -> list[SendOutcome]:
    """Send again the events of ``groups`` ((day, event) pairs) that the job in ``root`` and its retry-rejects
    jobs sent, resuming a resend that was stopped first (its own selection, whatever ``groups`` says)."""
    outcomes = []
    wanted = sorted(set(groups))
    for job_root in job_roots(root):
        folder = job_root / RESEND_DIR
        manifest = read_json(folder / "manifest.json")
        unfinished = manifest is not None and not JobState(folder / "state.json").send.finished
        if not unfinished:
            if not wanted:
                continue
            manifest = _select(job_root, folder, wanted, progress, stop)
        if manifest["stats"]["events"]:
            job = _sending_job(job_root, folder, manifest, settings, progress, stop)
            outcomes.append(send(job, manifest, url, api_key, host_label, counters=counters))
    return outcomes


def _select(job_root: Path, folder: Path, groups: list[tuple[str, str]], progress: Progress,
            stop: threading.Event) -> dict:
    """Write the acknowledged events of ``groups`` (not refused by the server) as ``folder``'s sorted runs and
    manifest, replacing an earlier resend there."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "runs").mkdir(parents=True)
    job_manifest = read_json(job_root / "manifest.json")
    sent = JobState(job_root / "state.json").send
    refused = {uuid for _, _, uuid in server_refused(job_root, sent.rejects_bytes)}
    wanted: dict[bytes, set[int]] = {}
    for day, event in groups:
        day_number = int(np.datetime64(day, "D").astype(np.int64))
        wanted.setdefault(orjson.dumps(event)[1:-1], set()).add(day_number)
    writer = RunWriter(folder / "runs", RUN_BYTES, prefix="resend-")
    selected = from_rows = 0
    bar = progress.bar(sent.events_sent, "events", "finding the missing events", leave=False)
    try:
        for merged in acknowledged_slices(job_root, job_manifest, sent):
            if stop.is_set():
                raise Interrupted
            bar.update(merged.num_rows)
            payloads = merged.payloads()
            heads = pc.extract_regex(payloads, _HEAD)
            names = heads.field("event").dictionary_encode()
            indices = names.indices.to_numpy(zero_copy_only=False)
            days = merged.ts // MICROSECONDS_PER_DAY
            keep = np.zeros(merged.num_rows, dtype=bool)
            for code, raw in enumerate(names.dictionary.to_pylist()):
                if raw in wanted:
                    keep |= (indices == code) & np.isin(days, list(wanted[raw]))
            rows = np.flatnonzero(keep)
            if not len(rows):
                continue
            uuids = heads.field("uuid").take(pa.array(rows)).to_pylist()
            for row, payload, uuid in zip(rows.tolist(), payloads.take(pa.array(rows)).to_pylist(), uuids, strict=True):
                if uuid.decode() in refused:
                    continue
                writer.add(int(merged.ts[row]), int(merged.tiebreak[row]), int(merged.person[row]),
                           int(merged.kind[row]), payload)
                selected += 1
                from_rows += int(merged.kind[row]) == EVENT_FROM_ROW
                if writer.full:
                    writer.spill()
        writer.spill()
    finally:
        bar.close()
    stats = PrepareStats(rows_read=from_rows, rows_kept=from_rows, events=selected, added_events=selected - from_rows)
    manifest = {"version": RESEND_VERSION, "job_id": job_manifest.get("job_id"), "groups": [list(g) for g in groups],
                "fingerprint": {"resend_of": digest(groups)}, "sources": job_manifest["sources"],
                "runs": [run.to_dict() for run in writer.runs], "stats": stats.to_dict(), "rejects_bytes": 0,
                "prepared_at": time.time()}
    atomic_write_json(folder / "manifest.json", manifest)
    return manifest


def _sending_job(job_root: Path, folder: Path, manifest: dict, settings: Settings, progress: Progress,
                 stop: threading.Event) -> Job:
    """The resend as a Job the send phase can send: its runs are written, so it reads no input (no adapter);
    its sources are the original job's, so that a server's refusal names the row it came from."""
    sources = [SourceFile(uri, index, 0, 0) for index, uri in enumerate(manifest["sources"])]
    job = Job(replace(settings, workdir=folder), folder, sources, adapter=None, format_name="resend",
              mapping=ColumnMapping(), job_id=manifest.get("job_id") or job_root.name)
    job.stop, job.progress = stop, progress
    return job

