"""The command line: parse options, call the pipeline, print the summary. No logic of its own.

Exit codes: 0 done, 1 failed, 2 usage or configuration error, 3 done but some rows rejected,
130 interrupted by Ctrl-C and 143 by SIGTERM (the checkpoint saved either way).
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from posthog_migrate import __version__
from posthog_migrate.errors import ConfigError, DamagedJob, MigrateError

# The pipeline's modules (numpy, pyarrow, requests...) are imported inside the commands that use them, so
# that --help, --version and a mistyped option answer at once.
if TYPE_CHECKING:
    from posthog_migrate.config import Settings
    from posthog_migrate.job import Job
    from posthog_migrate.report import Books


class ExitStatus(enum.IntEnum):
    DONE = 0
    FAILED = 1
    USAGE = 2
    DONE_WITH_REJECTS = 3
    INTERRUPTED_SIGINT = 130
    INTERRUPTED_SIGTERM = 143


NO_HOST_MESSAGE = (
    "say where to send the events:\n"
    "  --host https://us.i.posthog.com   (or https://eu.i.posthog.com, or your self-hosted URL),\n"
    "      with the project's API key in POSTHOG_API_KEY or --api-key;\n"
    "  --host local                      to try it against the built-in capture server;\n"
    "  --dry-run                         to write the request bodies to files instead."
)


# --- shared options ------------------------------------------------------------------------------

def _apply(command, options):
    for option in reversed(options):
        command = option(command)
    return command


MAPPING_OPTIONS = [
    click.option("--mapping", "mapping_path", type=click.Path(dir_okay=False), default=None,
                 help="TOML file saying which columns make the event (see the README)."),
    click.option("--event-column", default=None, help="Column holding the event name."),
    click.option("--event-name", default=None, help="One event name for every row."),
    click.option("--distinct-id-column", multiple=True,
                 help="Column holding the distinct_id; repeat to give fallbacks (first non-empty wins)."),
    click.option("--timestamp-column", default=None, help="Column holding the event time."),
    click.option("--timestamp-unit", default=None,
                 type=click.Choice(["auto", "s", "ms", "us", "ns", "iso"]),
                 help="Unit of numeric timestamps (auto guesses from the size). [default: auto]"),
    click.option("--source-timezone", default=None, metavar="TZ",
                 help="IANA timezone for timestamps without an offset, e.g. Europe/Berlin. [default: UTC]"),
    click.option("--uuid-column", default=None, help="Column holding each event's UUID."),
    click.option("--insert-id-column", default=None,
                 help="Column holding a unique event id; the uuid is derived from it."),
    click.option("--properties-column", default=None, help="Column holding a JSON object of properties."),
    click.option("--rename-event", multiple=True, metavar="OLD=NEW", help="Rename an event (repeatable)."),
    click.option("--drop-event", multiple=True, metavar="NAME",
                 help="Drop an event by name, counted as filtered (repeatable)."),
    click.option("--rename-property", multiple=True, metavar="OLD=NEW", help="Rename a property (repeatable)."),
    click.option("--drop-property", multiple=True, metavar="NAME", help="Drop a property (repeatable)."),
    click.option("--person-properties", type=click.Choice(["set", "set_once", "skip"]), default=None,
                 help="What the history's $set does to persons: set (overwrite, a new project), set_once (never "
                      "overwrite: a project with live data), skip (send none). [default: set; mapping: [person] mode]"),
    click.option("--quiet", "-q", is_flag=True, default=None, help="No progress bars."),
]

SEND_OPTIONS = [
    click.option("--host", default=None, metavar="URL",
                 help="PostHog host, e.g. https://us.i.posthog.com; 'local' for the built-in capture server. "
                      "[env: POSTHOG_HOST]"),
    click.option("--api-key", default=None, metavar="KEY",
                 help="The project API key (phc_…). Prefer the POSTHOG_API_KEY environment variable."),
    click.option("--dry-run", is_flag=True, default=None,
                 help="Do everything but the network: write each request body to a folder."),
    click.option("--out", type=click.Path(file_okay=False), default=None,
                 help="Folder for --dry-run request bodies. [default: WORKDIR/dry-run]"),
    click.option("--batch-bytes", default=None, metavar="SIZE",
                 help="Cap on a request's uncompressed size, e.g. 5MiB; at most 20MiB. [default: 5MiB]"),
    click.option("--batch-size", type=int, default=None, metavar="N",
                 help="Cap on events per request. [default: 2000]"),
    click.option("--concurrency", type=int, default=None, metavar="N",
                 help="Requests in flight; one person's events never overtake each other. [default: 4]"),
    click.option("--rate", type=float, default=None, metavar="EVENTS_PER_SEC",
                 help="Send at most this many events per second in total; 0 = unlimited. [default: 3000]"),
    click.option("--shard", default=None, metavar="K/N",
                 help="Migrate only the K-th of N shards of people (by distinct_id hash): run N machines or "
                      "pods, one shard each, each with its own work directory."),
    click.option("--workers", type=int, default=None, metavar="N",
                 help="Processes reading the input files in parallel (0 = one per core). [default: 0]"),
    click.option("--memory", default=None, metavar="SIZE",
                 help="Memory budget for sorting, e.g. 512MiB; more is spilled to the work directory. [default: 1GiB]"),
    click.option("--max-retries", type=int, default=None, metavar="N",
                 help="Retries of one request before the run stops (resumable). [default: 10]"),
    click.option("--retry-delay", type=float, default=None, metavar="SECONDS",
                 help="First retry's backoff; doubles each time, with jitter, up to 60 s. [default: 1]"),
    click.option("--timeout", type=float, default=None, metavar="SECONDS",
                 help="How long to wait for an answer to a request. [default: 60]"),
]


class FormatOption(click.Option):
    """--format, whose help lists every registered format, plugins included. The list is read from the registry
    only when the help is shown: looking for plugins takes ~50 ms that no other use of the command should pay."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from posthog_migrate.adapters import format_names

        self.help = (f"auto (by the first rows, else the file ending), or one of: {', '.join(format_names())}. "
                     "[default: auto]")
        return super().get_help_record(ctx)


