"""Re-reading a job's rejected rows, to send them after the mapping (or the server) was fixed.

``posthog-migrate retry-rejects`` writes the retriable lines of a job's ``rejects.jsonl`` to an input
file and migrates it as a job of its own. Rows the mapping refused are mapped again, by the original
job's adapter with the (possibly fixed) mapping; events the server refused are passed through as they
were sent, uuid and all. Rows that could not even be read (bad JSON, wrong field count) cannot be
retried from the rejects file: the source file must be fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import ClassVar

from posthog_migrate.adapters.base import Adapter, RowChunk, SourceFile
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.adapters.posthog import PostHogAdapter
from posthog_migrate.event import Event
from posthog_migrate.mapping import ColumnMapping

SERVER_REJECTED = "server_rejected"


def is_retriable(reject: dict) -> bool:
    """A reject whose original is a record (not unreadable text) can be mapped again."""
    return isinstance(reject.get("original"), dict)


class RejectsAdapter(Adapter):
    """Reads lines of a rejects file; maps each one's ``original`` like the job it came from."""

    name: ClassVar[str] = "rejects"

    def __init__(self, mapping: ColumnMapping, original: type[Adapter]):
        self.rows = original(mapping)  # the original format's adapter, which reads (and checks) [source]
        # The [source] settings (and the profile tables) belong to the original format, not to the rejects file or
        # the events' adapter.
        without_source = replace(mapping, source_options=(), profiles=(), group_profiles=())
        super().__init__(without_source)
        self.events = PostHogAdapter(without_source)

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        return read_json_lines(source)

    def to_events(self, record: dict) -> list[Event]:
        original = record["original"]
        if record.get("reason") == SERVER_REJECTED:
            return self.events.to_events(original)
        return self.rows.to_events(original)
