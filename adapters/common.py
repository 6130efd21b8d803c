"""Helpers shared by the platform adapters: URLs, sessions, geo, empty values, ids, tables, format probes.

Kept here so every adapter applies PostHog's conventions the same way (../shared/reference/
source-formats.md, "Common rules for every source").
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import orjson
from posthog_migrate.adapters.base import RowChunk, SourceFile, file_name, without_compression
from posthog_migrate.adapters.csv import infer_scalar, read_csv
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.adapters.parquet import read_parquet
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import Rejection, hyphenated_uuid, number_id_text

# Values platforms use for "nothing here"; they must not become properties or person properties.
EMPTY_MARKERS = frozenset({"", "EMPTY", "(not set)", "(not provided)", "null", "None"})
# Ids that are really "no id" (a JavaScript String(null) and friends), for ids that name no person (group keys,
# session ids). A person's id is judged by posthog_migrate.distinct_ids instead (see person_id_text).
JUNK_IDS = frozenset({"null", "undefined", "none", "nil"})
# What a platform writes for "no id here": a person id with one of these is missing. Ids PostHog will not merge
# through ("null", "undefined", "0"...) are not missing: distinct_ids.pick_id passes them over and counts them.
BLANK_ID_MARKERS = frozenset({"", "EMPTY", "(not set)", "(not provided)"})
# The record key under which read() passes a warehouse file's table name to to_events (kept in rejects,
# so a retry of a rejected row still knows its table).
TABLE_KEY = "_source_table"
# Rows looked at to decide that a file is not Segment at all (and say so once, not per row).
PROBE_ROWS = 20
# ... but a file of fewer records is refused only from this many (a lone bad row is a reject).
MIN_PROBE_ROWS = 3
_PART_NAME = re.compile(
    r"(part|data|chunk|shard|file|batch|export)?[-_.]?[0-9a-f]*([-_.][0-9a-z]*)*|\d{4}-\d{2}-\d{2}.*|\w+=.*",
    re.IGNORECASE,
)

URL_CACHE_SIZE = 16_384
# The 80 bits of a UUIDv7 after its timestamp: which of them come from a hash, and the fixed ones.
_UUID7_HASH_BITS = 0x0FFF_3FFF_FFFF_FFFF_FFFF
_UUID7_VERSION_AND_VARIANT = 0x7000_8000_0000_0000_0000


def is_empty(value: Any) -> bool:
    """None, a platform's "nothing here" marker (surrounding spaces allowed), or an empty object/list.

    Called for nearly every value of every row: the common cases return before any allocation.
    """
    kind = type(value)
    if kind is str:
        if value in EMPTY_MARKERS:
            return True
        if value[0].isspace() or value[-1].isspace():
            return value.strip() in EMPTY_MARKERS
        return False
    if kind is int or kind is float or kind is bool:
        return False
    return value is None or value == {} or value == []


def is_plain_text(value: Any) -> bool:
    """Text that is not a "nothing here" marker and has no surrounding space: what is_empty calls not empty and the
    adapters' value helpers hand back unchanged, answered without calling them (mapping asks this of most values of
    every row). False says nothing: the value takes the general helper."""
    return type(value) is str and value not in EMPTY_MARKERS and not value[0].isspace() and not value[-1].isspace()


def is_plain_id(value: Any) -> bool:
    """Text with nothing to trim that is not a blank marker: what person_id_text hands back unchanged."""
    return type(value) is str and value not in BLANK_ID_MARKERS and not value[0].isspace() and not value[-1].isspace()


def without_empty(values: dict | None) -> dict:
    """A copy of ``values`` without keys whose value is empty or a platform's empty marker."""
    return {k: v for k, v in (values or {}).items() if not is_empty(v)}


# Property names PostHog reads as objects: a value of another shape makes capture refuse the whole event.
RESERVED_OBJECTS = ("$set", "$set_once", "$group_set")


def drop_misshapen_reserved(properties: dict) -> None:
    """Remove the source's own ``$set``, ``$set_once``, ``$group_set`` that are not objects, and a ``$groups`` that
    does not map group types to keys: PostHog would refuse the whole event for any of them."""
    # Four lookups for the usual row, which has none of them (a set test would hash every property's name).
    if not ("$set" in properties or "$set_once" in properties or "$group_set" in properties
            or "$groups" in properties):
        return
    for key in RESERVED_OBJECTS:
        if key in properties and not isinstance(properties[key], dict):
            del properties[key]
    groups = properties.get("$groups")
    if "$groups" in properties and not (isinstance(groups, dict)
                                        and all(isinstance(v, str) and v for v in groups.values())):
        del properties["$groups"]


