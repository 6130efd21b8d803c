"""The send phase: merge the sorted runs, cut batches, send them, advance the checkpoint.

The prepare phase (``posthog_migrate.prepare``) leaves sorted runs and a manifest in the job's work directory;
this module turns them into requests. ``send`` resumes from ``state.json`` without reading the sources
again; ``dry_run`` writes the same request bodies to files instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from posthog_migrate.accounting import RejectsWriter
from posthog_migrate.batches import BatchLayout, Window, cut_windows
from posthog_migrate.checkpoint import CheckpointWriter, JobState, SendProgress
from posthog_migrate.config import Settings
from posthog_migrate.errors import ConfigError
from posthog_migrate.integrity import check_prepared_job
from posthog_migrate.job import Job
from posthog_migrate.render import Bar, Progress, human_duration
from posthog_migrate.sender import BatchResult, Dispatcher, RetryNotice, SendCounters, Sender, SendSettings
from posthog_migrate.spool import EVENT_FROM_ROW, MergeCursor, MergedSlice, merge_slices, split_tiebreak


@dataclass
class SendOutcome:
    progress: SendProgress
    counters: SendCounters
    elapsed: float
    dry_run_dir: Path | None = None
    resumed_from: int = 0


def _layout(settings: Settings) -> BatchLayout:
    return BatchLayout(lanes=settings.concurrency, max_events=settings.batch_size, max_bytes=settings.batch_bytes)


def _windows(job: Job, manifest: dict, cursor: MergeCursor, first_seq: int, layout: BatchLayout,
             between_slices: Callable[[], None] | None = None) -> Iterator[Window]:
    """The batches of the job from ``cursor`` on; ``between_slices`` is called after each merge step."""
    run_paths = [job.runs_dir / run["file"] for run in manifest["runs"]]
    slices = merge_slices(run_paths, cursor)
    if between_slices is not None:
        slices = _calling_between(slices, between_slices)
    return cut_windows(slices, cursor, first_seq, layout)


def _calling_between(slices: Iterator[MergedSlice], call: Callable[[], None]) -> Iterator[MergedSlice]:
    for merged in slices:
        yield merged
        call()


def send(job: Job, manifest: dict, url: str, api_key: str, host_label: str, counters: SendCounters | None = None,
         on_retry: Callable[[RetryNotice], None] | None = None) -> SendOutcome:
    """Send every prepared event not yet acknowledged; the checkpoint advances after each batch.

    ``host_label`` is what the checkpoint records as the target (``local`` for the built-in server,
    whose port changes from run to run); a resume to another target is refused once the recorded one
    acknowledged a batch (before that, e.g. after a redirect, the job may move to the right host).
    ``counters`` (requests, retries, answers) are the caller's, so that it has them if sending fails;
    ``on_retry`` is told of each retry, besides the progress display.
    """
    check_prepared_job(job.root, manifest)  # never send from a damaged run or an impossible checkpoint
    settings = job.settings
    layout = _layout(settings)
    state = JobState(job.state_path)
    progress = state.send
    if progress.host and progress.host != host_label and progress.batches_sent:
        raise ConfigError(
            f"job {job.root} was being sent to {progress.host}; it cannot continue to {host_label}. "
            "Use --restart to send everything to the new host, or --job NAME for a separate job."
        )
    runs = len(manifest["runs"])
    if not progress.cursor:
        progress = SendProgress(cursor=[0] * runs, rejects_bytes=manifest["rejects_bytes"])
        progress.mark_window_start()
    layout_dict = layout.as_dict()
    if progress.layout and progress.layout != layout_dict:
        # Batches are cut differently now: the window holding the watermark is sent again, numbered anew,
        # so what was counted (and rejected) in it so far is counted again from its start.
        progress.rewind_to_window_start()
    progress.layout, progress.host = layout_dict, host_label
    resumed_from = progress.events_sent
    total = manifest["stats"]["events"]
    rejects = RejectsWriter(job.rejects_path, truncate_to=progress.rejects_bytes)
    counters = counters if counters is not None else SendCounters()
    stop = job.stop
    bar = job.progress.bar(total, "events", "sending", initial=progress.events_sent + progress.server_rejected_events)
    retries = RetryDisplay(bar, job.progress)

    def retrying(notice: RetryNotice) -> None:
        retries.show(notice)
        if on_retry is not None:
            on_retry(notice)

    sender = Sender(
        SendSettings(host=url, api_key=api_key, rate=settings.rate,
                     max_retries=settings.max_retries, retry_base=settings.retry_delay, timeout=settings.timeout),
        counters, stop, on_retry=retrying,
    )
    started = time.monotonic()

    def on_acknowledged(window: Window, result: BatchResult) -> None:
        batch = result.batch
        for index, message in sorted(result.rejected.items()):
            file_index, row, _ = split_tiebreak(int(batch.tiebreaks[index]))
            rejects.write("server_rejected", message, job.source_name(file_index), row,
                          orjson.loads(batch.payload(index)))
        rejected_rows = sum(1 for i in result.rejected if batch.kinds[i] == EVENT_FROM_ROW)
        accepted_rows = batch.count_kind(EVENT_FROM_ROW) - rejected_rows
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
        if at_window_end:
            progress.mark_window_start()
        checkpoints.submit(progress)
        retries.clear()
        bar.update(batch.n_events)

    dispatcher = Dispatcher(sender, settings.concurrency, stop, persisted=lambda: checkpoints.saved_seq())
    checkpoints = CheckpointWriter(state, progress.next_seq, on_persisted=dispatcher.wake)
    try:
        # Cutting a window takes a while (merging ~8k events): acknowledgements are reported, and so
        # checkpointed, between its merge steps, so the next window's batches may start as soon as it is cut.
        windows = _windows(job, manifest, MergeCursor(tuple(progress.cursor)), progress.window_first_seq, layout,
                           between_slices=dispatcher.poll)
        dispatcher.run(windows, progress.next_seq, on_acknowledged)
        progress.finished = True
        checkpoints.submit(progress)
    finally:
        bar.close()
        checkpoints.close()
        rejects.close()
    return SendOutcome(progress, counters, time.monotonic() - started, resumed_from=resumed_from)


class RetryDisplay:
    """Shows the sender's retries as they happen: "connection refused, retry 4/10 in 6.1 s; gives up in about
    3m42s". On the sending bar, and as a note (a line on stderr, with --quiet too, for logs) when the problem
    changes or 2 s have passed since the last line, so that four threads retrying fast do not flood it."""

    LINE_INTERVAL_SECONDS = 2.0

    def __init__(self, bar: Bar, progress: Progress):
        self.bar = bar
        self.progress = progress
        self._lock = threading.Lock()  # called from every sending thread
        self._last_problem = ""
        self._last_line_at = float("-inf")
        self._on_bar = False

    def show(self, notice: RetryNotice) -> None:
        digits = 2 if notice.delay < 1 else 1 if notice.delay < 10 else 0
        text = (f"{notice.problem}, retry {notice.retry}/{notice.max_retries} in {notice.delay:.{digits}f} s; "
                f"gives up in about {human_duration(notice.gives_up_in)} if it goes on")
        with self._lock:
            self.bar.set_postfix_str(text)
            self._on_bar = True
            now = time.monotonic()
            if notice.problem != self._last_problem or now - self._last_line_at >= self.LINE_INTERVAL_SECONDS:
                self._last_problem, self._last_line_at = notice.problem, now
                self.progress.note(f"Retrying: {text}")

    def clear(self) -> None:
        """A batch got through: the bar stops showing the last retry."""
        if self._on_bar:
            with self._lock:
                self.bar.set_postfix_str("")
                self._on_bar = False


def dry_run(job: Job, manifest: dict, out_dir: Path) -> SendOutcome:
    """Everything but the network: cut the same batches and write each request body to ``out_dir``.

    The project key is replaced by a placeholder: it never lands on disk.
    """
    check_prepared_job(job.root, manifest)
    layout = _layout(job.settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("batch-*.json"):
        old.unlink()
    progress = SendProgress()
    started = time.monotonic()
    counters = SendCounters()
    cursor = MergeCursor.start(len(manifest["runs"]))
    bar = job.progress.bar(manifest["stats"]["events"], "events", "writing request bodies")
    try:
        for window in _windows(job, manifest, cursor, 0, layout):
            for batch in window.batches:
                body = batch.body(DRY_RUN_KEY_PLACEHOLDER)
                (out_dir / f"batch-{batch.seq:06d}.json").write_bytes(body)
                counters.count("dry-run", len(body))
                progress.batches_sent += 1
                progress.events_sent += batch.n_events
                progress.rows_sent += batch.count_kind(EVENT_FROM_ROW)
                bar.update(batch.n_events)
    finally:
        bar.close()
    return SendOutcome(progress, counters, time.monotonic() - started, dry_run_dir=out_dir)


DRY_RUN_KEY_PLACEHOLDER = "<your project API key>"
