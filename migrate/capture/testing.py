"""pytest fixtures that start the local capture server on 127.0.0.1, for this project's tests and yours.

Opt in from a test module or your top-level ``conftest.py``::

    pytest_plugins = ["posthog_migrate.capture.testing"]

    def test_my_exporter_sends_what_posthog_accepts(capture_server):
        my_exporter.send(host=capture_server.url, api_key="phc_test")
        assert [event["event"] for event in capture_server.events] == ["signed_up"]
        assert capture_server.requests[0].historical_migration is True

    def test_my_exporter_retries_a_rate_limit(make_server):
        server = make_server(["429:retry-after=1"], strict=False)
        ...

It is not a ``pytest11`` entry point on purpose: that would load it into every pytest run of every
environment posthog-migrate is installed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from posthog_migrate.capture.faults import FaultPlan
from posthog_migrate.capture.server import CaptureServer


@pytest.fixture
def capture_server() -> Iterator[CaptureServer]:
    """A strict capture server on a free port, keeping what it accepts in memory; stopped after the test."""
    with CaptureServer() as server:
        yield server


@pytest.fixture
def make_server() -> Iterator[Callable[..., CaptureServer]]:
    """Start capture servers with options; all are stopped after the test.

    ``make_server(faults=None, *, rate=0.0, kinds=("429", "503", "drop"), seed=None, **options)``:
    ``faults`` is a FaultPlan or a script of fault specs (``["503", "ok", "drop"]``), followed by random
    faults of ``kinds`` at ``rate``; ``options`` are CaptureServer's (``strict``, ``out_path``,
    ``keep_in_memory``, ``quiet``...).
    """
    servers: list[CaptureServer] = []

    def start(faults: FaultPlan | Sequence[str] | None = None, *, rate: float = 0.0,
              kinds: Sequence[str] = ("429", "503", "drop"), seed: int | None = None,
              **options: Any) -> CaptureServer:
        plan = faults if isinstance(faults, FaultPlan) else None
        if plan is None and (faults or rate):
            plan = FaultPlan.parse(faults or (), rate, kinds, seed)
        server = CaptureServer(faults=plan, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
