"""Mixpanel raw exports: JSON lines of ``{"event": ..., "properties": {...}}``, plain or gzip'd.

Mapping (../shared/reference/source-formats.md, "Mixpanel"), with these choices where it is silent:

- Time: ``properties.time`` in epoch seconds (ms above 1e10), kept to the microsecond when the export
  has fractions. Projects created before 2023 wrote it in the project's timezone: the number is the
  local wall clock encoded as if it were UTC. With ``--source-timezone`` the wall clock is read in that
  zone with its real DST rules. A wall-clock time that happens twice (DST ends) is the first of the two;
  one that does not exist (DST starts) is read with the offset in force before the change. Without the
  option (UTC) nothing moves. An ISO string without an offset is read in that zone too.
- uuid: UUIDv5 of ``$insert_id`` in PostHog's importer's namespace (``UUID(bytes=b"posthog_mixpanel")``),
  so both tools' imports of one row collapse in PostHog; without ``$insert_id``, the row's content.
- Identity: ``distinct_id`` (canonical after merges), else ``$user_id``, else ``$device_id``.
  Mixpanel's ``$identify`` → PostHog ``$identify`` (``distinct_id = $identified_id``,
  ``$anon_distinct_id = $anon_id``); ``$create_alias`` → ``$create_alias`` (``alias``); ``$merge`` →
  ``$create_alias`` from ``$distinct_ids`` (the row's ``distinct_id`` keeps its id, each other id is an
  alias: one event per other id, the extra ones ``added``). They are rebuilt with only the ids and the
  geo fields; without two different ids they are filtered (a merge of one id does nothing); a
  ``$merge`` of more than 256 ids is rejected (``too_many_events``: 255 events per row at most).
- ``$user_id`` + ``$device_id`` give the row's ``link`` as they are. Note that newer Mixpanel SDKs send
  anonymous events as ``distinct_id = "$device:<$device_id>"``; in a resolved export those events carry
  the user's canonical id anyway.
- Properties: renamed and dropped as the reference lists; also ``$app_build_number`` → ``$app_build``
  and ``$carrier`` → ``$network_carrier`` (PostHog's mobile SDKs' names), and the old project's
  ``token`` is dropped. ``$current_url`` also gives ``$host``/``$pathname`` unless Mixpanel's
  ``current_domain``/``current_url_path`` say otherwise. The export has no IP: every event carries
  ``$geoip_disable`` and Mixpanel's own geo.
- Properties named like PostHog's reserved objects (``$set``, ``$set_once``, ``$group_set``, ``$groups``)
  but of the wrong shape are dropped: PostHog would refuse the whole event for them.
"""

from __future__ import annotations

import math
import re
import uuid as uuid_module
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
from posthog_migrate.adapters.base import Adapter, RowChunk, SourceFile
from posthog_migrate.adapters.common import event_name, geo_properties, is_empty, probe_rows, url_properties
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.event import (
    MAX_TIMESTAMP_US,
    MIN_TIMESTAMP_US,
    Event,
    Rejection,
    number_id_text,
    parse_timestamp,
    uuid5_text,
    uuid_from_content,
)
from posthog_migrate.mapping import DEFAULT_TIMESTAMP_COLUMNS, ColumnMapping, Filtered
from posthog_migrate.spool import MAX_EVENTS_PER_ROW

# PostHog's importer's namespace (706f7374-686f-675f-6d69-7870616e656c): fixed forever.
MIXPANEL_NAMESPACE = uuid_module.UUID(bytes=b"posthog_mixpanel")
# For the extra $create_alias events of a $merge of more than two ids.
MERGE_NAMESPACE = uuid_module.UUID("c4e2f1a0-3b5d-5c7e-8f9a-1b2c3d4e5f60")

EVENT_NAMES = {"$mp_web_page_view": "$pageview", "$merge": "$create_alias"}
IDENTITY_EVENTS = frozenset({"$identify", "$create_alias", "$merge"})
# Mixpanel's bookkeeping, and fields that become the event's own parts (time, distinct_id) or its geo.
DROPPED_PROPERTIES = frozenset({
    "$mp_api_endpoint", "mp_processing_time_ms", "$mp_api_timestamp_ms", "$geo_source",
    "time", "distinct_id", "token", "$city", "$region", "mp_country_code",
})
RENAMED_PROPERTIES = (
    ("current_url_path", "$pathname"), ("current_domain", "$host"), ("current_page_title", "title"),
    ("mp_lib", "$lib"), ("$app_version_string", "$app_version"), ("$app_build_number", "$app_build"),
    ("$manufacturer", "$device_manufacturer"), ("$model", "$device_model"), ("$carrier", "$network_carrier"),
)
RESERVED_OBJECTS = ("$set", "$set_once", "$group_set")
_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
_NAIVE_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Universal", "Zulu", "Etc/Universal", "Etc/Zulu"})