def source_options(command):
    """SOURCE... and how to read them: shared by run and inspect."""
    return _apply(command, [
        click.argument("sources", nargs=-1, required=True, metavar="SOURCE..."),
        click.option("--format", "format_", cls=FormatOption, default=None, metavar="NAME"),
        *MAPPING_OPTIONS,
    ])


def _mapping_options(command):
    return _apply(command, MAPPING_OPTIONS)


def send_options(command):
    return _apply(command, SEND_OPTIONS)


def mapping_overrides(kwargs: dict) -> dict:
    return {
        "event": kwargs.pop("event_column"), "event_name": kwargs.pop("event_name"),
        "distinct_id": tuple(kwargs.pop("distinct_id_column") or ()), "timestamp": kwargs.pop("timestamp_column"),
        "timestamp_unit": kwargs.pop("timestamp_unit"), "timezone": kwargs.pop("source_timezone"),
        "uuid": kwargs.pop("uuid_column"), "insert_id": kwargs.pop("insert_id_column"),
        "properties_json": kwargs.pop("properties_column"),
        "rename_events": kwargs.pop("rename_event"), "drop_events": kwargs.pop("drop_event"),
        "rename_properties": kwargs.pop("rename_property"), "drop_properties": kwargs.pop("drop_property"),
        "person_mode": kwargs.pop("person_properties"),
    }


def settings_from(kwargs: dict) -> Settings:
    from posthog_migrate.config import resolve_settings

    kwargs["format"] = kwargs.pop("format_")
    return resolve_settings(kwargs)


