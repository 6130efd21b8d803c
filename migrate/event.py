"""The canonical event: timestamps, deterministic uuids, validation and serialisation.

Every adapter ends by handing the pipeline an :class:`Event`. This module is the one place that decides
what a valid event is (see ../shared/reference/posthog-ingestion-facts.md): PostHog's capture rejects a
whole batch on the first bad event, so nothing invalid may ever reach the sender. It is also the one
place that turns an event into bytes, so two runs over the same input send byte-identical events.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import time
import uuid as uuid_module
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from posthog_migrate.distinct_ids import ILLEGAL_DISTINCT_ID, LONGEST_ILLEGAL_ID, PassedOver, is_illegal_id

# PostHog's Kafka message limit is about 1 MB; posthog-python caps an event at 900 KiB. Stay there.
MAX_EVENT_BYTES = 900 * 1024
# capture truncates or rejects longer ids; a truncated id would silently merge different people.
MAX_DISTINCT_ID_CHARS = 200
# capture clamps timestamps more than 23 h ahead to "now", which would misplace the event.
MAX_FUTURE_SKEW = timedelta(hours=23)
_MAX_FUTURE_SKEW_US = MAX_FUTURE_SKEW // timedelta(microseconds=1)
# PostHog's migration guide asks for events at least 48 h old; newer ones are flagged, not refused.
RECENT_EVENT_AGE = timedelta(hours=48)
RECENT_EVENT_AGE_US = RECENT_EVENT_AGE // timedelta(microseconds=1)

# Namespaces for UUIDv5. Fixed forever: changing one changes every derived uuid and breaks dedup
# between a run made before the change and a re-run made after it.
INSERT_ID_NAMESPACE = uuid_module.UUID("8f0c2b7e-5a43-5d6e-9b1f-6d2a4c3e7f10")
CONTENT_NAMESPACE = uuid_module.UUID("3d5e6f70-8192-5a3b-8c4d-5e6f708192a3")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
# The mapping's default --source-timezone (ZoneInfo keeps one instance per key): the same as UTC.
_ZONEINFO_UTC = ZoneInfo("UTC")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
MICROSECONDS_PER_DAY = 86_400_000_000
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NUMERIC = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
TIMESTAMP_UNITS = ("auto", "s", "ms", "us", "ns", "iso")


class Rejection(Exception):
    """A row or event that cannot become a valid PostHog event.

    ``reason`` is a short stable code (it groups the summary and the rejects file); ``detail`` is the
    sentence a person reads to fix the input.
    """

    def __init__(self, reason: str, detail: str, illegal_ids: PassedOver = ()):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        # The ids of the row PostHog would not merge through (see posthog_migrate.distinct_ids): inspect counts them.
        self.illegal_ids = illegal_ids


# --- timestamps -----------------------------------------------------------------------------------

def _epoch_number_to_us(value: float, unit: str) -> int:
    if not math.isfinite(value):
        raise Rejection("bad_timestamp", f"timestamp {value!r} is not a finite number")
    if unit == "auto":
        # Same thresholds as PostHog's importer (seconds below 1e10, i.e. before the year 2286).
        magnitude = abs(value)
        unit = "s" if magnitude < 1e10 else "ms" if magnitude < 1e13 else "us" if magnitude < 1e16 else "ns"
    scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}.get(unit)
    if scale is None:
        raise Rejection("bad_timestamp", f"timestamp {value!r} is a number but the unit is {unit!r}")
    if isinstance(value, int):
        # Integer arithmetic: a float holds only ~16 digits, a ns epoch has 19. Floor, like the
        # truncation of an ISO string's 7th+ fraction digit, so both spellings give the same instant.
        return value // 1000 if unit == "ns" else value * int(scale)
    scaled = value * scale
    if not math.isfinite(scaled):
        raise Rejection("bad_timestamp", f"timestamp {value!r} in unit {unit!r} is out of range")
    return round(scaled)


def naive_utc_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of a naive datetime read as UTC: plain arithmetic, no zone."""
    delta = moment - _EPOCH_NAIVE
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _datetime_to_us(moment: datetime, naive_zone: tzinfo) -> int:
    if moment.tzinfo is None:
        if naive_zone is UTC or naive_zone is _ZONEINFO_UTC:  # the usual case
            return naive_utc_us(moment)
        # fold=0 picks the first of two ambiguous local times (DST fall-back): deterministic.
        moment = moment.replace(tzinfo=naive_zone)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def parse_timestamp(value: Any, unit: str = "auto", naive_zone: tzinfo = UTC) -> int:
    """Return microseconds since the Unix epoch (UTC) for a source timestamp.

    Accepts ISO 8601 strings (``T`` or space, any offset, ``Z``, a trailing `` UTC``), epoch numbers or
    numeric strings in s/ms/us/ns (``unit="auto"`` guesses from the magnitude), and datetime/date
    objects as Parquet yields them. Naive values are read in ``naive_zone``.
    """
    if type(value) is str and len(value) >= 10 and value[4] == "-":
        # Fast path for the usual ISO text ("2024-01-31 12:00:00.123"). A numeric text never has "-" at
        # index 4 and parses as ISO (1.0e-05 fails), so trying ISO first cannot change any answer;
        # anything fromisoformat refuses takes the full path below.
        try:
            return _datetime_to_us(datetime.fromisoformat(value), naive_zone)
        except ValueError:
            pass
    if value is None or value == "":
        raise Rejection("bad_timestamp", "timestamp is missing")
    if isinstance(value, bool):
        raise Rejection("bad_timestamp", f"timestamp {value!r} is a boolean")
    if isinstance(value, datetime):
        return _datetime_to_us(value, naive_zone)
    if isinstance(value, date):
        return _datetime_to_us(datetime(value.year, value.month, value.day), naive_zone)
    if isinstance(value, int | float | Decimal):
        if unit == "iso":
            raise Rejection("bad_timestamp", f"timestamp {value!r} is a number, the mapping expects ISO 8601")
        if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
            value = int(value)  # a decimal128 epoch in ns has 19 digits: a float would round them
        return _epoch_number_to_us(int(value) if isinstance(value, int) else float(value), unit)
    if not isinstance(value, str):
        raise Rejection("bad_timestamp", f"timestamp has type {type(value).__name__}, expected text or number")
    text = value.strip()
    if unit != "iso" and _NUMERIC.fullmatch(text):
        try:
            number = int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:  # more digits than int() converts (4300): no timestamp anyway
            raise Rejection("bad_timestamp", f"timestamp {text[:40]!r}… is not a usable number") from None
        return _epoch_number_to_us(number, unit)
    if text.endswith(" UTC"):
        text = text[:-4] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Rejection("bad_timestamp", f"timestamp {value!r} is not ISO 8601 or an epoch number") from None
    return _datetime_to_us(moment, naive_zone)