class MixpanelAdapter(Adapter):
    name: ClassVar[str] = "mixpanel"
    extensions: ClassVar[tuple[str, ...]] = ()  # plain JSON lines: by their shape, or --format mixpanel
    source_tag: ClassVar[str] = "mixpanel"
    recognised_shape: ClassVar[str] = "a Mixpanel export (event and properties.time)"

    @classmethod
    def recognises(cls, record: dict) -> bool:
        # Not a generic row that happens to have a "time" property: those have a time column of their own.
        properties = record.get("properties")
        return ("event" in record and isinstance(properties, dict) and "time" in properties
                and not any(column in record for column in DEFAULT_TIMESTAMP_COLUMNS))

    def __init__(self, mapping: ColumnMapping):
        super().__init__(mapping)
        self._local_zone = None if self.mapping.timezone in UTC_NAMES else self.mapper.zone

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        return probe_rows(source, read_json_lines(source), _looks_like_mixpanel, "Mixpanel",
                          expected='has the shape {"event": ..., "properties": {"time": ...}}')

    # -- mapping ------------------------------------------------------------------------------------

    def to_events(self, record: dict) -> list[Event]:
        source_name = event_name(record.get("event"), "event")
        props = _properties(record.get("properties"))
        name = EVENT_NAMES.get(source_name, source_name)
        if source_name in self.mapper.drop_events or name in self.mapper.drop_events:
            raise Filtered(f"event {source_name!r} dropped by the mapping")
        user_id = _identifier(props, "$user_id", reject=False)
        device_id = _identifier(props, "$device_id", reject=False)
        link = (user_id, device_id) if user_id and device_id and user_id != device_id else None
        if source_name in IDENTITY_EVENTS:
            return self._identity_events(record, source_name, props, link)
        distinct_id = _identifier(props, "distinct_id") or user_id or device_id
        if distinct_id is None:
            raise Rejection("missing_distinct_id", "the row has no properties.distinct_id, $user_id or $device_id")
        timestamp_us = self._timestamp(props.get("time"))
        self.mapper.apply_time_filters(timestamp_us)
        event_uuid = self._uuid(record, props, distinct_id, timestamp_us, source_name)
        return [Event(name, distinct_id, timestamp_us, event_uuid, _mapped_properties(props),
                      source_event=source_name, link=link)]

    def _identity_events(self, record: dict, source_name: str, props: dict,
                         link: tuple[str, str] | None) -> list[Event]:
        """Mixpanel's ID-merge events, rebuilt as PostHog's: one event per id merged into the person."""
        if source_name == "$identify":
            primary = _identifier(props, "$identified_id", reject=False) or _identifier(props, "distinct_id")
            others = [_identifier(props, "$anon_id", reject=False)]
        elif source_name == "$create_alias":
            primary = _identifier(props, "distinct_id")
            others = [_identifier(props, "alias", reject=False)]
        else:
            ids = _id_list(props.get("$distinct_ids"))
            own_id = _identifier(props, "distinct_id")
            primary = own_id if own_id in ids else (ids[0] if ids else own_id)
            others = ids
        others = list(dict.fromkeys(other for other in others if other is not None and other != primary))
        if primary is None or not others:
            raise Filtered(f"mixpanel {source_name} without two different ids")
        if len(others) >= MAX_EVENTS_PER_ROW:
            raise Rejection("too_many_events", f"the {source_name} merges {len(others) + 1} ids; at most "
                            f"{MAX_EVENTS_PER_ROW} fit in one row")
        timestamp_us = self._timestamp(props.get("time"))
        self.mapper.apply_time_filters(timestamp_us)
        event_uuid = self._uuid(record, props, primary, timestamp_us, source_name)
        geo = _geo(props)
        if source_name == "$identify":
            return [Event("$identify", primary, timestamp_us, event_uuid, {"$anon_distinct_id": others[0], **geo},
                          source_event=source_name, link=link)]
        events = [
            Event("$create_alias", primary, timestamp_us,
                  uuid5_text(MERGE_NAMESPACE, f"merge:{event_uuid}:{alias}"), {"alias": alias, **geo},
                  added=True, source_event=source_name, link=link)
            for alias in others[:-1]
        ]
        events.append(Event("$create_alias", primary, timestamp_us, event_uuid, {"alias": others[-1], **geo},
                            source_event=source_name, link=link))
        return events

    def _timestamp(self, value: Any) -> int:
        if is_empty(value):
            raise Rejection("bad_timestamp", "the row has no properties.time")
        numeric = (isinstance(value, int | float) and not isinstance(value, bool)) or (
            isinstance(value, str) and _NUMBER.fullmatch(value) is not None)
        if numeric:
            timestamp_us = _in_range(parse_timestamp(value, "auto", UTC), value)
            if self._local_zone is not None:
                timestamp_us = _in_range(self._wall_clock_to_utc(timestamp_us), value)
            return timestamp_us
        return _in_range(parse_timestamp(value, "iso", self.mapper.zone), value)

    def _wall_clock_to_utc(self, wall_us: int) -> int:
        """Epoch numbers of pre-2023 projects are the local wall clock written as if it were UTC."""
        wall = _NAIVE_EPOCH + timedelta(microseconds=wall_us)
        offset = wall.replace(tzinfo=self._local_zone).utcoffset() or timedelta(0)
        return wall_us - offset // _ONE_US

    def _uuid(self, record: dict, props: dict, distinct_id: str, timestamp_us: int, name: str) -> str:
        insert_id = _identifier(props, "$insert_id", reject=False)
        if insert_id is not None:
            return uuid5_text(MIXPANEL_NAMESPACE, insert_id)
        return uuid_from_content(self.source_tag, distinct_id, timestamp_us, name, record)


