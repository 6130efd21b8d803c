"""Errors that end a command with a message for a person, never a traceback.

The CLI turns each into its message and exit code (see ``migrate.cli``); library users can catch them.
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
