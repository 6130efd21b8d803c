"""The column mapping: TOML file, command-line overrides, checks against the data, and RowMapper.map.

Rules from ../shared/reference/source-formats.md ("Generic files" and the common rules): the obvious
columns work with no mapping, distinct_id is the user id else the device id (never invented), uuids are
the source's own or derived deterministically, filtered rows are counted, never silently lost.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from posthog_migrate.adapters.base import SourceFile
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import Event, Rejection, parse_timestamp, uuid_from_content, uuid_from_id, validate
from posthog_migrate.mapping import (
    DEFAULT_EVENT_COLUMNS,
    GENERIC_SOURCE_TAG,
    ColumnMapping,
    Filtered,
    RowMapper,
)

FIXTURES = Path("/work/shared/fixtures")
SEGMENT = FIXTURES / "segment" / "segment-messages.jsonl"
GA4 = FIXTURES / "ga4" / "ga4-bigquery-rows.jsonl"
TS = "2024-04-03T12:00:00.123456Z"
T = parse_timestamp(TS)
NOW = parse_timestamp("2024-06-01T00:00:00Z")
SOURCE_UUID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def row(**values: Any) -> dict:
    record = {"event": "signed up", "distinct_id": "user-1", "timestamp": TS}
    record.update(values)
    return {k: v for k, v in record.items() if v is not None}


def mapper(**options: Any) -> RowMapper:
    return RowMapper(ColumnMapping(**options))


def rejection(call, *args) -> str:
    with pytest.raises(Rejection) as caught:
        call(*args)
    return caught.value.reason


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mapping.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- RowMapper.map with no mapping at all -----------------------------------------------------------

def test_obvious_default_columns_work_with_no_mapping():
    event = mapper().map(row(plan="pro", n=3))
    assert event == Event("signed up", "user-1", T, event.uuid, {"plan": "pro", "n": 3})
    assert uuid.UUID(event.uuid).version == 5


@pytest.mark.parametrize(("record", "name", "distinct_id"), [
    ({"event_name": "a", "user_id": "u", "time": TS}, "a", "u"),
    ({"event_type": "a", "userId": "u", "event_time": TS}, "a", "u"),
    ({"event": "a", "anonymous_id": "anon", "ts": TS}, "a", "anon"),
    ({"event": "a", "anonymousId": "anon", "created_at": TS}, "a", "anon"),
    ({"event": "a", "device_id": "dev", "timestamp": TS}, "a", "dev"),
])
def test_alternative_default_column_names_are_recognised(record, name, distinct_id):
    event = mapper().map(record)
    assert (event.event, event.distinct_id, event.timestamp_us, event.properties) == (name, distinct_id, T, {})


def test_default_columns_follow_their_order_of_preference():
    event = mapper().map({"event": "a", "event_name": "b", "timestamp": TS, "time": "2020-01-01", "user_id": "u"})
    assert event.event == "a"
    assert event.timestamp_us == T
    # the candidates not chosen stay properties
    assert event.properties == {"event_name": "b", "time": "2020-01-01"}


def test_only_the_chosen_distinct_id_column_is_consumed():
    event = mapper().map({"event": "a", "timestamp": TS, "user_id": "u1", "device_id": "d1"})
    assert event.distinct_id == "u1"
    assert event.properties == {"device_id": "d1"}


def test_empty_user_id_falls_back_to_device_id_which_is_then_consumed():
    event = mapper().map({"event": "a", "timestamp": TS, "user_id": "", "device_id": "d1"})
    assert event.distinct_id == "d1"
    assert event.properties == {"user_id": ""}
    event = mapper().map({"event": "a", "timestamp": TS, "user_id": None, "device_id": "d1"})
    assert event.properties == {}


def test_distinct_id_numbers_become_text_without_a_trailing_zero():
    assert mapper().map(row(distinct_id=42)).distinct_id == "42"
    assert mapper().map(row(distinct_id=42.0)).distinct_id == "42"
    assert mapper().map(row(distinct_id=4.5)).distinct_id == "4.5"


@pytest.mark.parametrize("value", [True, {"id": 1}, [1]])
def test_distinct_id_that_is_not_text_or_number_is_rejected(value):
    assert rejection(mapper().map, row(distinct_id=value)) == "missing_distinct_id"


def test_row_without_distinct_id_is_rejected_never_invented():
    assert rejection(mapper().map, {"event": "a", "timestamp": TS}) == "missing_distinct_id"
    assert rejection(mapper().map, {"event": "a", "timestamp": TS, "distinct_id": ""}) == "missing_distinct_id"


def test_distinct_id_inside_properties_is_used_when_the_top_level_has_none():
    event = mapper().map({"event": "a", "timestamp": TS, "properties": {"distinct_id": "p1", "x": 1}})
    assert event.distinct_id == "p1"
    assert event.properties == {"x": 1}


def test_top_level_distinct_id_wins_over_the_one_in_properties():
    event = mapper().map(row(properties={"distinct_id": "p1", "x": 1}))
    assert event.distinct_id == "user-1"
    assert event.properties == {"x": 1}


def test_missing_event_name_and_missing_timestamp_are_rejected():
    assert rejection(mapper().map, {"distinct_id": "u", "timestamp": TS}) == "missing_event_name"
    assert rejection(mapper().map, {"event": "", "distinct_id": "u", "timestamp": TS}) == "missing_event_name"
    assert rejection(mapper().map, {"event": "a", "distinct_id": "u"}) == "bad_timestamp"
    assert rejection(mapper().map, row(timestamp="soon")) == "bad_timestamp"


def test_non_text_event_name_becomes_text():
    assert mapper().map(row(event=404)).event == "404"


# --- properties -------------------------------------------------------------------------------------

def test_properties_json_column_holding_an_object():
    event = mapper().map(row(properties={"plan": "pro", "nested": {"a": [1, 2]}}, extra=1))
    assert event.properties == {"plan": "pro", "nested": {"a": [1, 2]}, "extra": 1}


def test_properties_json_column_holding_a_json_string():
    event = mapper().map(row(properties='{"plan": "pro", "n": 2}'))
    assert event.properties == {"plan": "pro", "n": 2}


@pytest.mark.parametrize("value", ["[1, 2]", '"text"', "42", "{not json", [1, 2], 42, True])
def test_properties_json_column_that_is_not_an_object_is_rejected(value):
    assert rejection(mapper().map, row(properties=value)) == "properties_not_object"


def test_named_properties_json_column_is_consumed():
    event = mapper(properties_json=("props",)).map(row(props='{"a": 1}', properties="kept as is"))
    assert event.properties == {"a": 1, "properties": "kept as is"}


def test_columns_override_keys_of_the_json_properties():
    event = mapper().map(row(properties={"plan": "free"}, plan="pro"))
    assert event.properties == {"plan": "pro"}


def test_include_keeps_only_the_named_columns_as_properties():
    event = mapper(include=("plan",)).map(row(plan="pro", page="/x", properties={"from_json": 1}))
    assert event.properties == {"from_json": 1, "plan": "pro"}


def test_empty_include_keeps_only_json_properties():
    assert mapper(include=()).map(row(plan="pro", properties={"a": 1})).properties == {"a": 1}


def test_exclude_drops_the_named_columns():
    event = mapper(exclude=("internal_note",)).map(row(plan="pro", internal_note="secret"))
    assert event.properties == {"plan": "pro"}


def test_null_values_are_not_properties():
    assert mapper().map(row(plan=None, page="/x") | {"plan": None}).properties == {"page": "/x"}


# --- person properties and groups --------------------------------------------------------------------

def test_set_set_once_and_groups_are_built_from_their_columns():
    m = mapper(set=("email", "name"), set_once=("signup_date",), groups=(("company", "company_id"),))
    event = m.map(row(email="a@b.c", name="", signup_date="2023-01-01", company_id=42, plan="pro"))
    assert event.properties == {
        "plan": "pro",
        "$set": {"email": "a@b.c"},
        "$set_once": {"signup_date": "2023-01-01"},
        "$groups": {"company": "42"},
    }
    validate(event, NOW)


def test_set_and_groups_merge_with_those_already_in_the_json_properties():
    m = mapper(set=("email",), groups=(("company", "company_id"),))
    event = m.map(row(email="a@b.c", company_id="acme",
                      properties={"$set": {"plan": "pro"}, "$groups": {"team": "t1"}}))
    assert event.properties == {"$set": {"plan": "pro", "email": "a@b.c"}, "$groups": {"team": "t1", "company": "acme"}}


def test_set_columns_are_never_plain_properties_even_when_empty():
    event = mapper(set=("email",), groups=(("company", "company_id"),)).map(row(email="", company_id=None))
    assert event.properties == {}


# --- uuids -------------------------------------------------------------------------------------------

def test_source_uuid_column_is_kept_and_normalised():
    event = mapper().map(row(uuid=SOURCE_UUID.upper(), insert_id="ins-1"))
    assert event.uuid == SOURCE_UUID
    assert event.properties == {"insert_id": "ins-1"}  # only the chosen id column is consumed


def test_bad_source_uuid_is_rejected():
    assert rejection(mapper().map, row(uuid="row-17")) == "bad_uuid"


@pytest.mark.parametrize("column", ["insert_id", "$insert_id", "message_id", "messageId", "event_id"])
def test_insert_id_becomes_a_uuidv5_and_is_consumed(column):
    event = mapper().map(row(**{column: "ins-1"}))
    assert event.uuid == uuid_from_id("ins-1")
    assert event.properties == {}


def test_named_uuid_and_insert_id_columns():
    assert mapper(uuid=("event_uuid",)).map(row(event_uuid=SOURCE_UUID)).uuid == SOURCE_UUID
    assert mapper(insert_id=("dedup",)).map(row(dedup=77)).uuid == uuid_from_id("77")


def test_content_uuid_when_the_row_has_no_id():
    event = mapper().map(row(plan="pro"))
    assert event.uuid == uuid_from_content(GENERIC_SOURCE_TAG, "user-1", T, "signed up", {"plan": "pro"})


def test_content_uuid_is_independent_of_column_order_and_stable():
    one = {"event": "a", "distinct_id": "u", "timestamp": TS, "x": 1, "y": {"b": 1, "a": 2}}
    other = {"y": {"a": 2, "b": 1}, "x": 1, "timestamp": TS, "distinct_id": "u", "event": "a"}
    assert mapper().map(one).uuid == mapper().map(other).uuid
    # literal: a change to the content key or the namespace would be caught here
    assert mapper().map(row(plan="pro")).uuid == "8b0c3a65-5211-5be2-baad-787fd609c962"


def test_content_uuid_differs_between_rows_that_differ():
    assert mapper().map(row(plan="pro")).uuid != mapper().map(row(plan="free")).uuid


# --- mapping options --------------------------------------------------------------------------------

def test_event_name_gives_every_row_one_name_and_leaves_event_columns_as_properties():
    event = mapper(event_name="Order Completed").map(row(event="ignored"))
    assert event.event == "Order Completed"
    assert event.properties == {"event": "ignored"}


def test_timestamp_unit_and_timezone_from_the_mapping():
    m = mapper(timestamp=("ts",), timestamp_unit="ms", timezone="America/New_York")
    assert m.map({"event": "a", "distinct_id": "u", "ts": 1_000}).timestamp_us == 1_000_000
    assert m.map({"event": "a", "distinct_id": "u", "ts": "2024-07-01 08:00:00"}).timestamp_us == parse_timestamp(
        "2024-07-01T12:00:00Z")


def test_distinct_id_candidates_first_non_empty_wins():
    m = mapper(distinct_id=("user_id", "anonymous_id"))
    assert m.map({"event": "a", "timestamp": TS, "user_id": "", "anonymous_id": "anon"}).distinct_id == "anon"
    event = m.map({"event": "a", "timestamp": TS, "user_id": "u", "anonymous_id": "anon"})
    assert (event.distinct_id, event.properties) == ("u", {"anonymous_id": "anon"})


def test_drop_events_is_filtered_not_rejected():
    with pytest.raises(Filtered) as caught:
        mapper(drop_events=("session_start",)).map(row(event="session_start"))
    assert "session_start" in caught.value.rule
    mapper(drop_events=("session_start",)).map(row(event="page"))


def test_since_is_inclusive_and_until_is_exclusive():
    m = mapper(since="2024-04-01", until="2024-04-03T12:00:00.123456Z")
    with pytest.raises(Filtered):
        m.map(row(timestamp="2024-03-31T23:59:59.999999Z"))
    assert m.map(row(timestamp="2024-04-01T00:00:00Z")).timestamp_us == parse_timestamp("2024-04-01")
    assert m.map(row(timestamp="2024-04-03T12:00:00.123455Z"))
    with pytest.raises(Filtered):
        m.map(row(timestamp=TS))


def test_since_and_until_dates_are_read_in_the_mapping_timezone():
    m = mapper(since="2024-04-01", timezone="America/New_York")
    with pytest.raises(Filtered):
        m.map(row(timestamp="2024-04-01T03:59:59Z"))
    m.map(row(timestamp="2024-04-01T04:00:00Z"))


# --- ColumnMapping from TOML ------------------------------------------------------------------------

FULL_TOML = """
[columns]
event = "action"
distinct_id = ["user_id", "anonymous_id"]
timestamp = "ts"
timestamp_unit = "ms"
timezone = "Europe/Berlin"
uuid = "event_uuid"
insert_id = "insert_id"

