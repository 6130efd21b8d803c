"""The Segment adapter: the real messages of PostHog's own Segment test data, warehouse tables (CSV and
Parquet with flattened ``context_*`` columns), the S3 archive's gzip'd JSON lines, and junk.

Rules from ../shared/reference/source-formats.md ("Common rules", "Segment"): one event per message,
deterministic uuids that differ between calls sharing a messageId, the user id else the anonymous id,
``link`` for the pipeline's one $identify per (user, device) pair, never an exception but Rejection/Filtered.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from posthog_migrate.adapters import adapter_class
from posthog_migrate.adapters.base import BadRow
from posthog_migrate.adapters.segment import TABLE_KEY, SegmentAdapter, table_name
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import INSERT_ID_NAMESPACE, Event, Rejection, parse_timestamp, validate
from posthog_migrate.identity import merges_its_link
from posthog_migrate.mapping import ColumnMapping, Filtered

from .adapter_helpers import PIPELINE_ONLY_REASONS, as_json, events_of, json_values, rows_of, source
from .conftest import PROJECT_ROOT, TEST_API_KEY, cli_environment, run_cli, write_csv, write_jsonl

FIXTURE = PROJECT_ROOT.parent / "shared" / "fixtures" / "segment" / "segment-messages.jsonl"
NOW = parse_timestamp("2024-06-01T00:00:00Z")
UA_10_9 = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_5) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/40.0.2214.115 Safari/537.36")
UA_10_11 = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_0) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/46.0.2490.86 Safari/537.36")
# validate() may still refuse what only it judges: a far-future or out-of-range time, an integer JSON cannot hold.


def fixture_messages() -> list[dict]:
    if not FIXTURE.exists():
        pytest.skip(f"the shared fixtures are not beside the project ({FIXTURE})")
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def adapter(**options) -> SegmentAdapter:
    return SegmentAdapter(ColumnMapping(source_options=tuple(sorted(options.items()))))


def mapping_adapter(**fields) -> SegmentAdapter:
    return SegmentAdapter(ColumnMapping(**fields))










# --- golden: every message of the real fixture -------------------------------------------------------

GOLDEN = [
    [{"json": {"uuid": "673208ff-0c94-5092-b80c-2113f5efa9ac", "event": "Course Clicked",
               "distinct_id": "AiUGstSDIg", "timestamp": "2015-12-12T19:11:01.249000Z",
               "properties": {"$current_url": "https://segment.com/academy/", "$host": "segment.com",
                              "$pathname": "/academy/", "title": "Intro to Analytics", "$lib": "analytics.js",
                              "$lib_version": "2.11.1", "$raw_user_agent": UA_10_11, "$ip": "108.0.78.21",
                              "$groups": {"segment_group": "GroupId1"}, "utm_name": "utm_name"}},
      "source_event": "Course Clicked", "link": ["AiUGstSDIg", "23adfd82-aa0f-45a7-a756-24f2a7a4c895"],
      "added": False}],
    [{"json": {"uuid": "a725feac-23ed-5a14-aa40-3c4599869a40", "event": "$pageview", "distinct_id": "97980cfea0067",
               "timestamp": "2015-02-23T22:28:55.111000Z",
               "properties": {"$raw_user_agent": UA_10_9, "$ip": "8.8.8.8", "title": "Welcome | Initech",
                              "$current_url": "http://www.example.com", "$host": "www.example.com", "name": "Home"}},
      "source_event": "page", "link": ["97980cfea0067", "507f191e810c19729de860ea"], "added": False}],
    [{"json": {"uuid": "ff3cac61-8f73-5b69-94db-7476539c2768", "event": "$screen", "distinct_id": "97980cfea0067",
               "timestamp": "2015-02-23T22:28:55.111000Z",
               "properties": {"$ip": "8.8.8.8", "variation": "blue signup button", "$screen_name": "Home"}},
      "source_event": "screen", "link": ["97980cfea0067", "3a12eab0-bca7-11e4-8dfc-aa07a5b093db"], "added": False}],
    [{"json": {"uuid": "018bee7f-8533-5e4f-a01c-c4d5c770f7ee", "event": "$identify", "distinct_id": "97980cfea0067",
               "timestamp": "2015-02-23T22:28:55.111000Z",
               "properties": {"$raw_user_agent": UA_10_9, "$ip": "8.8.8.8",
                              "$set": {"name": "Peter Gibbons", "email": "peter@example.com", "plan": "premium",
                                       "logins": 5,
                                       "address": {"street": "6th St", "city": "San Francisco", "state": "CA",
                                                   "postalCode": "94103", "country": "USA"}},
                              "$anon_distinct_id": "507f191e810c19729de860ea"}},
      "source_event": "identify", "link": ["97980cfea0067", "507f191e810c19729de860ea"], "added": False}],
    [{"json": {"uuid": "3cb7a31d-91d9-58be-b50b-93a81ac29240", "event": "$groupidentify",
               "distinct_id": "97980cfea0067", "timestamp": "2015-02-23T22:28:55.111000Z",
               "properties": {"$raw_user_agent": UA_10_9, "$ip": "8.8.8.8", "$group_type": "segment_group",
                              "$group_key": "0e8c78ea9d97a7b8185e8632",
                              "$group_set": {"name": "Initech", "industry": "Technology", "employees": 329,
                                             "plan": "enterprise", "total billed": 830}}},
      "source_event": "group", "link": ["97980cfea0067", "507f191e810c19729de860ea"], "added": False}],
    [{"json": {"uuid": "5a9b41f8-5d9b-5f72-b021-2cb1107307bc", "event": "$create_alias", "distinct_id": "507f191e81",
               "timestamp": "2015-02-23T22:28:55.111000Z",
               "properties": {"$raw_user_agent": UA_10_9, "$ip": "8.8.8.8", "alias": "39239-239239-239239-23923"}},
      # The alias call is the merge of (userId, previousId): the identity pass sends it, or holds it back.
      "source_event": "alias", "link": ["507f191e81", "39239-239239-239239-23923"], "added": False}],
]


@pytest.mark.parametrize("index", range(6))
def test_golden_every_fixture_message(index):
    messages = fixture_messages()
    assert len(messages) == 6
    events = adapter().to_events(messages[index])
    assert as_json(events) == GOLDEN[index]
    for event in events:
        validate(event, NOW)


def test_fixture_messages_sharing_a_message_id_get_six_distinct_uuids():
    messages = fixture_messages()
    assert len({m["messageId"] for m in messages}) == 2  # the trap: five share one messageId
    uuids = [adapter().to_events(m)[-1].uuid for m in messages]
    assert len(set(uuids)) == 6
    for message, event_uuid in zip(messages, uuids, strict=True):
        name = message.get("event") or message.get("name") or ""
        key = f"segment:{message['messageId']}:{message['type']}:{name}"
        assert event_uuid == str(uuid.uuid5(INSERT_ID_NAMESPACE, key))


def test_same_message_gives_the_same_uuid_on_every_run_and_adapter():
    message = fixture_messages()[0]
    assert adapter().to_events(dict(message))[0].uuid == adapter().to_events(dict(message))[0].uuid


def test_the_registry_knows_segment():
    assert adapter_class("segment") is SegmentAdapter
    assert SegmentAdapter.extensions == () and SegmentAdapter.source_tag == "segment"


# --- message types and their options -------------------------------------------------------------------

BASE = {"messageId": "m-1", "userId": "u1", "anonymousId": "a1", "timestamp": "2024-03-01T10:00:00.5Z"}


def one(a: SegmentAdapter, **fields) -> Event:
    events = a.to_events({**BASE, **fields})
    assert len(events) == 1 and not events[0].added
    validate(events[0], NOW)
    return events[0]


def test_group_type_comes_from_the_source_table_of_the_mapping():
    event = one(adapter(group_type="company"), type="group", groupId=42, traits={"name": "Acme", "empty": ""})
    assert event.properties == {"$geoip_disable": True, "$group_type": "company", "$group_key": "42",
                                "$group_set": {"name": "Acme"}}
    tracked = one(adapter(group_type="company"), type="track", event="x", context={"groupId": "g7"})
    assert tracked.properties["$groups"] == {"company": "g7"}


def test_a_bad_group_type_or_an_unknown_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="group_type"):
        adapter(group_type="")
    with pytest.raises(ConfigError, match="grouptype.*group_type, tracks_table"):
        adapter(grouptype="company")


def test_identify_of_an_anonymous_user_sets_traits_without_merging():
    event = one(adapter(), type="identify", userId=None, traits={"plan": "pro"})
    assert (event.event, event.distinct_id, event.link) == ("$identify", "a1", None)
    assert event.properties == {"$geoip_disable": True, "$set": {"plan": "pro"}}


def test_track_without_user_id_uses_the_anonymous_id_and_no_link():
    event = one(adapter(), type="track", event="Signed Up", userId="", properties={"plan": "free"})
    assert (event.distinct_id, event.link, event.source_event) == ("a1", None, "Signed Up")


@pytest.mark.parametrize("junk", ["null", "undefined", "  ", "(not set)"])
def test_junk_user_ids_count_as_missing(junk):
    assert one(adapter(), type="track", event="x", userId=junk).distinct_id == "a1"


def test_numeric_ids_become_text():
    event = one(adapter(), type="track", event="x", userId=12345, anonymousId=7.0)
    assert (event.distinct_id, event.link) == ("12345", ("12345", "7"))


def test_screen_name_and_page_properties_over_context_page():
    screen = one(adapter(), type="screen", name="Settings", properties={"tab": "billing"})
    assert screen.properties["$screen_name"] == "Settings" and screen.properties["tab"] == "billing"
    page = one(adapter(), type="page", name="Pricing", category="Docs",
               properties={"url": "https://ex.com/pricing?plan=pro", "path": "/pricing", "referrer":
                           "https://google.com/search", "title": "Pricing", "search": "?plan=pro"},
               context={"page": {"url": "https://ex.com/old", "title": "Old", "referrer": "https://x.test/"}})
    assert page.event == "$pageview"
    assert page.properties == {
        "$current_url": "https://ex.com/pricing?plan=pro", "$host": "ex.com", "$pathname": "/pricing",
        "$referrer": "https://google.com/search", "$referring_domain": "google.com", "title": "Pricing",
        "search": "?plan=pro", "$geoip_disable": True, "name": "Pricing", "category": "Docs",
    }


def test_full_context_mapping():
    context = {
        "ip": "203.0.113.7", "userAgent": "UA", "locale": "en-US", "timezone": "Europe/Berlin",
        "library": {"name": "analytics-ios", "version": "4.1.0"},
        "page": {"url": "https://app.ex.com/notes/1", "referrer": "https://ex.com/", "title": "Note"},
        "campaign": {"source": "news", "medium": "email", "name": "spring", "term": "notes", "content": "cta"},
        "device": {"id": "dev-1", "manufacturer": "Apple", "model": "iPhone14,2", "type": "ios", "name": "Ann's"},
        "os": {"name": "iOS", "version": "17.2"}, "app": {"name": "Acme", "version": "3.2", "build": "320",
                                                          "namespace": "com.acme"},
        "screen": {"width": 390, "height": 844}, "network": {"carrier": "T-Mobile", "wifi": True},
        "location": {"city": "Berlin", "country": "Germany"}, "groupId": "g1", "traits": {"email": "a@x.test"},
        "instance": "abc",
    }
    event = one(adapter(), type="track", event="Note Opened", context=context, properties={"note": 1})
    assert event.properties == {
        "$current_url": "https://app.ex.com/notes/1", "$host": "app.ex.com", "$pathname": "/notes/1",
        "$referrer": "https://ex.com/", "$referring_domain": "ex.com", "title": "Note", "$os": "iOS",
        "$os_version": "17.2", "$device_type": "ios", "$device_manufacturer": "Apple", "$device_model": "iPhone14,2",
        "$device_id": "dev-1", "$device_name": "Ann's", "$lib": "analytics-ios", "$lib_version": "4.1.0",
        "utm_source": "news", "utm_medium": "email", "utm_campaign": "spring", "utm_term": "notes",
        "utm_content": "cta", "$raw_user_agent": "UA", "$browser_language": "en-US", "$timezone": "Europe/Berlin",
        "$app_name": "Acme", "$app_version": "3.2", "$app_build": "320", "$app_namespace": "com.acme",
        "$screen_width": 390, "$screen_height": 844, "$network_carrier": "T-Mobile", "$ip": "203.0.113.7",
        "$groups": {"segment_group": "g1"}, "segment_traits": {"email": "a@x.test"}, "segment_instance": "abc",
        "note": 1,
    }


def test_without_an_ip_geoip_is_disabled_and_the_source_location_kept():
    event = one(adapter(), type="track", event="x",
                context={"location": {"city": "Lyon", "country": "France", "latitude": 45.76, "longitude": "4.83"}})
    assert event.properties == {"$geoip_disable": True, "$geoip_city_name": "Lyon",
                                "$geoip_country_name": "France", "$geoip_latitude": 45.76, "$geoip_longitude": 4.83}


def test_timestamp_fallbacks():
    base = {"type": "track", "event": "x", "userId": "u"}
    a = adapter()
    corrected = a.to_events({**base, "originalTimestamp": "2024-03-01T10:00:00Z",
                             "sentAt": "2024-03-01T10:00:05Z", "receivedAt": "2024-03-01T09:00:07Z"})[0]
    assert corrected.timestamp_us == parse_timestamp("2024-03-01T09:00:02Z")  # the device clock was 1 h fast
    original = a.to_events({**base, "originalTimestamp": "2024-03-01T10:00:00Z",
                            "receivedAt": "2024-03-01T10:00:07Z"})[0]
    assert original.timestamp_us == parse_timestamp("2024-03-01T10:00:00Z")
    received = a.to_events({**base, "receivedAt": "2024-03-01T10:00:07Z"})[0]
    assert received.timestamp_us == parse_timestamp("2024-03-01T10:00:07Z")
    with pytest.raises(Rejection) as missing:
        a.to_events(base)
    assert missing.value.reason == "bad_timestamp"


def test_without_message_id_the_uuid_comes_from_the_content():
    message = {**BASE, "type": "track", "event": "x", "messageId": None}
    first, again = adapter().to_events(dict(message))[0], adapter().to_events(dict(message))[0]
    assert first.uuid == again.uuid
    assert first.uuid != adapter().to_events({**message, "properties": {"a": 1}})[0].uuid


@pytest.mark.parametrize(("fields", "reason"), [
    ({"type": "track", "userId": None, "anonymousId": None, "event": "x"}, "missing_distinct_id"),
    ({"type": "track", "userId": {"id": 1}, "event": "x"}, "missing_distinct_id"),
    ({"type": "track", "event": ""}, "missing_event_name"),
    ({"type": "track", "event": ["x"]}, "missing_event_name"),
    ({"type": "teleport", "event": "x"}, "unknown_message_type"),
    ({"type": None, "event": None}, "unknown_message_type"),
    ({"type": "group", "groupId": None}, "invalid_special_event"),
    ({"type": "group", "groupId": {"a": 1}}, "invalid_special_event"),
    ({"type": "alias", "previousId": None}, "invalid_special_event"),
    ({"type": "alias", "previousId": "u1"}, "invalid_special_event"),
    ({"type": "alias", "userId": None, "previousId": "p"}, "missing_distinct_id"),
    ({"type": "track", "event": "x", "timestamp": "yesterday"}, "bad_timestamp"),
    ({"type": "track", "event": "x", "timestamp": {"t": 1}}, "bad_timestamp"),
])
def test_unusable_messages_are_rejected_with_a_reason(fields, reason):
    with pytest.raises(Rejection) as caught:
        adapter().to_events({**BASE, **fields})
    assert caught.value.reason == reason


def test_drop_events_and_time_filters_are_applied():
    dropping = mapping_adapter(drop_events=("Signed Up", "identify"))
    with pytest.raises(Filtered):
        dropping.to_events({**BASE, "type": "track", "event": "Signed Up"})
    with pytest.raises(Filtered):
        dropping.to_events({**BASE, "type": "identify"})
    assert dropping.to_events({**BASE, "type": "track", "event": "Kept"})
    since = mapping_adapter(since="2024-03-02")
    with pytest.raises(Filtered):
        since.to_events({**BASE, "type": "track", "event": "x"})


def test_nested_junk_is_ignored_not_a_crash():
    event = one(adapter(), type="track", event="x", context="not an object", properties=["a"], traits=5)
    assert event.properties == {"$geoip_disable": True}


# --- warehouse tables: flattened columns, one table per call type ---------------------------------------

ORDER = {  # one track message, nested (archive) shape
    "type": "track", "messageId": "ajs-order-1", "userId": "u_42", "anonymousId": "anon-9",
    "event": "Order Completed", "timestamp": "2024-03-02T12:30:45.123Z", "originalTimestamp": "2024-03-02T12:30:44Z",
    "receivedAt": "2024-03-02T12:30:46Z",
    "properties": {"order_id": "0042", "revenue": 19.99, "items": 3, "coupon": "SPRING"},
    "context": {"ip": "198.51.100.4", "userAgent": "UA", "library": {"name": "analytics.js", "version": "5.2.0"},
                "page": {"url": "https://shop.ex.com/checkout?step=3", "path": "/checkout", "title": "Checkout"},
                "campaign": {"source": "google", "medium": "cpc", "name": "brand"}, "groupId": "acme"},
}
ORDER_FLAT = {  # the same message as a row of the warehouse's order_completed table
    "id": "ajs-order-1", "user_id": "u_42", "anonymous_id": "anon-9", "event": "order_completed",
    "event_text": "Order Completed", "timestamp": "2024-03-02 12:30:45.123+00",
    "original_timestamp": "2024-03-02 12:30:44+00", "received_at": "2024-03-02 12:30:46+00",
    "loaded_at": "2024-03-02 13:00:00+00", "uuid_ts": "2024-03-02 13:00:00+00",
    "order_id": "0042", "revenue": 19.99, "items": 3, "coupon": "SPRING",
    "context_ip": "198.51.100.4", "context_user_agent": "UA", "context_library_name": "analytics.js",
    "context_library_version": "5.2.0", "context_page_url": "https://shop.ex.com/checkout?step=3",
    "context_page_path": "/checkout", "context_page_title": "Checkout", "context_campaign_source": "google",
    "context_campaign_medium": "cpc", "context_campaign_name": "brand", "context_group_id": "acme",
}


def test_flattened_and_nested_rows_of_one_message_give_identical_events(tmp_path):
    a = adapter()
    expected = as_json(a.to_events(ORDER))
    assert expected[0]["json"]["properties"]["order_id"] == "0042"
    write_csv(tmp_path / "order_completed.csv", [ORDER_FLAT])
    assert as_json(events_of(a, tmp_path / "order_completed.csv")) == expected
    table = {**ORDER_FLAT, "timestamp": datetime(2024, 3, 2, 12, 30, 45, 123000, tzinfo=UTC),
             "original_timestamp": datetime(2024, 3, 2, 12, 30, 44, tzinfo=UTC),
             "received_at": datetime(2024, 3, 2, 12, 30, 46, tzinfo=UTC)}
    folder = tmp_path / "warehouse" / "order_completed"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([table]), folder / "part-00000.parquet")
    assert as_json(events_of(a, folder / "part-00000.parquet")) == expected


def test_csv_keeps_ids_as_text_and_infers_other_numbers(tmp_path):
    rows = [{"id": "1", "user_id": "007", "anonymous_id": "00", "event": "404", "timestamp": "2024-03-01T00:00:00Z",
             "zip": "02134", "count": "12", "ratio": "0.5", "flag": "true"}]
    write_csv(tmp_path / "tracks.csv", rows)
    event = events_of(adapter(), tmp_path / "tracks.csv")[0]
    assert (event.event, event.distinct_id, event.link) == ("404", "007", ("007", "00"))
    assert event.properties == {"zip": "02134", "count": 12, "ratio": 0.5, "flag": True, "$geoip_disable": True}


@pytest.mark.parametrize(("name", "expected_event"), [
    ("pages.csv", "$pageview"), ("screens.csv", "$screen"), ("identifies.csv", "$identify"),
    ("groups.csv", "$groupidentify"), ("aliases.csv", "$create_alias"), ("tracks.csv", "Signed Up"),
    ("signed_up.csv", "Signed Up"),
])
def test_the_table_name_gives_the_call_type(tmp_path, name, expected_event):
    row = {"id": "m1", "user_id": "u1", "anonymous_id": "a1", "received_at": "2024-03-01T00:00:00Z",
           "name": "Home", "group_id": "g1", "previous_id": "old-id", "plan": "pro"}
    if name in ("tracks.csv", "signed_up.csv"):
        row["event_text"] = "Signed Up"
    write_csv(tmp_path / name, [row])
    event = events_of(adapter(), tmp_path / name)[0]
    assert event.event == expected_event
    if expected_event == "$identify":
        assert event.properties["$set"] == {"plan": "pro"} and "name" not in event.properties["$set"]
    if expected_event == "$groupidentify":
        assert event.properties["$group_key"] == "g1" and event.properties["$group_set"] == {"plan": "pro"}
    if expected_event == "$create_alias":
        assert event.properties["alias"] == "old-id"


def test_per_event_table_without_event_columns_is_named_by_the_table(tmp_path):
    write_csv(tmp_path / "note_created.csv", [{"id": "m", "user_id": "u", "timestamp": "2024-03-01T00:00:00Z"}])
    event = events_of(adapter(), tmp_path / "note_created.csv")[0]
    assert (event.event, event.source_event) == ("note_created", "note_created")


def test_a_type_column_wins_over_the_table_name(tmp_path):
    write_csv(tmp_path / "export.csv", [
        {"type": "page", "id": "1", "user_id": "u", "timestamp": "2024-03-01T00:00:00Z", "url": "https://e.com/a"},
        {"type": "identify", "id": "2", "user_id": "u", "timestamp": "2024-03-01T00:00:00Z", "email": "u@e.com"},
    ])
    events = events_of(adapter(), tmp_path / "export.csv")
    assert [e.event for e in events] == ["$pageview", "$identify"]
    assert events[0].properties["$current_url"] == "https://e.com/a"
    assert events[1].properties["$set"] == {"email": "u@e.com"}


def test_the_tracks_table_can_be_skipped_when_per_event_tables_are_migrated(tmp_path):
    row = {"id": "m1", "user_id": "u", "event": "signed_up", "event_text": "Signed Up",
           "timestamp": "2024-03-01T00:00:00Z"}
    write_csv(tmp_path / "tracks.csv", [row])
    write_csv(tmp_path / "signed_up.csv", [{**row, "plan": "pro"}])
    sent = events_of(adapter(), tmp_path / "tracks.csv")[0]
    own_table = events_of(adapter(), tmp_path / "signed_up.csv")[0]
    assert sent.uuid == own_table.uuid and own_table.properties["plan"] == "pro"
    skipping = adapter(tracks_table="skip")
    ((_, record),) = rows_of(skipping.read(source(tmp_path / "tracks.csv")))
    with pytest.raises(Filtered, match="tracks table"):
        skipping.to_events(record)
    assert events_of(skipping, tmp_path / "signed_up.csv")[0].uuid == own_table.uuid
    with pytest.raises(ConfigError, match="tracks_table"):
        adapter(tracks_table="maybe")


def test_derived_users_and_accounts_tables_are_filtered(tmp_path):
    write_csv(tmp_path / "users.csv", [{"id": "u1", "received_at": "2024-03-01T00:00:00Z", "email": "a@b.c"}] * 3)
    a = adapter()
    for _, row in rows_of(a.read(source(tmp_path / "users.csv"))):
        with pytest.raises(Filtered, match="users table"):
            a.to_events(row)


def test_the_table_travels_in_the_record_so_a_retried_reject_still_knows_it(tmp_path):
    write_csv(tmp_path / "pages.csv", [{"id": "1", "user_id": "u", "timestamp": "2024-03-01T00:00:00Z"}])
    (_, row), = rows_of(adapter().read(source(tmp_path / "pages.csv")))
    assert row[TABLE_KEY] == "pages"
    assert adapter().to_events(orjson.loads(orjson.dumps(row)))[0].event == "$pageview"


@pytest.mark.parametrize(("uri", "expected"), [
    ("pages.csv", "pages"), ("w/pages/part-00000.parquet", "pages"), ("tracks/000000_0.csv.gz", "tracks"),
    ("s3://bucket/wh/identifies/dt=2024-03-01/part-1.parquet", "identifies"),
    ("order_completed.parquet", "order_completed"), ("exports/added.csv", "added"),
])
def test_table_name_from_the_file_or_its_folder(uri, expected):
    assert table_name(uri) == expected


# --- the S3 archive: gzip'd JSON lines named by receipt time -------------------------------------------

def test_s3_archive_gzip_file_is_read_as_messages(tmp_path):
    messages = fixture_messages()
    folder = tmp_path / "segment-logs" / "srcA1" / "1450051200000"
    folder.mkdir(parents=True)
    path = folder / "1450051261266.4a3f2b.gz"
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(m) + b"\n" for m in messages), mtime=0))
    rows = rows_of(adapter().read(source(path)))
    assert [n for n, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert all(TABLE_KEY not in row for _, row in rows)
    assert as_json([e for _, row in rows for e in adapter().to_events(row)]) == [g[0] for g in GOLDEN]


def test_unreadable_lines_are_bad_rows(tmp_path):
    path = tmp_path / "archive.jsonl"
    path.write_bytes(orjson.dumps(ORDER) + b"\n" + b'{"type": "track", "ev\n' + b"[1, 2]\n")
    rows = rows_of(adapter().read(source(path)))
    assert isinstance(rows[0][1], dict)
    assert [(n, r.reason) for n, r in rows[1:]] == [(2, "invalid_json"), (3, "not_an_object")]


def test_a_file_that_is_not_segment_is_a_config_error_naming_it(tmp_path):
    write_jsonl(tmp_path / "other.jsonl", [{"event_name": "page_view", "user_pseudo_id": "p"}] * 5)
    with pytest.raises(ConfigError, match="other.jsonl.*--format"):
        rows_of(adapter().read(source(tmp_path / "other.jsonl")))
    write_csv(tmp_path / "other.csv", [{"a": 1, "b": 2}] * 30)
    with pytest.raises(ConfigError, match="other.csv"):
        rows_of(adapter().read(source(tmp_path / "other.csv")))
    (tmp_path / "binary.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ConfigError, match="binary.parquet"):
        rows_of(adapter().read(source(tmp_path / "binary.parquet")))


def test_a_few_odd_rows_are_rejects_not_a_config_error(tmp_path):
    write_jsonl(tmp_path / "two.jsonl", [{"a": 1}, {"b": 2}])
    rows = rows_of(adapter().read(source(tmp_path / "two.jsonl")))
    assert len(rows) == 2
    for _, row in rows:
        with pytest.raises(Rejection):
            adapter().to_events(row)
    mixed = [{"a": n} for n in range(10)] + [ORDER]
    write_jsonl(tmp_path / "mixed.jsonl", mixed)
    assert len(rows_of(adapter().read(source(tmp_path / "mixed.jsonl")))) == 11


def test_bad_rows_stay_bad_rows_in_csv(tmp_path):
    (tmp_path / "tracks.csv").write_text("id,user_id,event,timestamp\n1,u,x,2024-03-01T00:00:00Z\n2,u,x\n")
    rows = rows_of(adapter().read(source(tmp_path / "tracks.csv")))
    assert isinstance(rows[1][1], BadRow) and rows[1][1].reason == "wrong_field_count"


# --- property test: any dict gives valid events, a Rejection or Filtered -------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["", "null", "2024-03-01T00:00:00Z", "1709251200000", "track", "page", "identify",
                              "group", "alias", "screen", "(not set)"]))
JSON_VALUES = json_values(SCALARS)
KEYS = st.sampled_from(["type", "messageId", "userId", "anonymousId", "event", "name", "timestamp",
                        "originalTimestamp", "sentAt", "receivedAt", "properties", "traits", "context", "groupId",
                        "previousId", "id", "user_id", "anonymous_id", "event_text", "context_page_url",
                        "context_ip", "received_at", TABLE_KEY]) | st.text(max_size=8)
RANDOM_ROWS = st.dictionaries(KEYS, JSON_VALUES, max_size=10)


@st.composite
def mutated_fixture_rows(draw):
    messages = [json.loads(line) for line in FIXTURE.read_text().splitlines()] if FIXTURE.exists() else [ORDER]
    row = json.loads(json.dumps(draw(st.sampled_from([*messages, ORDER, ORDER_FLAT]))))
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(sorted(row)) | KEYS)
        if draw(st.booleans()):
            row.pop(key, None)
        elif isinstance(row.get("context"), dict) and draw(st.booleans()):
            row["context"][draw(st.sampled_from(["ip", "page", "library", "groupId", "location", "os"]))] = draw(
                JSON_VALUES)
        else:
            row[key] = draw(JSON_VALUES)
    return row


def check_events_or_refusal(a, row: dict) -> None:
    try:
        events = a.to_events(row)
    except (Rejection, Filtered):
        return
    assert events and isinstance(events, list) and not events[-1].added
    for event in events:
        try:
            validate(event, NOW)
        except Rejection as rejection:
            assert rejection.reason in PIPELINE_ONLY_REASONS, (rejection.reason, rejection.detail, row)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(RANDOM_ROWS, mutated_fixture_rows()))
def test_any_record_becomes_valid_events_or_a_rejection(row):
    check_events_or_refusal(adapter(group_type="company"), row)


# --- end to end: the real fixture through the real command ---------------------------------------------

def test_fixture_end_to_end_through_the_cli(tmp_path, make_server):
    fixture_messages()  # skips when the shared fixtures are not beside the project, as the tests above do
    shutil.copy(FIXTURE, tmp_path / "segment-messages.jsonl")
    (tmp_path / "segment-messages.jsonl").chmod(0o644)
    server = make_server()
    result = run_cli(["run", "segment-messages.jsonl", "--format", "segment", "--host", server.url, "--rate", "0",
                      "-q", "--workdir", "job"], tmp_path, cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "6 = 6 + 0 + 0" in result.stdout and "✓ balanced" in result.stdout
    received = server.events
    own = [e for e in received if e["uuid"] in {g[0]["json"]["uuid"] for g in GOLDEN}]
    assert len(own) == 6 and len({e["uuid"] for e in own}) == 6
    # Every (user, anonymous id) pair merged once: by the identify call itself where it shows the pair first (at
    # the same instant as the page call before it: one $identify, carrying the traits), by the alias call, and
    # by the pipeline's $identify before the first event of the other pairs.
    merges = [(e["distinct_id"], e["properties"].get("$anon_distinct_id", e["properties"].get("alias")))
              for e in received if e["event"] in ("$identify", "$create_alias")]
    assert sorted(merges) == sorted([
        ("AiUGstSDIg", "23adfd82-aa0f-45a7-a756-24f2a7a4c895"), ("97980cfea0067", "507f191e810c19729de860ea"),
        ("97980cfea0067", "3a12eab0-bca7-11e4-8dfc-aa07a5b093db"), ("507f191e81", "39239-239239-239239-23923")])
    [identify] = [e for e in received if e["properties"].get("$anon_distinct_id") == "507f191e810c19729de860ea"]
    assert identify["uuid"] in {e["uuid"] for e in own} and identify["properties"]["$set"]
    assert len({e["uuid"] for e in received}) == len(received) == 6 + 2
    assert all(e["properties"]["$import_source"] == "segment" for e in received)


# --- the bundled sample ----------------------------------------------------------------------------------------

SAMPLE = PROJECT_ROOT / "sample_data" / "segment"


def same_sample_files(generated: Path, committed: Path) -> None:
    """Every file the generator writes equals the committed one: bytes, or a Parquet file's table (its bytes
    also carry the writing pyarrow's version)."""
    names = sorted(p.relative_to(generated) for p in generated.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(committed) for p in committed.rglob("*")
                           if p.is_file() and p.name != "generate.py")
    for name in names:
        if name.suffix == ".parquet":
            assert pq.read_table(generated / name).equals(pq.read_table(committed / name)), name
        else:
            assert (generated / name).read_bytes() == (committed / name).read_bytes(), name


