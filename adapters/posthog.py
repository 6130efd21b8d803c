"""Events exported from another PostHog project, passed through with their own uuid.

JSON lines of captured events (``{"uuid","event","distinct_id","timestamp","properties",...}``), or the
CSV PostHog's UI exports (``properties`` as a JSON string, ``elements_chain``, ``person_id``...).
Fields that belong to the old project or to the old request (``team_id``, ``person_id``, ``sent_at``,
``offset``, the old project's token) are dropped: re-sending them would mis-time or mis-route events.
Distinct ids are trimmed; an event whose distinct_id PostHog will not merge through (``null``, ``0``...) is
rejected (``illegal_distinct_id``), and an ``$identify`` whose ``$anon_distinct_id`` is one is sent without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar

from posthog_migrate.adapters.base import Adapter, RowChunk, SourceFile, file_name, without_compression
from posthog_migrate.adapters.csv import read_csv, read_csv_header
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.distinct_ids import PassedOver, is_illegal_id
from posthog_migrate.event import Event, Rejection, json_object, normalise_uuid, parse_timestamp, uuid_from_content
from posthog_migrate.mapping import Filtered


def _is_csv(source: SourceFile) -> bool:
    return without_compression(file_name(source.uri)).endswith(".csv")


class PostHogAdapter(Adapter):
    name: ClassVar[str] = "posthog"
    extensions: ClassVar[tuple[str, ...]] = ()  # same endings as generic files: by its rows, or --format posthog
    source_tag: ClassVar[str] = "posthog"
    recognised_shape: ClassVar[str] = "a PostHog export (uuid, event, distinct_id, timestamp, and person_id or team_id)"

    @classmethod
    def recognises(cls, record: dict) -> bool:
        # person_id and team_id are what PostHog stores beside an event, never part of what is sent to capture.
        return (all(key in record for key in ("uuid", "event", "distinct_id", "timestamp"))
                and ("person_id" in record or "team_id" in record))

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        # CSV cells stay text: a PostHog CSV holds JSON strings and ids that must not become numbers.
        return read_csv(source, infer_types=False) if _is_csv(source) else read_json_lines(source)

    def columns(self, source: SourceFile) -> list[str] | None:
        return read_csv_header(source) if _is_csv(source) else None

    def to_events(self, record: dict) -> list[Event]:
        name = record.get("event")
        if not isinstance(name, str) or not name:
            raise Rejection("missing_event_name", "the row has no 'event'")
        if name in self.mapper.drop_events:
            raise Filtered(f"event {name!r} dropped by the mapping")
        properties = dict(json_object(record.get("properties"), "'properties'"))
        distinct_id = record.get("distinct_id")
        if distinct_id in (None, ""):
            distinct_id = properties.get("distinct_id")
        if distinct_id in (None, "") or isinstance(distinct_id, dict | list | bool):
            raise Rejection("missing_distinct_id", "the row has no usable 'distinct_id'")
        if isinstance(distinct_id, float) and not math.isfinite(distinct_id):
            raise Rejection("missing_distinct_id", f"'distinct_id' is {distinct_id!r}, a number that is no id")
        distinct_id = str(distinct_id).strip()
        properties.pop("distinct_id", None)
        properties.pop("token", None)  # the old project's key must not travel
        timestamp_us = parse_timestamp(record.get("timestamp"), "auto", self.mapper.zone)
        self.mapper.apply_time_filters(timestamp_us)
        for key in ("$set", "$set_once"):
            value = record.get(key)
            if isinstance(value, str) and value:
                value = json_object(value, repr(key))
            if value and key not in properties:
                properties[key] = value
        elements = record.get("elements_chain")
        if elements and "$elements_chain" not in properties:
            properties["$elements_chain"] = elements
        if record.get("ip") and "$ip" not in properties:
            properties["$ip"] = record["ip"]
        passed: PassedOver = ()
        anonymous = properties.get("$anon_distinct_id")
        if name == "$identify" and isinstance(anonymous, str | int) and is_illegal_id(str(anonymous).strip()):
            # PostHog refuses that merge: send the $identify for its person properties, without it.
            passed = (("$anon_distinct_id", str(anonymous)),)
            del properties["$anon_distinct_id"]
        source_uuid = record.get("uuid")
        if source_uuid not in (None, ""):
            event_uuid = normalise_uuid(source_uuid)
        else:
            event_uuid = uuid_from_content(self.source_tag, distinct_id, timestamp_us, name, properties)
        return [Event(name, distinct_id, timestamp_us, event_uuid, properties, illegal_ids=passed)]
