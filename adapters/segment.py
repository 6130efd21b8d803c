"""Segment exports (RudderStack's too): the S3 archive's JSON lines, and warehouse tables (CSV/Parquet).

Mapping: ../shared/reference/source-formats.md, "Segment" (PostHog's own Segment integration, improved).

- ``track`` → the event's own name; ``page`` → ``$pageview``; ``screen`` → ``$screen`` with ``$screen_name``;
  ``identify`` → ``$identify`` (``$set`` = traits, ``$anon_distinct_id`` = anonymousId); ``group`` →
  ``$groupidentify`` (``$group_type`` from the mapping's ``[source] group_type``, default ``segment_group``;
  ``$group_key`` = groupId, ``$group_set`` = traits); ``alias`` → ``$create_alias`` (distinct_id = userId,
  ``alias`` = previousId).
- distinct_id = userId, else anonymousId (ids PostHog will not merge through, such as ``"null"``/``"undefined"``,
  count as missing: posthog_migrate.distinct_ids). A row with both ids carries ``link`` so the pipeline merges
  the device into the user once per job. An identify call with both is that merge itself (its ``$identify``
  carries ``$anon_distinct_id`` and the traits), as is an alias call (``$create_alias``): the identity pass sends
  no other ``$identify`` for the pair, and holds back the merge of a device another user claimed first.
- timestamp = ``timestamp`` (Segment's skew-corrected time), else receivedAt - (sentAt - originalTimestamp)
  when all three are there (the same correction), else originalTimestamp, else receivedAt.
- uuid = UUIDv5 of ``segment:{messageId}:{type}:{event or name}``. Not of messageId alone: real exports reuse a
  messageId across calls (five of the six messages of PostHog's own Segment test data share one), and a uuid
  of messageId alone would make PostHog collapse different events into one. Without a messageId, the uuid
  is derived from the event's content.
- context: ``ip`` → ``$ip`` (else ``$geoip_disable`` with ``context.location``'s geo), ``page.*`` →
  ``$current_url`` (+ ``$host``, ``$pathname``), ``$referrer`` (+ ``$referring_domain``), ``title``;
  ``os`` → ``$os``/``$os_version``; ``device`` → ``$device_type``/``$device_manufacturer``/``$device_model``/
  ``$device_id``; ``library`` → ``$lib``/``$lib_version``; ``campaign.*`` → ``utm_*`` (``name`` →
  ``utm_campaign``); ``userAgent`` → ``$raw_user_agent``; ``locale`` → ``$browser_language``; ``timezone`` →
  ``$timezone``; ``app`` → ``$app_name``/``$app_version``/``$app_build``/``$app_namespace``; ``screen`` →
  ``$screen_width``/``$screen_height``; ``network.carrier`` → ``$network_carrier``; ``groupId`` → ``$groups``.
  Other context keys are kept as ``segment_<key>`` (as PostHog's integration does). A page call's own
  ``properties.url``/``referrer`` win over ``context.page``.

Warehouse tables (one per call type: ``tracks``, ``pages``, ``screens``, ``identifies``, ``groups``,
``aliases``, and one per track event) have flattened ``context_page_url``-style and snake_case columns; one
normalisation step turns them into the message shape. The call type comes from a ``type`` column, else from
the table's name (the file's stem, or its folder when the file is a ``part-00000`` style piece); any other
table name is a per-event table: a ``track`` named by ``event_text``, else ``event``, else the table name.
The derived ``users`` and ``accounts`` tables are filtered (they repeat identifies/groups). CSV cells stay
text in id columns (``id``, ``*_id``); other columns get the CSV reader's canonical number inference.

A warehouse holds every track call twice: in ``tracks`` (without its properties) and in the event's own
table (with them). Both rows give the same uuid, so PostHog keeps one of them, not necessarily the one
with the properties. When the per-event tables are migrated too, skip ``tracks``::

    [source]
    group_type = "company"     # $group_type of group calls and context.groupId (default segment_group)
    tracks_table = "skip"      # "send" (default) or "skip": filter the rows of the tracks table
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from posthog_migrate.adapters.base import Adapter, RowChunk, SourceFile
from posthog_migrate.adapters.common import (
    TABLE_KEY,
    file_kind,
    geo_properties,
    id_text,
    is_empty,
    number_value,
    object_value,
    person_id_text,
    probe_rows,
    put,
    read_table_rows,
    referrer_properties,
    short_repr,
    table_name,
    text_value,
    url_properties,
    without_empty,
)
from posthog_migrate.distinct_ids import is_illegal_id, no_usable_id, only_legal
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import Event, Rejection, parse_timestamp, uuid_from_content, uuid_from_id
from posthog_migrate.mapping import ColumnMapping, Filtered

DEFAULT_GROUP_TYPE = "segment_group"
SOURCE_OPTIONS = ("group_type", "tracks_table")
MESSAGE_TYPES = ("track", "page", "screen", "identify", "group", "alias")
TABLE_TYPES = {
    "tracks": "track", "pages": "page", "screens": "screen", "identifies": "identify", "groups": "group",
    "aliases": "alias",
}
# Warehouse tables Segment derives from other calls: migrating them would repeat identifies/groups.
DERIVED_TABLES = ("users", "accounts")
EVENT_NAMES = {"page": "$pageview", "screen": "$screen", "identify": "$identify", "group": "$groupidentify",
               "alias": "$create_alias"}

# Top-level warehouse columns (snake_case) and the message keys they are.
FLAT_TOP_LEVEL = {
    "id": "messageId", "message_id": "messageId", "anonymous_id": "anonymousId", "user_id": "userId",
    "group_id": "groupId", "previous_id": "previousId", "original_timestamp": "originalTimestamp",
    "sent_at": "sentAt", "received_at": "receivedAt", "timestamp": "timestamp", "type": "type",
    "event": "event", "event_text": "event_text", "name": "name", "category": "category",
}
# Warehouse bookkeeping columns: never properties.
FLAT_BOOKKEEPING = frozenset({"loaded_at", "uuid_ts", "uuid", "channel", "version", "event_text", TABLE_KEY})
ID_KEYS = ("messageId", "anonymousId", "userId", "id", "message_id", "anonymous_id", "user_id")
TIME_KEYS = ("timestamp", "originalTimestamp", "receivedAt", "sentAt", "original_timestamp", "received_at", "sent_at")
NESTED_MARKERS = ("messageId", "anonymousId", "userId", "originalTimestamp", "receivedAt", "sentAt")
# context sub-objects whose flattened columns are context_<object>_<field>.
CONTEXT_OBJECTS = ("page", "campaign", "device", "os", "app", "screen", "network", "location", "library",
                   "traits", "referrer", "protocols", "instance")
CONTEXT_HANDLED = frozenset({"ip", "userAgent", "locale", "timezone", "library", "page", "campaign", "device",
                             "os", "app", "screen", "location", "groupId", "network"})
DEVICE_KEYS = (("type", "$device_type"), ("manufacturer", "$device_manufacturer"), ("model", "$device_model"),
               ("id", "$device_id"), ("name", "$device_name"))
APP_KEYS = (("name", "$app_name"), ("version", "$app_version"), ("build", "$app_build"),
            ("namespace", "$app_namespace"))
# Warehouse columns read as text from CSV (besides ids): names must not become numbers.
TEXT_COLUMNS = frozenset({"event", "event_text", "name", "type", "category"})
CAMPAIGN_KEYS = {"source": "utm_source", "medium": "utm_medium", "name": "utm_campaign", "term": "utm_term",
                 "content": "utm_content"}
def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _looks_like_segment(row: dict) -> bool:
    """A message (its type), or a warehouse row: an id and one of Segment's time columns."""
    if row.get("type") in MESSAGE_TYPES:
        return True
    has_id = any(not is_empty(row.get(key)) for key in ID_KEYS)
    return has_id and any(key in row for key in TIME_KEYS)


