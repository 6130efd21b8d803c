"""Helpers shared by the platform adapters' tests: sources, rows, event views, the junk-row property."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import strategies as st
from posthog_migrate.adapters.base import Adapter, BadRow, SourceFile
from posthog_migrate.event import Event, Rejection, validate
from posthog_migrate.mapping import Filtered

# What validate() may refuse in a property test although the adapter did its job: judged by the pipeline only.
PIPELINE_ONLY_REASONS = {"timestamp_in_future", "bad_timestamp", "unserialisable", "distinct_id_too_long"}


def source(path: Path | str, index: int = 0) -> SourceFile:
    """A SourceFile for a test file or URI (a local file's real size and mtime when it exists)."""
    uri = str(path)
    stat = Path(uri).stat() if "://" not in uri and Path(uri).exists() else None
    return SourceFile(uri, index, stat.st_size if stat else 0, stat.st_mtime_ns if stat else 0)


def rows_of(chunks) -> list[tuple[int, dict | BadRow]]:
    return [item for chunk in chunks for item in chunk]


def as_json(events: list[Event]) -> list[dict]:
    """Each event as sent, beside what the pipeline reads from it (source name, link, added)."""
    return [{"json": json.loads(e.to_json()), "source_event": e.source_event,
             "link": list(e.link) if e.link else None, "added": e.added} for e in events]


def as_sent(events: list[Event]) -> list[dict]:
    """Like :func:`as_json`, with the event's own fields at the top level beside the pipeline's."""
    return [{**view["json"], **{k: v for k, v in view.items() if k != "json"}} for view in as_json(events)]


def events_of(adapter: Adapter, path: Path) -> list[Event]:
    """Every event of a file whose rows must all be readable."""
    out = []
    for _, row in rows_of(adapter.read(source(path))):
        assert isinstance(row, dict), row
        out.extend(adapter.to_events(row))
    return out


def json_values(scalars: st.SearchStrategy) -> st.SearchStrategy:
    """JSON-like values (lists and objects) built from ``scalars``."""
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)


def assert_one_valid_event_or_a_rejection(adapter: Adapter, row: dict, now_us: int) -> None:
    """The property every adapter keeps for any row: one event PostHog accepts, or a Rejection/Filtered."""
    try:
        events = adapter.to_events(row)
    except (Rejection, Filtered):
        return
    assert len(events) == 1 and not events[0].added
    try:
        validate(events[0], now_us)
    except Rejection as rejection:
        assert rejection.reason in PIPELINE_ONLY_REASONS, (rejection.reason, row)