[properties]
json_column = "props"
include = ["plan", "page"]
exclude = ["internal_note"]

[person]
set = ["email", "name"]
set_once = ["signup_date"]

[groups]
company = "company_id"

[filter]
drop_events = ["session_start"]
since = "2023-01-01"
until = 2024-01-01
"""


def test_toml_file_with_every_section(tmp_path):
    mapping = ColumnMapping.from_toml(write_toml(tmp_path, FULL_TOML))
    assert mapping.event == ("action",)
    assert mapping.distinct_id == ("user_id", "anonymous_id")
    assert mapping.timestamp == ("ts",)
    assert mapping.timestamp_unit == "ms"
    assert mapping.timezone == "Europe/Berlin"
    assert mapping.uuid == ("event_uuid",)
    assert mapping.insert_id == ("insert_id",)
    assert mapping.properties_json == ("props",)
    assert mapping.include == ("plan", "page")
    assert mapping.exclude == ("internal_note",)
    assert mapping.set == ("email", "name")
    assert mapping.set_once == ("signup_date",)
    assert mapping.groups == (("company", "company_id"),)
    assert mapping.drop_events == ("session_start",)
    assert mapping.since == "2023-01-01"
    assert mapping.until == "2024-01-01"  # a TOML date, not a string
    assert {"event", "distinct_id", "timestamp", "uuid", "insert_id", "properties_json", "include", "set",
            "set_once", "groups", "drop_events", "since", "until"} <= mapping.explicit
    assert "event_name" not in mapping.explicit
    mapping.validated()


def test_toml_mapping_maps_a_row(tmp_path):
    m = RowMapper(ColumnMapping.from_toml(write_toml(tmp_path, FULL_TOML)))
    event = m.map({
        "action": "bought", "user_id": "u", "anonymous_id": "anon", "ts": 1_690_000_000_000, "insert_id": "i-1",
        "props": '{"from_json": true}', "plan": "pro", "page": "/p", "other": "not included",
        "internal_note": "x", "email": "a@b.c", "signup_date": "2023-05-01", "company_id": "acme",
    })
    assert event.event == "bought"
    assert event.distinct_id == "u"
    assert event.timestamp_us == 1_690_000_000_000_000
    assert event.uuid == uuid_from_id("i-1")
    assert event.properties == {
        "from_json": True, "plan": "pro", "page": "/p", "$set": {"email": "a@b.c"},
        "$set_once": {"signup_date": "2023-05-01"}, "$groups": {"company": "acme"},
    }
    with pytest.raises(Filtered):
        m.map({"action": "session_start", "user_id": "u", "ts": 1_690_000_000_000})
    with pytest.raises(Filtered):
        m.map({"action": "a", "user_id": "u", "ts": 1_600_000_000_000})


def test_toml_event_name_and_empty_file(tmp_path):
    mapping = ColumnMapping.from_toml(write_toml(tmp_path, '[columns]\nevent_name = "Order Completed"\n'))
    assert mapping.event_name == "Order Completed"
    assert "event_name" in mapping.explicit
    assert ColumnMapping.from_toml(write_toml(tmp_path, "")).event == ()


def test_toml_unknown_section_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown section.*colums"):
        ColumnMapping.from_toml(write_toml(tmp_path, '[colums]\nevent = "a"\n'))


def test_toml_missing_or_invalid_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ColumnMapping.from_toml(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ColumnMapping.from_toml(write_toml(tmp_path, "[columns\nevent = "))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[columns]\nevent = "\xe9"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        ColumnMapping.from_toml(bad)


@pytest.mark.parametrize("timezone", ["Mars/Olympus", "", "America", "/etc/passwd", "UTC+2"])
def test_bad_timezone_is_a_config_error(timezone):
    with pytest.raises(ConfigError, match="timezone"):
        ColumnMapping(timezone=timezone).validated()
    with pytest.raises(ConfigError):
        RowMapper(ColumnMapping(timezone=timezone))


def test_non_text_timezone_in_toml_is_a_config_error(tmp_path):
    mapping = ColumnMapping.from_toml(write_toml(tmp_path, "[columns]\ntimezone = 2\n"))
    with pytest.raises(ConfigError, match="timezone"):
        mapping.validated()


@pytest.mark.parametrize("unit", ["seconds", "millis", "", "S"])
def test_bad_timestamp_unit_is_a_config_error(unit):
    with pytest.raises(ConfigError, match="timestamp unit"):
        ColumnMapping(timestamp_unit=unit).validated()


@pytest.mark.parametrize("bound", ["since", "until"])
def test_bad_filter_bound_is_a_config_error(bound):
    with pytest.raises(ConfigError, match=bound):
        ColumnMapping(**{bound: "last tuesday"}).validated()


# --- override (command-line values) ------------------------------------------------------------------

def cli_values(**given: Any) -> dict:
    """What posthog_migrate.cli.mapping_overrides hands over: None for every option not given."""
    values = {
        "event": None, "event_name": None, "distinct_id": (), "timestamp": None, "timestamp_unit": None,
        "timezone": None, "uuid": None, "insert_id": None, "properties_json": None,
    }
    values.update(given)
    return values


def test_override_with_nothing_given_keeps_the_file(tmp_path):
    mapping = ColumnMapping.from_toml(write_toml(tmp_path, FULL_TOML))
    assert mapping.override(**cli_values()) == mapping


def test_override_from_cli_values_wins_over_the_file(tmp_path):
    mapping = ColumnMapping.from_toml(write_toml(tmp_path, FULL_TOML)).override(**cli_values(
        event="kind", distinct_id=("uid",), timestamp="when", timestamp_unit="s", timezone="Asia/Tokyo",
        uuid="id", insert_id="ins", properties_json="attrs",
    ))
    assert mapping.event == ("kind",)
    assert mapping.distinct_id == ("uid",)
    assert mapping.timestamp == ("when",)
    assert mapping.timestamp_unit == "s"
    assert mapping.timezone == "Asia/Tokyo"
    assert mapping.uuid == ("id",)
    assert mapping.insert_id == ("ins",)
    assert mapping.properties_json == ("attrs",)
    assert mapping.set == ("email", "name")  # untouched by the command line
    assert {"event", "distinct_id", "timestamp", "uuid", "insert_id", "properties_json"} <= mapping.explicit


def test_override_on_the_default_mapping_marks_only_given_options_explicit():
    mapping = ColumnMapping().override(**cli_values(timestamp="when", event_name="Ping"))
    assert mapping.timestamp == ("when",)
    assert mapping.event_name == "Ping"
    assert mapping.explicit == frozenset({"timestamp", "event_name"})
    event = RowMapper(mapping).map({"when": TS, "distinct_id": "u"})
    assert (event.event, event.timestamp_us) == ("Ping", T)


def test_to_dict_is_canonical_and_json_serialisable(tmp_path):
    mapping = ColumnMapping.from_toml(write_toml(tmp_path, FULL_TOML))
    assert orjson.loads(orjson.dumps(mapping.to_dict())) == orjson.loads(orjson.dumps(mapping.to_dict()))
    assert mapping.to_dict()["explicit"] == sorted(mapping.explicit)
    assert mapping.to_dict() != ColumnMapping().to_dict()


# --- check_columns ------------------------------------------------------------------------------------

def test_check_columns_passes_when_the_columns_exist(tmp_path):
    mapping = ColumnMapping.from_toml(write_toml(tmp_path, FULL_TOML))
    mapping.check_columns(["action", "user_id", "ts", "event_uuid", "insert_id", "props", "plan", "page", "email",
                           "name", "signup_date", "company_id"], "events.csv")


def test_check_columns_default_mapping_with_default_columns():
    ColumnMapping().check_columns(["event", "distinct_id", "timestamp"], "events.csv")
    ColumnMapping().check_columns(["event_type", "whatever"], "events.csv")


def test_check_columns_names_the_missing_column_and_lists_the_columns_found():
    mapping = ColumnMapping().override(**cli_values(timestamp="ts_ms"))
    with pytest.raises(ConfigError) as caught:
        mapping.check_columns(["event", "distinct_id", "timestamp", "plan"], "data/events.csv")
    message = str(caught.value)
    assert "data/events.csv" in message
    assert "timestamp → ts_ms" in message
    assert "Columns found: distinct_id, event, plan, timestamp" in message


def test_check_columns_accepts_any_one_of_several_candidates():
    mapping = ColumnMapping().override(**cli_values(distinct_id=("user_id", "anonymous_id")))
    mapping.check_columns(["event", "anonymous_id"], "f")
    with pytest.raises(ConfigError, match="distinct_id → user_id or anonymous_id"):
        mapping.check_columns(["event", "device_id"], "f")


def test_check_columns_reports_missing_person_include_and_group_columns(tmp_path):
    mapping = ColumnMapping.from_toml(write_toml(tmp_path, FULL_TOML))
    with pytest.raises(ConfigError) as caught:
        mapping.check_columns(["action", "user_id", "ts", "event_uuid", "props", "plan"], "f")
    message = str(caught.value)
    for part in ("set → email, name", "set_once → signup_date", "include → page", "company → company_id",
                 "insert_id → insert_id"):
        assert part in message


def test_missing_event_column_hint_mentions_format():
    with pytest.raises(ConfigError) as caught:
        ColumnMapping().check_columns(["PAR1\x15\x04", "user"], "events.jsonl")
    message = str(caught.value)
    assert "no event-name column" in message
    assert "--format" in message
    assert "--event-column" in message and "--event-name" in message
    for name in DEFAULT_EVENT_COLUMNS:
        assert name in message


def test_event_name_needs_no_event_column():
    ColumnMapping(event_name="Ping").check_columns(["distinct_id", "timestamp"], "f")


def test_check_columns_ignores_default_candidates_that_were_not_named():
    # uuid/insert_id defaults are optional: a file without them is fine
    ColumnMapping().check_columns(["event"], "f")


# --- the real fixtures, read as generic JSON lines ----------------------------------------------------

def fixture_rows(path: Path, tmp_path: Path) -> list:
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    rows = []
    for chunk in read_json_lines(SourceFile(str(copy), 0, copy.stat().st_size, 0)):
        rows.extend(record for _, record in chunk)
    assert rows and all(isinstance(record, dict) for record in rows)
    return rows


def outcomes(m: RowMapper, rows: list) -> list:
    """Each row's fate: a validated Event, a Rejection or a Filtered. Anything else fails the test."""
    results = []
    for record in rows:
        try:
            event = m.map(record)
            validate(event, NOW)
            results.append(event)
        except (Rejection, Filtered) as outcome:
            results.append(outcome)
    return results


