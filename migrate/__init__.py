"""posthog-migrate: move historical analytics events into PostHog, sorted, deduplicable and resumable.

The pipeline's stages, one module each: ``sources`` (find and open inputs) → ``adapters`` (read rows,
per format) → ``mapping``/``event`` (canonical event, deterministic uuid, validation) → ``spool``
(bounded-memory sort) → ``batches`` (size-capped batches) → ``sender`` (HTTP) → ``checkpoint`` (resume).
``pipeline`` wires them together; ``cli`` is the command line.
"""

__version__ = "0.1.0"
