"""The last step of mapping, the same for every format: renames, drops, and the import's tags.

Adapters know their platform; this step knows the user's wishes. It runs on the events an adapter
returns for one row, before validation, so a renamed event is validated as what will be sent.
"""

from __future__ import annotations

from posthog_migrate.event import Event
from posthog_migrate.mapping import ColumnMapping, Filtered

# Every event says which import brought it and from where, so re-runs and sources can be told apart
# (PostHog's own importer sets $import_job_id too).
IMPORT_SOURCE_PROPERTY = "$import_source"
IMPORT_JOB_PROPERTY = "$import_job_id"


class EventFinisher:
    def __init__(self, mapping: ColumnMapping, source_tag: str, job_id: str):
        self.source_tag = source_tag
        self.job_id = job_id
        self.drop_events = frozenset(mapping.drop_events)
        self.rename_events = dict(mapping.rename_events)
        self.drop_properties = frozenset(mapping.drop_properties)
        self.rename_properties = dict(mapping.rename_properties)
        # No rename or drop at all (the usual job): finish only tags the events.
        self.tags_only = not (self.drop_events or self.rename_events or self.drop_properties or self.rename_properties)

    def finish(self, events: list[Event]) -> list[Event]:
        """Apply the transforms to one row's events (its own event last); Filtered if that one is dropped."""
        if self.tags_only:
            for event in events:
                properties = event.properties
                properties[IMPORT_SOURCE_PROPERTY] = self.source_tag
                properties[IMPORT_JOB_PROPERTY] = self.job_id
            return events
        own = events[-1]
        if own.event in self.drop_events or self.rename_events.get(own.event) in self.drop_events:
            raise Filtered(f"event {own.event!r} dropped by the mapping")
        finished = []
        for event in events:
            if event.event in self.drop_events:
                continue
            event.event = self.rename_events.get(event.event, event.event)
            properties = event.properties
            if self.drop_properties or self.rename_properties:
                properties = {
                    self.rename_properties.get(key, key): value
                    for key, value in properties.items() if key not in self.drop_properties
                }
            properties[IMPORT_SOURCE_PROPERTY] = self.source_tag
            properties[IMPORT_JOB_PROPERTY] = self.job_id
            event.properties = properties
            finished.append(event)
        return finished