class SegmentAdapter(Adapter):
    """Segment messages: S3 archive JSON lines (gzip'd or not), or warehouse tables as CSV/Parquet."""

    name: ClassVar[str] = "segment"
    extensions: ClassVar[tuple[str, ...]] = ()
    source_tag: ClassVar[str] = "segment"
    known_source_options: ClassVar[tuple[str, ...]] = SOURCE_OPTIONS
    recognised_shape: ClassVar[str] = ("a Segment export (messages with type and messageId, or warehouse rows with "
                                       "context_library_name and received_at)")

    def __init__(self, mapping: ColumnMapping):
        super().__init__(mapping)
        group_type = self.mapping.source_option("group_type", DEFAULT_GROUP_TYPE)
        if not isinstance(group_type, str) or not group_type.strip():
            raise ConfigError(f"[source] group_type = {group_type!r}: give the group type as non-empty text")
        self.group_type = group_type
        tracks_table = self.mapping.source_option("tracks_table", "send")
        if tracks_table not in ("send", "skip"):
            raise ConfigError(f'[source] tracks_table = {tracks_table!r}: write "send" or "skip"')
        self.skip_tracks_table = tracks_table == "skip"

    @classmethod
    def recognises(cls, record: dict) -> bool:
        if "type" in record and "messageId" in record:
            return True
        return "context_library_name" in record and "received_at" in record  # every warehouse table has them

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        kind = file_kind(source.uri)
        chunks = read_table_rows(source, TEXT_COLUMNS)
        # Warehouse tables (CSV, Parquet, or JSON lines named like one) are told their table name;
        # archive messages carry their own type.
        table = table_name(source.uri)
        if kind == "jsonl" and table not in TABLE_TYPES and table not in DERIVED_TABLES:
            table = None
        return probe_rows(source, chunks, _looks_like_segment, "Segment", table)

    # --- mapping -------------------------------------------------------------------------------------

    def to_events(self, record: dict) -> list[Event]:
        message = normalise(record)
        kind = message_type(message)
        if self.skip_tracks_table and kind == "track" and str(message.get(TABLE_KEY)).lower() == "tracks":
            raise Filtered("Segment tracks table (skipped: [source] tracks_table = \"skip\")")
        name = _event_name(message, kind)
        source_event = _source_name(message, kind) if kind == "track" else kind
        if name in self.mapper.drop_events or source_event in self.mapper.drop_events:
            raise Filtered(f"event {source_event!r} dropped by the mapping")
        (user_id, anonymous_id), passed = only_legal(("userId", person_id_text(message.get("userId"), "userId")),
                                                     ("anonymousId", person_id_text(message.get("anonymousId"),
                                                                                    "anonymousId")))
        distinct_id = user_id if kind == "alias" else user_id or anonymous_id
        if distinct_id is None:
            raise no_usable_id("an alias call without a userId" if kind == "alias"
                               else "the message has no userId and no anonymousId",
                               tuple(p for p in passed if p[0] == "userId") if kind == "alias" else passed)
        timestamp_us = self._timestamp(message)
        self.mapper.apply_time_filters(timestamp_us)

        properties = self._context_properties(object_value(message.get("context")))
        payload = object_value(message.get("properties"))
        if kind == "track":
            properties.update(payload)
        elif kind == "page":
            properties.update(_page_properties(payload, message))
        elif kind == "screen":
            properties.update(payload)
            screen_name = text_value(message.get("name")) or text_value(payload.get("name"))
            if screen_name is not None:
                properties["$screen_name"] = screen_name
        elif kind == "identify":
            traits = without_empty(object_value(message.get("traits")))
            if traits:
                properties["$set"] = traits
            if anonymous_id is not None and anonymous_id != distinct_id:
                properties["$anon_distinct_id"] = anonymous_id
        elif kind == "group":
            group_key = id_text(message.get("groupId"), "groupId", "invalid_special_event")
            if group_key is None:
                raise Rejection("invalid_special_event", "a group call without a groupId")
            properties["$group_type"] = self.group_type
            properties["$group_key"] = group_key
            traits = without_empty(object_value(message.get("traits")))
            if traits:
                properties["$group_set"] = traits
        else:  # alias
            previous_id = person_id_text(message.get("previousId"), "previousId", "invalid_special_event")
            if previous_id is not None and is_illegal_id(previous_id):
                raise no_usable_id("", (("previousId", previous_id),))
            if previous_id is None or previous_id == distinct_id:
                raise Rejection("invalid_special_event", "an alias call needs a previousId different from its userId")
            properties["alias"] = previous_id

        message_id = message.get("messageId")
        message_id = None if isinstance(message_id, bool) else text_value(message_id)
        if message_id is not None:
            # Not messageId alone: exports reuse one messageId across calls (see the module's docstring).
            event_uuid = uuid_from_id(f"segment:{message_id}:{kind}:{_source_name(message, kind)}")
        else:
            event_uuid = uuid_from_content(self.source_tag, distinct_id, timestamp_us, name, properties)
        if kind == "alias":  # the alias call is the merge of (userId, previousId)
            link = (distinct_id, properties["alias"])
        else:
            link = (user_id, anonymous_id) if user_id and anonymous_id and user_id != anonymous_id else None
        return [Event(name, distinct_id, timestamp_us, event_uuid, properties, source_event=source_event, link=link,
                      illegal_ids=passed)]

    def _timestamp(self, message: dict) -> int:
        zone = self.mapper.zone
        stamp = message.get("timestamp")
        if not is_empty(stamp):
            return parse_timestamp(stamp, "auto", zone)
        original, sent, received = (message.get(k) for k in ("originalTimestamp", "sentAt", "receivedAt"))
        if not any(is_empty(v) for v in (original, sent, received)):
            try:  # what Segment computes as `timestamp`: receipt time minus the device's send delay
                return (parse_timestamp(received, "auto", zone)
                        - (parse_timestamp(sent, "auto", zone) - parse_timestamp(original, "auto", zone)))
            except Rejection:
                pass
        for value in (original, received):
            if not is_empty(value):
                return parse_timestamp(value, "auto", zone)
        raise Rejection("bad_timestamp", "the message has no timestamp, originalTimestamp or receivedAt")

    def _context_properties(self, context: dict) -> dict:
        properties: dict = {}
        page = object_value(context.get("page"))
        properties.update(url_properties(text_value(page.get("url"))))
        if "$pathname" not in properties:
            put(properties, "$pathname", page.get("path"))
        properties.update(referrer_properties(page.get("referrer")))
        put(properties, "title", page.get("title"))
        os_info = object_value(context.get("os"))
        put(properties, "$os", os_info.get("name"))
        put(properties, "$os_version", os_info.get("version"))
        device = object_value(context.get("device"))
        for key, target in DEVICE_KEYS:
            put(properties, target, device.get(key))
        library = object_value(context.get("library"))
        put(properties, "$lib", library.get("name"))
        put(properties, "$lib_version", library.get("version"))
        campaign = object_value(context.get("campaign"))
        for key, target in CAMPAIGN_KEYS.items():
            put(properties, target, campaign.get(key))
        put(properties, "$raw_user_agent", context.get("userAgent"))
        put(properties, "$browser_language", context.get("locale"))
        put(properties, "$timezone", context.get("timezone"))
        app = object_value(context.get("app"))
        for key, target in APP_KEYS:
            put(properties, target, app.get(key))
        screen = object_value(context.get("screen"))
        put(properties, "$screen_width", screen.get("width"))
        put(properties, "$screen_height", screen.get("height"))
        put(properties, "$network_carrier", object_value(context.get("network")).get("carrier"))
        location = object_value(context.get("location"))
        properties.update(geo_properties(
            text_value(context.get("ip")), city=text_value(location.get("city")),
            region=text_value(location.get("region")), country_name=text_value(location.get("country")),
            latitude=number_value(location.get("latitude")), longitude=number_value(location.get("longitude")),
        ))
        group_id = context.get("groupId")
        group_key = None if isinstance(group_id, bool) else text_value(group_id)
        if group_key is not None:
            properties["$groups"] = {self.group_type: group_key}
        for key, value in context.items():
            if key not in CONTEXT_HANDLED and not is_empty(value):
                properties[f"segment_{key}"] = value
        return properties


