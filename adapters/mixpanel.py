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
- Identity: ``distinct_id`` (canonical after merges), else ``$user_id``, else ``$device_id``; an id PostHog
  will not merge through (``"null"``, ``"0"``...) counts as missing (posthog_migrate.distinct_ids). As PostHog's
  importer does, a row's ``$distinct_id_before_identity`` (the id the event was sent under, before Mixpanel's ID
  merge resolved it) is its distinct_id when the resolved one looks anonymous: it starts with ``$device:``, or
  is made only of capital letters, digits and dashes (a device's uuid); so an event imported by both tools
  gets the same uuid *and* distinct_id, and PostHog collapses the two. ``[source] distinct_id = "canonical"``
  keeps the resolved id always.
  Mixpanel's ``$identify`` → PostHog ``$identify`` (``distinct_id = $identified_id``,
  ``$anon_distinct_id = $anon_id``); ``$create_alias`` → ``$create_alias`` (``alias``); ``$merge`` →
  ``$create_alias`` from ``$distinct_ids`` (the row's ``distinct_id`` keeps its id, each other id is an
  alias: one event per other id, the extra ones ``added``). They are rebuilt with only the ids and the
  geo fields; without two different ids they are filtered (a merge of one id does nothing), with an illegal
  one on either side they are rejected (``illegal_distinct_id``); a ``$merge`` of more than 256 ids is
  rejected (``too_many_events``: 255 events per row at most). Each is the merge of its pair (``link``), so the
  identity pass can hold back one PostHog would refuse (a device already merged into another user).
