"""The last step of mapping, the same for every format: renames, drops, person properties, and the import's tags.

Adapters know their platform; this step knows the user's wishes. It runs on the events an adapter
returns for one row, before validation, so a renamed event is validated as what will be sent.

``[person] mode`` (``--person-properties``) decides what the history does to PostHog's persons. PostHog applies
``$set`` in the order it ingests events, so an import into a project that already has live data would write
old values over newer ones (PostHog issue #37000). ``set_once`` turns every ``$set`` into a ``$set_once`` (a
person gets the values it lacks, and keeps those it has); ``skip`` sends no person properties at all, and filters
the events that only set them (profiles' and Heap users' ``$set``).
"""

from __future__ import annotations

from posthog_migrate.event import Event
from posthog_migrate.mapping import ColumnMapping, Filtered

# Every event says which import brought it and from where, so re-runs and sources can be told apart
# (PostHog's own importer sets $import_job_id too).
IMPORT_SOURCE_PROPERTY = "$import_source"
IMPORT_JOB_PROPERTY = "$import_job_id"
PERSON_SKIP_RULE = "$set events ([person] mode = \"skip\": no person properties)"


class EventFinisher:
    def __init__(self, mapping: ColumnMapping, source_tag: str, job_id: str):
        self.source_tag = source_tag
        self.job_id = job_id
        self.drop_events = frozenset(mapping.drop_events)
        self.rename_events = dict(mapping.rename_events)
        self.drop_properties = frozenset(mapping.drop_properties)
        self.rename_properties = dict(mapping.rename_properties)
        self.person_mode = mapping.person_mode
        self.drop_group_types = frozenset(mapping.drop_group_types)
        # No rename or drop at all (the usual job): finish only tags the events.
        self.tags_only = not (self.drop_events or self.rename_events or self.drop_properties or self.rename_properties
                              or self.drop_group_types or self.person_mode != "set")

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
        if (rule := self._filtered_by(own)) is not None:
            raise Filtered(rule)
        finished = []
        for event in events:
            if event.event in self.drop_events or self._filtered_by(event) is not None:
                continue
            event.event = self.rename_events.get(event.event, event.event)
            properties = event.properties
            if self.drop_properties or self.rename_properties:
                properties = {
                    self.rename_properties.get(key, key): value
                    for key, value in properties.items() if key not in self.drop_properties
                }
            if self.person_mode != "set":
                self._person_properties(properties)
            if self.drop_group_types and isinstance(properties.get("$groups"), dict):
                groups = {t: key for t, key in properties["$groups"].items() if t not in self.drop_group_types}
                if groups:
                    properties["$groups"] = groups
                else:
                    del properties["$groups"]
            properties[IMPORT_SOURCE_PROPERTY] = self.source_tag
            properties[IMPORT_JOB_PROPERTY] = self.job_id
            event.properties = properties
            finished.append(event)
        return finished

    def _filtered_by(self, event: Event) -> str | None:
        """The rule that keeps ``event`` from being sent: a $set under mode skip, or a dropped group type's
        $groupidentify; None when it is sent."""
        if event.event == "$set" and self.person_mode == "skip":
            return PERSON_SKIP_RULE
        if event.event == "$groupidentify" and event.properties.get("$group_type") in self.drop_group_types:
            return (f"group type {event.properties['$group_type']!r} dropped by the mapping "
                    "([transform] drop_group_types)")
        return None

    def _person_properties(self, properties: dict) -> None:
        """[person] mode: ``set_once`` makes the $set a $set_once (the $set's values win, as PostHog applies $set
        after $set_once); ``skip`` removes both."""
        person_set = properties.pop("$set", None)
        if self.person_mode == "skip":
            properties.pop("$set_once", None)
        elif isinstance(person_set, dict) and person_set:
            set_once = properties.get("$set_once")
            properties["$set_once"] = {**set_once, **person_set} if isinstance(set_once, dict) else person_set
