"""The command line: parse options, call the library (posthog_migrate.runner), print the result, exit.

The one place that exits and installs signal handlers: the library returns a result or raises an error
carrying one, and this module prints it as text or, with --json, as one JSON document on stdout (progress
and messages stay on stderr).

Exit codes: 0 done, 1 failed, 2 usage or configuration error, 3 done but some rows rejected,
4 (verify) events missing in PostHog or merges not made, 130 interrupted by Ctrl-C and 143 by SIGTERM
(the checkpoint saved either way).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from posthog_migrate import __version__
from posthog_migrate.errors import ConfigError, ExitStatus, Interrupted, MigrateError, error_kind

# The pipeline's modules (numpy, pyarrow, requests...) are imported inside the commands that use them, so
# that --help, --version and a mistyped option answer at once.
if TYPE_CHECKING:
    from posthog_migrate.capture.server import ServeSummary
    from posthog_migrate.config import Settings
    from posthog_migrate.job import Job
    from posthog_migrate.render import Progress


# --- shared options ------------------------------------------------------------------------------

def _apply(command, options):
    for option in reversed(options):
        command = option(command)
    return command


def _apply_options(options):
    return lambda command: _apply(command, options)


def option_names(option) -> set[str]:
    """The names (``--rate``...) a click.option decorator declares."""
    probe = option(lambda: None)
    return set(probe.__click_params__[0].opts)


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

JSON_OPTION = click.option("--json", "json_output", is_flag=True, default=False,
                           help="Print one JSON document on stdout instead of the text (progress stays on stderr).")

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
        click.option("--source-credentials", default=None, type=click.Path(dir_okay=False), metavar="FILE",
                     help="Credentials of amplitude:// and mixpanel:// sources: NAME=value lines of "
                          "AMPLITUDE_API_KEY, AMPLITUDE_SECRET_KEY, MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SERVICE_SECRET "
                          "or MIXPANEL_API_SECRET. [default: the environment]"),
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


def fail(error: MigrateError, command: str = "", json_output: bool = False, json_file: str | None = None) -> NoReturn:
    """Say what is wrong (and with --json, print the error's document; with verify's --json FILE, write it there),
    then exit with its code."""
    click.echo(f"Error: {error}", err=True)
    if json_output or json_file:
        _print_json(error_document(command, error, error.exit_code), json_file)
    sys.exit(error.exit_code)


def cli_progress(settings: Settings) -> Progress:
    """tqdm bars on stderr (none with --quiet; the notes, such as retries, are shown all the same)."""
    from posthog_migrate.render import TqdmProgress

    return TqdmProgress(bars=not settings.quiet)


def finish(command: str, json_output: bool, work: Callable[[], Any], catcher: SignalCatcher | None = None,
           json_file: str | None = None) -> NoReturn:
    """Do the command's work and print its result (its text, or with --json its JSON document), then exit with
    its status; an error is printed as "Error: ..." on stderr (and with --json as a document with the counts
    so far, on stdout). ``json_file``: the document is written to that file as well as the text printed."""
    try:
        result = work()
    except Interrupted as error:
        click.echo("Interrupted. Everything acknowledged is checkpointed; run the same command again to resume.",
                   err=True)
        status = catcher.exit_status if catcher is not None else ExitStatus.INTERRUPTED_SIGINT
        if json_output or json_file:
            _print_json(error_document(command, error, status), json_file)
        sys.exit(status)
    except MigrateError as error:
        # A finished run whose books do not balance (its summary shows how), or an inspect that found what a run
        # would refuse (its report shows the counts): the result first, then the error. A verify that failed has
        # only part of a report, which would mislead: the error alone.
        finished_run = (error.result is not None and getattr(error.result, "stage", "done") == "done"
                        and command != "verify")
        if finished_run and not json_output:
            click.echo(error.result.asstr())
        fail(error, command, json_output, json_file)
    if json_file:
        _print_json(result.asdict(), json_file)
    if json_output:
        _print_json(result.asdict())
    else:
        click.echo(result.asstr())
    sys.exit(result.exit_status)


def error_document(command: str, error: MigrateError, status: int) -> dict:
    """What --json prints when a command fails: the run's counts so far (when it got that far) and the error."""
    document = error.result.asdict() if error.result is not None else {"schema": 1, "command": command}
    document["exit_status"] = int(status)
    document["error"] = {"type": error_kind(error), "message": str(error)}
    return document


