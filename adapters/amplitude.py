"""Amplitude exports: the Export API's zip, a folder of its ``.json.gz`` files, or plain JSON lines.

The Export API answers with a zip of ``{projectId}/{projectId}_{yyyy-MM-dd}_{H}#{n}.json.gz`` members,
each gzip'd JSON lines (S3/GCS exports use the same member names, as loose files). A zip is one
SourceFile: its members are read in sorted name order and its rows numbered from 1 across all of them.
A loose ``.json.gz`` (or plain JSON lines) file is read like any JSON lines file.

Mapping (../shared/reference/source-formats.md, "Amplitude"), with these choices where it is silent:

- ``$groupidentify``: the reference says "when a group's properties change". Knowing that needs state
  across rows, and state across rows would make the output depend on where a resumed prepare restarts.
  So every row that carries a group's (non-empty) properties gets one ``$groupidentify`` per group
  (every key of ``groups``, not only the first one ``$groups`` can hold), before its own event, with a
  uuid derived from the row's uuid, the group type and key: re-runs send the same events, and PostHog
  applies the properties in time order, so the last one wins as it did in Amplitude.
- Amplitude's own ``$groupidentify`` rows become those events (the last one is the row's own event);
  with no group properties they are filtered. Amplitude ``$identify`` rows pass through: with ``$set``
  they update the person in PostHog too.
- uuid without a ``uuid`` field: Amplitude deduplicates ``$insert_id`` per device, so the UUIDv5 name is
  ``amplitude:insert_id:{device_id}:{$insert_id}``; ``event_id`` is a per-device counter:
  ``amplitude:event_id:{device_id}:{event_id}`` (device required); else the whole row's content.
  A ``uuid`` that is present but not a UUID rejects the row (``bad_uuid``): the export is damaged.
- A row naming more than 254 groups with properties is rejected (``too_many_events``): the pipeline's
  sort key has room for 255 events per row.
- Added events (``$groupidentify``) carry ``$geoip_disable``: without an ``$ip`` PostHog would locate
  them, and the group's person, at the migration machine's address.
- ``library`` ``"amplitude-ts/2.1.0"`` → ``$lib`` ``amplitude-ts`` and ``$lib_version`` ``2.1.0``;
  ``carrier`` → ``$network_carrier`` (PostHog's mobile SDKs' name). Other device fields the reference
  does not map (``device_brand``, ``language``, ``amplitude_id``...) are not sent; ``device_family`` only helps
  tell a web row's ``$device_type``.
- ``[Amplitude] Page *`` properties are mapped on every event that has them (autocapture clicks carry
  them too), and removed; ``[Amplitude] Screen Name`` → ``$screen_name`` likewise; ``[Amplitude] Page Referrer``
  (else ``referrer``) → ``$referrer`` and its ``$referring_domain`` (``[Amplitude] Referring Domain``, else
  ``referring_domain``, when given); ``[Amplitude] Viewport Height``/``Width`` → ``$viewport_height``/``_width``.
- Identity: distinct_id = ``user_id``, else ``device_id``; an id PostHog will not merge through (``"null"``,
  ``"0"``, ``"undefined"``...) counts as missing (posthog_migrate.distinct_ids), and ids are trimmed. A row with
  both carries ``link`` (the identity pass merges the device into its first user once).
- Time: ``event_time``; when it is missing or invalid, ``client_event_time``, then ``server_upload_time``
  (counted among the warnings: PostHog's importer would use the time of the import, which is wrong).
- Geo: the row's ``country``/``region``/``city``/``location_*`` are where the event happened, so they are sent
  as ``$geoip_*`` with ``$geoip_disable`` even when the row has an ``ip_address`` (kept as ``$ip``): PostHog
  locating an old IP today would be wrong. The person gets them too (``$set``, and ``$set_once`` as
  ``$initial_geoip_*``), as PostHog's GeoIP would. An IP without geo: ``$ip`` alone, PostHog locates it.
- Web rows: ``$browser_version`` is a number when the version is one (``"122"`` → 122), as posthog-js sends it;
  ``$device_type`` is Desktop, Mobile or Tablet, from ``device_type`` (the OS there) and ``device_family``. Element
  Clicked/Changed also get ``$event_type`` ``click``/``change``, as PostHog's own autocapture has.
- Event properties named like PostHog's reserved objects (``$set``, ``$set_once``, ``$group_set``,
  ``$groups``) but of the wrong shape are dropped: PostHog would refuse the whole event for them.
"""

