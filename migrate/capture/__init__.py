"""A local stand-in for PostHog's capture service: trials, dry runs and tests against real HTTP.

A migration should be tried before it is pointed at a real project, and its sender must be tested
against the answers PostHog really gives, faults included. This server accepts the same requests as
PostHog's capture (``/batch/``, ``/capture/``, ``/e/``, ``/i/v0/e/``), judges them by the rules the
capture *code* applies (see ../shared/reference/posthog-ingestion-facts.md) and keeps what it accepts:
in memory for tests, as JSON lines in a file for people. A :class:`FaultPlan` makes it misbehave on
purpose (rate limits, 5xx, slow answers, dropped connections, partial 413s, and the hosts that are not
PostHog: web pages, redirects, quota limits, errors echoing the request) so retries, splits, stops and
resumes can be exercised on 127.0.0.1.

It serves ``posthog-migrate serve``, the in-process target of ``posthog-migrate run --host local`` and
the test-suite; adapter authors get its pytest fixtures with ``pytest_plugins = ["posthog_migrate.capture.testing"]``.

Its modules: ``rules`` (what capture accepts and refuses), ``faults`` (misbehaving on purpose), ``http``
(connections, routing by path, answers), ``server`` (:class:`CaptureServer`, :func:`serve`), ``workers``
(``serve --processes``), ``testing`` (the pytest fixtures). It uses nothing of the pipeline but
``posthog_migrate.errors``: the pipeline imports it, never the reverse.
"""

from posthog_migrate.capture.faults import FaultPlan
from posthog_migrate.capture.server import CaptureServer, CaptureStats, RequestRecord, serve

__all__ = ["CaptureServer", "CaptureStats", "FaultPlan", "RequestRecord", "serve"]