SEGMENT_MAPPINGS = {
    "default": ColumnMapping(),
    "real columns": ColumnMapping(
        event=("event", "name", "type"), distinct_id=("userId", "anonymousId"), timestamp=("timestamp",),
        insert_id=("messageId",), properties_json=("properties",), set=("traits",), timestamp_unit="iso",
    ),
}


@pytest.mark.parametrize("name", SEGMENT_MAPPINGS)
def test_segment_fixture_rows_become_events_or_rejections(tmp_path, name):
    rows = fixture_rows(SEGMENT, tmp_path)
    results = outcomes(RowMapper(SEGMENT_MAPPINGS[name]), rows)
    assert len(results) == 6
    events = [r for r in results if isinstance(r, Event)]
    assert events, "at least the track call maps with either mapping"
    track = events[0]
    assert track.event == "Course Clicked"
    assert track.distinct_id == "AiUGstSDIg"
    assert track.timestamp_us == parse_timestamp("2015-12-12T19:11:01.249Z")
    assert track.uuid == uuid_from_id("ajs-f8ca1e4de5024d9430b3928bd8ac6b96")
    assert track.properties["title"] == "Intro to Analytics"
    if name == "real columns":
        assert len(events) == 6
        assert [e.event for e in events][1:] == ["Home", "Home", "identify", "group", "alias"]