def format_timestamp(epoch_us: int) -> str:
    """RFC 3339 in UTC with microseconds, the one form we send: fixed width, so re-sends are identical.

    Not strftime: glibc's %Y does not zero-pad years below 1000 ("999-01-01"), which capture cannot parse.
    Called for every event: the date part is cached by day (an export spans few days, many events each)
    and the time of day is plain integer arithmetic.
    """
    day, micros_of_day = divmod(epoch_us, MICROSECONDS_PER_DAY)
    seconds, micros = divmod(micros_of_day, 1_000_000)
    hour, seconds = divmod(seconds, 3600)
    minute, second = divmod(seconds, 60)
    return f"{_date_text(day)}T{hour:02d}:{minute:02d}:{second:02d}.{micros:06d}Z"


@functools.lru_cache(maxsize=4096)
def _date_text(day_number: int) -> str:
    """``YYYY-MM-DD`` of a day counted from 1970-01-01 (years 1 to 9999, as datetime allows)."""
    try:
        moment = date.fromordinal(_EPOCH_ORDINAL + day_number)
        year, month, day = moment.year, moment.month, moment.day
    except (OverflowError, ValueError):  # outside datetime's years: the C library may still know it
        t = time.gmtime(day_number * 86_400)
        year, month, day = t.tm_year, t.tm_mon, t.tm_mday
    return f"{year:04d}-{month:02d}-{day:02d}"