def url_properties(url: str | None) -> dict[str, str]:
    """``$current_url`` plus the ``$host`` and ``$pathname`` PostHog derives from it in the browser SDK."""
    if is_empty(url):
        return {}
    properties = {"$current_url": url}
    host, path = host_and_path(url) if isinstance(url, str) else ("", "")
    if host:
        properties["$host"] = host
    if path:
        properties["$pathname"] = path
    return properties


def scalar(value: Any) -> Any:
    """A value fit for a descriptive property (text or number), or None: not a bool, a container or empty."""
    if value is None:  # most optional fields are absent: answer before any other test
        return None
    kind = type(value)
    if kind is str:
        return None if is_empty(value) else value
    if kind is int or kind is float:
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float) or is_empty(value):
        return None  # bools, containers, and str/int/float subclasses judged the slow way
    return value


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def host_and_path(url: str) -> tuple[str, str]:
    """urlsplit is slow and exports repeat the same pages endlessly: remember recent answers."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "", ""
    return parts.netloc, parts.path


@functools.lru_cache(maxsize=URL_CACHE_SIZE)  # a session's events come close together: most calls repeat
def session_uuid7(start_ms: int, session_key: str) -> str:
    """A deterministic UUIDv7 for a source session: its time bits are the session start.

    PostHog only counts sessions whose ``$session_id`` is a UUIDv7. The 74 "random" bits are a hash of
    ``session_key`` (e.g. the source, the device and the source's session id), so every event of one
    session gets the same id, on every run.
    """
    if not 0 <= start_ms < 1 << 48:
        start_ms = max(0, min(int(start_ms), (1 << 48) - 1))
    # 48 bits of time | version 7 | 12 bits of the hash | the RFC 4122 variant (0b10) | 62 bits of the hash.
    hashed = int.from_bytes(hashlib.sha256(session_key.encode("utf-8", "surrogatepass")).digest()[:10], "big")
    value = (int(start_ms) << 80) | (hashed & _UUID7_HASH_BITS) | _UUID7_VERSION_AND_VARIANT
    return hyphenated_uuid(value.to_bytes(16, "big"))


def geo_properties(ip: str | None, city: str | None = None, region: str | None = None,
                   country_name: str | None = None, country_code: str | None = None,
                   latitude: float | None = None, longitude: float | None = None) -> dict[str, Any]:
    """Geo as PostHog should see it.

    With the source's real ``ip``, send ``$ip`` and let PostHog's GeoIP fill in the rest. Without one,
    PostHog would geolocate the *migration machine's* address: send ``$geoip_disable: true`` and the
    source's own geo fields instead.
    """
    if not is_empty(ip):
        return {"$ip": ip}
    geo: dict[str, Any] = {"$geoip_disable": True}
    for key, value in (("$geoip_city_name", city), ("$geoip_subdivision_1_name", region),
                       ("$geoip_country_name", country_name), ("$geoip_country_code", country_code),
                       ("$geoip_latitude", latitude), ("$geoip_longitude", longitude)):
        if not is_empty(value):
            geo[key] = value
    return geo


# --- values, ids, tables and formats: shared by the platform adapters (never raise on odd values) ----


def object_value(value: Any) -> dict:
    """A dict from a dict, or from a JSON object in a text cell; anything else is empty."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def id_text(value: Any, what: str, reason: str = "missing_distinct_id") -> str | None:
    """An id as text (numbers too: ``12.0`` → ``"12"``); None when missing or a known junk id
    (``""``, ``"null"``, ``"undefined"``...). Raises Rejection(reason) for a value that cannot be an id."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        return None if not text or is_empty(text) or text.lower() in JUNK_IDS else value
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise Rejection(reason, f"{what} {short_repr(value)} is not text or a number")
    return number_id_text(value, what, reason)


def person_id_text(value: Any, what: str, reason: str = "missing_distinct_id") -> str | None:
    """A person's id as trimmed text (numbers too: ``12.0`` → ``"12"``); None when missing or blank. Whether
    PostHog merges through it is for posthog_migrate.distinct_ids to say. Raises Rejection(reason) for a value
    that cannot be an id (an object, a boolean, NaN)."""
    if type(value) is str:
        if value and not value[0].isspace() and not value[-1].isspace():  # the usual id: nothing to trim
            return None if value in BLANK_ID_MARKERS else value
        text = value.strip()
        return None if text in BLANK_ID_MARKERS else text
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise Rejection(reason, f"{what} {short_repr(value)} is not text or a number")
    return number_id_text(value, what, reason)


def event_name(value: Any, column: str) -> str:
    """A row's event name (a number becomes text); Rejection when it is missing, empty or not a scalar."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise Rejection("missing_event_name", f"the row has no {column}")
    return value


def text_value(value: Any) -> str | None:
    """A scalar as text, for names and urls; None for empties and for non-scalars."""
    if isinstance(value, str):
        return None if is_empty(value) else value
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None
    return str(value)


def number_value(value: Any) -> float | int | None:
    """A finite number from a number or numeric text, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return value
    return None


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_part_name(name: str) -> bool:
    """``part-00000``, ``000000_0``, ``1709251200000.a1b2c3``, ``dt=2024-03-01``: a piece of a table, not its name."""
    if not name or "=" in name or name.startswith(("part-", "part_", "run-")):
        return True
    return any(ch.isdigit() for ch in name) and _PART_NAME.fullmatch(name) is not None


def table_name(uri: str) -> str:
    """The table a warehouse file holds: its stem (``pages.csv``), or the nearest folder when the file
    is a piece of a table (``pages/part-00000.parquet``); "" when nothing looks like a name."""
    path = PurePosixPath(uri.split("://", 1)[-1])
    name = without_compression(path.name.lower()).removesuffix(".snappy")
    for ending in (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".avro"):
        name = name.removesuffix(ending)
    candidates = [name, *(parent.name.lower() for parent in list(path.parents)[:3])]
    return next((candidate for candidate in candidates if not _is_part_name(candidate)), "")


def referrer_properties(referrer: Any) -> dict[str, str]:
    """``$referrer`` and the ``$referring_domain`` PostHog's web SDK derives from it."""
    text = text_value(referrer)
    if text is None:
        return {}
    properties = {"$referrer": text}
    try:
        host = urlsplit(text).netloc
    except ValueError:
        host = ""
    if host:
        properties["$referring_domain"] = host
    return properties


def put(properties: dict, key: str, value: Any) -> None:
    """Set a scalar property unless it is empty (or not a scalar)."""
    if not is_empty(value) and not isinstance(value, dict | list | tuple):
        properties[key] = value


# --- reading ------------------------------------------------------------------------------------------

def file_kind(uri: str) -> str:
    """csv, parquet, avro or jsonl, by the file's ending (compression endings looked through)."""
    name = without_compression(file_name(uri))
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".avro"):
        return "avro"
    return "jsonl"