GA4_MAPPINGS = {
    "default": ColumnMapping(),
    "real columns": ColumnMapping(
        event=("event_name",), distinct_id=("user_id", "user_pseudo_id"), timestamp=("event_timestamp",),
        timestamp_unit="us",
    ),
}


@pytest.mark.parametrize("name", GA4_MAPPINGS)
def test_ga4_fixture_rows_become_events_or_rejections(tmp_path, name):
    rows = fixture_rows(GA4, tmp_path)
    results = outcomes(RowMapper(GA4_MAPPINGS[name]), rows)
    assert len(results) == 14
    if name == "default":
        # no default timestamp column in a GA4 row: every row is rejected, none crashes
        assert {r.reason for r in results} == {"bad_timestamp"}
        return
    events = [r for r in results if isinstance(r, Event)]
    assert len(events) == 14
    first = events[0]
    assert first.event == "form_visibility"
    assert first.distinct_id == "107079580.1702642286"
    assert first.timestamp_us == 1702643009060308
    assert isinstance(first.properties["event_params"], list)
    assert "event_timestamp" not in first.properties and "user_pseudo_id" not in first.properties
    assert "event_date" in first.properties
    # GA4 rows sharing event_timestamp and bundle id still get distinct content uuids unless identical
    distinct_rows = {orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in rows}
    assert len({e.uuid for e in events}) == len(distinct_rows)


