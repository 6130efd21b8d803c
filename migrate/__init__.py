"""posthog-migrate: move historical analytics events into PostHog, sorted, deduplicable and resumable.

From Python (see the README's "From Python")::

    import posthog_migrate as pm
    result = pm.run("exports/2023/", format="amplitude", host="https://us.i.posthog.com", job="amp-2023")

``run``, ``inspect``, ``status`` and ``verify`` (posthog_migrate.api) and the result classes are imported on first use:
``import posthog_migrate`` stays light (no numpy, pyarrow or pandas), as the command line's ``--help`` does.

The pipeline's stages, one module each: ``sources`` (find and open inputs) → ``adapters`` (read rows,
per format) → ``mapping``/``event`` (canonical event, deterministic uuid, validation) → ``spool``
(bounded-memory sort) → ``batches`` (size-capped batches) → ``sender`` (HTTP) → ``checkpoint`` (resume).
``prepare`` and ``pipeline`` are the two phases; ``runner`` runs a job through them for ``cli`` (the command
line) and ``api`` alike; ``accounting`` keeps the books, ``results`` holds what a command did and ``render``
draws it.
"""

from typing import Any

from posthog_migrate.errors import (
    ConfigError,
    DamagedJob,
    DiskFull,
    ExitStatus,
    Interrupted,
    MigrateError,
    QueryFailed,
    SendFailed,
    UnbalancedBooks,
)

__version__ = "0.1.0"

# Where each lazily imported name lives.
_LAZY = {
    "run": "posthog_migrate.api", "inspect": "posthog_migrate.api", "status": "posthog_migrate.api",
    "verify": "posthog_migrate.api",
    "RunResult": "posthog_migrate.results", "InspectResult": "posthog_migrate.results",
    "StatusResult": "posthog_migrate.results", "VerifyResult": "posthog_migrate.results",
    "Progress": "posthog_migrate.render", "TqdmProgress": "posthog_migrate.render",
    "LogProgress": "posthog_migrate.render",
}

__all__ = ["ConfigError", "DamagedJob", "DiskFull", "ExitStatus", "Interrupted", "MigrateError", "QueryFailed",
           "SendFailed", "UnbalancedBooks", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'posthog_migrate' has no attribute {name!r}")