from __future__ import annotations

import functools
import io
import math
import re
import uuid as uuid_module
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any, ClassVar

import orjson
from posthog_migrate.adapters.base import (
    MAX_RAW_CHARS_IN_REJECT,
    Adapter,
    BadRow,
    RowChunk,
    SourceFile,
    bounded_lines,
    decompressed,
    file_name,
    in_chunks,
    note_warning,
    open_binary,
)
from posthog_migrate.adapters.common import (
    EMPTY_MARKERS,
    drop_misshapen_reserved,
    event_name,
    is_empty,
    is_plain_id,
    is_plain_text,
    person_id_text,
    probe_rows,
    referrer_properties,
    scalar,
    session_uuid7,
    url_properties,
    without_empty,
)
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.distinct_ids import PassedOver, is_illegal_id, no_usable_id, only_legal
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import (
    MAX_TIMESTAMP_US,
    MIN_TIMESTAMP_US,
    Event,
    Rejection,
    is_canonical_uuid,
    json_object,
    naive_utc_us,
    normalise_uuid,
    number_id_text,
    parse_timestamp,
    sent_timestamp_text,
    uuid5_text,
    uuid_from_content,
    uuid_from_id,
)
from posthog_migrate.mapping import ColumnMapping, Filtered
from posthog_migrate.spool import MAX_EVENTS_PER_ROW
from pyarrow import fs as pafs

# Fixed forever: the uuids of added $groupidentify events derive from it.
GROUP_NAMESPACE = uuid_module.UUID("b1d6a0e2-7c3f-5e4a-9d8b-2f1e0c3a4b5d")

SESSION_RULE = "amplitude session_start/session_end"
SESSION_EVENTS = frozenset({"session_start", "session_end"})
EVENT_NAMES = {
    "[Amplitude] Page Viewed": "$pageview",
    "[Amplitude] Screen Viewed": "$screen",
    "[Amplitude] Element Clicked": "$autocapture",
    "[Amplitude] Element Changed": "$autocapture",
}
AUTOCAPTURE_TYPES = {"[Amplitude] Element Clicked": "click", "[Amplitude] Element Changed": "change"}
PAGE_LOCATION = "[Amplitude] Page Location"
PAGE_URL = "[Amplitude] Page URL"
PAGE_DOMAIN = "[Amplitude] Page Domain"
PAGE_PATH = "[Amplitude] Page Path"
PAGE_TITLE = "[Amplitude] Page Title"
SCREEN_NAME = "[Amplitude] Screen Name"
PAGE_REFERRER = "[Amplitude] Page Referrer"
REFERRING_DOMAIN = "[Amplitude] Referring Domain"
VIEWPORT_HEIGHT = "[Amplitude] Viewport Height"
VIEWPORT_WIDTH = "[Amplitude] Viewport Width"
MAPPED_EVENT_PROPERTIES = frozenset({PAGE_LOCATION, PAGE_URL, PAGE_DOMAIN, PAGE_PATH, PAGE_TITLE, SCREEN_NAME,
                                     PAGE_REFERRER, REFERRING_DOMAIN, VIEWPORT_HEIGHT, VIEWPORT_WIDTH})
# (Amplitude property, PostHog property) for the page and screen fields copied as they are.
PAGE_FIELDS = ((PAGE_DOMAIN, "$host"), (PAGE_PATH, "$pathname"), (PAGE_TITLE, "title"), (SCREEN_NAME, "$screen_name"),
               (VIEWPORT_HEIGHT, "$viewport_height"), (VIEWPORT_WIDTH, "$viewport_width"))
# A web row's device, in the words of its device_type (the OS on the web) and device_family.
MOBILE_WORDS = ("iphone", "ios", "android", "windows phone", "blackberry", "mobile")
DESKTOP_WORDS = ("windows", "mac", "linux", "ubuntu", "chrome os", "chromeos", "fedora", "debian", "desktop")
_VERSION_NUMBER = re.compile(r"\d{1,9}(\.\d{1,9})?")
# A row without a usable event_time takes its time from these, in this order (counted under FALLBACK_TIME_NOTE).
FALLBACK_TIME_FIELDS = ("client_event_time", "server_upload_time")
FALLBACK_TIME_NOTE = ("Amplitude rows whose event_time is missing or invalid: their {field} was used (PostHog's "
                      "importer would use the time of the import)")
