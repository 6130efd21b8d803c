"""Errors that end a command with a message for a person, never a traceback.

The CLI turns each into its message and exit code (see ``posthog_migrate.cli``); library users can catch them.
"""

from __future__ import annotations

from pathlib import Path


class MigrateError(Exception):
    """A problem the user can fix; ``str()`` is the whole message: what is wrong, where, and the fix."""

    exit_code = 1


class ConfigError(MigrateError):
    """Wrong options, mapping or inputs, found before anything was sent (exit code 2)."""

    exit_code = 2


class SendFailed(MigrateError):
    """The server refused or stayed unreachable; the checkpoint is saved, so a re-run resumes (exit 1)."""

    exit_code = 1


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