def sample_outcomes(a, folder: Path) -> tuple[Counter, set, list]:
    counts: Counter = Counter()
    pairs: set = set()
    bad = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        for number, row in rows_of(a.read(source(path))):
            counts["records"] += 1
            if isinstance(row, BadRow):
                bad.append((str(path.relative_to(SAMPLE)), number, row.reason))
                continue
            try:
                events = a.to_events(row)
            except Rejection as rejection:
                bad.append((str(path.relative_to(SAMPLE)), number, rejection.reason))
                continue
            except Filtered:
                counts["filtered"] += 1
                continue
            for event in events:
                validate(event, NOW)
            counts["good"] += 1
            pairs.update(e.link for e in events if e.link and not merges_its_link(e))  # an alias is its own merge
    return counts, pairs, bad


def test_the_sample_is_byte_stable_and_small(tmp_path):
    subprocess.run([sys.executable, str(SAMPLE / "generate.py"), "--out", str(tmp_path)], check=True, timeout=60)
    same_sample_files(tmp_path, SAMPLE)
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 300_000


def test_the_sample_gives_what_its_readme_says():
    readme = (SAMPLE / "README.md").read_text()
    listed = re.findall(r"^\| `([^`]+)` \| (\d+) \| `(\w+)` \|", readme, re.MULTILINE)
    found_bad = []
    for folder, (records, good, filtered, bad, pairs) in {"archive": (230, 225, 0, 5, 16),
                                                          "warehouse": (180, 163, 14, 3, 14)}.items():
        counts, links, wrong = sample_outcomes(adapter(), SAMPLE / folder)
        assert (counts["records"], counts["good"], counts["filtered"], len(wrong), len(links)) == (
            records, good, filtered, bad, pairs)
        assert f"| `{folder}/` |" in readme and f"| {records} | {good} |" in readme
        found_bad += wrong
    assert sorted(found_bad) == sorted((path, int(row), reason) for path, row, reason in listed)
