"""The Python API: the command line's ``run``, ``inspect``, ``status`` and ``verify`` for notebooks, scripts and
orchestrators.

    import posthog_migrate as pm

    result = pm.run("exports/2023/", format="amplitude", host="https://us.i.posthog.com", job="amp-2023")
    result.sent, result.rejected, result.filtered, result.rejects_path, result.exit_status
    report = pm.inspect(df, mapping={"columns": {"event": "action", "distinct_id": "user"}})

Each takes the command line's settings as keyword arguments under their Settings names (``rate=0``,
``batch_size=1000``, ``workdir=...``), and a mapping as a dict of the mapping file's tables or a file's
path; the job directory, resume, rejects and guarantees are the command line's (the same code runs them:
posthog_migrate.runner). Inputs may also be in memory (see posthog_migrate.in_memory). Nothing here prints,
exits or installs a signal handler: a result is returned (``exit_status`` 0, or 3 with rows rejected) or
a posthog_migrate.errors error raised, with the command line's message, carrying the run's counts so far.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from posthog_migrate.config import KEYWORDS, WORKDIR_ROOT, Settings, resolve_settings
from posthog_migrate.errors import ConfigError, describe_unknown_keys
from posthog_migrate.in_memory import describe, recorded_inputs, split_inputs, spool
from posthog_migrate.job import Job, open_job
from posthog_migrate.render import Progress, progress_from
from posthog_migrate.results import InspectResult, RunResult, StatusResult, VerifyResult, job_status
from posthog_migrate.runner import inspect_job, run_job
from posthog_migrate.sources import SPOOLED_INPUTS

# The settings given as keyword arguments (``**options``): all but those with arguments of their own.
OPTIONS = tuple(sorted({f.name for f in fields(Settings)}
                       - {"sources", "mapping_path", "mapping_tables", "host", "api_key", "job", "format"}))


def run(source_or_sources: Any, *, host: str | None, api_key: str | None = None, job: str | None = None,
        mapping: dict | str | os.PathLike | None = None, format: str = "auto", progress: Any = None,
        stop: threading.Event | None = None, **options: Any) -> RunResult:
    """Migrate ``source_or_sources`` into PostHog at ``host``, as ``posthog-migrate run`` does.

    ``source_or_sources``: a path (file, folder, glob or s3:// URI), a pandas DataFrame, a pyarrow Table or
    RecordBatchReader, an iterable of dicts, or a list of these; in-memory data needs ``job=`` (it is kept in
    the job's work directory), and ``None`` resumes the job ``job=`` names from that copy. ``host``: a PostHog
    URL, ``"local"`` (the built-in capture server) or None with ``dry_run=True``. ``api_key`` falls back to
    POSTHOG_API_KEY. ``mapping``: the mapping file's tables as a dict, or its path. ``progress``: None
    (silent), ``"tqdm"`` (bars; widgets in a notebook), ``"log"`` (lines through :mod:`logging`) or a Progress.
    ``stop``: an Event that, once set, stops the run gracefully (Interrupted; the checkpoint is saved).
    ``options``: any other setting of the command line, by its Settings name (``rate=0``, ``batch_size=500``).

    Returns a RunResult (``exit_status`` 0, or 3 when rows were rejected); raises ConfigError, SendFailed,
    DiskFull, UnbalancedBooks or Interrupted (all MigrateError) carrying the RunResult so far as ``.result``.
    """
    paths, in_memory = split_inputs(source_or_sources)
    settings = _settings("run", paths, options, host=host, api_key=api_key, job=job, format=format,
                         mapping=mapping)
    named = settings.job or settings.workdir
    if in_memory and not named:
        raise ConfigError(f"{describe(in_memory[0])} needs job=NAME: it is copied to the job's work directory, "
                          "where a resume finds it (pm.run(None, job=NAME, ...) resumes without it)")
    if source_or_sources is None:
        if not named:
            raise ConfigError("pm.run(None, ...) resumes a job from its work directory: name it with job= (or "
                              "workdir=), or give the data as the first argument")
        settings = replace(settings, sources=recorded_inputs(settings.job_directory()))
    shown = progress_from(progress, settings.quiet)

    def open_the_job(progress: Progress, stop: threading.Event) -> Job:
        folder = settings.job_directory() / SPOOLED_INPUTS
        copies = [str(spool(data, folder, settings.format, progress)) for data in in_memory]
        return open_job(replace(settings, sources=(*settings.sources, *copies)), {}, progress=progress, stop=stop)

    return run_job(settings, open_the_job, stop=stop, progress=shown, spelling=KEYWORDS, interface="python")


def inspect(source_or_sources: Any, *, mapping: dict | str | os.PathLike | None = None, format: str = "auto",
            progress: Any = None, **options: Any) -> InspectResult:
    """What a run of ``source_or_sources`` would send and refuse, as ``posthog-migrate inspect`` reports it:
    everything read and mapped, nothing sent, nothing written (in-memory data goes through a temporary
    folder). Arguments as for :func:`run`, without a host."""
    paths, in_memory = split_inputs(source_or_sources)
    if not paths and not in_memory:
        raise ConfigError("pm.inspect() needs the data: a path, a DataFrame, an Arrow table or records")
    settings = _settings("inspect", paths, options, format=format, mapping=mapping)
    shown = progress_from(progress, settings.quiet)
    with tempfile.TemporaryDirectory(prefix="posthog-migrate-inspect-") as folder:
        copies = {str(spool(data, Path(folder), settings.format, shown)): f"(in-memory input {number}: "
                  f"{describe(data)})" for number, data in enumerate(in_memory, start=1)}
        result = inspect_job(replace(settings, sources=(*settings.sources, *copies)), {}, shown)
    for example in result.examples:  # the copies are gone: name the data instead
        example["file"] = copies.get(example["file"], example["file"])
    return result


def status(job_or_workdir: str | os.PathLike) -> StatusResult:
    """Where a job stands, as ``posthog-migrate status`` tells it: a job's name (its work directory is
    ``.posthog-migrate/NAME``) or, as a Path or a text with a ``/``, its work directory."""
    root = _job_root(job_or_workdir)
    if not root.is_dir():
        raise ConfigError(f"no job at {root}")
    return job_status(root)


def verify(job_or_workdir: str | os.PathLike, *, project_id: str | int | None = None, api_host: str | None = None,
           sample: int = 200, wait: float = 600, resend_missing: bool = False, api_key: str | None = None,
           progress: Any = None, stop: threading.Event | None = None, **options: Any) -> VerifyResult:
    """Prove that what a job sent landed in PostHog, as ``posthog-migrate verify`` does: a job's name or work
    directory (as for :func:`status`). The personal API key is read from POSTHOG_PERSONAL_API_KEY only.
    ``resend_missing=True`` sends the short (day, event) groups again (with ``api_key``, else POSTHOG_API_KEY, and
    the send settings in ``options``: ``rate``, ``concurrency``...), then verifies again.

    Returns a VerifyResult: ``exit_status`` 0 when everything landed, 4 when events are missing or merges were
    not made. Raises ConfigError, QueryFailed or Interrupted, carrying the VerifyResult so far."""
    from posthog_migrate.verification import verify_job

    unknown = [key for key in options if key not in RESEND_OPTIONS]
    if unknown:
        raise ConfigError(f"pm.verify(): unknown keyword argument(s) "
                          f"{describe_unknown_keys(unknown, sorted(RESEND_OPTIONS))}; the send settings of a resend "
                          f"are: {', '.join(sorted(RESEND_OPTIONS))}")
    return verify_job(_job_root(job_or_workdir), project_id=None if project_id is None else str(project_id),
                      api_host=api_host, sample=sample, wait=wait, resend_missing=resend_missing,
                      send_options={**options, "api_key": api_key}, progress=progress_from(progress), stop=stop,
                      spelling=KEYWORDS, interface="python")


# The settings of a resend (verify's resend_missing=True) given as keyword arguments.
RESEND_OPTIONS = ("rate", "concurrency", "batch_size", "batch_bytes", "max_retries", "retry_delay", "timeout")


def _job_root(job_or_workdir: str | os.PathLike) -> Path:
    """A job's name (its work directory is ``.posthog-migrate/NAME``) or, as a Path or a text with a ``/``, its
    work directory."""
    if isinstance(job_or_workdir, os.PathLike) or "/" in job_or_workdir or os.sep in job_or_workdir:
        return Path(job_or_workdir)
    return Path(WORKDIR_ROOT) / job_or_workdir


def _settings(function: str, paths: list[str], options: dict[str, Any], *,
              mapping: dict | str | os.PathLike | None, **named: Any) -> Settings:
    """The settings of a call, checked as the command line's are, each wrong value named as its argument."""
    unknown = [key for key in options if key not in OPTIONS]
    if unknown:
        known = sorted({*OPTIONS, *named, "mapping", "progress", *(("stop",) if function == "run" else ())})
        raise ConfigError(f"pm.{function}(): unknown keyword argument(s) {describe_unknown_keys(unknown, known)}; "
                          f"the known ones are: {', '.join(known)}")
    if mapping is None:
        mapping_settings = {}
    elif isinstance(mapping, str | os.PathLike):
        mapping_settings = {"mapping_path": os.fspath(mapping)}
    elif isinstance(mapping, dict):
        mapping_settings = {"mapping_tables": mapping}
    else:
        raise ConfigError(f"mapping= takes the mapping file's tables as a dict (e.g. {{'columns': {{'event': "
                          f"'action'}}}}) or a mapping file's path; got a {type(mapping).__name__}")
    return resolve_settings({**options, **named, **mapping_settings, "sources": tuple(paths)}, KEYWORDS)