def _print_json(document: dict, path: str | None = None) -> None:
    """The document on stdout, or written to ``path``."""
    text = json.dumps(document, indent=2, ensure_ascii=False, default=str)
    if path is None:
        click.echo(text)
        return
    try:
        Path(path).write_text(text + "\n", encoding="utf-8")
    except OSError as error:
        click.echo(f"Error: cannot write --json {path}: {error.strerror or error}", err=True)
        sys.exit(ExitStatus.FAILED)


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
@click.option("--redownload", is_flag=True, default=None,
              help="With --restart: download amplitude:// and mixpanel:// sources again (else kept).")
@send_options
@JSON_OPTION
def run(json_output: bool, **kwargs: Any) -> None:
    """Migrate SOURCE... (files, folders, globs, s3:// URIs, or an export API:
    "amplitude://export?start=2024-01-01&end=2024-06-30", "mixpanel://export?project_id=N&start=…&end=…",
    "mixpanel://engage?project_id=N") into PostHog.

    Running the same command again resumes the job; --restart starts it over.
    """
    from posthog_migrate.job import open_job

    overrides = mapping_overrides(kwargs)
    settings = _settings_or_fail(kwargs, json_output, "run")
    _migrate("run", json_output, settings,
             lambda progress, stop: open_job(settings, overrides, progress=progress, stop=stop))


def _settings_or_fail(kwargs: dict, json_output: bool, command: str) -> Settings:
    try:
        return settings_from(kwargs)
    except MigrateError as error:
        fail(error, command, json_output)


def _migrate(command: str, json_output: bool, settings: Settings,
             open_the_job: Callable[[Progress, threading.Event], Job], restart: bool | None = None) -> NoReturn:
    """Prepare and send a job, print the summary, exit with the status (shared by run and retry-rejects)."""
    from posthog_migrate.runner import run_job

    stop = threading.Event()
    catcher = SignalCatcher(stop)
    catcher.install()  # before any work: Ctrl-C while the inputs are listed must not print a traceback
    finish(command, json_output, lambda: run_job(settings, open_the_job, stop=stop, progress=cli_progress(settings),
                                                 restart=restart, interface="command line"), catcher)


# --- retry-rejects -----------------------------------------------------------------------------------

@main.command("retry-rejects")
@click.argument("job", required=False)
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="The job's work directory.")
@click.option("--restart", "restart_retry", is_flag=True, default=False,
              help="Start this retry over (e.g. after the job's rejects file changed).")
@_mapping_options
@send_options
@JSON_OPTION
def retry_rejects(job: str | None, workdir: str | None, restart_retry: bool, json_output: bool, **kwargs: Any) -> None:
    """Send a job's rejected rows again, after fixing the mapping (--mapping fixed.toml) or the server.

    Rows are mapped again by the job's adapter, with the new mapping if one is given (else the job's
    own); events the server refused are re-sent as they were. Nothing already accepted is sent again.
    The retry is a job of its own in JOB's work directory: run the same command again to resume it.
    """
    from posthog_migrate.job import open_retry_job

    original = Path(workdir) if workdir else Path(".posthog-migrate") / job if job else None
    if original is None or not original.is_dir():
        fail(ConfigError(f"no job {'at ' + str(original) if original else 'named'}: give JOB or --workdir"),
             "retry-rejects", json_output)
    overrides = mapping_overrides(kwargs)
    kwargs["format_"] = None
    settings = _settings_or_fail(kwargs, json_output, "retry-rejects")

    def make_job(_progress: Progress, _stop: threading.Event) -> Job:
        plan = open_retry_job(settings, original, overrides)
        if plan.unreadable:
            kinds = ", ".join(f"{n:,} {reason}" for reason, n in plan.unreadable.most_common())
            click.echo(f"Not retriable ({kinds}): those rows could not be read; fix the source file and migrate "
                       "them as a new job.", err=True)
        if not plan.retriable:
            raise ConfigError(f"{original / 'rejects.jsonl'} holds no retriable rows")
        click.echo(f"Retrying {plan.retriable:,} rejected rows as job {plan.job.root}", err=True)
        return plan.job

    _migrate("retry-rejects", json_output, settings, make_job, restart=restart_retry)


# --- inspect -----------------------------------------------------------------------------------------