def _page_properties(payload: dict, message: dict) -> dict:
    """A page call's own properties, its url/path/referrer (which win over context.page's) mapped."""
    properties = dict(payload)
    url = text_value(properties.pop("url", None))
    path = properties.pop("path", None)
    if url is not None:
        properties.update(url_properties(url))
    else:
        put(properties, "$pathname", path)
    properties.update(referrer_properties(properties.pop("referrer", None)))
    for key in ("name", "category"):
        value = text_value(message.get(key))
        if value is not None and key not in properties:
            properties[key] = value
    return properties


def normalise(record: dict) -> dict:
    """A message in Segment's nested shape, from a nested message or from a flattened warehouse row."""
    if _is_nested(record):
        return record
    message: dict = {}
    context: dict = {}
    payload: dict = {}
    for column, value in record.items():
        if not isinstance(column, str) or value is None:
            continue
        if column in FLAT_TOP_LEVEL:
            message.setdefault(FLAT_TOP_LEVEL[column], value)
        elif column.startswith("context_") and len(column) > len("context_"):
            _unflatten_context(context, column[len("context_"):], value)
        elif column not in FLAT_BOOKKEEPING:
            payload[column] = value
    message["context"] = context
    message[TABLE_KEY] = record.get(TABLE_KEY)
    kind = message_type(message, strict=False)
    message["traits" if kind in ("identify", "group") else "properties"] = payload
    return message