def sent_timestamp_text(text: str) -> str | None:
    """What format_timestamp writes for the instant of ``text``, a naive UTC time that parse_timestamp read, when
    ``text`` has the sent form's fields already (``2024-01-31 12:00:00.123456``, as Amplitude writes every time):
    the same digits, with ``T`` and ``Z`` (a slice costs a tenth of formatting). None for any other form."""
    if (len(text) == 26 and text[10] in " T" and text[19] == "." and text[4] == "-" and text[7] == "-"
            and text[13] == ":" and text[16] == ":" and text.isascii() and text[20:].isdigit()):
        # Fixed positions and parse_timestamp's acceptance leave no other reading: year, month and day, hour,
        # minute and second are digits in range, the six digits after the dot are the microseconds, no offset.
        return f"{text[:10]}T{text[11:]}Z"
    return None


# The timestamp of an event serialised before its time was known (a profile placed after the job's last event).
_PLACEHOLDER_TIMESTAMP = b'"timestamp":"' + format_timestamp(0).encode() + b'"'


def retimed(payload: bytes, timestamp_us: int) -> bytes:
    """An event serialised with the placeholder time 0, now at ``timestamp_us``. The timestamp is fixed-width
    and its key comes before any property, and a quote inside a JSON string is escaped, so the first match is
    the event's own."""
    return payload.replace(_PLACEHOLDER_TIMESTAMP, b'"timestamp":"' + format_timestamp(timestamp_us).encode() + b'"', 1)


# PostHog keeps years 0..9999; we keep what Python's datetime can represent from year 1.
MIN_TIMESTAMP_US = _datetime_to_us(datetime(1, 1, 1, tzinfo=UTC), UTC)
MAX_TIMESTAMP_US = _datetime_to_us(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), UTC)


def utc_now_us() -> int:
    return _datetime_to_us(datetime.now(UTC), UTC)


# --- uuids -----------------------------------------------------------------------------------------