@main.command()
@source_options
@JSON_OPTION
def inspect(json_output: bool, **kwargs: Any) -> None:
    """Preflight report for SOURCE...: rows, time range, events per day, top events, rejects. Sends nothing."""
    from posthog_migrate.runner import inspect_job

    overrides = mapping_overrides(kwargs)

    def work() -> Any:
        settings = settings_from(kwargs)
        return inspect_job(settings, overrides, cli_progress(settings))

    finish("inspect", json_output, work)


# --- status ------------------------------------------------------------------------------------------

@main.command()
@click.argument("job", required=False)
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="The job's work directory.")
@JSON_OPTION
def status(job: str | None, workdir: str | None, json_output: bool) -> None:
    """Where a job stands: phase, events sent of total, rejects, last checkpoint, what a resume does, and how its
    last run ended (from WORKDIR/job.log)."""
    root = Path(workdir) if workdir else Path(".posthog-migrate") / job if job else None
    if root is None:
        jobs = sorted(p.name for p in Path(".posthog-migrate").glob("*") if p.is_dir())
        if not jobs:
            fail(ConfigError("no jobs in .posthog-migrate/ here; name one with --workdir"), "status", json_output)
        if json_output:
            _print_json({"schema": 1, "command": "status", "exit_status": 0, "jobs": jobs})
        else:
            click.echo("Jobs: " + ", ".join(jobs))
        return

    def work() -> Any:
        from posthog_migrate.results import job_status

        if not root.is_dir():
            raise ConfigError(f"no job at {root}")
        return job_status(root)

    finish("status", json_output, work)


# --- verify ------------------------------------------------------------------------------------------

RESEND_OPTION_NAMES = ("--api-key", "--rate", "--concurrency", "--batch-size", "--batch-bytes", "--max-retries",
                       "--retry-delay", "--timeout")


@main.command()
@click.argument("job", required=False)
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="The job's work directory.")
@click.option("--project-id", default=None, metavar="N",
              help="The PostHog project to ask: the number after /project/ in the app's URLs. Not needed for a job "
                   "sent with --host local.")
@click.option("--api-host", default=None, metavar="URL",
              help="PostHog's app/API URL. [default: from the job's host: us.i.posthog.com → us.posthog.com, "
                   "eu.i → eu, a self-hosted URL as is]")
@click.option("--sample", type=click.IntRange(min=0), default=200, show_default=True, metavar="N",
              help="How many of the job's merges ($identify, $create_alias) and distinct ids to check.")
@click.option("--wait", type=click.FloatRange(min=0), default=600, show_default=True, metavar="SECONDS",
              help="While events are missing and their counts still rise, ask again for up to this long "
                   "(PostHog's ingestion may lag).")
@click.option("--resend-missing", is_flag=True, default=False,
              help="Send the events of every (day, event) group that fell short again, byte-identical (what "
                   "arrived collapses), then verify again. Resumable; needs the project API key.")
@_apply_options([option for option in SEND_OPTIONS if option_names(option) & set(RESEND_OPTION_NAMES)])
@click.option("--quiet", "-q", is_flag=True, default=None, help="No progress bars.")
@click.option("--json", "json_to", is_flag=False, flag_value="-", default=None, metavar="[FILE]",
              help="Write the full report as JSON to FILE (alone, or as -: print it on stdout instead of the text).")
def verify(job: str | None, workdir: str | None, project_id: str | None, api_host: str | None, sample: int,
           wait: float, resend_missing: bool, json_to: str | None, quiet: bool | None, **send_options: Any) -> None:
    """Prove that what JOB sent landed in PostHog: per UTC day and event, the events the job sent against
    those PostHog holds with its $import_job_id; then whether a sample of the merges it asked for were made.
    Asks PostHog's query API with POSTHOG_PERSONAL_API_KEY (a personal API key, phx_…, with the query:read
    scope; read from the environment only). A job sent with --host local needs no key.

    \b
      export POSTHOG_PERSONAL_API_KEY=phx_...
      posthog-migrate verify JOB --project-id 12345
      posthog-migrate verify JOB --project-id 12345 --resend-missing

    Exit 0 when everything landed, 4 when events are missing or merges were not made, 1 when PostHog refused
    the questions (the message says what to fix).
    """
    from posthog_migrate.render import TqdmProgress
    from posthog_migrate.verification import verify_job

    json_output, json_file = json_to == "-", json_to if json_to not in (None, "-") else None
    root = Path(workdir) if workdir else Path(".posthog-migrate") / job if job else None
    if root is None:
        fail(ConfigError("say which job to verify: JOB (its name) or --workdir DIR"), "verify", json_output, json_file)
    stop = threading.Event()
    catcher = SignalCatcher(stop)
    catcher.install()
    options = {name: value for name, value in send_options.items() if value is not None}
    finish("verify", json_output, lambda: verify_job(
        root, project_id=project_id, api_host=api_host.rstrip("/") if api_host else None, sample=sample, wait=wait,
        resend_missing=resend_missing, send_options={**options, "quiet": quiet},
        progress=TqdmProgress(bars=not quiet), stop=stop, interface="command line"), catcher, json_file)


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
                   "error); lose (a 200 that keeps none or only part of the batch, for verify). Repeatable.")