# Row field → PostHog property, by kind of row: on the web Amplitude's "OS" is the browser.
WEB_FIELDS = (("os_name", "$browser"), ("os_version", "$browser_version"), ("device_type", "$os"))
MOBILE_FIELDS = (
    ("os_name", "$os"), ("os_version", "$os_version"), ("device_model", "$device_model"),
    ("device_manufacturer", "$device_manufacturer"), ("version_name", "$app_version"),
    ("carrier", "$network_carrier"),
)
INITIAL_PREFIX = "initial_"
# The row's geo in PostHog's names (city, region, country, latitude, longitude), and the person's first geo, as
# PostHog's GeoIP sets it: $initial_geoip_city_name...
GEO_KEYS = ("$geoip_city_name", "$geoip_subdivision_1_name", "$geoip_country_name")
INITIAL_GEO_KEYS = {key: f"$initial_{key[1:]}" for key in (*GEO_KEYS, "$geoip_latitude", "$geoip_longitude")}

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
MEMBER_ENDINGS = (".json.gz", ".json")
UTF8_BOM = b"\xef\xbb\xbf"
SIGNATURE_FIELDS = ("event_time", "user_id", "device_id", "amplitude_id", "uuid")
_NO_ROW = object()  # equal to no value of a row: what the per-row memos hold before the first row


