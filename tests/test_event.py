"""The canonical event: timestamp parsing and formatting, deterministic uuids, validation, serialisation.

Rules from ../shared/reference/posthog-ingestion-facts.md: timestamps go out as RFC 3339 UTC with six
fraction digits, uuids are derived deterministically so re-sends collapse, and nothing that capture
would refuse, clamp or rewrite may pass ``validate``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from posthog_migrate.event import (
    CONTENT_NAMESPACE,
    INSERT_ID_NAMESPACE,
    MAX_DISTINCT_ID_CHARS,
    MAX_EVENT_BYTES,
    MAX_TIMESTAMP_US,
    MIN_TIMESTAMP_US,
    Event,
    Rejection,
    format_timestamp,
    is_recent,
    normalise_uuid,
    parse_timestamp,
    uuid_from_content,
    uuid_from_id,
    validate,
)

NEW_YORK = ZoneInfo("America/New_York")
HOUR_US = 3_600_000_000
FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def us(*args: int, tz=UTC) -> int:
    """Microseconds since the epoch of a wall-clock time in ``tz``."""
    moment = datetime(*args, tzinfo=tz)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


# 2024-04-03T12:00:00.123456Z
T = us(2024, 4, 3, 12, 0, 0, 123456)
T_SECONDS = 1712145600
NOW = us(2024, 6, 1, 0, 0, 0)


def rejection_reason(call, *args, **kwargs) -> str:
    with pytest.raises(Rejection) as caught:
        call(*args, **kwargs)
    assert caught.value.detail  # every rejection carries a sentence for a person
    return caught.value.reason


# --- parse_timestamp: ISO 8601 ---------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "2024-04-03T12:00:00.123456Z",
    "2024-04-03T12:00:00.123456+00:00",
    "2024-04-03T14:00:00.123456+02:00",
    "2024-04-03T06:30:00.123456-05:30",
    "2024-04-03 12:00:00.123456",
    "2024-04-03 12:00:00.123456Z",
    "2024-04-03 12:00:00.123456 UTC",
    "  2024-04-03T12:00:00.123456Z  ",
])
def test_iso_timestamps_with_z_offsets_space_separator_and_utc_suffix(text):
    assert parse_timestamp(text) == T


def test_iso_timestamp_without_fraction_and_with_utc_suffix():
    assert parse_timestamp("2024-04-03 12:00:00 UTC") == T_SECONDS * 1_000_000
    assert parse_timestamp("2024-04-03T12:00:00Z") == T_SECONDS * 1_000_000


@pytest.mark.parametrize("text", [
    "2024-04-03T12:00:00.1234567Z",
    "2024-04-03T12:00:00.123456789Z",
    "2024-04-03T12:00:00.1234569999+00:00",
])
def test_iso_timestamp_with_seven_or_more_fraction_digits_is_truncated_to_microseconds(text):
    assert parse_timestamp(text) == T


def test_iso_date_only_is_midnight():
    assert parse_timestamp("2024-04-03") == us(2024, 4, 3)


# --- parse_timestamp: epoch numbers ----------------------------------------------------------------

@pytest.mark.parametrize("value", [
    T_SECONDS,                       # seconds
    T_SECONDS * 1_000,               # milliseconds
    T_SECONDS * 1_000_000,           # microseconds
    T_SECONDS * 1_000_000_000,       # nanoseconds
    float(T_SECONDS),
    str(T_SECONDS),
    str(T_SECONDS * 1_000),
    str(T_SECONDS * 1_000_000),
    str(T_SECONDS * 1_000_000_000),
    f" {T_SECONDS} ",
    f"+{T_SECONDS}",
    Decimal(T_SECONDS),
])
def test_epoch_unit_is_detected_from_magnitude(value):
    assert parse_timestamp(value) == T_SECONDS * 1_000_000


def test_epoch_with_fractions_keeps_microseconds():
    assert parse_timestamp(1712145600.123456) == T
    assert parse_timestamp("1712145600.123456") == T
    assert parse_timestamp(1712145600123.456) == T
    assert parse_timestamp("1712145600123.456") == T
    assert parse_timestamp(Decimal("1712145600.5")) == T_SECONDS * 1_000_000 + 500_000


def test_epoch_numbers_before_1970_and_in_exponent_form():
    assert parse_timestamp(-86_400) == -86_400 * 1_000_000
    assert parse_timestamp("1.7121456e9") == T_SECONDS * 1_000_000


@pytest.mark.parametrize(("value", "unit", "expected"), [
    (1_000, "s", 1_000_000_000),
    (1_000, "ms", 1_000_000),
    (1_000, "us", 1_000),
    (1_000, "ns", 1),
    ("1000", "s", 1_000_000_000),
    ("1000", "ms", 1_000_000),
    (T_SECONDS * 1_000, "ms", T_SECONDS * 1_000_000),
    # a forced unit wins over the magnitude: 1.7e9 read as µs is half an hour after the epoch
    (T_SECONDS, "us", T_SECONDS),
    (1.5, "ms", 1_500),
])
def test_epoch_unit_can_be_forced(value, unit, expected):
    assert parse_timestamp(value, unit) == expected


def test_nanosecond_epoch_keeps_every_digit_and_matches_the_iso_spelling():
    # 1700000000123456400 is not representable as a float: float arithmetic gave ...457.
    assert parse_timestamp(1_700_000_000_123_456_400) == 1_700_000_000_123_456
    assert parse_timestamp("1700000000123456999", "ns") == 1_700_000_000_123_456
    assert parse_timestamp(1_700_000_000_123_456_999) == parse_timestamp("2023-11-14T22:13:20.123456999Z")


def test_unit_iso_refuses_numbers_and_reads_numeric_text_as_iso():
    assert rejection_reason(parse_timestamp, T_SECONDS, "iso") == "bad_timestamp"
    assert rejection_reason(parse_timestamp, str(T_SECONDS), "iso") == "bad_timestamp"
    assert parse_timestamp("2024-04-03T12:00:00.123456Z", "iso") == T


def test_forced_unit_that_overflows_is_a_rejection_not_a_crash():
    assert rejection_reason(parse_timestamp, 1e307, "s") == "bad_timestamp"
    assert rejection_reason(parse_timestamp, "1e307", "ms") == "bad_timestamp"


def test_number_with_thousands_of_digits_is_a_rejection_not_a_crash():
    assert rejection_reason(parse_timestamp, "9" * 5_000) == "bad_timestamp"


# --- parse_timestamp: naive values in a source timezone ------------------------------------------

@pytest.mark.parametrize(("text", "utc"), [
    # March 2024: New York springs forward on Sunday the 10th at 02:00 (EST -5 → EDT -4)
    ("2024-03-09 12:00:00", (2024, 3, 9, 17, 0)),
    ("2024-03-10 01:59:00", (2024, 3, 10, 6, 59)),
    ("2024-03-10 03:00:00", (2024, 3, 10, 7, 0)),
    ("2024-03-10 12:00:00", (2024, 3, 10, 16, 0)),
    # 02:30 does not exist that day; fold=0 reads it with the offset before the change
    ("2024-03-10 02:30:00", (2024, 3, 10, 7, 30)),
    # November 2024: falls back on Sunday the 3rd at 02:00 (EDT -4 → EST -5)
    ("2024-11-02 12:00:00", (2024, 11, 2, 16, 0)),
    ("2024-11-03 12:00:00", (2024, 11, 3, 17, 0)),
    # 01:30 happens twice; the first (EDT) is chosen, always the same
    ("2024-11-03 01:30:00", (2024, 11, 3, 5, 30)),
    ("2024-11-03T00:30:00", (2024, 11, 3, 4, 30)),
])
def test_naive_timestamp_is_read_in_source_timezone_with_dst(text, utc):
    assert parse_timestamp(text, "auto", NEW_YORK) == us(*utc)


def test_naive_datetime_and_date_objects_are_read_in_source_timezone():
    assert parse_timestamp(datetime(2024, 7, 1, 8, 0), "auto", NEW_YORK) == us(2024, 7, 1, 12, 0)
    assert parse_timestamp(datetime(2024, 1, 1, 8, 0), "auto", NEW_YORK) == us(2024, 1, 1, 13, 0)
    assert parse_timestamp(date(2024, 7, 1), "auto", NEW_YORK) == us(2024, 7, 1, 4, 0)
    assert parse_timestamp(date(2024, 7, 1)) == us(2024, 7, 1)


def test_values_with_their_own_offset_ignore_the_source_timezone():
    assert parse_timestamp("2024-04-03T12:00:00.123456Z", "auto", NEW_YORK) == T
    assert parse_timestamp("2024-04-03 12:00:00.123456 UTC", "auto", NEW_YORK) == T
    assert parse_timestamp(T_SECONDS, "auto", NEW_YORK) == T_SECONDS * 1_000_000
    aware = datetime(2024, 4, 3, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert parse_timestamp(aware, "auto", NEW_YORK) == T
    assert parse_timestamp(datetime(2024, 4, 3, 12, 0, 0, 123456, tzinfo=ZoneInfo("UTC"))) == T


# --- parse_timestamp: refusals ---------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    None, "", "   ", "yesterday", "2024-13-01", "2024-02-30T00:00:00Z", "12/31/2024", "2024-04-03T25:00:00",
    "nan", "inf", "-inf", float("nan"), float("inf"), "0x1F", "1,5", [], {}, [T_SECONDS], {"t": T_SECONDS},
    b"1712145600", "\ud800", "2024-04-03T12:00:00x",
])
def test_garbage_timestamp_is_a_bad_timestamp_rejection(value):
    assert rejection_reason(parse_timestamp, value) == "bad_timestamp"


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("unit", ["auto", "s", "ms"])
def test_boolean_timestamp_is_refused(value, unit):
    assert rejection_reason(parse_timestamp, value, unit) == "bad_timestamp"


# --- format_timestamp ------------------------------------------------------------------------------

@pytest.mark.parametrize(("epoch_us", "text"), [
    (T, "2024-04-03T12:00:00.123456Z"),
    (T_SECONDS * 1_000_000, "2024-04-03T12:00:00.000000Z"),
    (0, "1970-01-01T00:00:00.000000Z"),
    (-1, "1969-12-31T23:59:59.999999Z"),
    (MIN_TIMESTAMP_US, "0001-01-01T00:00:00.000000Z"),
    (MAX_TIMESTAMP_US, "9999-12-31T23:59:59.000000Z"),
    (us(999, 5, 6, 7, 8, 9, 10), "0999-05-06T07:08:09.000010Z"),
    (us(42, 1, 1), "0042-01-01T00:00:00.000000Z"),
])
def test_format_timestamp_is_always_fixed_width_utc_with_microseconds(epoch_us, text):
    assert format_timestamp(epoch_us) == text
    assert FORMAT.fullmatch(format_timestamp(epoch_us))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=MIN_TIMESTAMP_US, max_value=MAX_TIMESTAMP_US))
def test_parse_of_format_round_trips(epoch_us):
    text = format_timestamp(epoch_us)
    assert FORMAT.fullmatch(text)
    assert parse_timestamp(text) == epoch_us
    assert parse_timestamp(text, "iso", NEW_YORK) == epoch_us


# --- uuids -----------------------------------------------------------------------------------------

def test_uuid_namespaces_never_change():
    # Changing a namespace changes every derived uuid and breaks dedup against earlier runs.
    assert str(INSERT_ID_NAMESPACE) == "8f0c2b7e-5a43-5d6e-9b1f-6d2a4c3e7f10"
    assert str(CONTENT_NAMESPACE) == "3d5e6f70-8192-5a3b-8c4d-5e6f708192a3"


def test_uuid_from_id_is_deterministic_across_calls_and_processes():
    # Literal computed once: another process, another day, another version must give the same value.
    assert uuid_from_id("order-1001") == "d5655cca-0605-55a5-a077-7c61157fb83e"
    assert uuid_from_id("order-1001") == uuid_from_id("order-1001")
    assert uuid_from_id(1001) == "163ef3a6-cc4c-58fd-996f-dd51fa5ee98e"
    assert uuid_from_id(1001) == uuid_from_id("1001")
    assert uuid_from_id("order-1001") != uuid_from_id("order-1002")
    assert uuid.UUID(uuid_from_id("order-1001")).version == 5


def test_uuid_from_id_with_another_namespace_matches_posthogs_mixpanel_importer():
    mixpanel = uuid.UUID(bytes=b"posthog_mixpanel")
    assert str(mixpanel) == "706f7374-686f-675f-6d69-7870616e656c"
    assert uuid_from_id("abc", mixpanel) == str(uuid.uuid5(mixpanel, "abc"))


CONTENT_ARGS = ("generic", "user-1", 1712145600123456, "signed up")


def test_uuid_from_content_is_deterministic_across_calls_and_processes():
    properties = {"plan": "pro", "n": 1, "nested": {"b": 2, "a": 1}}
    assert uuid_from_content(*CONTENT_ARGS, properties) == "e10356de-a446-56c9-be0b-5863273bf044"
    assert uuid_from_content(*CONTENT_ARGS, dict(properties)) == uuid_from_content(*CONTENT_ARGS, properties)


def test_uuid_from_content_is_independent_of_property_key_order():
    one = {"plan": "pro", "n": 1, "nested": {"b": 2, "a": 1}}
    other = {"nested": {"a": 1, "b": 2}, "n": 1, "plan": "pro"}
    assert uuid_from_content(*CONTENT_ARGS, one) == uuid_from_content(*CONTENT_ARGS, other)


@pytest.mark.parametrize("changed", [
    ("other", "user-1", 1712145600123456, "signed up", {}),
    ("generic", "user-2", 1712145600123456, "signed up", {}),
    ("generic", "user-1", 1712145600123457, "signed up", {}),
    ("generic", "user-1", 1712145600123456, "logged in", {}),
    ("generic", "user-1", 1712145600123456, "signed up", {"x": 1}),
    ("generic", "user-1", 1712145600123456, "signed up", {"x": "1"}),
])
def test_uuid_from_content_changes_with_every_part_of_the_key(changed):
    assert uuid_from_content(*changed) != uuid_from_content(*CONTENT_ARGS, {})


def test_uuid_from_content_accepts_parquet_values_and_refuses_unserialisable_ones():
    value = uuid_from_content(*CONTENT_ARGS, {"d": Decimal("1.5"), "b": b"x", "t": (1, 2), "dt": datetime(2024, 1, 1)})
    assert uuid.UUID(value).version == 5
    assert rejection_reason(uuid_from_content, *CONTENT_ARGS, {"x": object()}) == "unserialisable"
    assert rejection_reason(uuid_from_content, *CONTENT_ARGS, {"x": 2**70}) == "unserialisable"


@pytest.mark.parametrize(("value", "expected"), [
    ("550E8400-E29B-41D4-A716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
    ("550e8400e29b41d4a716446655440000", "550e8400-e29b-41d4-a716-446655440000"),
    ("{550e8400-e29b-41d4-a716-446655440000}", "550e8400-e29b-41d4-a716-446655440000"),
    ("urn:uuid:550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
    ("  550e8400-e29b-41d4-a716-446655440000 ", "550e8400-e29b-41d4-a716-446655440000"),
    (uuid.UUID("550e8400-e29b-41d4-a716-446655440000"), "550e8400-e29b-41d4-a716-446655440000"),
])
def test_normalise_uuid_lowercases_and_hyphenates(value, expected):
    assert normalise_uuid(value) == expected


@pytest.mark.parametrize("value", [
    "", "not-a-uuid", "550e8400-e29b-41d4-a716-44665544000", "550e8400-e29b-41d4-a716-4466554400000",
    "550e8400-e29b-41d4-a716-44665544000g", 12345, None, ["550e8400-e29b-41d4-a716-446655440000"],
])
def test_normalise_uuid_rejects_junk(value):
    assert rejection_reason(normalise_uuid, value) == "bad_uuid"


# --- validate ---------------------------------------------------------------------------------------

GOOD_UUID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def make_event(**overrides) -> Event:
    values = {
        "event": "signed up", "distinct_id": "user-1", "timestamp_us": T, "uuid": GOOD_UUID,
        "properties": {"plan": "pro", "n": 1},
    }
    values.update(overrides)
    return Event(**values)


def reason_of(event: Event, now_us: int = NOW, **kwargs) -> str:
    return rejection_reason(validate, event, now_us, **kwargs)


def test_validate_returns_the_exact_bytes_with_fixed_key_order_and_no_sent_at():
    payload = validate(make_event(), NOW)
    assert payload == (
        b'{"uuid":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","event":"signed up","distinct_id":"user-1",'
        b'"timestamp":"2024-04-03T12:00:00.123456Z","properties":{"plan":"pro","n":1}}'
    )
    decoded = orjson.loads(payload)
    assert list(decoded) == ["uuid", "event", "distinct_id", "timestamp", "properties"]
    assert "sent_at" not in decoded and "offset" not in decoded
    assert validate(make_event(), NOW) == payload  # re-sends are byte-identical


def test_validate_serialises_parquet_values():
    properties = {"price": Decimal("9.50"), "count": Decimal("3"), "raw": b"ab", "when": date(2024, 1, 2)}
    event = make_event(properties=properties)
    decoded = orjson.loads(validate(event, NOW))
    assert decoded["properties"] == {"price": 9.5, "count": 3, "raw": "ab", "when": "2024-01-02"}


@pytest.mark.parametrize("name", ["", "   ", None, 42])
def test_validate_missing_event_name(name):
    assert reason_of(make_event(event=name)) == "missing_event_name"


@pytest.mark.parametrize("distinct_id", ["", "  ", None, 42])
def test_validate_missing_distinct_id(distinct_id):
    assert reason_of(make_event(distinct_id=distinct_id)) == "missing_distinct_id"


def test_validate_distinct_id_too_long_at_201_chars_but_200_ok():
    assert MAX_DISTINCT_ID_CHARS == 200
    validate(make_event(distinct_id="x" * 200), NOW)
    assert reason_of(make_event(distinct_id="x" * 201)) == "distinct_id_too_long"
    validate(make_event(distinct_id="é" * 200), NOW)  # characters, not bytes


@pytest.mark.parametrize("timestamp_us", [MIN_TIMESTAMP_US - 1, MAX_TIMESTAMP_US + 1, -(10**20), 10**20])
def test_validate_bad_timestamp_outside_years_1_to_9999(timestamp_us):
    assert reason_of(make_event(timestamp_us=timestamp_us), now_us=10**20) == "bad_timestamp"


def test_validate_timestamp_in_future_beyond_23_hours_but_22_hours_ok():
    validate(make_event(timestamp_us=NOW + 22 * HOUR_US), NOW)
    validate(make_event(timestamp_us=NOW + 23 * HOUR_US), NOW)
    assert reason_of(make_event(timestamp_us=NOW + 23 * HOUR_US + 1)) == "timestamp_in_future"
    assert reason_of(make_event(timestamp_us=NOW + 24 * HOUR_US)) == "timestamp_in_future"


@pytest.mark.parametrize("properties", [None, [], ["a"], "{}", 42])
def test_validate_properties_not_object(properties):
    assert reason_of(make_event(properties=properties)) == "properties_not_object"


@pytest.mark.parametrize("bad", ["", "not-a-uuid", "1234", None])
def test_validate_bad_uuid(bad):
    assert reason_of(make_event(uuid=bad)) == "bad_uuid"


def test_validate_event_too_large():
    assert reason_of(make_event(properties={"blob": "x" * MAX_EVENT_BYTES})) == "event_too_large"
    small = make_event(properties={"blob": "x" * 1_000})
    validate(small, NOW)
    assert reason_of(small, max_bytes=500) == "event_too_large"


def test_validate_unserialisable_property_is_a_rejection():
    assert reason_of(make_event(properties={"x": object()})) == "unserialisable"


@pytest.mark.parametrize(("name", "properties"), [
    ("$create_alias", {}),
    ("$create_alias", {"alias": ""}),
    ("$create_alias", {"alias": None}),
    ("$create_alias", {"alias": "user-1"}),  # the same as distinct_id: nothing to merge
    ("$groupidentify", {}),
    ("$groupidentify", {"$group_type": "company"}),
    ("$groupidentify", {"$group_key": "acme"}),
    ("$groupidentify", {"$group_type": "", "$group_key": "acme"}),
    ("$groupidentify", {"$group_type": "company", "$group_key": ""}),
    ("$groupidentify", {"$group_type": "company", "$group_key": "acme", "$group_set": "tier=ent"}),
    ("signed up", {"$groups": "acme"}),
    ("signed up", {"$groups": ["company", "acme"]}),
    ("signed up", {"$groups": {"company": 42}}),
    ("signed up", {"$groups": {"company": ""}}),
    ("signed up", {"$groups": {"company": None}}),
    ("survey sent", {"$survey_response": "yes"}),
    ("survey shown", {}),
    ("survey dismissed", {"$survey_id": ""}),
    ("$identify", {"$set": "email=a@b.c"}),
    ("$identify", {"$set": ["email"]}),
    ("signed up", {"$set": None}),
    ("signed up", {"$set_once": "x"}),
])
def test_validate_invalid_special_event(name, properties):
    assert reason_of(make_event(event=name, properties=properties)) == "invalid_special_event"


@pytest.mark.parametrize(("name", "properties"), [
    ("$create_alias", {"alias": "anon-7"}),
    ("$create_alias", {"alias": 7}),
    ("$groupidentify", {"$group_type": "company", "$group_key": "acme", "$group_set": {"tier": "ent"}}),
    ("$groupidentify", {"$group_type": "company", "$group_key": 0}),
    ("signed up", {"$groups": {"company": "acme", "team": "t1"}}),
    ("signed up", {"$groups": {}}),
    ("survey sent", {"$survey_id": "s1", "$survey_response": "yes"}),
    ("survey shown", {"$survey_id": "s1"}),
    ("survey dismissed", {"$survey_id": "s1"}),
    ("$identify", {"$set": {"email": "a@b.c"}, "$set_once": {"first": "x"}, "$anon_distinct_id": "anon-7"}),
    ("$pageview", {"$current_url": "https://example.com/"}),
])
def test_validate_accepts_well_formed_special_events(name, properties):
    payload = validate(make_event(event=name, properties=properties), NOW)
    assert orjson.loads(payload)["properties"] == properties


def test_is_recent_means_younger_than_48_hours():
    assert is_recent(NOW - 47 * HOUR_US, NOW)
    assert not is_recent(NOW - 48 * HOUR_US, NOW)
    assert not is_recent(NOW - 49 * HOUR_US, NOW)
