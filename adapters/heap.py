"""Heap Connect tables: CSV or Parquet warehouse dumps (and Avro S3 dumps when ``fastavro`` is installed).

Mapping: ../shared/reference/source-formats.md, "Heap".

- One table per event type, plus ``pageviews``, ``sessions``, ``users`` and ``user_migrations``. The event
  is the table's name: the file's stem (``pageviews.csv``) or its folder (``pageviews/part-00001.parquet``);
  an ``all_events`` table names each row's event in ``event_table_name``. ``pageviews`` → ``$pageview``.
- ``sessions`` and ``user_migrations`` rows are filtered (they are lookups, not events: give them as the
  ``[source]`` files below). ``users`` rows are person profiles: ``$set`` events (the user's columns as person
  properties, ``joindate`` as ``$set_once``, with ``$geoip_disable``) at ``last_modified`` (else ``joindate``).
- distinct_id = ``identity`` when known (the row's own ``identity`` column, else the ``[source] users``
  file), else the Heap user id after ``user_migrations`` (an id PostHog will not merge through, such as ``0``,
  counts as missing). Heap ids are int64: always read and sent as text.
  A row whose user is identified carries ``link = (identity, heap user id)``.
- ``time`` is UTC, possibly with a `` UTC`` suffix (a naive time is read in the mapping's timezone,
  UTC by default). uuid = UUIDv5 of ``heap:<event_id>``; content-derived without an event id.
- ``platform`` "Mac OS X 10.15.7" → ``$os`` "Mac OS X" + ``$os_version`` "10.15.7" (``browser`` likewise);
  ``$current_url`` is built from ``domain`` + ``path`` + ``query`` + ``hash`` (``https://``; never from
  ``landing_page``, the *session's* first page, which stays a property); ``referrer`` "direct" → no
  referrer; ``ip`` → ``$ip`` (else ``$geoip_disable`` with Heap's country/region/city); ``library`` →
  ``$lib``; ``device_type`` → ``$device_type``; ``title`` → ``title``; ``utm_*`` and every custom column
  stay as they are.
- ``$session_id``: a UUIDv7 from ``session_id`` whose time bits are the session's start, taken from the
  ``[source] sessions`` file (Heap's ``sessions`` table: ``session_id``, ``time``). Without that file the
  start is not in an event row, so the time bits are the event's UTC day: every event of a session gets the
  same id unless the session crosses midnight UTC.

Settings, in the mapping file (paths relative to the current folder; CSV or Parquet; each is loaded into
memory once, about 150 bytes a row)::

    [source]
    user_migrations = "heap/user_migrations.csv"   # from_user_id → to_user_id, applied (chains too)
    users = "heap/users.parquet"                    # user_id → identity
    sessions = "heap/sessions.csv"                  # session_id → time (the session's start)
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterator
from typing import Any, ClassVar

import pyarrow as pa
from posthog_migrate.adapters.base import (
    MAX_RAW_CHARS_IN_REJECT,
    ROWS_PER_CHUNK,
    Adapter,
    BadRow,
    RowChunk,
    SourceFile,
    open_binary,
)
from posthog_migrate.adapters.common import (
    TABLE_KEY,
    file_kind,
    geo_properties,
    id_text,
    is_empty,
    person_id_text,
    probe_rows,
    put,
    read_table_rows,
    referrer_properties,
    session_uuid7,
    table_name,
    text_value,
    url_properties,
    without_empty,
)
from posthog_migrate.distinct_ids import PassedOver, no_usable_id, only_legal
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import Event, Rejection, parse_timestamp, uuid_from_content, uuid_from_id
from posthog_migrate.mapping import ColumnMapping, Filtered
from posthog_migrate.profiles import PERSON_PROFILE

PAGEVIEWS_TABLE = "pageviews"
SOURCE_OPTIONS = ("user_migrations", "users", "sessions")
LOOKUP_TABLES = {
    "sessions": "Heap sessions table (a lookup: give it as [source] sessions)",
    "user_migrations": "Heap user_migrations table (a lookup: give it as [source] user_migrations)",
}
USERS_TABLE = "users"
ALL_EVENTS_TABLE = "all_events"
# Columns that are not plain properties of an event: ids, time, and those mapped to PostHog's names.
CONSUMED_COLUMNS = frozenset({
    "event_id", "user_id", "identity", "session_id", "time", "event_table_name", TABLE_KEY, "library",
    "platform", "device_type", "browser", "country", "region", "city", "ip", "referrer", "domain", "path",
    "query", "hash", "title",
})
USER_BOOKKEEPING = frozenset({"user_id", "identity", "joindate", "last_modified", TABLE_KEY})
NO_REFERRER = frozenset({"direct", "$direct", "(direct)"})
# Heap names are free text: these stay text in CSV (ids stay text anyway).
TEXT_COLUMNS = frozenset({"event_table_name", "platform", "browser", "path", "query", "hash", "title", "domain"})
MAX_MIGRATION_HOPS = 64
DAY_MS = 86_400_000
_NAME_AND_VERSION = re.compile(r"(.*?\S)\s+v?(\d[\w.\-]*)")


def split_version(text: str | None) -> tuple[str | None, str | None]:
    """``"Mac OS X 10.15.7"`` → ("Mac OS X", "10.15.7"); ``"Linux"`` → ("Linux", None)."""
    if text is None:
        return None, None
    match = _NAME_AND_VERSION.fullmatch(text.strip())
    return (match.group(1), match.group(2)) if match else (text.strip() or None, None)


def read_avro(source: SourceFile) -> Iterator[RowChunk]:
    """Heap Connect's S3 dumps: Avro files, read with fastavro when it is installed (it is optional)."""
    try:
        import fastavro
    except ImportError:
        raise ConfigError(
            f"{source.uri}: reading Avro needs the optional fastavro package (pip install fastavro), "
            "or convert the dump to Parquet"
        ) from None
    with open_binary(source.uri) as stream:
        try:
            reader = fastavro.reader(stream)
        except (ValueError, EOFError, OSError, TypeError) as error:
            raise ConfigError(f"{source.uri}: not a readable Avro file ({error}). Is --format right?") from None
        chunk: RowChunk = []
        row_number = 0
        records = iter(reader)
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except (ValueError, EOFError, OSError, zlib.error, TypeError) as error:
                raise ConfigError(
                    f"{source.uri}: the Avro data is corrupt after record {row_number} ({error}); re-download it"
                ) from None
            row_number += 1
            chunk.append((row_number, record if isinstance(record, dict) else BadRow(
                "not_an_object", f"an Avro {type(record).__name__}, expected a record",
                repr(record)[:MAX_RAW_CHARS_IN_REJECT])))
            if len(chunk) >= ROWS_PER_CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _rows(uri: str) -> Iterator[dict]:
    source = SourceFile(uri, 0, 0, 0)
    chunks = read_avro(source) if file_kind(uri) == "avro" else read_table_rows(source)
    for chunk in chunks:
        for _, row in chunk:
            if isinstance(row, dict):
                yield row