# --- helpers ---------------------------------------------------------------------------------------


def _properties(value: Any) -> dict:
    if isinstance(value, str) and value:
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise Rejection("properties_not_object", "properties is text that is not JSON") from None
    if not isinstance(value, dict):
        raise Rejection("properties_not_object", f"properties is {type(value).__name__}, expected an object")
    return value


def _id_text(value: Any) -> str | None:
    """An id as text; None when empty or not an id (an object, a boolean, NaN)."""
    if is_empty(value) or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return number_id_text(value, "id") if math.isfinite(value) else None
    if isinstance(value, str):
        return value if value.strip() else None
    return None


def _identifier(props: dict, key: str, reject: bool = True) -> str | None:
    """An id as text; None when absent or empty. Other shapes reject the row (or count as absent)."""
    value = props.get(key)
    text = _id_text(value)
    if text is None and reject and not is_empty(value):
        shape = repr(value) if isinstance(value, float) else f"a {type(value).__name__}"  # a float here: NaN, inf
        raise Rejection("missing_distinct_id", f"properties.{key} is {shape}, not text or a number usable as an id")
    return text


def _id_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return list(dict.fromkeys(text for text in map(_id_text, value) if text is not None))


def _in_range(timestamp_us: int, value: Any) -> int:
    if not MIN_TIMESTAMP_US <= timestamp_us <= MAX_TIMESTAMP_US:
        raise Rejection("bad_timestamp", f"time {str(value)[:40]!r} is outside the years 1 to 9999")
    return timestamp_us


def _scalar(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float) or is_empty(value):
        return None
    return value


def _geo(props: dict) -> dict:
    return geo_properties(None, _scalar(props.get("$city")), _scalar(props.get("$region")),
                          country_code=_scalar(props.get("mp_country_code")))


def _mapped_properties(props: dict) -> dict:
    properties = {key: value for key, value in props.items() if key not in DROPPED_PROPERTIES}
    for key in RESERVED_OBJECTS:
        if key in properties and not isinstance(properties[key], dict):
            del properties[key]
    groups = properties.get("$groups")
    well_formed = isinstance(groups, dict) and all(isinstance(v, str) and v for v in groups.values())
    if "$groups" in properties and not well_formed:
        del properties["$groups"]  # null or malformed: PostHog would refuse the whole event for it
    for old, new in RENAMED_PROPERTIES:
        if old in properties:
            properties[new] = properties.pop(old)
    url = properties.get("$current_url")
    if isinstance(url, str):
        for key, value in url_properties(url).items():
            properties.setdefault(key, value)
    properties.update(_geo(props))
    return properties


def _looks_like_mixpanel(row: dict) -> bool:
    properties = row.get("properties")
    return "event" in row and isinstance(properties, dict) and "time" in properties