def read_csv_keeping_ids(source: SourceFile, text_columns: frozenset[str] = frozenset()) -> Iterator[RowChunk]:
    """CSV rows whose id columns (``id``, ``*_id``, ``identity``, plus ``text_columns``) stay text, while
    every other cell gets the CSV reader's canonical number/bool inference (``"42"`` → 42)."""
    for chunk in read_csv(source, infer_types=False):
        yield [(number, row if not isinstance(row, dict) else {
            k: v if k in text_columns or k == "id" or k.endswith("_id") or k == "identity" else infer_scalar(v)
            for k, v in row.items()
        }) for number, row in chunk]


def read_table_rows(source: SourceFile, text_columns: frozenset[str] = frozenset()) -> Iterator[RowChunk]:
    """A warehouse table file's rows, by its ending: CSV (ids kept as text), Parquet, else JSON lines."""
    kind = file_kind(source.uri)
    if kind == "csv":
        return read_csv_keeping_ids(source, text_columns)
    if kind == "parquet":
        return read_parquet(source)
    return read_json_lines(source)


def probe_rows(source: SourceFile, chunks: Iterator[RowChunk], looks_right: Callable[[dict], bool], fmt: str,
               table: str | None = None, expected: str = "") -> Iterator[RowChunk]:
    """Pass the chunks through (each record told its ``table`` when given), but refuse the file when it
    holds records and none of its first ones is a ``fmt`` row: the user chose the wrong --format.

    Chunks are held back only until the first recognisable record (or PROBE_ROWS records) is seen.
    """
    pending: list[RowChunk] = []
    probed = 0
    checking = True
    for chunk in chunks:
        if table is not None:
            for _, row in chunk:
                if isinstance(row, dict):
                    row.setdefault(TABLE_KEY, table)
        if not checking:
            yield chunk
            continue
        pending.append(chunk)
        for _, row in chunk:
            if isinstance(row, dict):
                probed += 1
                if looks_right(row):
                    checking = False
                    break
                if probed >= PROBE_ROWS:
                    break
        if checking and probed >= PROBE_ROWS:
            _refuse(source, probed, fmt, expected)
        if not checking:
            yield from pending
            pending = []
    if checking and probed >= MIN_PROBE_ROWS:
        _refuse(source, probed, fmt, expected)
    yield from pending


def _refuse(source: SourceFile, probed: int, fmt: str, expected: str) -> None:
    article = "an" if fmt[:1].lower() in "aeiou" else "a"
    raise ConfigError(
        f"{source.uri}: this is not {article} {fmt} export: none of its first {probed} records "
        f"{expected or 'looks like one of its rows'}. Check --format."
    )