def load_lookup(option: str, uri: Any, key_column: str, value_column: str) -> list[tuple[Any, Any]]:
    """The (key, value) pairs of a ``[source]`` lookup file; ConfigError when it cannot be used."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"[source] {option} = {uri!r}: give the path of a CSV or Parquet file")
    if "://" not in uri and not os.path.isfile(uri):
        raise ConfigError(f"[source] {option} = {uri!r}: no such file (a relative path is read from the mapping "
                          "file's folder)")
    pairs = []
    try:
        for row in _rows(uri):
            if key_column not in row or value_column not in row:
                raise ConfigError(
                    f"[source] {option} = {uri!r}: needs the columns {key_column} and {value_column}; "
                    f"found {', '.join(sorted(map(str, row))[:20])}"
                )
            pairs.append((row[key_column], row[value_column]))
    except (OSError, pa.ArrowException) as error:
        raise ConfigError(f"[source] {option} = {uri!r}: cannot read it ({error})") from None
    return pairs


def _id_pairs(pairs: list[tuple[Any, Any]]) -> dict[str, str]:
    out = {}
    for key, value in pairs:
        try:
            key, value = id_text(key, "id"), id_text(value, "id")
        except Rejection:
            continue
        if key is not None and value is not None and key != value:
            out[key] = value
    return out


def _looks_like_heap(row: dict) -> bool:
    if any(not is_empty(row.get(key)) for key in ("event_id", "session_id", "from_user_id")):
        return True
    return not is_empty(row.get("user_id")) and any(k in row for k in ("time", "joindate", "identity"))


class HeapAdapter(Adapter):
    """Heap Connect tables, one event type per table (file or folder)."""

    name: ClassVar[str] = "heap"
    extensions: ClassVar[tuple[str, ...]] = ()
    source_tag: ClassVar[str] = "heap"
    known_source_options: ClassVar[tuple[str, ...]] = SOURCE_OPTIONS
    # Not recognised by --format auto: Heap's columns (user_id, session_id, time...) are those of many a generic
    # export, and its event names come from the tables' file names.

    def __init__(self, mapping: ColumnMapping):
        super().__init__(mapping)
        option = self.mapping.source_path
        self.migrations: dict[str, str] = {}
        self.identities: dict[str, str] = {}
        self.session_starts: dict[str, int] = {}
        if option("user_migrations") is not None:
            self.migrations = _id_pairs(load_lookup(
                "user_migrations", option("user_migrations"), "from_user_id", "to_user_id"))
        if option("users") is not None:
            self.identities = _id_pairs(load_lookup("users", option("users"), "user_id", "identity"))
        if option("sessions") is not None:
            for session, start in load_lookup("sessions", option("sessions"), "session_id", "time"):
                try:
                    key = id_text(session, "session_id")
                    start_us = parse_timestamp(start, "auto", self.mapper.zone)
                except Rejection:
                    continue
                if key is not None:
                    self.session_starts.setdefault(key, start_us // 1000)

    def extra_inputs(self) -> list[str]:
        return [self.mapping.source_path(name) for name in SOURCE_OPTIONS if self.mapping.source_option(name)]

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        if file_kind(source.uri) == "avro":
            chunks = read_avro(source)
        else:
            chunks = read_table_rows(source, TEXT_COLUMNS)
        return probe_rows(source, chunks, _looks_like_heap, "Heap Connect", table_name(source.uri))

    def migrated(self, user: str | None) -> str | None:
        """The user id after user_migrations (following chains, never looping)."""
        for _ in range(MAX_MIGRATION_HOPS):
            if user not in self.migrations:
                break
            user = self.migrations[user]
        return user

    def to_events(self, record: dict) -> list[Event]:
        table = record.get(TABLE_KEY)
        table = table.lower() if isinstance(table, str) else ""
        if table in LOOKUP_TABLES:
            raise Filtered(LOOKUP_TABLES[table])
        raw_user = id_text(record.get("user_id"), "user_id")
        user = self.migrated(raw_user)
        identity = person_id_text(record.get("identity"), "identity")
        if identity is None and user is not None:
            identity = self.identities.get(user) or self.identities.get(raw_user)
        (identity, user), passed = only_legal(("identity", identity), ("user_id", user))
        distinct_id = identity or user
        link = (identity, user) if identity and user and identity != user else None
        if table == USERS_TABLE:
            return [self._user_event(record, distinct_id, raw_user, link, passed)]

        source_name = text_value(record.get("event_table_name")) or (table if table != ALL_EVENTS_TABLE else None)
        if not source_name or not source_name.strip():
            raise Rejection("missing_event_name", "an all_events row without event_table_name" if table
                            else "the row's table (its file or folder name) is not known")
        name = "$pageview" if source_name == PAGEVIEWS_TABLE else source_name
        if name in self.mapper.drop_events or source_name in self.mapper.drop_events:
            raise Filtered(f"event {source_name!r} dropped by the mapping")
        if distinct_id is None:
            raise no_usable_id("the row has no user_id and no identity", passed)
        stamp = record.get("time")
        if is_empty(stamp):
            raise Rejection("bad_timestamp", "the row has no time")
        timestamp_us = parse_timestamp(stamp, "auto", self.mapper.zone)
        self.mapper.apply_time_filters(timestamp_us)

        properties = {k: v for k, v in record.items() if k not in CONSUMED_COLUMNS and not is_empty(v)}
        properties.update(_mapped_properties(record))
        session = _optional_id(record.get("session_id"))
        if session is not None:
            start_ms = self.session_starts.get(session)
            if start_ms is None:
                start_ms = (timestamp_us // 1000) // DAY_MS * DAY_MS
            properties["$session_id"] = session_uuid7(start_ms, f"heap:{raw_user}:{session}")

        event_id = _optional_id(record.get("event_id"))
        if event_id is not None:
            event_uuid = uuid_from_id(f"heap:{event_id}")
        else:
            event_uuid = uuid_from_content(self.source_tag, distinct_id, timestamp_us, name, properties)
        return [Event(name, distinct_id, timestamp_us, event_uuid, properties, source_event=source_name, link=link,
                      illegal_ids=passed)]

    def _user_event(self, record: dict, distinct_id: str | None, raw_user: str | None,
                    link: tuple[str, str] | None, passed: PassedOver) -> Event:
        """A row of Heap's users table: the user's properties, as a ``$set`` event."""
        if distinct_id is None:
            raise no_usable_id("the users row has no user_id and no identity", passed)
        stamp = next((record.get(k) for k in ("last_modified", "joindate") if not is_empty(record.get(k))), None)
        if stamp is None:
            raise Rejection("bad_timestamp", "the users row has no last_modified and no joindate")
        timestamp_us = parse_timestamp(stamp, "auto", self.mapper.zone)
        self.mapper.apply_time_filters(timestamp_us)
        properties: dict = {"$geoip_disable": True}  # else PostHog would locate the migration machine onto the person
        person = without_empty({k: v for k, v in record.items() if k not in USER_BOOKKEEPING and isinstance(k, str)})
        if person:
            properties["$set"] = person
        if not is_empty(record.get("joindate")):
            properties["$set_once"] = {"joindate": record["joindate"]}
        event_uuid = uuid_from_id(f"heap:user:{raw_user or distinct_id}:{timestamp_us}")
        return Event("$set", distinct_id, timestamp_us, event_uuid, properties, source_event=PERSON_PROFILE, link=link,
                     illegal_ids=passed)


def _optional_id(value: Any) -> str | None:
    """An id as text (an int64 read as a float keeps its integer spelling), or None when unusable."""
    try:
        return id_text(value, "id")
    except Rejection:
        return None


def _mapped_properties(record: dict) -> dict:
    properties: dict = {}
    put(properties, "$lib", text_value(record.get("library")))
    os_name, os_version = split_version(text_value(record.get("platform")))
    put(properties, "$os", os_name)
    put(properties, "$os_version", os_version)
    browser, browser_version = split_version(text_value(record.get("browser")))
    put(properties, "$browser", browser)
    put(properties, "$browser_version", browser_version)
    put(properties, "$device_type", text_value(record.get("device_type")))
    properties.update(geo_properties(
        text_value(record.get("ip")), city=text_value(record.get("city")), region=text_value(record.get("region")),
        country_name=text_value(record.get("country")),
    ))
    referrer = text_value(record.get("referrer"))
    if referrer is not None and referrer.strip().lower() not in NO_REFERRER:
        properties.update(referrer_properties(referrer))
    url = current_url(record)
    if url is not None:
        properties.update(url_properties(url))
    else:
        put(properties, "$pathname", text_value(record.get("path")))
    put(properties, "title", text_value(record.get("title")))
    return properties


def current_url(record: dict) -> str | None:
    """``https://`` + domain + path + query + hash (Heap stores the URL in pieces, without its scheme)."""
    domain = text_value(record.get("domain"))
    if domain is None or not domain.strip():
        return None
    domain = domain.strip()
    if "://" not in domain:
        domain = "https://" + domain
    path = text_value(record.get("path")) or ""
    if path and not path.startswith("/"):
        path = "/" + path
    query = text_value(record.get("query")) or ""
    if query and not query.startswith("?"):
        query = "?" + query
    fragment = text_value(record.get("hash")) or ""
    if fragment and not fragment.startswith("#"):
        fragment = "#" + fragment
    return domain.rstrip("/") + (path or "/") + query + fragment