class AmplitudeAdapter(Adapter):
    name: ClassVar[str] = "amplitude"
    extensions: ClassVar[tuple[str, ...]] = ()  # .json.gz / .zip say nothing about the platform: by its rows
    source_tag: ClassVar[str] = "amplitude"
    recognised_shape: ClassVar[str] = "an Amplitude export (event_type and amplitude_id)"

    def __init__(self, mapping: ColumnMapping):
        super().__init__(mapping)
        # The last row's (user_id, device_id) when both were plain legal ids or absent, and its (device_id, session
        # start, $session_id): a device's events come together in an export, so the next row usually repeats them.
        self._last_ids: tuple[Any, Any] = (_NO_ROW, _NO_ROW)
        self._last_session: tuple[Any, int, str] = (0, 0, "")

    @classmethod
    def recognises(cls, record: dict) -> bool:
        return "event_type" in record and "amplitude_id" in record

    # -- reading ------------------------------------------------------------------------------------

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        chunks = _read_zip(source) if _is_zip(source.uri) else read_json_lines(source)
        return probe_rows(source, chunks, _looks_like_amplitude, "Amplitude",
                          expected="has an event_type with event_time, user_id or device_id")

    # -- mapping ------------------------------------------------------------------------------------

    def to_events(self, record: dict) -> list[Event]:
        # Written for the common row: each field's usual shape (plain text, an int, a dict) is accepted inline, and
        # the general helper (event_name, scalar, json_object...) is called only for the rest. Each fast path
        # says why it answers as its helper would: the helpers are the rules, these checks only skip them.
        source_name = record.get("event_type")
        if type(source_name) is not str or not source_name or source_name[0].isspace():  # else: text, not blank
            source_name = event_name(source_name, "event_type")
        if source_name in SESSION_EVENTS:
            raise Filtered(SESSION_RULE)
        name = EVENT_NAMES.get(source_name, source_name)
        drop_events = self.mapper.drop_events
        if drop_events and (source_name in drop_events or name in drop_events):
            raise Filtered(f"event {source_name!r} dropped by the mapping")
        user_id, device_id = record.get("user_id"), record.get("device_id")
        if (user_id, device_id) == self._last_ids:  # text equals only the same text, and None only None
            passed: PassedOver = ()  # as the last row's: plain legal ids (or none)
        elif ((user_id is None or (is_plain_id(user_id) and not is_illegal_id(user_id)))
                and (device_id is None or (is_plain_id(device_id) and not is_illegal_id(device_id)))):
            passed = ()  # plain legal ids (or none) are _user_and_device's answer as they are
            self._last_ids = (user_id, device_id)
        else:
            user_id, device_id, passed = _user_and_device(record)
        distinct_id = user_id or device_id
        if distinct_id is None:
            raise no_usable_id("the row has neither a user_id nor a device_id", passed)
        notes: tuple[str, ...] = ()
        timestamp_text = None
        event_time = record.get("event_time")
        if type(event_time) is str and (timestamp_text := sent_timestamp_text(event_time)) is not None:
            # The sent form's fields (as Amplitude writes every time): naive UTC with a four-digit year, so from the
            # year 1 when fromisoformat reads it, and _timestamp's range check is its upper end. Else the rule.
            try:
                timestamp_us = naive_utc_us(datetime.fromisoformat(event_time))
            except ValueError:  # a 13th month...: _timestamp says why, and the fallback times are tried
                timestamp_text = None
            else:
                if timestamp_us > MAX_TIMESTAMP_US:  # 9999-12-31 23:59:59.5
                    timestamp_text = None
        if timestamp_text is None:
            try:
                timestamp_us = _timestamp(event_time, "event_time")
            except Rejection as missing:
                timestamp_us, notes = _fallback_time(record, missing)
        self.mapper.apply_time_filters(timestamp_us)
        # Objects are almost always objects already: json_object (text, null, junk) only for the rest.
        event_properties = record.get("event_properties")
        if type(event_properties) is not dict:
            event_properties = json_object(event_properties, "event_properties")
        user_properties = record.get("user_properties")
        if type(user_properties) is not dict:
            user_properties = json_object(user_properties, "user_properties")
        # Most rows have no groups at all: json_object(None) is {}, and _groups({}) too.
        groups = record.get("groups")
        groups = _groups(json_object(groups, "groups")) if groups is not None else {}
        group_properties = record.get("group_properties")
        if type(group_properties) is not dict:
            group_properties = json_object(group_properties, "group_properties")
        event_uuid = self._uuid(record, distinct_id, timestamp_us, source_name)
        link = (user_id, device_id) if user_id and device_id and user_id != device_id else None

        # The helpers below add to ``properties`` in a fixed order: key order is part of the bytes sent.
        properties = _event_properties(event_properties, source_name)
        _add_device_properties(properties, record)
        geo = _add_geo(properties, record)
        session_start = record.get("session_id")
        if type(session_start) is int and session_start > 0:  # the usual shape: _session_id without its checks
            last_device, last_start, session = self._last_session
            if session_start != last_start or device_id != last_device:  # not the last row's session
                session = session_uuid7(session_start, f"amplitude:{device_id or ''}:{session_start}")
                self._last_session = (device_id, session_start, session)
            properties["$session_id"] = session
        elif (session := _session_id(session_start, device_id)) is not None:
            properties["$session_id"] = session
        # user_properties split into ($set, $set_once): initial_* ones are set once, as $initial_*. Empty values are
        # not sent; plain text and ints (is_plain_text, inlined: this runs for every user property) never are empty.
        user_set, set_once = {}, {}
        for key, value in user_properties.items():
            kind = type(value)
            if kind is str and value not in EMPTY_MARKERS and not value[0].isspace() and not value[-1].isspace():
                pass
            elif kind is not int and is_empty(value):
                continue
            if isinstance(key, str) and key.startswith(INITIAL_PREFIX):
                set_once[f"${key}"] = value
            else:
                user_set[key] = value
        if geo:  # the row's own geo, not a lookup of its IP today: the person's too, as PostHog's GeoIP would
            user_set.update(geo)
            set_once.update((INITIAL_GEO_KEYS[key], value) for key, value in geo)
        # The row's own $set/$set_once first, then the user properties over them; with none of its own (the usual
        # row) the fresh dicts are that merge already.
        if user_set:
            properties["$set"] = {**properties["$set"], **user_set} if "$set" in properties else user_set
        if set_once:
            properties["$set_once"] = {**properties["$set_once"], **set_once} if "$set_once" in properties else set_once
        if groups:
            properties["$groups"] = {group_type: keys[0] for group_type, keys in groups.items()}

        added = [
            Event("$groupidentify", distinct_id, timestamp_us,
                  uuid5_text(GROUP_NAMESPACE, f"groupidentify:{event_uuid}:{group_type}:{key}"),
                  {"$group_type": group_type, "$group_key": key, "$group_set": group_set, "$geoip_disable": True},
                  added=True, source_event="(amplitude group_properties)", link=link, timestamp_text=timestamp_text)
            for group_type, key, group_set in _group_sets(groups, group_properties)
        ] if groups else []
        if len(added) >= MAX_EVENTS_PER_ROW - 1:
            raise Rejection("too_many_events", f"the row names {len(added)} groups with properties; at most "
                            f"{MAX_EVENTS_PER_ROW - 2} fit beside its own event")
        if name == "$groupidentify":  # Amplitude's own: its group events are the row
            if not added:
                raise Filtered("amplitude $groupidentify without group properties")
            own = added.pop()
            own.uuid, own.added, own.source_event = event_uuid, False, source_name
            return [*added, own]
        own = Event(name, distinct_id, timestamp_us, event_uuid, properties, source_event=source_name, link=link,
                    illegal_ids=passed, notes=notes, timestamp_text=timestamp_text)
        return [*added, own] if added else [own]

    def person_of(self, record: dict) -> str | None:
        try:
            user_id, device_id, _ = _user_and_device(record)
            return user_id or device_id  # to_events' distinct_id
        except Rejection:
            return None  # to_events rejects the row; which shard reports it is decided the usual way

    def _uuid(self, record: dict, distinct_id: str, timestamp_us: int, name: str) -> str:
        source_uuid = record.get("uuid")
        if type(source_uuid) is str and is_canonical_uuid(source_uuid):  # as exported: nothing to normalise
            return source_uuid
        if not is_empty(source_uuid):
            return normalise_uuid(source_uuid)
        # The device as these uuids have always named it (untrimmed; "null" as none), so that they never change.
        device_id = _identifier(record, "device_id", reject=False)
        insert_id = _identifier(record, "$insert_id", reject=False)
        if insert_id is not None:
            return uuid_from_id(f"amplitude:insert_id:{device_id or ''}:{insert_id}")
        event_id = _identifier(record, "event_id", reject=False)
        if event_id is not None and device_id is not None:
            return uuid_from_id(f"amplitude:event_id:{device_id}:{event_id}")
        return uuid_from_content(self.source_tag, distinct_id, timestamp_us, name, record)