def uuid5_text(namespace: uuid_module.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` without building UUID objects (about 3x faster)."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode("utf-8", "surrogatepass")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return hyphenated_uuid(digest)


def hyphenated_uuid(value: bytes | bytearray) -> str:
    """16 bytes in the canonical text form, ``8-4-4-4-12`` lower-case hex digits."""
    text = value.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def uuid_from_id(source_id: Any, namespace: uuid_module.UUID = INSERT_ID_NAMESPACE) -> str:
    """UUIDv5 of a source's own event or insert id: the same id always gives the same uuid."""
    return uuid5_text(namespace, str(source_id))


def uuid_from_content(source: str, distinct_id: str, timestamp_us: int, event: str, properties: dict) -> str:
    """UUIDv5 of a canonical content key, for sources without any event id.

    Properties are serialised with sorted keys so that column order in the input does not matter.
    """
    try:
        key = orjson.dumps(
            [source, distinct_id, timestamp_us, event, properties],
            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
            default=json_default,
        )
    except (TypeError, orjson.JSONEncodeError) as error:
        raise Rejection("unserialisable", f"event cannot be serialised as JSON: {error}") from None
    return uuid5_text(CONTENT_NAMESPACE, key.decode())


def is_canonical_uuid(text: str) -> bool:
    """Lower-case, hyphenated: the only form PostHog's dedup compares equal."""
    return _CANONICAL_UUID.fullmatch(text) is not None


def normalise_uuid(value: Any) -> str:
    """A source uuid in PostHog's canonical lower-case hyphenated form, or a Rejection."""
    if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
        return value  # already canonical, as almost every exported uuid is: skip the UUID object
    try:
        return str(uuid_module.UUID(str(value).strip()))
    except ValueError:
        raise Rejection("bad_uuid", f"uuid {value!r} is not a valid UUID") from None


# --- ids -------------------------------------------------------------------------------------------------

def number_id_text(value: int | float | Decimal, what: str, reason: str = "missing_distinct_id") -> str:
    """A number used as an id, as text: ``12.0`` and ``Decimal("12.000")`` → ``"12"``.

    NaN and the infinities are no id (pandas writes NaN for a missing value): they raise Rejection(reason)
    rather than become the text ``"nan"``, which would make one person of every row that has it.
    """
    finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
    if not finite:
        raise Rejection(reason, f"{what} is {value!r}, a number that is no id (a missing value in the export?)")
    if value == int(value):
        value = int(value)
    return str(value)


# --- JSON objects in a row ----------------------------------------------------------------------------

def json_object(value: Any, what: str) -> dict:
    """A row's object field: a dict, or text holding a JSON object; absent, null or "" is empty.

    Anything else rejects the row (``properties_not_object``), naming ``what`` for the user.
    """
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise Rejection("properties_not_object", f"{what} is text that is not valid JSON") from None
    if not isinstance(value, dict):
        raise Rejection("properties_not_object", f"{what} is a {type(value).__name__}, expected a JSON object")
    return value


# --- serialisation ---------------------------------------------------------------------------------

def json_default(value: Any) -> Any:
    """Values orjson does not serialise on its own, as Parquet and CSV readers can produce them."""
    if isinstance(value, Decimal):
        return exact_number(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot serialise a value of type {type(value).__name__}")


def exact_number(value: Decimal) -> orjson.Fragment | None:
    """A decimal (Parquet's decimal128) as the exact JSON number it is: a float would keep ~16 of its up to 38
    digits. Plain digits, no exponent, no trailing zeros of the column's scale: ``Decimal("9.500000000")`` →
    ``9.5`` and ``Decimal("3.00")`` → ``3``, the very text the float or int they used to become gave, so the
    content-derived uuids of rows with such everyday amounts do not change. NaN and the infinities, which JSON
    has no number for, become null (as orjson writes a float NaN)."""
    if not value.is_finite():
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").removesuffix(".")
    return orjson.Fragment("0" if text == "-0" else text)  # int(Decimal("-0.00")) was 0


@dataclass(slots=True)
class Event:
    """One PostHog event, ready to validate and serialise."""

    event: str
    distinct_id: str
    timestamp_us: int
    uuid: str
    properties: dict = field(default_factory=dict)
    # True for events an adapter adds beside a row's own event (e.g. a $groupidentify before it):
    # they are sent like any other, but the summary counts rows by their own events.
    added: bool = False
    # The source's own name for the event (e.g. "[Amplitude] Page Viewed"), for inspect's mapping table.
    source_event: str | None = None
    # (user id, device id) when the row links an anonymous device to a known user: the pipeline sends one
    # $identify per pair per job, just before the first event that shows the pair (see posthog_migrate.identity).
    # An $identify or $create_alias whose $anon_distinct_id or alias is the link's device is that merge itself.
    link: tuple[str, str] | None = None
    # Ids of the row passed over because PostHog would not merge through them ((field, id) pairs): counted by
    # inspect and the summary, on the row's own event (the last).
    illegal_ids: PassedOver = ()
    # Things to say about the row, each counted under its text among the warnings (e.g. a fallback time used).
    notes: tuple[str, ...] = ()
    # A profile without a time of its own: the identity pass places it just after the job's last event.
    after_last_event: bool = False
    # format_timestamp(timestamp_us), when the adapter had it for less (a slice of the row's own ISO text, see
    # sent_timestamp_text); to_json formats timestamp_us itself when this is None.
    timestamp_text: str | None = None

    def to_json(self) -> bytes:
        """The exact bytes sent in a batch. Key order is fixed; no ``sent_at``, no ``offset``."""
        document = {
            "uuid": self.uuid,
            "event": self.event,
            "distinct_id": self.distinct_id,
            "timestamp": self.timestamp_text or format_timestamp(self.timestamp_us),
            "properties": self.properties,
        }
        try:
            # Events from JSON sources hold only what orjson writes on its own, and plain dumps is about twice as
            # fast as with the options below. Whatever it refuses (a Decimal, a non-text key...) is written the
            # general way: the options change nothing for a document plain dumps accepts, so the bytes are the same.
            return orjson.dumps(document)
        except (TypeError, orjson.JSONEncodeError):
            pass
        try:
            return orjson.dumps(document, default=json_default, option=orjson.OPT_NON_STR_KEYS)
        except (TypeError, orjson.JSONEncodeError) as error:
            raise Rejection("unserialisable", f"event cannot be serialised as JSON: {error}") from None


# --- validation --------------------------------------------------------------------------------------

# Properties PostHog reads as objects: any other value makes capture refuse the event.
_OBJECT_PROPERTIES = ("$set", "$set_once", "$group_set")
_SURVEY_EVENTS = frozenset({"survey sent", "survey shown", "survey dismissed"})
# The events that merge two persons, and the property holding the other id.
_MERGE_EVENTS = {"$identify": "$anon_distinct_id", "$create_alias": "alias", "$merge_dangerously": "alias"}


def _validate_special_event(event: Event) -> None:
    """Rules from PostHog's capture doc: what each special event needs in order to do anything."""
    props = event.properties
    name = event.event
    for key in _OBJECT_PROPERTIES:
        if key in props and not isinstance(props[key], dict):
            raise Rejection("invalid_special_event", f"{name}: properties.{key} must be an object")
    if "$groups" in props:
        groups = props["$groups"]
        if not isinstance(groups, dict) or not all(isinstance(v, str) and v for v in groups.values()):
            raise Rejection("invalid_special_event", f"{name}: properties.$groups must map group types to keys")
    if name[0] != "$" and name not in _SURVEY_EVENTS:
        return  # the common case: none of the named rules below applies
    if name in _MERGE_EVENTS:
        other_id = props.get(_MERGE_EVENTS[name])
        if name == "$create_alias" and (other_id in (None, "") or str(other_id) == event.distinct_id):
            raise Rejection(
                "invalid_special_event", "$create_alias needs properties.alias, different from distinct_id"
            )
        if isinstance(other_id, int | str) and not isinstance(other_id, bool) and is_illegal_id(str(other_id).strip()):
            raise Rejection(ILLEGAL_DISTINCT_ID, f"{name} merges {other_id!r}, an id PostHog will not merge persons "
                            "through", illegal_ids=((_MERGE_EVENTS[name], other_id),))
    elif name == "$groupidentify":
        if not props.get("$group_type") or props.get("$group_key") in (None, ""):
            raise Rejection(
                "invalid_special_event", "$groupidentify needs properties.$group_type and $group_key"
            )
    elif name in _SURVEY_EVENTS and not props.get("$survey_id"):
        raise Rejection("invalid_special_event", f"{name!r} needs properties.$survey_id")


def validate(event: Event, now_us: int, max_bytes: int = MAX_EVENT_BYTES) -> bytes:
    """Check an event against what PostHog's capture accepts; return its serialised bytes.

    Raises :class:`Rejection` for anything capture would refuse, clamp or silently rewrite.
    ``max_bytes`` may be lowered to what a batch can hold, so a batch cap is never exceeded.
    """
    if not isinstance(event.event, str) or not event.event.strip():
        raise Rejection("missing_event_name", "event name is missing or empty")
    if not isinstance(event.distinct_id, str) or not event.distinct_id.strip():
        raise Rejection("missing_distinct_id", "distinct_id is missing or empty")
    if len(event.distinct_id) <= LONGEST_ILLEGAL_ID and is_illegal_id(event.distinct_id):
        raise Rejection(ILLEGAL_DISTINCT_ID, f"distinct_id {event.distinct_id!r} is an id PostHog will not merge "
                        "persons through (every row with it would be one person)",
                        illegal_ids=(("distinct_id", event.distinct_id),))
    if len(event.distinct_id) > MAX_DISTINCT_ID_CHARS:
        raise Rejection(
            "distinct_id_too_long",
            f"distinct_id has {len(event.distinct_id)} characters; PostHog allows {MAX_DISTINCT_ID_CHARS}",
        )
    if not MIN_TIMESTAMP_US <= event.timestamp_us <= MAX_TIMESTAMP_US:
        raise Rejection("bad_timestamp", "timestamp is outside the years 1 to 9999")
    if event.timestamp_us > now_us + _MAX_FUTURE_SKEW_US:
        raise Rejection(
            "timestamp_in_future",
            f"timestamp {format_timestamp(event.timestamp_us)} is more than 23 h in the future; "
            "PostHog would replace it with the time of ingestion",
        )
    if not isinstance(event.properties, dict):
        raise Rejection("properties_not_object", "properties must be a JSON object")
    if not isinstance(event.uuid, str) or not _CANONICAL_UUID.fullmatch(event.uuid):
        normalise_uuid(event.uuid)  # raises for junk; a valid but non-canonical form is refused below
        raise Rejection("bad_uuid", f"uuid {event.uuid!r} is not in canonical form (lower-case, hyphenated)")
    _validate_special_event(event)
    payload = event.to_json()
    if len(payload) > max_bytes:
        raise Rejection(
            "event_too_large",
            f"event is {len(payload):,} bytes serialised; the limit is {max_bytes:,} "
            "(PostHog refuses events near 1 MB)",
        )
    return payload


def is_recent(timestamp_us: int, now_us: int) -> bool:
    """Events younger than 48 h: PostHog asks migrations not to send them (flagged, still sent)."""
    return timestamp_us > now_us - RECENT_EVENT_AGE_US
