"""Errors that end a command with a message for a person, never a traceback, and the exit statuses.

The command line turns each into its message and exit code (see ``posthog_migrate.cli``); the Python API
raises them. The hierarchy::

    MigrateError            exit 1   a problem the user can fix; str() is the whole message
    ├── ConfigError         exit 2   wrong options, mapping or inputs, found before anything was sent
    │   └── DamagedJob      exit 2   the work directory holds what the job did not write there
    ├── SendFailed          exit 1   the server refused or stayed unreachable; the checkpoint is saved
    ├── DiskFull            exit 1   a write found no space; everything before it is kept
    ├── UnbalancedBooks     exit 1   rows read ≠ sent + rejected + filtered at the end of a run
    ├── QueryFailed         exit 1   PostHog's query API refused verify's questions (key, scope, project)
    └── Interrupted         exit 130 (143 for SIGTERM) the run was stopped; the checkpoint is saved

``verify`` exits 4 (NOT_ALL_LANDED) when PostHog lacks events the job sent or refused merges it asked for:
that is its finding, returned in its result, not an error.

An error raised by a run carries ``result``: the run's counts so far (a ``RunResult``), or None when it
stopped before its job was opened.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any


class ExitStatus(enum.IntEnum):
    DONE = 0
    FAILED = 1
    USAGE = 2
    DONE_WITH_REJECTS = 3
    NOT_ALL_LANDED = 4  # verify: events missing in PostHog, or merges it refused
    INTERRUPTED_SIGINT = 130
    INTERRUPTED_SIGTERM = 143


class MigrateError(Exception):
    """A problem the user can fix; ``str()`` is the whole message: what is wrong, where, and the fix."""

    exit_code = ExitStatus.FAILED
    # What the run had done when it stopped (a posthog_migrate.results.RunResult), set by the run that raised it.
    result: Any = None


class ConfigError(MigrateError):
    """Wrong options, mapping or inputs, found before anything was sent (exit code 2)."""

    exit_code = ExitStatus.USAGE


class SendFailed(MigrateError):
    """The server refused or stayed unreachable; the checkpoint is saved, so a re-run resumes (exit 1)."""

    exit_code = ExitStatus.FAILED


class DiskFull(MigrateError):
    """A write found no space left; every write the job trusts is atomic or checkpointed, so a re-run resumes."""

    exit_code = ExitStatus.FAILED


class UnbalancedBooks(MigrateError):
    """At the end of a run, rows read ≠ sent + rejected + filtered: something changed the work directory."""

    exit_code = ExitStatus.FAILED


class QueryFailed(MigrateError):
    """PostHog's query API refused verify's questions (a bad key, a missing scope, no such project) or kept
    failing; the message says what to fix (exit 1)."""

    exit_code = ExitStatus.FAILED


class Interrupted(MigrateError):
    """The run is stopping (Ctrl-C, SIGTERM, the caller's stop Event): what was acknowledged is checkpointed.

    Raised bare inside the pipeline (a batch not acknowledged, a step left); the run raises it again with the
    message and its counts so far.
    """

    exit_code = ExitStatus.INTERRUPTED_SIGINT


class PullFailed(MigrateError):
    """A source's export API kept failing or refused a chunk; every download completed so far is kept, so a
    re-run continues with the chunks still missing (exit 1)."""

    exit_code = 1


class DamagedJob(ConfigError):
    """The work directory holds what the job did not write there: a run file truncated, deleted or changed,
    or impossible values in ``state.json``. Nothing is sent from it; ``--restart`` rebuilds it (exit 2)."""

    def __init__(self, root: Path, problems: list[str]):
        self.root = root
        self.problems = problems
        super().__init__(
            f"the work directory {root} is damaged: {'; '.join(problems)}. Nothing more is sent from it. "
            "Run the same command with --restart to rebuild the job from its sources (events already "
            "sent are sent again with the same uuids, which PostHog collapses)."
        )


def error_kind(error: BaseException) -> str:
    """The name of the error's class in this module's hierarchy (an internal subclass, such as the sender's
    FatalResponse, is named by the documented class it is): what --json and the job's log call it."""
    documented = next((kind for kind in type(error).__mro__ if kind.__module__ == __name__), type(error))
    return documented.__name__


def closest_key(key: str, known: list[str]) -> str | None:
    """The known key ``key`` is most likely a misspelling of (``untill`` → ``until``), or None."""
    import difflib  # only on the error path

    matches = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return matches[0] if matches else None


def describe_unknown_keys(unknown: list[str], known: list[str]) -> str:
    """``'untill' (did you mean 'until'?), 'x'``: each unknown key with its closest known one, for a message."""
    described = []
    for key in sorted(unknown):
        close = closest_key(key, known)
        described.append(f"{key!r} (did you mean {close!r}?)" if close else repr(key))
    return ", ".join(described)


def refuse_unknown_keys(table: dict, known: list[str], where: str) -> None:
    """Raise ConfigError when ``table`` holds keys no one reads: a misspelt setting must not be ignored silently
    (``[filter] untill`` would send the events it was meant to keep out). ``where`` names the table."""
    unknown = [str(key) for key in table if key not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {describe_unknown_keys(unknown, known)}; "
                          f"the known keys are: {', '.join(sorted(known))}")
