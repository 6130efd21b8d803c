"""One run of a job from start to end (open, prepare, send), the same for the command line and the Python API.

The command line parses its options into Settings, the Python API its arguments, and both call
:func:`run_job` (or :func:`inspect_job`): what happens next is decided here, once. It returns a RunResult
(done, or done with rows rejected) or raises a MigrateError carrying the RunResult so far as
``error.result``. It never prints, exits or installs a signal handler: what a person watching should see
goes to the Progress it is given, what is worth keeping to the job's log (WORKDIR/job.log), and a caller
stops it by setting ``stop`` (the command line does on Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from posthog_migrate import __version__
from posthog_migrate.accounting import PrepareStats, unbalanced_message
from posthog_migrate.config import API_KEY_VARIABLE, COMMAND_LINE, LOCAL_API_KEY, LOCAL_HOST, Settings, Spelling
from posthog_migrate.diskspace import (
    disk_full_message,
    disk_space_warning,
    estimate_work_bytes,
    is_disk_full,
)
from posthog_migrate.errors import (
    ConfigError,
    DiskFull,
    ExitStatus,
    Interrupted,
    MigrateError,
    UnbalancedBooks,
    error_kind,
)
from posthog_migrate.job import Job, JobLock, open_job, reset_job
from posthog_migrate.joblog import SOURCES_LOGGED, JobLog
from posthog_migrate.render import Progress, skipped_files_line
from posthog_migrate.results import InspectResult, RunResult, checkpointed_send, prepared_so_far

INTERRUPTED_MESSAGE = "interrupted; everything acknowledged is checkpointed: run the same command again to resume"


def no_host_message(spelling: Spelling) -> str:
    if spelling.keywords:
        return ("say where to send the events:\n"
                '  host="https://us.i.posthog.com"   (or https://eu.i.posthog.com, or your self-hosted URL),\n'
                f"      with the project's API key in {API_KEY_VARIABLE} or api_key=;\n"
                '  host="local"                      to try it against the built-in capture server;\n'
                "  dry_run=True                      to write the request bodies to files instead.")
    return ("say where to send the events:\n"
            "  --host https://us.i.posthog.com   (or https://eu.i.posthog.com, or your self-hosted URL),\n"
            f"      with the project's API key in {API_KEY_VARIABLE} or --api-key;\n"
            "  --host local                      to try it against the built-in capture server;\n"
            "  --dry-run                         to write the request bodies to files instead.")


def target_api_key(settings: Settings, spelling: Spelling = COMMAND_LINE) -> str:
    """The key to send with, after checking that the settings say where to send: before any work."""
    if not settings.host and not settings.dry_run:
        raise ConfigError(no_host_message(spelling))
    api_key = settings.api_key or (LOCAL_API_KEY if settings.is_local or settings.dry_run else None)
    if not api_key:
        raise ConfigError(
            f"no project API key: set {API_KEY_VARIABLE} (or {spelling.name('api_key')}) to the project's token, "
            "found in PostHog under Project settings → Project API key (starts with phc_)"
        )
    return api_key


def run_job(settings: Settings, open_the_job: Callable[[Progress, threading.Event], Job], *,
            stop: threading.Event | None = None, progress: Progress | None = None, restart: bool | None = None,
            spelling: Spelling = COMMAND_LINE, interface: str = "python") -> RunResult:
    """Prepare and send a job (run and retry-rejects): the result, or a MigrateError carrying it so far.

    ``open_the_job(progress, stop)`` lists the inputs (downloading an export API's, which ``stop``
    interrupts) and returns the Job (it raises ConfigError when they cannot be migrated); ``restart``
    overrides ``settings.restart``; ``spelling`` names settings in messages as the caller writes them;
    ``interface`` is what the job's log says started the run.
    """
    run = _Run(settings, stop or threading.Event(), progress or Progress())
    try:
        api_key = target_api_key(settings, spelling)
        run.open(open_the_job, api_key, interface)
        with JobLock(run.job.root):
            if settings.restart if restart is None else restart:
                reset_job(run.job.root)
            run.warn_of_disk_space()
            run.prepare()
            run.send(api_key)
    except KeyboardInterrupt:  # a notebook's "interrupt the kernel": a stop like any other
        run.stop.set()  # sending threads abandon their retries
        raise run.failed(Interrupted(INTERRUPTED_MESSAGE)) from None
    except Interrupted:
        raise run.failed(Interrupted(INTERRUPTED_MESSAGE)) from None
    except MigrateError as error:
        run.failed(error)
        raise
    except OSError as error:
        if not is_disk_full(error):
            raise
        # Every write the job trusts is atomic or checkpointed: what was done before this one is kept.
        raise run.failed(DiskFull(disk_full_message(run.root, run.disk_estimate))) from None
    return run.finished()


class _Run:
    """One run's state as it goes, so that whatever stops it can say what it had done."""

    def __init__(self, settings: Settings, stop: threading.Event, progress: Progress):
        self.settings, self.stop, self.progress = settings, stop, progress
        self.job: Job | None = None
        self.log: JobLog | None = None
        self.manifest: dict = {}
        self.result = RunResult(settings.job_directory())
        self.disk_estimate = 0
        self.started = time.monotonic()
        self.send_started: float | None = None

    @property
    def root(self) -> Path:
        return self.job.root if self.job is not None else self.settings.job_directory()

    def open(self, open_the_job: Callable[[Progress, threading.Event], Job], api_key: str, interface: str) -> None:
        job = open_the_job(self.progress, self.stop)
        self.log = JobLog(job.root, secret=api_key)
        job.stop = self.stop
        job.progress = self.log.watching(self.progress)
        self.job = job
        result = self.result
        result.job_root, result.job_id, result.format_name = job.root, job.job_id, job.format_name
        result.skipped = list(job.skipped)
        self.log.write("run_started", interface=interface, version=__version__, files=len(job.sources),
                       format=job.format_name, format_reason=job.format_reason, settings=loggable(job.settings),
                       sources=[source.uri for source in job.sources[:SOURCES_LOGGED]])
        for item in job.skipped:
            self.log.write("skipped_file", uri=item.uri, why=item.why)
        reason = f" ({job.format_reason})" if job.format_reason else ""
        self.progress.info(f"Job {job.root}: {len(job.sources):,} file(s), format {job.format_name}{reason}")
        if job.skipped:
            self.progress.note(skipped_files_line(job.skipped))

    def warn_of_disk_space(self) -> None:
        job, settings = self.job, self.settings
        events_as_json = settings.is_local or (settings.dry_run and not settings.out)
        self.disk_estimate = estimate_work_bytes(job.sources, events_as_json, job.format_name)
        warning = None if job.manifest_path.exists() else disk_space_warning(job.root, self.disk_estimate)
        if warning is not None:  # before prepare, which writes nearly all of it
            self.warn(warning)

    def warn(self, warning: str, count: int | None = None) -> None:
        self.progress.note(f"Warning: {warning}")
        self.log.write("warning", message=warning, **({} if count is None else {"count": count}))

    def prepare(self) -> None:
        from posthog_migrate.prepare import prepare

        job, result = self.job, self.result
        reused = job.manifest_path.exists()
        result.stage = "preparing"
        self.log.write("phase", phase="prepare", state="reused" if reused else "started")
        started = time.monotonic()
        self.manifest = prepare(job)
        stats = result.stats = PrepareStats.from_dict(self.manifest["stats"])
        result.stage, result.prepare_reused = "sending", reused
        if not reused:
            result.prepare_seconds = time.monotonic() - started
            self.log.write("phase", phase="prepare", state="done", seconds=round(result.prepare_seconds, 3),
                           files=stats.files, rows_read=stats.rows_read, events=stats.events,
                           rejected=stats.rejected_total, filtered=stats.filtered_total)
            for warning, count in stats.warnings.items():
                self.log.write("warning", message=warning, count=count)
        if job.gone_inputs:
            gone = sorted(job.gone_inputs)
            result.gone_inputs = gone
            message = (f"{len(gone):,} input file(s) no longer there ({gone[0]}{', …' if len(gone) > 1 else ''}): "
                       "the job was prepared, so it is sent from its work directory.")
            self.progress.note(message)
            self.log.write("warning", message=message, count=len(gone))

    def send(self, api_key: str) -> None:
        from posthog_migrate.pipeline import dry_run, send

        job, settings, result = self.job, self.settings, self.result
        self.send_started = time.monotonic()
        if settings.dry_run:
            result.target = "dry run (nothing sent)"
            self.log.write("phase", phase="send", state="started", target=result.target)
            outcome = dry_run(job, self.manifest, Path(settings.out) if settings.out else job.root / "dry-run")
        elif settings.is_local:
            from posthog_migrate.capture import CaptureServer

            result.received_path = job.root / "local-capture" / "events.jsonl"
            with CaptureServer(out_path=result.received_path, keep_in_memory=False) as server:
                result.target = f"local capture server ({server.url})"
                self.log.write("phase", phase="send", state="started", target=result.target)
                outcome = send(job, self.manifest, server.url, api_key, host_label=LOCAL_HOST,
                               counters=result.counters, on_retry=self.log.retry)
        else:
            result.target = settings.host
            self.log.write("phase", phase="send", state="started", target=result.target)
            outcome = send(job, self.manifest, settings.host, api_key, host_label=settings.host,
                           counters=result.counters, on_retry=self.log.retry)
        result.send, result.counters, result.send_seconds = outcome.progress, outcome.counters, outcome.elapsed
        result.dry_run_dir, result.resumed_from = outcome.dry_run_dir, outcome.resumed_from
        result.stage = "done"
        self.log.write("phase", phase="send", state="done", seconds=round(outcome.elapsed, 3),
                       events=outcome.progress.events_sent, batches=outcome.progress.batches_sent,
                       resumed_from_events=outcome.resumed_from, requests=outcome.counters.requests,
                       retries=outcome.counters.retries)
        job_books = result.books
        if not job_books.balanced:
            raise UnbalancedBooks(unbalanced_message(job.root, job_books))

    def failed(self, error: MigrateError) -> MigrateError:
        """``error``, carrying what the run had done (once its job was opened), told to the job's log."""
        result = self.result
        if self.job is not None:
            if result.stage == "preparing" and result.stats is None:
                with contextlib.suppress(MigrateError):  # a part that is not valid JSON: the counts are unknown
                    result.stats = prepared_so_far(self.job.root)[0]
            if result.stage == "sending":
                result.send = checkpointed_send(self.job.root)
            if self.send_started is not None:
                result.send_seconds = time.monotonic() - self.send_started
            result.error, result.exit_status = error, ExitStatus(error.exit_code)
            error.result = result
        if self.log is not None:
            self.log.write("error", type=error_kind(error), message=str(error))
            self._log_end(error)
        return error

    def finished(self) -> RunResult:
        result = self.result
        result.exit_status = ExitStatus.DONE_WITH_REJECTS if result.rejected else ExitStatus.DONE
        self._log_end(None)
        return result

    def _log_end(self, error: MigrateError | None) -> None:
        result = self.result
        self.log.write("run_ended", exit_status=int(result.exit_status), seconds=round(time.monotonic() -
                       self.started, 3), rows={"read": result.read, "sent": result.sent, "rejected": result.rejected,
                                               "filtered": result.filtered},
                       events={"sent": result.send.events_sent, "batches": result.send.batches_sent},
                       error=None if error is None else {"type": error_kind(error), "message": str(error)})


def loggable(settings: Settings) -> dict[str, Any]:
    """The settings as the job's log records them: everything but the API key."""
    return {f.name: getattr(settings, f.name) for f in fields(settings) if f.name != "api_key"}


def inspect_job(settings: Settings, overrides: dict, progress: Progress | None = None) -> InspectResult:
    """Read and map the inputs, send nothing: what ``inspect`` reports. Writes nothing either (no work
    directory is made)."""
    from posthog_migrate.prepare import inspect_sources, too_many_group_types

    job = open_job(settings, overrides, create=False, reuse_prepared=False, progress=progress)
    stats, examples = inspect_sources(job)
    disk_estimate = estimate_work_bytes(job.sources, format_name=job.format_name)
    if (warning := disk_space_warning(job.root, disk_estimate)) is not None:
        stats.warnings[warning] += 1
    result = InspectResult(stats, job.format_name, list(job.skipped), examples, job.root, disk_estimate,
                           person_mode=job.mapping.person_mode)
    if (problem := too_many_group_types(stats)) is not None:  # a run would refuse the job: say so now
        error = ConfigError(problem)
        error.result = result  # the report is still shown, above the error
        raise error
    return result