def _unflatten_context(context: dict, rest: str, value: Any) -> None:
    """``page_url`` → context.page.url, ``user_agent`` → context.userAgent, ``device_advertising_id`` →
    context.device.advertisingId."""
    head, _, tail = rest.partition("_")
    if head in CONTEXT_OBJECTS and tail:
        sub = context.setdefault(head, {})
        if isinstance(sub, dict):
            sub[_camel(tail)] = value
    else:
        context[_camel(rest)] = value


def _is_nested(record: dict) -> bool:
    if any(isinstance(record.get(key), dict) for key in ("properties", "traits", "context")):
        return True
    return any(key in record for key in NESTED_MARKERS)


def message_type(message: dict, strict: bool = True) -> str | None:
    """The call type: the message's ``type``, else its table's; a table of any other name is a track."""
    kind = message.get("type")
    if isinstance(kind, str) and kind.strip().lower() in MESSAGE_TYPES:
        return kind.strip().lower()
    table = message.get(TABLE_KEY)
    table = table.lower() if isinstance(table, str) else ""
    if table in DERIVED_TABLES:
        if strict:
            raise Filtered(f"Segment {table} table (derived from {'groups' if table == 'accounts' else 'identifies'})")
        return None
    if table in TABLE_TYPES and is_empty(kind):
        return TABLE_TYPES[table]
    if is_empty(kind) and (table or text_value(message.get("event")) or text_value(message.get("event_text"))):
        return "track"
    if strict:
        raise Rejection("unknown_message_type",
                        f"type {short_repr(kind)} is not one of {', '.join(MESSAGE_TYPES)}" if not is_empty(kind)
                        else "the message has no type (and no event name)")
    return None


def _source_name(message: dict, kind: str) -> str:
    """The platform's own name: a track's event name (table name last), a page's or screen's name, else ""."""
    if kind == "track":
        for key in ("event_text", "event"):
            value = text_value(message.get(key))
            if value is not None and value.strip():
                return value
        table = message.get(TABLE_KEY)
        return table if isinstance(table, str) and table not in TABLE_TYPES else ""
    if kind in ("page", "screen"):
        return text_value(message.get("name")) or ""
    return ""


def _event_name(message: dict, kind: str) -> str:
    if kind != "track":
        return EVENT_NAMES[kind]
    name = _source_name(message, kind)
    if not name:
        raise Rejection("missing_event_name", "a track call without an event name")
    return name