class SignalCatcher:
    """Turns the first SIGINT/SIGTERM into a graceful stop; a second one ends the process at once."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.signal_number: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, number: int, _frame: Any) -> None:
        if self.signal_number is not None:
            os._exit(128 + number)  # the state on disk is always valid: nothing to clean up
        self.signal_number = number
        self.stop.set()
        click.echo("\nStopping: no new batches; waiting briefly for those in flight…", err=True)

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.INTERRUPTED_SIGTERM if self.signal_number == signal.SIGTERM else ExitStatus.INTERRUPTED_SIGINT


def fail(error: MigrateError) -> NoReturn:
    click.echo(f"Error: {error}", err=True)
    sys.exit(error.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="posthog-migrate")
def main() -> None:
    """Move historical analytics events into PostHog.

    Reads CSV, JSON lines, Parquet or PostHog exports, maps every row to a PostHog event with a
    deterministic uuid, sorts all events by time, and sends them to /batch/ with
    historical_migration=true, checkpointing so that a stopped run resumes where it stopped.

    \b
    Start with:  posthog-migrate inspect SOURCE...      (what would be sent; sends nothing)
    Then:        posthog-migrate run SOURCE... --host https://us.i.posthog.com
    """


# --- run ---------------------------------------------------------------------------------------------

@main.command()
@source_options
@click.option("--job", default=None, metavar="NAME",
              help="Job name; its work directory is .posthog-migrate/NAME. [default: from the sources]")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="The job's work directory.")
@click.option("--restart", is_flag=True, default=None, help="Forget the job's progress and start over.")
@send_options
def run(**kwargs: Any) -> None:
    """Migrate SOURCE... (files, folders, globs, s3:// URIs) into PostHog.

    Running the same command again resumes the job; --restart starts it over.
    """
    from posthog_migrate.job import open_job

    overrides = mapping_overrides(kwargs)
    settings = _settings_or_fail(kwargs)
    _migrate(settings, lambda: open_job(settings, overrides))


def _settings_or_fail(kwargs: dict) -> Settings:
    try:
        return settings_from(kwargs)
    except MigrateError as error:
        fail(error)


def _migrate(settings: Settings, make_job: Callable[[], Job], restart: bool | None = None) -> None:
    """Prepare and send a job, print the summary, exit with the status (shared by run and retry-rejects)."""
    from posthog_migrate.config import LOCAL_API_KEY
    from posthog_migrate.diskspace import disk_full_message, disk_space_warning, estimate_work_bytes, is_disk_full
    from posthog_migrate.job import JobLock, reset_job
    from posthog_migrate.sender import Interrupted

    stop = threading.Event()
    catcher = SignalCatcher(stop)
    catcher.install()  # before any work: Ctrl-C while the inputs are listed must not print a traceback
    job, disk_estimate = None, 0
    try:
        if not settings.host and not settings.dry_run:
            raise ConfigError(NO_HOST_MESSAGE)
        api_key = settings.api_key or (LOCAL_API_KEY if settings.is_local or settings.dry_run else None)
        if not api_key:
            raise ConfigError(
                "no project API key: set POSTHOG_API_KEY (or --api-key) to the project's token, "
                "found in PostHog under Project settings → Project API key (starts with phc_)"
            )
        job = make_job()
        job.stop = stop
        with JobLock(job.root):
            if settings.restart if restart is None else restart:
                reset_job(job.root)
            events_as_json = settings.is_local or (settings.dry_run and not settings.out)
            disk_estimate = estimate_work_bytes(job.sources, events_as_json)
            warning = None if job.manifest_path.exists() else disk_space_warning(job.root, disk_estimate)
            if warning is not None:  # before prepare, which writes nearly all of it
                click.echo(f"Warning: {warning}", err=True)
            status = _run_job(job, api_key)
    except Interrupted:
        click.echo(
            "Interrupted. Everything acknowledged is checkpointed; run the same command again to resume.",
            err=True,
        )
        sys.exit(catcher.exit_status)
    except MigrateError as error:
        fail(error)
    except OSError as error:
        if not is_disk_full(error):
            raise
        # Every write the job trusts is atomic or checkpointed: what was done before this one is kept.
        fail(MigrateError(disk_full_message(job.root if job else settings.job_directory(), disk_estimate)))
    sys.exit(status)


def _run_job(job: Job, api_key: str) -> ExitStatus:
    from posthog_migrate.config import LOCAL_HOST
    from posthog_migrate.pipeline import dry_run, send
    from posthog_migrate.prepare import prepare
    from posthog_migrate.report import PrepareStats, books, run_summary, skipped_files_line

    settings = job.settings
    if not settings.quiet:
        reason = f" ({job.format_reason})" if job.format_reason else ""
        click.echo(f"Job {job.root}: {len(job.sources):,} file(s), format {job.format_name}{reason}", err=True)
    if job.skipped:
        click.echo(skipped_files_line(job.skipped), err=True)
    started = time.monotonic()
    already_prepared = job.manifest_path.exists()
    manifest = prepare(job)
    prepare_seconds = None if already_prepared else time.monotonic() - started
    if job.gone_inputs:
        gone = sorted(job.gone_inputs)
        click.echo(f"{len(gone):,} input file(s) no longer there ({gone[0]}{', …' if len(gone) > 1 else ''}): "
                   "the job was prepared, so it is sent from its work directory.", err=True)
    stats = PrepareStats.from_dict(manifest["stats"])
    received_path = None
    if settings.dry_run:
        outcome = dry_run(job, manifest, Path(settings.out) if settings.out else job.root / "dry-run")
        target = "dry run (nothing sent)"
    elif settings.is_local:
        from posthog_migrate.capture_server import CaptureServer

        received_path = job.root / "local-capture" / "events.jsonl"
        with CaptureServer(out_path=received_path, keep_in_memory=False) as server:
            outcome = send(job, manifest, server.url, api_key, host_label=LOCAL_HOST)
        target = f"local capture server ({server.url})"
    else:
        outcome = send(job, manifest, settings.host, api_key, host_label=settings.host)
        target = settings.host
    click.echo(run_summary(
        stats, outcome.progress, outcome.counters, outcome.elapsed, target=target,
        rejects_path=job.rejects_path, dry_run_dir=outcome.dry_run_dir, received_path=received_path,
        resumed_from=outcome.resumed_from, prepare_seconds=prepare_seconds, skipped_files=len(job.skipped),
    ))
    job_books = books(stats, outcome.progress)
    if not job_books.balanced:
        raise MigrateError(unbalanced_message(job.root, job_books))
    return ExitStatus.DONE_WITH_REJECTS if job_books.rejected else ExitStatus.DONE


def unbalanced_message(root: Path, job_books: Books) -> str:
    return (f"the books do not balance: rows read = sent + rejected + filtered says {job_books.equation()}. "
            f"Something changed the work directory {root} while the job ran (a run file, state.json or "
            "manifest.json). Run the same command with --restart to migrate the sources again (events already "
            "sent are sent again with the same uuids, which PostHog collapses).")


# --- retry-rejects -----------------------------------------------------------------------------------

@main.command("retry-rejects")
@click.argument("job", required=False)
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="The job's work directory.")
@click.option("--restart", "restart_retry", is_flag=True, default=False,
              help="Start this retry over (e.g. after the job's rejects file changed).")
@_mapping_options
@send_options
def retry_rejects(job: str | None, workdir: str | None, restart_retry: bool, **kwargs: Any) -> None:
    """Send a job's rejected rows again, after fixing the mapping (--mapping fixed.toml) or the server.

    Rows are mapped again by the job's adapter, with the new mapping if one is given (else the job's
    own); events the server refused are re-sent as they were. Nothing already accepted is sent again.
    The retry is a job of its own in JOB's work directory: run the same command again to resume it.
    """
    from posthog_migrate.job import open_retry_job

    original = Path(workdir) if workdir else Path(".posthog-migrate") / job if job else None
    if original is None or not original.is_dir():
        fail(ConfigError(f"no job {'at ' + str(original) if original else 'named'}: give JOB or --workdir"))
    overrides = mapping_overrides(kwargs)
    kwargs["format_"] = None
    settings = _settings_or_fail(kwargs)

    def make_job() -> Job:
        plan = open_retry_job(settings, original, overrides)
        if plan.unreadable:
            kinds = ", ".join(f"{n:,} {reason}" for reason, n in plan.unreadable.most_common())
            click.echo(f"Not retriable ({kinds}): those rows could not be read; fix the source file and migrate "
                       "them as a new job.", err=True)
        if not plan.retriable:
            raise ConfigError(f"{original / 'rejects.jsonl'} holds no retriable rows")
        click.echo(f"Retrying {plan.retriable:,} rejected rows as job {plan.job.root}", err=True)
        return plan.job

    _migrate(settings, make_job, restart=restart_retry)


# --- inspect -----------------------------------------------------------------------------------------

@main.command()
@source_options
def inspect(**kwargs: Any) -> None:
    """Preflight report for SOURCE...: rows, time range, events per day, top events, rejects. Sends nothing."""
    from posthog_migrate.diskspace import disk_space_warning, estimate_work_bytes, human_bytes
    from posthog_migrate.job import open_job
    from posthog_migrate.prepare import inspect_sources, too_many_group_types
    from posthog_migrate.report import preflight_report

    overrides = mapping_overrides(kwargs)
    try:
        settings = settings_from(kwargs)
        job = open_job(settings, overrides, create=False, reuse_prepared=False)
        stats, examples = inspect_sources(job)
        disk_estimate = estimate_work_bytes(job.sources)
        if (warning := disk_space_warning(job.root, disk_estimate)) is not None:
            stats.warnings[warning] += 1
    except MigrateError as error:
        fail(error)
    click.echo(preflight_report(stats, job.format_name, job.skipped, person_mode=job.mapping.person_mode))
    click.echo(f"Temporary disk:    about {human_bytes(disk_estimate)} in {job.root} while the job runs")
    if examples:
        click.echo("First rejected rows:")
        for example in examples:
            click.echo(f"    {example['file']} row {example['row']}: {example['reason']}: {example['detail']}")
    if (problem := too_many_group_types(stats)) is not None:  # run would refuse the job: say so now
        fail(ConfigError(problem))


# --- status ------------------------------------------------------------------------------------------

@main.command()
@click.argument("job", required=False)
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="The job's work directory.")
def status(job: str | None, workdir: str | None) -> None:
    """Where a job stands: phase, events sent of total, rejects, last checkpoint, what a resume does."""
    root = Path(workdir) if workdir else Path(".posthog-migrate") / job if job else None
    if root is None:
        jobs = sorted(p.name for p in Path(".posthog-migrate").glob("*") if p.is_dir())
        if not jobs:
            fail(ConfigError("no jobs in .posthog-migrate/ here; name one with --workdir"))
        click.echo("Jobs: " + ", ".join(jobs))
        return
    if not root.is_dir():
        fail(ConfigError(f"no job at {root}"))
    try:
        click.echo(describe_status(root))
    except MigrateError as error:
        fail(error)


def describe_status(root: Path) -> str:
    from posthog_migrate.batches import LAYOUT_VERSION
    from posthog_migrate.checkpoint import JobState, read_json
    from posthog_migrate.integrity import prepared_job_problems
    from posthog_migrate.report import PrepareStats, books, day_of, human_duration

    manifest = read_json(root / "manifest.json")
    if manifest is None:
        partial = read_json(root / "prepare.json")
        if partial is None:
            return (f"Job {root}: not prepared (never run, or stopped before its first checkpoint).\n"
                    "A resume reads and sorts the sources from the start; nothing has been sent.")
        results = [read_json(path) for path in sorted((root / "parts").glob("result-*.json"))]
        in_progress = [read_json(path) for path in sorted((root / "parts").glob("progress-*.json"))]
        rows = sum(r["stats"]["rows_read"] for r in results + in_progress if r)
        total = len(partial["fingerprint"]["inputs"])
        return (f"Job {root}: preparing: {len(results)} of {total} input files done, {rows:,} rows read; "
                "nothing has been sent.\n"
                "A resume skips the finished files and continues each unfinished one after its last spill.")
    problems = prepared_job_problems(root, manifest)
    if problems:
        return f"Job {root}: damaged\n{_sentence(str(DamagedJob(root, problems)))}"
    stats = PrepareStats.from_dict(manifest["stats"])
    progress = JobState(root / "state.json").send
    total = stats.events
    done = progress.events_sent + progress.server_rejected_events
    job_books = books(stats, progress)
    if progress.finished and not job_books.balanced:
        phase = "damaged"
        next_step = _sentence(unbalanced_message(root, job_books))
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
    lines = [
        f"Job {root}: {phase}",
        f"Sources:   {len(manifest['sources']):,} file(s), {stats.rows_read:,} rows, {stats.events:,} events",
        f"Sent:      {progress.events_sent:,} of {total:,} events ({100 * done / total if total else 100:.1f}%), "
        f"{progress.batches_sent:,} batches" + (f" to {progress.host}" if progress.host else ""),
        f"Rejected:  {stats.rejected_total + progress.server_rejected_rows:,} rows → {root / 'rejects.jsonl'}",
        f"Filtered:  {stats.filtered_total:,} rows",
        f"Time range: {day_of(stats.first_us)} → {day_of(stats.last_us)}",
    ]
    if progress.updated_at:
        age = human_duration(time.time() - progress.updated_at)
        lines.append(f"Last checkpoint: {age} ago")
    lines.append(next_step)
    return "\n".join(lines)


def _sentence(message: str) -> str:
    """An error message (which starts in lower case, after "Error: ") as a sentence of its own."""
    return message[:1].upper() + message[1:]


# --- serve -------------------------------------------------------------------------------------------

@main.command()
@click.option("--port", type=int, default=8010, show_default=True, help="Port on 127.0.0.1 (0 = any free port).")
@click.option("--out", type=click.Path(dir_okay=False), default="capture-events.jsonl", show_default=True,
              help="JSON lines file receiving every accepted event.")
@click.option("--strict/--lenient", default=True, show_default=True,
              help="strict: a batch with an invalid event gets 400 (PostHog's code); "
                   "lenient: such events are dropped with a 200 (PostHog's docs).")
@click.option("--fault", "faults", multiple=True, metavar="SPEC",
              help="Scripted answer for the next request, in order: ok, 429, 429:retry-after=N, 500, 503, "
                   "408, slow:SECONDS, drop, drop-after-accept, 413-partial; hosts that are not PostHog: html "
                   "(a 200 web page), quota (a 200 over the billing quota), 301:location=URL (or 302, 303, 307, "
                   "308: a redirect to URL), STATUS:echo (e.g. 400:echo, 401:echo: the request quoted in the "
                   "error). Repeatable.")
@click.option("--fault-rate", type=float, default=0.0, show_default=True,
              help="After the script: chance that a request gets a random fault.")
@click.option("--fault-kinds", default="429,503,drop", show_default=True, help="Kinds for --fault-rate.")
@click.option("--seed", type=int, default=None, help="Seed for random faults (reproducible runs).")
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Serve in this many processes, each taking its turn of the connections, so that a fast "
                   "sender on the same machine is not held back by one server core (the benchmark uses "
                   "2). Not with --fault or --fault-rate.")
def serve(port: int, out: str, strict: bool, faults: tuple[str, ...], fault_rate: float, fault_kinds: str,
          seed: int | None, processes: int) -> None:
    """Run a local PostHog-compatible capture endpoint (/batch/, /capture/, /e/) for trials and tests.

    Ctrl-C or SIGTERM stops it and prints how many requests and events it took."""
    from posthog_migrate.capture_server import serve as serve_forever

    # The server stops on KeyboardInterrupt, closing its out file and printing its counts: Ctrl-C raises it
    # again instead of ending the process at once (see posthog_migrate.entry).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        serve_forever(port=port, out_path=out, strict=strict, fault_specs=faults, fault_rate=fault_rate,
                      fault_kinds=[k.strip() for k in fault_kinds.split(",") if k.strip()], seed=seed,
                      processes=processes)
    except MigrateError as error:
        fail(error)
    except OSError as error:
        fail(ConfigError(f"cannot listen on 127.0.0.1:{port}: {error}"))