# --- property: no input makes map/validate raise anything but Rejection/Filtered ---------------------

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from([TS, "2024-03-10 02:30:00", "1712145600", "1e400", "  ", "", SOURCE_UUID, "9" * 30,
                       '{"a": 1}', "[1]", "null", "2024-04-03 12:00:00 UTC", "-1", "0"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
column_names = st.sampled_from([
    "event", "event_name", "event_type", "distinct_id", "user_id", "device_id", "timestamp", "time", "ts",
    "uuid", "insert_id", "messageId", "properties", "$set", "email", "company_id", "plan",
]) | st.text(max_size=10)
records = st.dictionaries(column_names, json_values, max_size=10)

PROPERTY_MAPPINGS = [
    ColumnMapping(),
    ColumnMapping(timestamp_unit="ms", timezone="America/New_York"),
    ColumnMapping(timestamp_unit="ns"),
    ColumnMapping(timestamp_unit="s"),
    ColumnMapping(timestamp_unit="iso", since="2000-01-01", until="2030-01-01"),
    ColumnMapping(set=("email",), set_once=("plan",), groups=(("company", "company_id"),), include=("plan", "x"),
                  exclude=("device_id",), drop_events=("drop me",)),
]
PROPERTY_MAPPERS = [RowMapper(m) for m in PROPERTY_MAPPINGS]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records, which=st.integers(0, len(PROPERTY_MAPPERS) - 1))
def test_map_and_validate_raise_only_rejection_or_filtered_on_any_record(record, which):
    try:
        event = PROPERTY_MAPPERS[which].map(record)
    except (Rejection, Filtered):
        return
    assert isinstance(event, Event)
    try:
        payload = validate(event, NOW)
    except Rejection:
        return
    decoded = orjson.loads(payload)
    assert list(decoded) == ["uuid", "event", "distinct_id", "timestamp", "properties"]
    assert uuid.UUID(decoded["uuid"])
    assert parse_timestamp(decoded["timestamp"]) == event.timestamp_us