# --- field helpers ---------------------------------------------------------------------------------


def _user_and_device(record: dict) -> tuple[str | None, str | None, PassedOver]:
    """The row's user and device ids (either may be missing); the user's, else the device's, is its person. An
    id PostHog would not merge through ("null", "0"...) is missing too, and returned among those passed over."""
    user_id, device_id = person_id_text(record.get("user_id"), "user_id"), person_id_text(record.get("device_id"),
                                                                                          "device_id")
    if (user_id is None or not is_illegal_id(user_id)) and (device_id is None or not is_illegal_id(device_id)):
        return user_id, device_id, ()
    (user_id, device_id), passed = only_legal(("user_id", user_id), ("device_id", device_id))
    return user_id, device_id, passed


def _identifier(record: dict, key: str, reject: bool = True) -> str | None:
    """An id as text; None when absent or an empty marker. Other shapes reject the row (or count as absent)."""
    value = record.get(key)
    if type(value) is str and value not in EMPTY_MARKERS and not value[0].isspace() and not value[-1].isspace():
        return value  # the usual id: plain text that is not a "nothing here" marker
    if is_empty(value):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if reject or math.isfinite(value):
            return number_id_text(value, key)  # NaN or an infinity rejects the row
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if reject:
        raise Rejection("missing_distinct_id", f"{key} is a {type(value).__name__}, not text or a number")
    return None


def _timestamp(value: Any, field: str) -> int:
    """A row's time field: UTC whatever --source-timezone says, as Amplitude writes them all."""
    if is_empty(value):
        raise Rejection("bad_timestamp", f"the row has no {field}")
    timestamp_us = parse_timestamp(value, "auto", UTC)
    if not MIN_TIMESTAMP_US <= timestamp_us <= MAX_TIMESTAMP_US:
        raise Rejection("bad_timestamp", f"{field} {str(value)[:40]!r} is outside the years 1 to 9999")
    return timestamp_us


