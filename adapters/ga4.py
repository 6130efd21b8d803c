"""Google Analytics 4: rows of the BigQuery export (``events_YYYYMMDD``), as JSON lines or Parquet.

Mapping: ../shared/reference/source-formats.md, "GA4".

- ``event_timestamp``: microseconds, UTC (text in JSON extracts, where every INT64 is a string; a number in
  Parquet). ``event_date`` is in the property's timezone and is ignored.
- distinct_id = ``user_id``, else ``user_pseudo_id`` (an id PostHog will not merge through counts as missing);
  a row with both carries ``link``.
- ``event_params`` and ``user_properties`` (``[{key, value: {string_value, int_value, float_value,
  double_value}}]``) → the first non-null value; INT64 text becomes a number. Params become properties;
  user properties become ``$set``. ``(not set)`` / ``(not provided)`` and empty values are dropped everywhere.
- ``page_view`` → ``$pageview``, ``screen_view`` → ``$screen``; ``session_start`` and ``first_visit`` are
  filtered (PostHog derives sessions and first visits itself).
- ``page_location`` → ``$current_url`` (+ ``$host``, ``$pathname``; ``web_info.hostname`` when there is no
  URL), ``page_referrer`` → ``$referrer`` (+ ``$referring_domain``), ``page_title`` → ``title``,
  ``firebase_screen`` → ``$screen_name``, ``ga_session_id`` (epoch seconds) → ``$session_id`` = a UUIDv7 whose
  time is the session start; ``device.category`` → ``$device_type`` (Title case), ``operating_system`` →
  ``$os`` (``Macintosh`` → ``Mac OS X``, as PostHog names it), ``operating_system_version`` → ``$os_version``
  (without the repeated OS name: ``Android 13.0.0`` → ``13.0.0``), ``web_info.browser[_version]`` →
  ``$browser[_version]``, ``language`` → ``$browser_language``; off desktops, ``mobile_brand_name`` /
  ``mobile_model_name`` / ``mobile_marketing_name`` → ``$device_manufacturer`` / ``$device_model`` /
  ``$device_name`` (on desktops GA4 fills them with the browser's vendor and name); ``app_info.version`` →
  ``$app_version``, ``app_info.id`` → ``$app_namespace``; ``geo`` → ``$geoip_*`` with ``$geoip_disable``
  (GA4 has no IP); ``collected_traffic_source.manual_*`` → ``utm_*`` (``manual_campaign_name`` →
  ``utm_campaign``, ``manual_campaign_id`` → ``utm_id``; GA's placeholders ``(direct)``, ``(none)``,
  ``(organic)``, ``(referral)`` mean "no campaign" and are dropped there), its click ids as they are;
  ``items`` → ``items`` (each item without empty values, its ``item_params`` flattened in).
- uuid: GA4 has no event id. The reference's key (user_pseudo_id, event_timestamp, event_name,
  event_bundle_sequence_id, batch_event_index) is not unique in real exports: in the shared fixture, rows
  that differ only in their params (or only in their items) share all five. So the uuid is UUIDv5 of those
  five *plus* a SHA-256 of the row's whole content in a canonical form (keys sorted, nulls and empty lists
  dropped, every scalar as text: a JSON extract with INT64 strings and a Parquet file with INT64 numbers
  give the same uuid). Distinct rows never share a uuid; identical rows (GA4 exports do repeat rows) do, so
  PostHog keeps one. Fields BigQuery recomputes after the fact (``is_active_user``, ``user_ltv``,
  ``session_traffic_source_last_click``) are left out of the hash.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, ClassVar

import orjson
from posthog_migrate.adapters.base import Adapter, RowChunk, SourceFile
from posthog_migrate.adapters.common import (
    file_kind,
    geo_properties,
    is_empty,
    object_value,
    person_id_text,
    probe_rows,
    put,
    referrer_properties,
    session_uuid7,
    text_value,
    url_properties,
    without_empty,
)
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.adapters.parquet import read_parquet
from posthog_migrate.distinct_ids import no_usable_id, only_legal
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import Event, Rejection, parse_timestamp, uuid_from_id
from posthog_migrate.mapping import Filtered

EVENT_NAMES = {"page_view": "$pageview", "screen_view": "$screen"}
FILTERED_EVENTS = ("session_start", "first_visit")
# Params that become PostHog properties of their own name, not plain properties.
CONSUMED_PARAMS = frozenset({"page_location", "page_referrer", "page_title", "firebase_screen", "ga_session_id"})
VALUE_FIELDS = ("string_value", "int_value", "float_value", "double_value")
TRAFFIC_SOURCE_KEYS = {
    "manual_source": "utm_source", "manual_medium": "utm_medium", "manual_campaign_name": "utm_campaign",
    "manual_term": "utm_term", "manual_content": "utm_content", "manual_campaign_id": "utm_id",
}
# GA's placeholders for "no campaign": as utm_* values they would make direct or organic traffic look
# like a campaign to PostHog's channel types (utm_source "(direct)" is not direct traffic there).
NO_CAMPAIGN = frozenset({"(direct)", "(none)", "(organic)", "(referral)"})
# Row fields BigQuery recomputes after the event (left out of the content hash behind the uuid).
RECOMPUTED_FIELDS = frozenset({"is_active_user", "user_ltv", "session_traffic_source_last_click"})
# Deeper than this, a row is junk: refused rather than hashed (and never a RecursionError).
MAX_NESTING = 64
OS_NAMES = {"Macintosh": "Mac OS X"}


def _scalar(field: str, value: Any) -> Any:
    """A param value as its type: INT64 text → int, FLOAT64 text → float."""
    if isinstance(value, str) and field != "string_value":
        text = value.strip()
        try:
            number = int(text) if field == "int_value" else float(text)
        except ValueError:
            return value
        return number if isinstance(number, int) or math.isfinite(number) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def param_value(value: Any) -> Any:
    """The first non-null of a GA4 ``value`` struct (a bare scalar is taken as it is)."""
    if isinstance(value, dict):
        for field in VALUE_FIELDS:
            item = value.get(field)
            if item is not None and not isinstance(item, dict | list):
                return _scalar(field, item)
        return None
    if isinstance(value, list):
        return None
    return value


def params(entries: Any) -> dict:
    """``[{key, value}]`` (or a ``{key: value}`` object, or a JSON text of either) → ``{key: value}``,
    without empty values; the first entry of a key with a value wins."""
    if isinstance(entries, str):
        try:
            entries = orjson.loads(entries)
        except orjson.JSONDecodeError:
            return {}
    out: dict = {}
    if isinstance(entries, dict):
        for key, value in entries.items():
            value = param_value(value)
            if isinstance(key, str) and key and key not in out and not is_empty(value):
                out[key] = value
        return out
    if not isinstance(entries, list):
        return {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        key = entry.get("key")
        if not isinstance(key, str) or not key or key in out:
            continue
        value = param_value(entry.get("value"))
        if not is_empty(value):
            out[key] = value
    return out


def _canonical(value: Any, depth: int = 0) -> Any:
    """The row's content, spelled the same whichever way it was extracted (see the module's docstring)."""
    if depth > MAX_NESTING:
        raise Rejection("unserialisable", f"the row is nested more than {MAX_NESTING} levels deep")
    if value is None:
        return None
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _canonical(item, depth + 1)
            if item is not None:
                out[str(key)] = item
        return out or None
    if isinstance(value, list | tuple):
        items = [_canonical(item, depth + 1) for item in value]
        return items or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int | Decimal | str):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return repr(value)


def content_digest(record: dict) -> str:
    content = {k: v for k, v in record.items() if k not in RECOMPUTED_FIELDS}
    canonical = _canonical(content) or {}
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _looks_like_ga4(row: dict) -> bool:
    return "event_name" in row and any(k in row for k in ("event_timestamp", "user_pseudo_id", "event_params"))


class Ga4Adapter(Adapter):
    """GA4 BigQuery export rows: JSON lines (``.jsonl``, ``.json``, gzip'd or not) or Parquet."""

    name: ClassVar[str] = "ga4"
    extensions: ClassVar[tuple[str, ...]] = ()
    source_tag: ClassVar[str] = "ga4"
    recognised_shape: ClassVar[str] = "a GA4 BigQuery export (event_timestamp and event_params)"

    @classmethod
    def recognises(cls, record: dict) -> bool:
        return "event_timestamp" in record and "event_params" in record

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        kind = file_kind(source.uri)
        if kind == "csv":
            raise ConfigError(
                f"{source.uri}: GA4's export has nested fields that CSV cannot hold; extract the BigQuery table "
                "as JSON lines (NEWLINE_DELIMITED_JSON) or Parquet"
            )
        chunks = read_parquet(source) if kind == "parquet" else read_json_lines(source)
        return probe_rows(source, chunks, _looks_like_ga4, "GA4 BigQuery")

    def to_events(self, record: dict) -> list[Event]:
        source_name = record.get("event_name")
        source_name = text_value(source_name) if not isinstance(source_name, bool) else None
        if source_name is None or not source_name.strip():
            raise Rejection("missing_event_name", "the row has no event_name")
        if source_name in FILTERED_EVENTS:
            raise Filtered(f"GA4 {source_name}")
        name = EVENT_NAMES.get(source_name, source_name)
        if name in self.mapper.drop_events or source_name in self.mapper.drop_events:
            raise Filtered(f"event {source_name!r} dropped by the mapping")
        (user_id, pseudo_id), passed = only_legal(
            ("user_id", person_id_text(record.get("user_id"), "user_id")),
            ("user_pseudo_id", person_id_text(record.get("user_pseudo_id"), "user_pseudo_id")))
        distinct_id = user_id or pseudo_id
        if distinct_id is None:
            raise no_usable_id("the row has no user_id and no user_pseudo_id", passed)
        stamp = record.get("event_timestamp")
        if is_empty(stamp):
            raise Rejection("bad_timestamp", "the row has no event_timestamp")
        timestamp_us = parse_timestamp(stamp, "us", self.mapper.zone)
        self.mapper.apply_time_filters(timestamp_us)

        event_params = params(record.get("event_params"))
        properties = {k: v for k, v in event_params.items() if k not in CONSUMED_PARAMS}
        device = object_value(record.get("device"))
        web_info = object_value(device.get("web_info"))
        properties.update(url_properties(text_value(event_params.get("page_location"))))
        if "$host" not in properties:
            put(properties, "$host", web_info.get("hostname"))
        properties.update(referrer_properties(event_params.get("page_referrer")))
        put(properties, "title", event_params.get("page_title"))
        screen_name = text_value(event_params.get("firebase_screen"))
        if screen_name is None and source_name == "screen_view":
            screen_name = text_value(event_params.get("firebase_screen_class"))
        if screen_name is not None:
            properties["$screen_name"] = screen_name
        properties.update(_device_properties(device, web_info))
        app_info = object_value(record.get("app_info"))
        put(properties, "$app_version", text_value(app_info.get("version")))
        put(properties, "$app_namespace", text_value(app_info.get("id")))
        properties.update(_geo(object_value(record.get("geo"))))
        properties.update(_traffic_source(object_value(record.get("collected_traffic_source"))))
        items = _items(record.get("items"))
        if items:
            properties["items"] = items
        person = params(record.get("user_properties"))
        if person:
            properties["$set"] = person
        session_id = _session_seconds(event_params.get("ga_session_id"))
        if session_id is not None:
            properties["$session_id"] = session_uuid7(
                session_id * 1000, f"ga4:{pseudo_id if pseudo_id is not None else distinct_id}:{session_id}")

        key = ":".join(text_value(v) or "" for v in (
            record.get("user_pseudo_id"), timestamp_us, source_name, record.get("event_bundle_sequence_id"),
            record.get("batch_event_index"),
        ))
        event_uuid = uuid_from_id(f"ga4:{key}:{content_digest(record)}")
        link = (user_id, pseudo_id) if user_id and pseudo_id and user_id != pseudo_id else None
        return [Event(name, distinct_id, timestamp_us, event_uuid, properties, source_event=source_name, link=link,
                      illegal_ids=passed)]


def _device_properties(device: dict, web_info: dict) -> dict:
    properties: dict = {}
    category = text_value(device.get("category"))
    if category is not None:
        properties["$device_type"] = category.title()
    os_name = text_value(device.get("operating_system"))
    os_version = text_value(device.get("operating_system_version"))
    if os_name is not None:
        properties["$os"] = OS_NAMES.get(os_name, os_name)
        if os_version is not None and os_version.startswith(os_name + " "):
            os_version = os_version[len(os_name) + 1:]
    put(properties, "$os_version", os_version)
    put(properties, "$browser", text_value(web_info.get("browser")) or text_value(device.get("browser")))
    put(properties, "$browser_version",
        text_value(web_info.get("browser_version")) or text_value(device.get("browser_version")))
    put(properties, "$browser_language", text_value(device.get("language")))
    if category is None or category.lower() != "desktop":
        put(properties, "$device_manufacturer", text_value(device.get("mobile_brand_name")))
        put(properties, "$device_model", text_value(device.get("mobile_model_name")))
        put(properties, "$device_name", text_value(device.get("mobile_marketing_name")))
    return properties


def _geo(geo: dict) -> dict:
    properties = geo_properties(None, city=text_value(geo.get("city")), region=text_value(geo.get("region")),
                                country_name=text_value(geo.get("country")))
    put(properties, "$geoip_continent_name", text_value(geo.get("continent")))
    return properties


def _traffic_source(source: dict) -> dict:
    properties: dict = {}
    for key, value in source.items():
        if isinstance(key, str) and not isinstance(value, dict | list):
            if isinstance(value, str) and value.strip() in NO_CAMPAIGN:
                continue
            put(properties, TRAFFIC_SOURCE_KEYS.get(key, key), value)
    return properties


def _items(value: Any) -> list[dict]:
    if not isinstance(value, list):
        return []
    items = []
    for item in value:
        if not isinstance(item, dict):
            continue
        clean = without_empty({k: v for k, v in item.items() if k != "item_params" and isinstance(k, str)})
        for key, param in params(item.get("item_params")).items():
            clean.setdefault(key, param)
        if clean:
            items.append(clean)
    return items


def _session_seconds(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            return None
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 < value < 1 << 40:
        return value
    return None
