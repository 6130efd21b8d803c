"""Errors that end a command with a message for a person, never a traceback.

The CLI turns each into its message and exit code (see ``migrate.cli``); library users can catch them.
"""

from __future__ import annotations


class MigrateError(Exception):
    """A problem the user can fix; ``str()`` is the whole message: what is wrong, where, and the fix."""

    exit_code = 1


class ConfigError(MigrateError):
    """Wrong options, mapping or inputs, found before anything was sent (exit code 2)."""

    exit_code = 2


class SendFailed(MigrateError):
    """The server refused or stayed unreachable; the checkpoint is saved, so a re-run resumes (exit 1)."""

    exit_code = 1