@click.option("--fault-rate", type=float, default=0.0, show_default=True,
              help="After the script: chance that a request gets a random fault.")
@click.option("--fault-kinds", default="429,503,drop", show_default=True, help="Kinds for --fault-rate.")
@click.option("--seed", type=int, default=None, help="Seed for random faults (reproducible runs).")
@click.option("--ingestion-lag", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="SECONDS",
              help="Accepted events become queryable (by verify, through /api/projects/N/query/) only this long "
                   "after they were accepted, as in PostHog.")
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Serve in this many processes, each taking its turn of the connections, so that a fast "
                   "sender on the same machine is not held back by one server core (the benchmark uses "
                   "2). Not with --fault or --fault-rate.")
def serve(port: int, out: str, strict: bool, faults: tuple[str, ...], fault_rate: float, fault_kinds: str,
          seed: int | None, ingestion_lag: float, processes: int) -> None:
    """Run a local PostHog-compatible capture endpoint (/batch/, /capture/, /e/) for trials and tests, with the
    query endpoint verify asks (/api/projects/N/query/, over what it accepted).

    Ctrl-C or SIGTERM stops it and prints how many requests and events it took."""
    from posthog_migrate.capture import FaultPlan
    from posthog_migrate.capture import serve as serve_forever
    from posthog_migrate.capture.workers import WorkersGone

    mode = "strict, like PostHog's capture code" if strict else "lenient, like PostHog's docs"
    if faults or fault_rate:
        mode += f"; faults: {len(faults)} scripted, rate {fault_rate}"
    elif processes > 1:
        mode += f"; {processes} processes"
    if ingestion_lag:
        mode += f"; queryable {ingestion_lag:g} s after acceptance"
    where = f"appended to {out}" if out else "counted, not stored (add --out FILE to keep them)"

    def announce(url: str) -> None:  # the line tests and the benchmark wait for
        click.echo(f"Capture endpoint at {url} ({mode}). Accepted events are {where}. Ctrl-C stops.")

    # The server stops on KeyboardInterrupt, closing its out file and returning its counts: Ctrl-C raises it
    # again instead of ending the process at once (see posthog_migrate.entry), and so does SIGTERM (kill, a
    # supervisor, the benchmark's stop).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        kinds = [kind.strip() for kind in fault_kinds.split(",") if kind.strip()]
        plan = FaultPlan.parse(faults, fault_rate, kinds, seed) if faults or fault_rate else None
        summary = serve_forever(port=port, out_path=out, strict=strict, faults=plan, processes=processes,
                                ingestion_lag=ingestion_lag, on_ready=announce,
                                on_warning=lambda message: click.echo(message, err=True))
    except WorkersGone as gone:
        _echo_stopped(gone.summary)
        fail(gone)
    except MigrateError as error:
        fail(error)
    except OSError as error:
        fail(ConfigError(f"cannot listen on 127.0.0.1:{port}: {error}"))
    _echo_stopped(summary)


def _interrupt(_number: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _echo_stopped(summary: ServeSummary) -> None:
    """What serve took, once stopped; with several processes, each one's share of the requests."""
    stats = summary.stats
    line = (f"Stopped: {stats.requests} requests, {stats.events_accepted} events accepted, "
            f"{stats.requests_rejected} requests rejected")
    shares = summary.requests_per_process
    if shares:
        line += f" ({len(shares)} processes: {' + '.join('?' if n is None else str(n) for n in shares)} requests)"
    click.echo(f"{line}.")
    lost = shares.count(None)
    if lost:
        click.echo(f"{lost} worker(s) did not report their counts; the totals above leave them out.", err=True)