def _fallback_time(record: dict, missing: Rejection) -> tuple[int, tuple[str, ...]]:
    """The time of a row whose event_time is missing or invalid: its client_event_time, else its
    server_upload_time, with the note that says so (PostHog's importer would use the time of the import; the
    row is kept rather than rejected). ``missing`` is raised again when neither is usable."""
    for field in FALLBACK_TIME_FIELDS:
        try:
            return _timestamp(record.get(field), field), (FALLBACK_TIME_NOTE.format(field=field),)
        except Rejection:
            continue
    raise Rejection(missing.reason, f"{missing.detail}, nor a usable {' or '.join(FALLBACK_TIME_FIELDS)}")


def _key_text(value: Any) -> str | None:
    if value is None:
        return None
    value = scalar(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return None if value is None else str(value)


def _event_properties(event_properties: dict, source_name: str) -> dict:
    """The row's own properties, with Amplitude's page and screen properties in PostHog's names."""
    mapped = MAPPED_EVENT_PROPERTIES.intersection(event_properties)  # usually one or two: look up only those
    # A copy without the mapped ones: deleting keeps the others' order, as a filtering comprehension would, at a
    # fraction of its cost on a row of 30 properties.
    properties = event_properties.copy()
    for key in mapped:
        del properties[key]
    drop_misshapen_reserved(properties)
    if PAGE_LOCATION in mapped or PAGE_URL in mapped:
        url = event_properties.get(PAGE_LOCATION)
        if not is_plain_text(url):  # plain text is its own _key_text; anything else asks it (then the URL field)
            url = _key_text(url) or _key_text(event_properties.get(PAGE_URL))
        if url is not None:
            properties.update(url_properties(url))
    if len(mapped) > (PAGE_LOCATION in mapped) + (PAGE_URL in mapped):  # a page field beside the URLs
        for field, target in PAGE_FIELDS:
            if field in mapped and (value := scalar(event_properties[field])) is not None:
                properties[target] = value
    if PAGE_REFERRER in mapped or "referrer" in event_properties:
        referrer = _key_text(event_properties.get(PAGE_REFERRER)) or _key_text(event_properties.get("referrer"))
        if referrer is not None:
            properties.update(referrer_properties(referrer))  # $referrer, and its $referring_domain
    if REFERRING_DOMAIN in mapped or "referring_domain" in event_properties:
        domain = scalar(event_properties.get(REFERRING_DOMAIN)) or scalar(event_properties.get("referring_domain"))
        if domain is not None:
            properties["$referring_domain"] = domain
    if source_name in AUTOCAPTURE_TYPES:
        properties["$event_type"] = AUTOCAPTURE_TYPES[source_name]
    return properties


def _add_device_properties(properties: dict, record: dict) -> None:
    platform = record.get("platform")
    web = isinstance(platform, str) and platform.strip().lower() == "web"
    for field, target in WEB_FIELDS if web else MOBILE_FIELDS:
        value = record.get(field)
        if value is None:
            continue
        # Plain text is its own scalar (is_plain_text, inlined: this runs for every field of every row).
        if (type(value) is str and value not in EMPTY_MARKERS and not value[0].isspace()
                and not value[-1].isspace()) or (value := scalar(value)) is not None:
            properties[target] = value
    if web:
        if type(version := properties.get("$browser_version")) is str:
            properties["$browser_version"] = _version_number(version)
        os_name, family = record.get("device_type"), record.get("device_family")
        if type(os_name) in _TEXT and type(family) in _TEXT and (device := _device_type(os_name, family)) is not None:
            properties["$device_type"] = device
    # Plain text is its own _key_text: the helper only for the rest.
    library = record.get("library")
    if library is not None and (is_plain_text(library) or (library := _key_text(library)) is not None):
        properties.update(_library_properties(library))
    insert_id = record.get("$insert_id")
    if insert_id is not None and (is_plain_text(insert_id) or (insert_id := _key_text(insert_id)) is not None):
        properties["$insert_id"] = insert_id


@functools.lru_cache(maxsize=256)  # a handful of SDK versions in an export
def _library_properties(library: str) -> tuple[tuple[str, str], ...]:
    """``amplitude-ts/2.1.0`` → $lib ``amplitude-ts`` and $lib_version ``2.1.0``; a name alone → $lib."""
    lib, _, version = library.partition("/")
    return (("$lib", lib or library), ("$lib_version", version)) if lib and version else (("$lib", lib or library),)


def _add_geo(properties: dict, record: dict) -> tuple[tuple[str, Any], ...]:
    """The row's ``$ip`` and geo; returns the geo (``($geoip_*, value)`` pairs) for the person, none when the
    row has none.

    The row's own geo is where the event happened; PostHog locating its IP today would be wrong for an old
    event (addresses move), so when the row has geo it is sent with ``$geoip_disable``, IP or not. With an IP
    and no geo, PostHog locates the IP. With neither, ``$geoip_disable`` alone: PostHog would otherwise locate
    the migration machine's address."""
    ip = record.get("ip_address")
    has_ip = is_plain_text(ip) or (isinstance(ip, str) and not is_empty(ip))
    if has_ip:
        properties["$ip"] = ip
    place = (record.get("city"), record.get("region"), record.get("country"))
    # A row's place is text (or null) and repeats from row to row: judged once per place.
    geo = _place(*place) if type(place[0]) in _TEXT and type(place[1]) in _TEXT and type(place[2]) in _TEXT else (
        _place_items(*map(scalar, place)))
    latitude, longitude = record.get("location_lat"), record.get("location_lng")
    if latitude is not None or longitude is not None:
        geo += tuple((key, value) for key, value in ((LATITUDE, _coordinate(latitude)),
                                                     (LONGITUDE, _coordinate(longitude))) if value is not None)
    if geo or not has_ip:
        properties["$geoip_disable"] = True
    properties.update(geo)
    return geo


_TEXT = frozenset({str, type(None)})
LATITUDE, LONGITUDE = "$geoip_latitude", "$geoip_longitude"


@functools.lru_cache(maxsize=4096)
def _place(city: str | None, region: str | None, country: str | None) -> tuple[tuple[str, Any], ...]:
    return _place_items(scalar(city), scalar(region), scalar(country))


def _place_items(city: Any, region: Any, country: Any) -> tuple[tuple[str, Any], ...]:
    """($geoip_*, value) pairs of the usable ones (see scalar) of a place's city, region and country."""
    return tuple((key, value) for key, value in zip(GEO_KEYS, (city, region, country), strict=True)
                 if value is not None)


def _coordinate(value: Any) -> float | None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return value if is_number else None


@functools.lru_cache(maxsize=1024)  # few distinct versions in an export
def _version_number(value: str) -> Any:
    """``"120"`` → 120 and ``"17.4"`` → 17.4, as posthog-js sends ``$browser_version``; other text as it is."""
    if _VERSION_NUMBER.fullmatch(value):
        return float(value) if "." in value else int(value)
    return value


@functools.lru_cache(maxsize=1024)  # few distinct devices in an export
def _device_type(os_name: str | None, family: str | None) -> str | None:
    """Desktop, Mobile or Tablet, as posthog-js says it, from a web row's device_type (the OS there) and
    device_family; None when neither tells."""
    words = " ".join(text.lower() for text in (os_name, family) if isinstance(text, str))
    if "ipad" in words or "tablet" in words:
        return "Tablet"
    if any(word in words for word in MOBILE_WORDS):
        return "Mobile"
    if any(word in words for word in DESKTOP_WORDS):
        return "Desktop"
    return None


def _session_id(value: Any, device_id: str | None) -> str | None:
    """Amplitude's session id is the session start in epoch ms (-1: no session) → a UUIDv7 on that time."""
    if type(value) is int:  # the usual shape: answer without the checks below
        start_ms = value
    else:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        start_ms = int(value)
    if start_ms <= 0:
        return None
    return session_uuid7(start_ms, f"amplitude:{device_id or ''}:{start_ms}")


def _groups(groups: dict) -> dict[str, list[str]]:
    """``{type: [key, ...]}`` (a lone key is accepted too), keeping usable keys in their order."""
    if not groups:
        return {}
    result: dict[str, list[str]] = {}
    usable = [(t, v) for t, v in groups.items() if isinstance(t, str) and t.strip()]
    for group_type, value in sorted(usable, key=lambda item: item[0]):
        keys = [_key_text(item) for item in (value if isinstance(value, list) else [value])]
        keys = list(dict.fromkeys(k for k in keys if k is not None))
        if keys:
            result[group_type] = keys
    return result


def _group_sets(groups: dict[str, list[str]], group_properties: dict) -> Iterator[tuple[str, str, dict]]:
    """(type, key, properties) of every group of the row whose properties the row carries."""
    for group_type, keys in groups.items():
        by_key = group_properties.get(group_type)
        if not isinstance(by_key, dict):
            continue
        for key in keys:
            values = by_key.get(key)
            group_set = without_empty(values) if isinstance(values, dict) else {}
            if group_set:
                yield group_type, key, group_set


# --- reading ---------------------------------------------------------------------------------------

def _is_zip(uri: str) -> bool:
    if file_name(uri).endswith(".zip"):
        return True
    with open_binary(uri) as stream:
        return stream.peek(4)[:4] in ZIP_MAGICS


def _open_seekable(uri: str) -> IO[bytes]:
    if "://" in uri:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        return filesystem.open_input_file(path)
    return open(uri, "rb")


def _is_member(info: zipfile.ZipInfo) -> bool:
    """An export file: ``.json.gz`` or ``.json``, not macOS' ``__MACOSX``/``._*`` litter. A ``..`` in the name
    is harmless (nothing is extracted to disk)."""
    parts = info.filename.split("/")
    if any((part.startswith(".") and part not in (".", "..")) or part == "__MACOSX" for part in parts):
        return False
    return parts[-1].lower().endswith(MEMBER_ENDINGS)


def _note_members_not_read(uri: str, infos: list[zipfile.ZipInfo]) -> None:
    """Say which files of the archive were not read (never drop them quietly)."""
    names = [info.filename for info in infos if not info.is_dir() and not _is_member(info)]
    if names:
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10:,} more" if len(names) > 10 else "")
        note_warning(f"{uri}: {len(names):,} member(s) of the zip not read (not .json or .json.gz): {shown}")