- Simplified ID merge: an event with both ``$user_id`` and ``$device_id`` merges the device into the user,
  and the device's anonymous events were sent under ``$device:<$device_id>``: that is the ``link``'s device
  (``$anon_distinct_id`` of the ``$identify`` the identity pass sends), so the anonymous history joins the
  user. (PostHog's importer links the bare ``$device_id``, which no event was sent under.)
- Person properties, as PostHog's SDKs set them: ``$set`` of the browser, OS, device, screen and geo
  properties the event has (PERSON_PROPERTIES) and ``$set_once`` of their ``$initial_*`` forms, plus
  Mixpanel's own ``$initial_referrer``/``$initial_referring_domain``; the event's own ``$set`` wins.
- Properties: renamed and dropped as the reference lists; also ``$app_build_number`` → ``$app_build``
  and ``$carrier`` → ``$network_carrier`` (PostHog's mobile SDKs' names), and the old project's
  ``token`` is dropped. ``$current_url`` also gives ``$host``/``$pathname`` unless Mixpanel's
  ``current_domain``/``current_url_path`` say otherwise. The export has no IP: every event carries
  ``$geoip_disable`` and Mixpanel's own geo.
- Properties named like PostHog's reserved objects (``$set``, ``$set_once``, ``$group_set``, ``$groups``)
  but of the wrong shape are dropped: PostHog would refuse the whole event for them.
- ``mp_country_code`` also gives ``$geoip_country_name`` (MaxMind's English name, as PostHog's GeoIP writes it).
- ``$insert_id`` that is a number: the uuid is UUIDv5 of its text (PostHog's importer only reads text insert ids
  and gives such rows a random uuid, so re-runs of its import duplicate them; ours do not).

Profiles (the Engage API's people, or group profiles exported with ``data_group_id``) are read beside the
events, recognised by their shape: ``{"$distinct_id": ..., "$properties": {...}}``, one per line, or the API's
pages (``{"page": 0, "session_id": ..., "results": [profile, ...]}``), one per line or a (pretty-printed)
file of one page. Each profile is one ``$set`` event for its ``$distinct_id`` (see posthog_migrate.profiles),
at its ``$last_seen`` (else just after the job's last event), with PROFILE_PROPERTIES renamed to PostHog's
names (``$email`` → ``email``, ``$name`` or ``$first_name`` + ``$last_name`` → ``name``...), ``$created`` set
once as ``$initial_created_at``, and the rest as they are. With ``[source] group_type = "company"`` the
job's profiles are group profiles: one ``$groupidentify`` each (``$group_key`` = ``$distinct_id``). A page
the pull wrote (``mixpanel://engage?data_group_id=N&group_type=company``) says its group type itself
(``"group_type"`` beside ``results``): its profiles are that type's, whatever ``[source] group_type`` says.

    [source]
    group_type = "company"       # the job's profiles are group profiles of this type
    distinct_id = "canonical"    # never $distinct_id_before_identity (default: "posthog", PostHog's rule)
"""

from __future__ import annotations

import functools
import math
import re
import uuid as uuid_module
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
from posthog_migrate.adapters.base import (
    MAX_RAW_CHARS_IN_REJECT,
    MAX_ROW_BYTES,
    Adapter,
    BadRow,
    RowChunk,
    SourceFile,
    in_chunks,
    open_binary,
    too_large_row,
)
from posthog_migrate.adapters.common import (
    EMPTY_MARKERS,
    drop_misshapen_reserved,
    event_name,
    geo_properties,
    host_and_path,
    is_empty,
    is_plain_id,
    is_plain_text,
    person_id_text,
    probe_rows,
    scalar,
    url_properties,
    without_empty,
)
from posthog_migrate.adapters.countries import country_name
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.distinct_ids import PassedOver, is_illegal_id, no_usable_id, only_legal
from posthog_migrate.errors import ConfigError
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
from posthog_migrate.profiles import group_profile_event, person_profile_event, profile_uuid
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
# The event properties (in PostHog's names) that also describe the person: $set as they are, and $set_once as
# $initial_<name>, as PostHog's SDKs and GeoIP set them on live events.
PERSON_PROPERTIES = (
    "$browser", "$browser_version", "$os", "$os_version", "$device", "$device_model", "$device_manufacturer",
    "$screen_height", "$screen_width", "$geoip_city_name", "$geoip_subdivision_1_name", "$geoip_country_code",
    "$geoip_country_name",
)
INITIAL_NAMES = {key: f"$initial_{key[1:]}" for key in PERSON_PROPERTIES}
# Mixpanel's own first-touch properties: set once, under their names.
MIXPANEL_SET_ONCE = ("$initial_referrer", "$initial_referring_domain")
# A profile's reserved properties in PostHog's names (the rest keep theirs). $first_name and $last_name also make
# ``name`` when there is no $name; $created is set once; $last_seen is the event's time, not a property.
PROFILE_PROPERTIES = {
    "$email": "email", "$name": "name", "$first_name": "first_name", "$last_name": "last_name", "$phone": "phone",
    "$avatar": "avatar", "$city": "$geoip_city_name", "$region": "$geoip_subdivision_1_name",
    "$country_code": "$geoip_country_code", "$timezone": "$geoip_time_zone",
}
PROFILE_CREATED = ("$created", "$initial_created_at")
PROFILE_TIME = "$last_seen"
# Keys of an Engage API answer around its profiles: a record with "results" and one of these is a page.
PAGE_KEYS = ("page", "page_size", "session_id", "total", "status")
# The key the pull adds to a page of group profiles (the group type it was asked for, see pull.stage), and the
# key under which a profile read from such a page carries it to the mapping.
PAGE_GROUP_TYPE = "group_type"
PROFILE_GROUP_TYPE = "$group_type"
SOURCE_OPTIONS = ("distinct_id", "group_type")
# [source] distinct_id: PostHog's importer's rule for $distinct_id_before_identity, or the resolved id always.
DISTINCT_ID_RULES = ("posthog", "canonical")
ANONYMOUS_PREFIX = "$device:"
_ANONYMOUS_LOOKING = re.compile(r"[A-Z0-9-]+")
_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
_NAIVE_EPOCH = datetime(1970, 1, 1)
# Epoch numbers below this are seconds (PostHog's importer's threshold, see event.parse_timestamp's "auto").
SECONDS_BELOW = 10_000_000_000
_ONE_US = timedelta(microseconds=1)
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Universal", "Zulu", "Etc/Universal", "Etc/Zulu"})


class MixpanelAdapter(Adapter):
    name: ClassVar[str] = "mixpanel"
    extensions: ClassVar[tuple[str, ...]] = ()  # plain JSON lines: by their shape, or --format mixpanel
    source_tag: ClassVar[str] = "mixpanel"
    known_source_options: ClassVar[tuple[str, ...]] = SOURCE_OPTIONS
    recognised_shape: ClassVar[str] = ("a Mixpanel export (event and properties.time, or profiles: $distinct_id "
                                       "and $properties)")

    @classmethod
    def recognises(cls, record: dict) -> bool:
        # Not a generic row that happens to have a "time" property: those have a time column of their own.
        properties = record.get("properties")
        return (("event" in record and isinstance(properties, dict) and "time" in properties
                 and not any(column in record for column in DEFAULT_TIMESTAMP_COLUMNS))
                or _is_profile(record) or _is_page(record))

    def __init__(self, mapping: ColumnMapping):
        super().__init__(mapping)
        self._local_zone = None if self.mapping.timezone in UTC_NAMES else self.mapper.zone
        rule = self.mapping.source_option("distinct_id", "posthog")
        if rule not in DISTINCT_ID_RULES:
            raise ConfigError(f"[source] distinct_id = {rule!r}: write \"posthog\" ($distinct_id_before_identity when "
                              "the resolved id looks anonymous, as PostHog's importer does) or \"canonical\"")
        self.before_identity = rule == "posthog"
        group_type = self.mapping.source_option("group_type")
        if group_type is not None and (not isinstance(group_type, str) or not group_type.strip()):
            raise ConfigError(f"[source] group_type = {group_type!r}: give the group type of the job's profiles as "
                              'non-empty text, e.g. group_type = "company"')
        self.group_type = group_type

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        chunks = _read_one_document(source) if _is_one_document(source) else read_json_lines(source)
        return probe_rows(source, _pages_opened(chunks), _looks_like_mixpanel, "Mixpanel",
                          expected='has the shape {"event": ..., "properties": {"time": ...}} or '
                                   '{"$distinct_id": ..., "$properties": {...}}')

    # -- mapping ------------------------------------------------------------------------------------

    def to_events(self, record: dict) -> list[Event]:
        # Written for the common row, as Amplitude's is: each field's usual shape (plain text, an int, a dict) is
        # accepted inline, and the general helper (event_name, _properties, _person_id, _timestamp...) is called
        # only for the rest. Each fast path says why it answers as its helper would: the helpers are the rules.
        source_name = record.get("event")
        if type(source_name) is not str or not source_name or source_name[0].isspace():  # else: text, not blank
            if "event" not in record and _is_profile(record):
                return [self._profile_event(record)]
            source_name = event_name(source_name, "event")
        props = record.get("properties")
        if type(props) is not dict:  # a dict is its own _properties
            props = _properties(props)
        name = EVENT_NAMES.get(source_name, source_name)
        drop_events = self.mapper.drop_events
        if drop_events and (source_name in drop_events or name in drop_events):
            raise Filtered(f"event {source_name!r} dropped by the mapping")
        if source_name in IDENTITY_EVENTS:
            return self._identity_events(record, source_name, props)
        field, resolved = self._resolved_id(props)
        user_id, device_id = props.get("$user_id"), props.get("$device_id")
        if user_id is not None and not is_plain_id(user_id):  # a plain id is its own _person_id
            user_id = _person_id(props, "$user_id", reject=False)
        if device_id is not None and not is_plain_id(device_id):
            device_id = _person_id(props, "$device_id", reject=False)
        if ((resolved is None or not is_illegal_id(resolved)) and (user_id is None or not is_illegal_id(user_id))
                and (device_id is None or not is_illegal_id(device_id))):
            passed: PassedOver = ()  # only_legal of ids that are all legal: the same ids, none passed over
        else:
            (resolved, user_id, device_id), passed = only_legal(
                (field, resolved), ("$user_id", user_id), ("$device_id", device_id))
        distinct_id = resolved or user_id or device_id
        if distinct_id is None:
            raise no_usable_id("the row has no properties.distinct_id, $user_id or $device_id", passed)
        time = props.get("time")
        if type(time) is int and 0 <= time < SECONDS_BELOW and self._local_zone is None:
            # Whole epoch seconds, as Mixpanel writes them: _timestamp's "auto" unit is seconds below 1e10, an int
            # is scaled exactly, and every such instant lies within the years 1 to 9999.
            timestamp_us = time * 1_000_000
        else:
            timestamp_us = self._timestamp(time)
        self.mapper.apply_time_filters(timestamp_us)
        insert_id = props.get("$insert_id")
        if is_plain_text(insert_id):  # plain text is its own _identifier (see _uuid)
            event_uuid = uuid5_text(MIXPANEL_NAMESPACE, insert_id)
        else:
            event_uuid = self._uuid(record, props, distinct_id, timestamp_us, source_name)
        return [Event(name, distinct_id, timestamp_us, event_uuid, _mapped_properties(props),
                      source_event=source_name, link=_device_link(user_id, device_id), illegal_ids=passed)]

    def _resolved_id(self, props: dict) -> tuple[str, str | None]:
        """(field, id) of the row's distinct_id: the resolved one, or the one the event was sent under when the
        resolved one looks anonymous (PostHog's importer's rule, see the module's docstring)."""
        canonical = _person_id(props, "distinct_id")
        if not self.before_identity:
            return "distinct_id", canonical
        before = props.get("$distinct_id_before_identity")
        if type(before) is not str or (canonical is not None and not _looks_anonymous(canonical)):
            return "distinct_id", canonical
        return "$distinct_id_before_identity", person_id_text(before, "$distinct_id_before_identity")

    def _identity_events(self, record: dict, source_name: str, props: dict) -> list[Event]:
        """Mixpanel's ID-merge events, rebuilt as PostHog's: one event per id merged into the person."""
        if source_name == "$identify":
            primary = ("$identified_id", _person_id(props, "$identified_id", reject=False))
            if primary[1] is None:
                primary = ("distinct_id", _person_id(props, "distinct_id"))
            others = [("$anon_id", _person_id(props, "$anon_id", reject=False))]
        elif source_name == "$create_alias":
            primary = ("distinct_id", _person_id(props, "distinct_id"))
            others = [("alias", _person_id(props, "alias", reject=False))]
        else:
            ids = _id_list(props.get("$distinct_ids"))
            own_id = _person_id(props, "distinct_id")
            primary = ("distinct_id", own_id if own_id in ids else (ids[0] if ids else own_id))
            others = [("$distinct_ids", other) for other in ids]
        others = [(field, other) for field, other in others if other is not None and other != primary[1]]
        if primary[1] is None or not others:
            raise Filtered(f"mixpanel {source_name} without two different ids")
        (primary_id, *other_ids), passed = only_legal(primary, *others)
        other_ids = list(dict.fromkeys(other for other in other_ids if other is not None))
        if primary_id is None or not other_ids:  # a merge through an id PostHog refuses: nothing to send
            raise no_usable_id("", passed)
        if len(other_ids) >= MAX_EVENTS_PER_ROW:
            raise Rejection("too_many_events", f"the {source_name} merges {len(other_ids) + 1} ids; at most "
                            f"{MAX_EVENTS_PER_ROW} fit in one row")
        timestamp_us = self._timestamp(props.get("time"))
        self.mapper.apply_time_filters(timestamp_us)
        event_uuid = self._uuid(record, props, primary_id, timestamp_us, source_name)
        geo = dict(_geo(props))
        if source_name == "$identify":
            return [Event("$identify", primary_id, timestamp_us, event_uuid, {"$anon_distinct_id": other_ids[0], **geo},
                          source_event=source_name, link=(primary_id, other_ids[0]), illegal_ids=passed)]
        events = [
            Event("$create_alias", primary_id, timestamp_us,
                  uuid5_text(MERGE_NAMESPACE, f"merge:{event_uuid}:{alias}"), {"alias": alias, **geo},
                  added=True, source_event=source_name, link=(primary_id, alias))
            for alias in other_ids[:-1]
        ]
        events.append(Event("$create_alias", primary_id, timestamp_us, event_uuid, {"alias": other_ids[-1], **geo},
                            source_event=source_name, link=(primary_id, other_ids[-1]), illegal_ids=passed))
        return events

    def _profile_event(self, record: dict) -> Event:
        """An Engage profile: one $set event for the person (or $groupidentify for a group's profile)."""
        props = record.get("$properties")
        if isinstance(props, str):
            props = _properties(props)
        if props is None:
            props = {}
        if not isinstance(props, dict):
            raise Rejection("properties_not_object", f"$properties is {type(props).__name__}, expected an object")
        key = person_id_text(record.get("$distinct_id"), "$distinct_id")
        if key is None:
            raise Rejection("missing_distinct_id", "the profile has no $distinct_id")
        stamp = props.get(PROFILE_TIME)
        timestamp_us = None if is_empty(stamp) else self._timestamp(stamp)
        if timestamp_us is not None:
            self.mapper.apply_time_filters(timestamp_us)
        person_set, set_once = _profile_properties(props)
        group_type = record.get(PROFILE_GROUP_TYPE) or self.group_type
        if group_type is not None:
            if not isinstance(group_type, str):
                raise Rejection("bad_group_type", f"the page's group_type is {group_type!r}, expected text")
            return group_profile_event(group_type, key, timestamp_us,
                                       profile_uuid(self.source_tag, f"group:{group_type}", key, props), person_set)
        if is_illegal_id(key):
            raise no_usable_id("", (("$distinct_id", key),))
        return person_profile_event(key, timestamp_us, profile_uuid(self.source_tag, "person", key, props),
                                    person_set, set_once)

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


def _person_id(props: dict, key: str, reject: bool = True) -> str | None:
    """A person's id from the properties, trimmed; None when absent or blank. Other shapes (an object, a boolean,
    NaN) reject the row, or count as absent when ``reject`` is false. Whether PostHog merges through it is
    judged by the caller (posthog_migrate.distinct_ids)."""
    try:
        return person_id_text(props.get(key), f"properties.{key}")
    except Rejection:
        if reject:
            raise
        return None


def _id_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    texts = []
    for item in value:
        try:
            text = person_id_text(item, "$distinct_ids")
        except Rejection:
            continue
        if text is not None:
            texts.append(text)
    return list(dict.fromkeys(texts))


def _looks_anonymous(distinct_id: str) -> bool:
    """PostHog's importer's test of a resolved id that names no known user: ``$device:...``, or only capital
    letters, digits and dashes (a device's uuid in capitals)."""
    return distinct_id.startswith(ANONYMOUS_PREFIX) or _ANONYMOUS_LOOKING.fullmatch(distinct_id) is not None


def _device_link(user_id: str | None, device_id: str | None) -> tuple[str, str] | None:
    """(user, the id the device's anonymous events were sent under) for a row with both ids: Mixpanel's
    simplified ID merge sends them as ``$device:<$device_id>``."""
    if user_id is None or device_id is None:
        return None
    anonymous = device_id if device_id.startswith(ANONYMOUS_PREFIX) else ANONYMOUS_PREFIX + device_id
    return (user_id, anonymous) if anonymous != user_id else None


def _in_range(timestamp_us: int, value: Any) -> int:
    if not MIN_TIMESTAMP_US <= timestamp_us <= MAX_TIMESTAMP_US:
        raise Rejection("bad_timestamp", f"time {str(value)[:40]!r} is outside the years 1 to 9999")
    return timestamp_us


def _geo(props: dict) -> tuple[tuple[str, Any], ...]:
    """The row's ``$geoip_disable`` and geo (city, region, country name and code), as ``(key, value)`` pairs."""
    place = (props.get("$city"), props.get("$region"), props.get("mp_country_code"))
    # A row's place is text (or null) and repeats from row to row: judged once per place.
    if type(place[0]) in _TEXT and type(place[1]) in _TEXT and type(place[2]) in _TEXT:
        return _place(*place)
    return _place_items(*place)


_TEXT = frozenset({str, type(None)})


@functools.lru_cache(maxsize=4096)
def _place(city: str | None, region: str | None, code: str | None) -> tuple[tuple[str, Any], ...]:
    return _place_items(city, region, code)


def _place_items(city: Any, region: Any, code: Any) -> tuple[tuple[str, Any], ...]:
    code = scalar(code)
    return tuple(geo_properties(None, scalar(city), scalar(region), country_name=country_name(code),
                                country_code=code).items())


def _mapped_properties(props: dict) -> dict:
    """An event's properties in PostHog's names (see the module's docstring), with its person's ``$set`` and
    ``$set_once``."""
    # A copy without the dropped ones: deleting keeps the others' order, as a filtering comprehension would, for less.
    properties = props.copy()
    for key in DROPPED_PROPERTIES.intersection(props):
        del properties[key]
    drop_misshapen_reserved(properties)
    for old, new in RENAMED_PROPERTIES:
        if old in properties:
            properties[new] = properties.pop(old)
    url = properties.get("$current_url")
    if is_plain_text(url):
        # url_properties of plain text: $current_url (already there: setdefault keeps it) and $host/$pathname when
        # the URL has them, each set only where the row has none.
        host, path = host_and_path(url)
        if host:
            properties.setdefault("$host", host)
        if path:
            properties.setdefault("$pathname", path)
    elif isinstance(url, str):
        for key, value in url_properties(url).items():
            properties.setdefault(key, value)
    properties.update(_geo(props))
    _add_person_properties(properties)
    return properties


def _add_person_properties(properties: dict) -> None:
    """The person's browser, OS, device and geo, from the event's: ``$set``, and ``$set_once`` as ``$initial_*``
    (the event's own ``$set``/``$set_once`` win)."""
    person_set = {}
    for key in PERSON_PROPERTIES:
        value = properties.get(key)
        if value is None:  # most are absent
            continue
        # Plain text (is_plain_text, inlined: this runs for most keys of every row) and numbers are their own scalar.
        kind = type(value)
        if ((kind is str and value not in EMPTY_MARKERS and not value[0].isspace() and not value[-1].isspace())
                or kind is int or kind is float or scalar(value) is not None):
            person_set[key] = value
    set_once = {INITIAL_NAMES[key]: value for key, value in person_set.items()}  # in PERSON_PROPERTIES' order
    for key in MIXPANEL_SET_ONCE:
        if key in properties and scalar(properties[key]) is not None:  # usually absent: scalar(None) is None
            set_once[key] = properties[key]
    # The event's own $set (an object: see drop_misshapen_reserved) over the person's; without one, the fresh dict
    # is that merge already.
    if person_set:
        properties["$set"] = {**person_set, **properties["$set"]} if "$set" in properties else person_set
    if set_once:
        properties["$set_once"] = ({**set_once, **properties["$set_once"]} if "$set_once" in properties
                                   else set_once)


def _profile_properties(props: dict) -> tuple[dict, dict]:
    """A profile's properties in PostHog's names: ($set, $set_once). See PROFILE_PROPERTIES."""
    person_set: dict = {}
    set_once: dict = {}
    for key, value in without_empty(props).items():
        if key == PROFILE_TIME:
            continue
        if key == PROFILE_CREATED[0]:
            set_once[PROFILE_CREATED[1]] = value
        elif key == "$country_code":
            person_set["$geoip_country_code"] = value
            if (name := country_name(value)) is not None:
                person_set["$geoip_country_name"] = name
        else:
            person_set[PROFILE_PROPERTIES.get(key, key)] = value
    if "name" not in person_set:
        full_name = " ".join(str(part) for part in (person_set.get("first_name"), person_set.get("last_name")) if part)
        if full_name:
            person_set["name"] = full_name
    return person_set, set_once


def _is_profile(record: dict) -> bool:
    return "$distinct_id" in record and "$properties" in record


def _is_page(record: dict) -> bool:
    return isinstance(record.get("results"), list) and any(key in record for key in PAGE_KEYS)


def _pages_opened(chunks: Iterator[RowChunk]) -> Iterator[RowChunk]:
    """The records of the chunks, with each Engage API page (``{"page": 0, "results": [...]}``) replaced by the
    profiles it holds; rows are numbered again from 1 across the file, so that every profile has a row of its own
    (for the rejects file, and for a resume, which skips rows by number)."""
    def numbered() -> Iterator[tuple[int, dict | BadRow, int]]:
        row_number = 0
        for chunk in chunks:
            for _, record in chunk:
                if type(record) is dict and _is_page(record):
                    group_type = record.get(PAGE_GROUP_TYPE)
                    for profile in record["results"]:
                        row_number += 1
                        if group_type and isinstance(profile, dict):  # a page of group profiles, as the pull wrote
                            profile = {**profile, PROFILE_GROUP_TYPE: group_type}
                        yield row_number, profile if isinstance(profile, dict) else BadRow(
                            "not_an_object", f"an element of a page's results is a {type(profile).__name__}, "
                            "expected a profile object", repr(profile)[:MAX_RAW_CHARS_IN_REJECT]), 0
                    continue
                row_number += 1
                yield row_number, record, 0
    return in_chunks(numbered())


def _is_one_document(source: SourceFile) -> bool:
    """Whether the file is one JSON object spread over several lines (a page saved as the API answered it,
    pretty-printed), rather than JSON lines: it starts with ``{`` and its first line is no JSON object."""
    with open_binary(source.uri) as stream:
        first = stream.readline(MAX_ROW_BYTES)
    first = first.removeprefix(b"\xef\xbb\xbf").strip()
    if not first.startswith(b"{"):
        return False
    try:
        return not isinstance(orjson.loads(first), dict)
    except orjson.JSONDecodeError:
        return True


def _read_one_document(source: SourceFile) -> Iterator[RowChunk]:
    """A file of one JSON object (an Engage page), as one record; one over MAX_ROW_BYTES is rejected."""
    with open_binary(source.uri) as stream:
        data = stream.read(MAX_ROW_BYTES + 1)
        if len(data) > MAX_ROW_BYTES:
            size = len(data) + sum(len(rest) for rest in iter(lambda: stream.read(1 << 20), b""))
            yield [(1, too_large_row(data, size))]
            return
    try:
        record = orjson.loads(data.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"{source.uri}: neither JSON lines nor one JSON object ({error}); is it a Mixpanel "
                          "export? Check --format") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{source.uri}: one JSON {type(record).__name__}, expected a Mixpanel page or profile")
    yield [(1, record)]


def _looks_like_mixpanel(row: dict) -> bool:
    properties = row.get("properties")
    return ("event" in row and isinstance(properties, dict) and "time" in properties) or _is_profile(row)