def _read_zip(source: SourceFile) -> Iterator[RowChunk]:
    with _open_seekable(source.uri) as handle:
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise ConfigError(
                f"{source.uri}: not a readable zip archive ({error}); re-download the export, or check --format"
            ) from None
        with archive:
            _note_members_not_read(source.uri, archive.infolist())
            members = sorted((info for info in archive.infolist() if _is_member(info)), key=lambda i: i.filename)
            if not members:
                raise ConfigError(
                    f"{source.uri}: the zip holds no .json.gz or .json files; is it an Amplitude export? "
                    "Check --format."
                )
            yield from in_chunks(_numbered_rows(archive, members, source.uri))


def _numbered_rows(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo],
                   uri: str) -> Iterator[tuple[int, dict | BadRow, int]]:
    """Every member's rows, numbered across the archive, with their sizes in bytes (for in_chunks)."""
    row_number = 0
    for info in members:
        for line_number, line in _member_lines(archive, info, uri):
            row_number += 1
            yield row_number, _parse_line(line, info.filename, line_number), len(line) if type(line) is bytes else 0


def _member_lines(archive: zipfile.ZipFile, info: zipfile.ZipInfo, uri: str) -> Iterator[tuple[int, bytes | BadRow]]:
    """The non-blank lines of one member (decompressed by its magic bytes), with their line numbers; a line
    over MAX_ROW_BYTES as a ``row_too_large`` BadRow."""
    try:
        # A BufferedReader: ZipExtFile.readline(limit) may return more than the limit.
        with io.BufferedReader(archive.open(info), 1 << 20) as raw, \
                decompressed(raw, f"{uri}: member {info.filename}") as stream:
            for line_number, line in enumerate(bounded_lines(stream), start=1):
                if type(line) is BadRow:
                    yield line_number, line
                    continue
                if line_number == 1 and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM):]
                if line.strip():
                    yield line_number, line
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
        raise ConfigError(
            f"{uri}: member {info.filename} is corrupt or truncated ({error}); re-download the export"
        ) from None


def _parse_line(line: bytes | BadRow, member: str, line_number: int) -> dict | BadRow:
    if type(line) is BadRow:
        line.detail += f" ({member}, line {line_number})"
        return line
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raw = line[:MAX_RAW_CHARS_IN_REJECT].decode("utf-8", errors="replace")
        return BadRow("invalid_json", f"not valid JSON ({member}, line {line_number}): {error}", raw)
    if not isinstance(value, dict):
        return BadRow("not_an_object",
                      f"a JSON {type(value).__name__}, expected an object ({member}, line {line_number})", value)
    return value


def _looks_like_amplitude(row: dict) -> bool:
    return "event_type" in row and any(field in row for field in SIGNATURE_FIELDS)
