"""The GA4 adapter: the real BigQuery export rows of the shared fixture, their Parquet twin, and junk.

Rules from ../shared/reference/source-formats.md ("Common rules", "GA4"): µs UTC timestamps (INT64 as
text in JSON extracts), params → properties, user properties → $set, $session_id as a UUIDv7 of the
session start, GA4's own geo with $geoip_disable, session_start/first_visit filtered, and uuids that never
collide for distinct rows (the fixture's rows share the reference's five-field key) yet stay stable.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from posthog_migrate.adapters import adapter_class
from posthog_migrate.adapters.base import BadRow, SourceFile
from posthog_migrate.adapters.common import session_uuid7
from posthog_migrate.adapters.ga4 import Ga4Adapter, content_digest, param_value, params
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import INSERT_ID_NAMESPACE, Rejection, parse_timestamp, validate
from posthog_migrate.mapping import ColumnMapping, Filtered

from .adapter_helpers import (
    as_json,
    assert_one_valid_event_or_a_rejection,
    json_values,
    rows_of,
    source,
)
from .conftest import PROJECT_ROOT, TEST_API_KEY, cli_environment, run_cli, write_jsonl

FIXTURE = PROJECT_ROOT.parent / "shared" / "fixtures" / "ga4" / "ga4-bigquery-rows.jsonl"
NOW = parse_timestamp("2024-06-01T00:00:00Z")
LONG_TITLE = ("Dataform: schedule daily updates using Cloud Functions - Blog about GTM, GA and marketing "
              "automation. GCP magic and the Python Majesty will be mentioned too.")


def fixture_rows() -> list[dict]:
    if not FIXTURE.exists():
        pytest.skip(f"the shared fixtures are not beside the project ({FIXTURE})")
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def adapter(**fields) -> Ga4Adapter:
    return Ga4Adapter(ColumnMapping(**fields))








# --- golden: four fixture rows with every property ------------------------------------------------------

ZURICH_DEVICE = {
    "$device_type": "Mobile", "$os": "Android", "$os_version": "13.0.0", "$browser": "Chrome",
    "$browser_version": "119.0.6045.194", "$browser_language": "de-ch", "$device_manufacturer": "Samsung",
    "$device_model": "SM-G781B", "$device_name": "Galaxy S20 FE 5G", "$geoip_disable": True,
    "$geoip_city_name": "Zurich", "$geoip_subdivision_1_name": "Zurich", "$geoip_country_name": "Switzerland",
    "$geoip_continent_name": "Europe",
}
GOLDEN = {
    1: [{"json": {"uuid": "fe7b79ba-44e6-50a1-9c7a-9ba097773ea0", "event": "form_visibility",
                  "distinct_id": "107079580.1702642286", "timestamp": "2023-12-15T12:23:29.060308Z",
                  "properties": {
                      "form_name": "form_newsletter", "engaged_session_event": 1, "session_engaged": "1",
                      "ga_session_number": 1, "engagement_time_msec": 17415, "ignore_referrer": "true",
                      "event_tag_timestamp": 1702643008661, "$current_url": "https://www.test.com/de-de/kontakt/",
                      "$host": "www.test.com", "$pathname": "/de-de/kontakt/",
                      "$referrer": "https://www.test.com/de-de/", "$referring_domain": "www.test.com",
                      "title": "Kontakt", **ZURICH_DEVICE, "$session_id": "018c6d63-7db0-7d0c-8466-1011e2359f8c"}},
         "source_event": "form_visibility", "link": None, "added": False}],
    4: [{"json": {"uuid": "a3bacf54-6fb3-5299-bd37-d789dee9a0fa", "event": "form_submit",
                  "distinct_id": "1385813245.1702644703", "timestamp": "2023-12-15T12:53:12.859982Z",
                  "properties": {
                      "campaign": "(organic)", "engaged_session_event": 1, "engagement_time_msec": 809,
                      "form_name": "form_contact", "ga_session_number": 1, "medium": "organic",
                      "session_engaged": "1", "source": "bing", "$current_url": "https://test.com/en/lp/",
                      "$host": "test.com", "$pathname": "/en/lp/", "$referrer": "https://www.bing.com/",
                      "$referring_domain": "www.bing.com", "title": "TITLE", "$device_type": "Desktop",
                      "$os": "Windows", "$os_version": "11", "$browser": "Edge", "$browser_version": "119.0.2151.97",
                      "$browser_language": "en-gb", "$geoip_disable": True, "$geoip_city_name": "Chennai",
                      "$geoip_subdivision_1_name": "Tamil Nadu", "$geoip_country_name": "India",
                      "$geoip_continent_name": "Asia", "utm_source": "bing",
                      "utm_medium": "organic", "$session_id": "018c6d88-5f18-73b4-897f-90ba0e6ee7a1"}},
         "source_event": "form_submit", "link": None, "added": False}],
    8: [{"json": {"uuid": "0340a8cf-7ada-5b2e-991b-ac7bb66e197d", "event": "purchase",
                  "distinct_id": "427292018.1702650951", "timestamp": "2023-12-15T14:45:59.604143Z",
                  "properties": {
                      "ignore_referrer": "true", "ga_session_number": 1, "shipping": 0, "currency": "EUR",
                      "value": 31, "engagement_time_msec": 6, "session_engaged": "1", "transaction_id": "257059",
                      "tax": 4.9495798319328, "engaged_session_event": 1,
                      "$current_url": "https://shop.test.com/de/confirmation/xxxxx", "$host": "shop.test.com",
                      "$pathname": "/de/confirmation/xxxxx", "$referrer": "https://www.paypal.com/",
                      "$referring_domain": "www.paypal.com", "$device_type": "Desktop", "$os": "Windows",
                      "$os_version": "10", "$browser": "Chrome", "$browser_version": "120.0.6099.109",
                      "$browser_language": "de-de", "$geoip_disable": True,
                      "$geoip_subdivision_1_name": "Rhineland-Palatinate", "$geoip_country_name": "Germany",
                      "$geoip_continent_name": "Europe",
                      "items": [
                          {"item_id": "product_5851_706031", "item_name": "Name 1", "item_brand": "Brand",
                           "item_category": "Category 1", "price_in_usd": 15.808405, "price": 14.596638,
                           "quantity": 1, "item_revenue_in_usd": 15.808405, "item_revenue": 14.596638,
                           "color": "red"},
                          {"item_id": "product_5851_150468", "item_name": "Name 2", "item_brand": "Brand",
                           "item_category": "Category 1", "price_in_usd": 17.765117, "price": 16.403361,
                           "quantity": 1, "item_revenue_in_usd": 17.765117, "item_revenue": 16.403361,
                           "color": "green"}],
                      "$session_id": "018c6de7-b558-74ea-aa70-9e29d17a09e2"}},
         "source_event": "purchase", "link": None, "added": False}],
    13: [{"json": {"uuid": "967cffe6-151b-5a8d-9070-e31c0efe6ff8", "event": "$pageview",
                   "distinct_id": "950658449.1697698900", "timestamp": "2023-10-19T07:03:06.127385Z",
                   "properties": {
                       "campaign": "cpc_campaign", "ga_session_number": 1, "source": "google", "entrances": 1,
                       "session_engaged": "0", "medium": "cpc", "container_id": "GTM-WW5MBD4",
                       "$current_url": "https://gtm-gear.com/posts/dataform-cloud-functions/?gclid=gclid1&fbclid="
                                       "fbclid1&ttclid=ttclid1&dclid=dclid1&wbraid=wbraid1&gbraid=gbraid1",
                       "$host": "gtm-gear.com", "$pathname": "/posts/dataform-cloud-functions/",
                       "$referrer": "https://www.google.com/", "$referring_domain": "www.google.com",
                       "title": LONG_TITLE, "$device_type": "Mobile", "$os": "iOS", "$os_version": "17.0",
                       "$browser": "Chrome", "$browser_version": "118.0.5993.69", "$browser_language": "en-gb",
                       "$device_manufacturer": "Apple", "$device_model": "iPhone", "$geoip_disable": True,
                       "$geoip_city_name": "Stockholm", "$geoip_subdivision_1_name": "Stockholm County",
                       "$geoip_country_name": "Sweden", "$geoip_continent_name": "Europe",
                       "utm_source": "google", "utm_medium": "organic",
                       "$session_id": "018b46be-b810-791f-85d6-303964179e37"}},
          "source_event": "page_view", "link": None, "added": False}],
}

# Every row: (event, distinct_id, timestamp, uuid, $session_id), or the filter rule.
ALL_ROWS = [
    ("form_visibility", "107079580.1702642286", "2023-12-15T12:23:29.060308Z", "fe7b79ba-44e6-50a1-9c7a-9ba097773ea0",
     "018c6d63-7db0-7d0c-8466-1011e2359f8c"),
    ("form_visibility", "107079580.1702642286", "2023-12-15T12:23:29.060308Z", "fe7b79ba-44e6-50a1-9c7a-9ba097773ea0",
     "018c6d63-7db0-7d0c-8466-1011e2359f8c"),
    ("form_visibility", "107079580.1702642286", "2023-12-15T12:23:29.060308Z", "5f1350c0-0553-5857-b3c9-b12fcca0ed1f",
     "018c6d63-7db0-7d0c-8466-1011e2359f8c"),
    ("form_submit", "1385813245.1702644703", "2023-12-15T12:53:12.859982Z", "a3bacf54-6fb3-5299-bd37-d789dee9a0fa",
     "018c6d88-5f18-73b4-897f-90ba0e6ee7a1"),
    "GA4 session_start",
    ("form_start", "1385813245.1702644703", "2023-12-15T12:52:45.678503Z", "c6e3bd62-32b2-5738-8f1c-6f2c19722b86",
     "018c6d88-5f18-73b4-897f-90ba0e6ee7a1"),
    ("generate_lead", "1385813245.1702644703", "2023-12-15T12:53:12.816784Z", "8481461a-e17f-5d8c-9daa-63ebd86b751c",
     "018c6d88-5f18-73b4-897f-90ba0e6ee7a1"),
    ("purchase", "427292018.1702650951", "2023-12-15T14:45:59.604143Z", "0340a8cf-7ada-5b2e-991b-ac7bb66e197d",
     "018c6de7-b558-74ea-aa70-9e29d17a09e2"),
    ("purchase", "427292018.1702650951", "2023-12-15T14:45:59.604143Z", "a648556e-1484-5041-9ffc-14c222cceed9",
     "018c6de7-b558-74ea-aa70-9e29d17a09e2"),
    ("$pageview", "950658449.1697698986", "2023-10-19T07:03:06.127385Z", "e6611b6c-6d2e-537b-9c10-c4fcc10b372c",
     "018b46be-b810-7e0b-8fbc-c91a894909d3"),
    ("$pageview", "950658449.1697698900", "2023-10-19T07:03:06.127385Z", "5460de42-348c-5dc4-985f-f48d7ca93983",
     "018b46be-b810-791f-85d6-303964179e37"),
    ("$pageview", "950658449.1697698901", "2023-10-19T07:03:06.127385Z", "c1a9a6e3-5462-5c8b-8176-8aa279056664",
     "018b46be-b810-7154-b294-c620c2f1e8ee"),
    ("$pageview", "950658449.1697698900", "2023-10-19T07:03:06.127385Z", "967cffe6-151b-5a8d-9070-e31c0efe6ff8",
     "018b46be-b810-791f-85d6-303964179e37"),
    ("$pageview", "950658449.1697698900", "2023-10-19T07:03:06.127385Z", "a70ffcb8-a797-5f90-9bc8-8b5c4a4e9ea8",
     "018b46be-b810-791f-85d6-303964179e37"),
]


@pytest.mark.parametrize("number", sorted(GOLDEN))
def test_golden_fixture_rows_with_all_their_properties(number):
    events = adapter().to_events(fixture_rows()[number - 1])
    assert as_json(events) == GOLDEN[number]
    validate(events[0], NOW)


def test_every_fixture_row():
    rows = fixture_rows()
    assert len(rows) == len(ALL_ROWS) == 14
    for row, expected in zip(rows, ALL_ROWS, strict=True):
        if isinstance(expected, str):
            with pytest.raises(Filtered) as caught:
                adapter().to_events(row)
            assert caught.value.rule == expected
            continue
        (event,) = adapter().to_events(row)
        validate(event, NOW)
        stamp = json.loads(event.to_json())["timestamp"]
        assert (event.event, event.distinct_id, stamp, event.uuid, event.properties["$session_id"]) == expected
        assert event.properties["$geoip_disable"] is True and "$ip" not in event.properties
        assert not any(value in ("(not set)", "(not provided)") for value in event.properties.values())


def test_the_reference_key_collides_in_the_fixture_and_the_content_hash_separates_rows():
    rows = fixture_rows()
    keys = [(r["user_pseudo_id"], r["event_timestamp"], r["event_name"], r["event_bundle_sequence_id"],
             r.get("batch_event_index")) for r in rows]
    assert len(set(keys)) < len(keys)  # the five-field key alone would merge different events
    kept = [(r, e) for r, e in zip(rows, ALL_ROWS, strict=True) if not isinstance(e, str)]
    by_content = {json.dumps(r, sort_keys=True) for r, _ in kept}
    uuids = {expected[3] for _, expected in kept}
    assert len(uuids) == len(by_content) == 12  # rows 1 and 2 are identical: one uuid, one event in PostHog
    row = rows[0]
    key = ":".join(["ga4", row["user_pseudo_id"], row["event_timestamp"], row["event_name"],
                    row["event_bundle_sequence_id"], "", content_digest(row)])
    assert ALL_ROWS[0][3] == str(uuid.uuid5(INSERT_ID_NAMESPACE, key))


def test_session_id_is_a_uuid7_of_the_session_start():
    event = adapter().to_events(fixture_rows()[0])[0]
    session = uuid.UUID(event.properties["$session_id"])
    assert session.version == 7
    assert int(session.hex[:12], 16) == 1702642286 * 1000
    assert str(session) == session_uuid7(1702642286000, "ga4:107079580.1702642286:1702642286")


def test_the_registry_knows_ga4():
    assert adapter_class("ga4") is Ga4Adapter
    assert Ga4Adapter.extensions == () and Ga4Adapter.source_tag == "ga4"


# --- Parquet: INT64 as numbers, the same events ---------------------------------------------------------

INT64_FIELDS = {"event_timestamp", "event_bundle_sequence_id", "user_first_touch_timestamp", "int_value",
                "total_item_quantity", "unique_items", "event_previous_timestamp", "set_timestamp_micros"}
FLOAT64_FIELDS = {"purchase_revenue_in_usd", "purchase_revenue", "shipping_value_in_usd", "shipping_value",
                  "tax_value_in_usd", "tax_value", "refund_value_in_usd", "refund_value", "revenue"}


def as_bigquery_types(value, key=None):
    """What a Parquet extract holds: INT64 and FLOAT64 as numbers, BOOL as a boolean."""
    if isinstance(value, dict):
        return {k: as_bigquery_types(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [as_bigquery_types(v) for v in value]
    if isinstance(value, str) and key in INT64_FIELDS:
        return int(value)
    if isinstance(value, str) and key in FLOAT64_FIELDS:
        return float(value)
    if key == "is_active_user" and value in ("true", "false"):
        return value == "true"
    return value


def test_a_parquet_extract_gives_the_same_events_and_uuids_as_the_json_extract(tmp_path):
    rows = fixture_rows()
    typed = [as_bigquery_types(copy.deepcopy(r)) for r in rows]
    assert isinstance(typed[0]["event_timestamp"], int)
    path = tmp_path / "events_20231215.parquet"
    pq.write_table(pa.Table.from_pylist(typed), path, row_group_size=5)
    a = adapter()
    read = rows_of(a.read(source(path)))
    assert [n for n, _ in read] == list(range(1, 15))
    for (_, parquet_row), json_row in zip(read, rows, strict=True):
        if json_row["event_name"] == "session_start":
            with pytest.raises(Filtered):
                a.to_events(parquet_row)
            continue
        assert as_json(a.to_events(parquet_row)) == as_json(a.to_events(json_row))


def test_json_lines_extract_gzip_and_row_numbers(tmp_path):
    path = write_jsonl(tmp_path / "events_20231215.json.gz", fixture_rows(), gz=True)
    read = rows_of(adapter().read(source(path)))
    assert len(read) == 14 and all(isinstance(r, dict) for _, r in read)


def test_settings_it_does_not_know_are_a_config_error():
    with pytest.raises(ConfigError, match="group_type.*no settings"):
        Ga4Adapter(ColumnMapping(source_options=(("group_type", "x"),)))


def test_csv_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="JSON lines.*Parquet"):
        rows_of(adapter().read(SourceFile("events.csv", 0, 0, 0)))


def test_a_file_that_is_not_ga4_is_a_config_error(tmp_path):
    write_jsonl(tmp_path / "segment.jsonl", [{"type": "track", "event": "x", "userId": "u"}] * 4)
    with pytest.raises(ConfigError, match="segment.jsonl.*--format"):
        rows_of(adapter().read(source(tmp_path / "segment.jsonl")))


# --- mapping details --------------------------------------------------------------------------------------

ROW = {
    "event_timestamp": "1709294400123456", "event_name": "screen_view", "user_pseudo_id": "p.1",
    "user_id": "u-1", "event_bundle_sequence_id": "5", "batch_event_index": "2", "platform": "IOS",
    "event_params": [
        {"key": "firebase_screen", "value": {"string_value": "Settings"}},
        {"key": "ga_session_id", "value": {"int_value": "1709294000"}},
        {"key": "score", "value": {"double_value": 2.5}},
        {"key": "ratio", "value": {"float_value": "0.25"}},
        {"key": "skip", "value": {"string_value": "(not set)"}},
        {"key": "score", "value": {"int_value": "9"}},
        "junk", {"key": None, "value": {"string_value": "x"}}, {"key": "nothing", "value": {}},
    ],
    "user_properties": [{"key": "plan", "value": {"string_value": "pro", "set_timestamp_micros": "1"}},
                        {"key": "seats", "value": {"int_value": "3"}}, {"key": "gone", "value": {"string_value": ""}}],
    "device": {"category": "tablet", "operating_system": "iOS", "operating_system_version": "iOS 17.1",
               "mobile_brand_name": "Apple", "mobile_model_name": "iPad", "language": "en-us"},
    "app_info": {"id": "com.acme.notes", "version": "3.2.1"},
    "geo": {"city": "(not set)", "country": "France", "continent": "Europe", "region": "(not set)"},
    "collected_traffic_source": {"manual_source": "newsletter", "manual_medium": "email",
                                 "manual_campaign_name": "spring", "manual_campaign_id": "c-7",
                                 "manual_term": "(not provided)", "gclid": "g-1", "manual_source_platform": None},
}


def test_app_row_with_user_id_user_properties_and_traffic_source():
    (event,) = adapter().to_events(copy.deepcopy(ROW))
    validate(event, NOW)
    assert (event.event, event.distinct_id, event.link, event.source_event) == (
        "$screen", "u-1", ("u-1", "p.1"), "screen_view")
    assert event.timestamp_us == 1709294400123456
    assert event.properties == {
        "score": 2.5, "ratio": 0.25, "$screen_name": "Settings", "$device_type": "Tablet", "$os": "iOS",
        "$os_version": "17.1", "$browser_language": "en-us", "$device_manufacturer": "Apple", "$device_model": "iPad",
        "$app_version": "3.2.1", "$app_namespace": "com.acme.notes", "$geoip_disable": True,
        "$geoip_country_name": "France", "$geoip_continent_name": "Europe", "utm_source": "newsletter",
        "utm_medium": "email", "utm_campaign": "spring", "utm_id": "c-7", "gclid": "g-1",
        "$set": {"plan": "pro", "seats": 3},
        "$session_id": session_uuid7(1709294000000, "ga4:p.1:1709294000"),
    }


def test_ga_placeholders_are_no_campaign():
    row = {**copy.deepcopy(ROW), "collected_traffic_source": {
        "manual_source": "(direct)", "manual_medium": "(none)", "manual_campaign_name": "(referral)",
        "manual_content": "(organic)"}}
    props = adapter().to_events(row)[0].properties
    assert not any(key.startswith("utm_") for key in props)


def test_macintosh_is_named_as_posthog_names_it():
    row = {**copy.deepcopy(ROW), "device": {"category": "desktop", "operating_system": "Macintosh",
                                            "operating_system_version": "Macintosh Intel 10.15",
                                            "mobile_brand_name": "Apple", "mobile_model_name": "Safari"}}
    props = adapter().to_events(row)[0].properties
    assert (props["$os"], props["$os_version"]) == ("Mac OS X", "Intel 10.15")
    assert "$device_model" not in props  # on desktops GA4 fills it with the browser


@pytest.mark.parametrize("name", ["session_start", "first_visit"])
def test_session_start_and_first_visit_are_filtered(name):
    with pytest.raises(Filtered, match=name):
        adapter().to_events({**ROW, "event_name": name})


def test_drop_events_by_either_name_and_time_filters():
    with pytest.raises(Filtered):
        adapter(drop_events=("screen_view",)).to_events(dict(ROW))
    with pytest.raises(Filtered):
        adapter(drop_events=("$screen",)).to_events(dict(ROW))
    with pytest.raises(Filtered):
        adapter(until="2024-03-01").to_events(dict(ROW))


def test_int_timestamp_and_int64_numbers_work_too():
    row = {**ROW, "event_timestamp": 1709294400123456, "event_bundle_sequence_id": 5, "batch_event_index": 2}
    # the same content spelled with numbers instead of INT64 text: the same event, the same uuid
    assert adapter().to_events(row)[0].uuid == adapter().to_events(dict(ROW))[0].uuid
    assert adapter().to_events(row)[0].timestamp_us == 1709294400123456


@pytest.mark.parametrize(("fields", "reason"), [
    ({"user_id": None, "user_pseudo_id": None}, "missing_distinct_id"),
    ({"user_id": "", "user_pseudo_id": ["x"]}, "missing_distinct_id"),
    ({"event_timestamp": None}, "bad_timestamp"),
    ({"event_timestamp": "yesterday"}, "bad_timestamp"),
    ({"event_timestamp": {"us": 1}}, "bad_timestamp"),
    ({"event_name": None}, "missing_event_name"),
    ({"event_name": " "}, "missing_event_name"),
    ({"event_name": True}, "missing_event_name"),
])
def test_unusable_rows_are_rejected(fields, reason):
    with pytest.raises(Rejection) as caught:
        adapter().to_events({**ROW, **fields})
    assert caught.value.reason == reason


def test_junk_nested_values_are_ignored():
    row = {**ROW, "event_params": "not a list", "device": [1], "geo": "x", "items": {"a": 1},
           "user_properties": [None, 5], "collected_traffic_source": 7, "app_info": "3.2"}
    (event,) = adapter().to_events(row)
    assert event.properties == {"$geoip_disable": True}
    deep: dict = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(Rejection):
        adapter().to_events({**ROW, "event_dimensions": deep})


def test_param_values():
    assert param_value({"string_value": None, "int_value": "12", "float_value": None}) == 12
    assert param_value({"int_value": "not a number"}) == "not a number"
    assert param_value({"double_value": float("nan")}) is None
    assert param_value("bare") == "bare" and param_value([1]) is None
    assert params('[{"key": "a", "value": {"int_value": "1"}}]') == {"a": 1}
    assert params({"a": {"string_value": "x"}, "b": "(not set)"}) == {"a": "x"}


# --- property test ------------------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["", "(not set)", "1709294400123456", "page_view", "session_start", "12"]))
JSON_VALUES = json_values(SCALARS)
KEYS = st.sampled_from(["event_name", "event_timestamp", "user_id", "user_pseudo_id", "event_params",
                        "user_properties", "device", "geo", "app_info", "collected_traffic_source", "items",
                        "event_bundle_sequence_id", "batch_event_index"]) | st.text(max_size=8)
PARAM = st.fixed_dictionaries({"key": st.sampled_from(["ga_session_id", "page_location", "page_referrer",
                                                       "page_title", "firebase_screen"]) | st.text(max_size=5),
                               "value": st.dictionaries(st.sampled_from(["string_value", "int_value",
                                                                         "float_value", "double_value"]),
                                                        SCALARS, max_size=2)})


@st.composite
def mutated_rows(draw):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()] if FIXTURE.exists() else [ROW]
    row = copy.deepcopy(draw(st.sampled_from([*rows, ROW])))
    for _ in range(draw(st.integers(1, 4))):
        choice = draw(st.integers(0, 3))
        key = draw(st.sampled_from(sorted(row)) | KEYS)
        if choice == 0:
            row.pop(key, None)
        elif choice == 1:
            row[key] = draw(JSON_VALUES)
        elif choice == 2:
            row["event_params"] = draw(st.lists(PARAM, max_size=4))
        else:
            row["device"] = draw(st.dictionaries(st.sampled_from(["category", "operating_system",
                                                                  "operating_system_version", "web_info"]),
                                                 JSON_VALUES, max_size=3))
    return row


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.dictionaries(KEYS, JSON_VALUES, max_size=10), mutated_rows()))
def test_any_record_becomes_valid_events_or_a_rejection(row):
    assert_one_valid_event_or_a_rejection(adapter(), row, NOW)


# --- end to end ---------------------------------------------------------------------------------------------

def test_fixture_end_to_end_through_the_cli(tmp_path, make_server):
    rows = fixture_rows()
    shutil.copy(FIXTURE, tmp_path / "events_20231215.jsonl")
    (tmp_path / "events_20231215.jsonl").chmod(0o644)
    server = make_server()
    result = run_cli(["run", "events_20231215.jsonl", "--format", "ga4", "--host", server.url, "--rate", "0", "-q",
                      "--concurrency", "1", "--workdir", "job"], tmp_path,
                     cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "14 = 13 + 0 + 1" in result.stdout and "✓ balanced" in result.stdout
    assert "GA4 session_start" in result.stdout
    received = server.events
    assert len(received) == 13  # no user_id in the fixture: nothing to link, no $identify added
    assert {e["uuid"] for e in received} == {r[3] for r in ALL_ROWS if not isinstance(r, str)}
    assert len({e["uuid"] for e in received}) == 12  # the two identical rows share theirs
    assert all(e["properties"]["$import_source"] == "ga4" for e in received)
    stamps = [e["timestamp"] for e in received]
    assert stamps == sorted(stamps)
    assert len(rows) == 14
    assert orjson.loads(orjson.dumps(received[0]))["properties"]["$geoip_disable"] is True


# --- the bundled sample ----------------------------------------------------------------------------------------

SAMPLE = PROJECT_ROOT / "sample_data" / "ga4"
SAMPLE_FILES = ("events_20240308.jsonl.gz", "events_20240309.parquet")


def test_the_sample_is_byte_stable_and_small(tmp_path):
    subprocess.run([sys.executable, str(SAMPLE / "generate.py"), "--out", str(tmp_path)], check=True, timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*SAMPLE_FILES, "README.md"])
    for name in ("README.md", "events_20240308.jsonl.gz"):
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), name
    # a Parquet file's bytes also carry the writing pyarrow's version: compare its table
    assert pq.read_table(tmp_path / SAMPLE_FILES[1]).equals(pq.read_table(SAMPLE / SAMPLE_FILES[1]))
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 300_000


def test_the_sample_gives_what_its_readme_says():
    readme = (SAMPLE / "README.md").read_text()
    listed = re.findall(r"^\| `([^`]+)` \| (\d+) \| `(\w+)` \|", readme, re.MULTILINE)
    a = adapter()
    counts: Counter = Counter()
    bad, pairs, uuids = [], set(), Counter()
    for name in SAMPLE_FILES:
        for number, row in rows_of(a.read(source(SAMPLE / name))):
            counts["records"] += 1
            if isinstance(row, BadRow):
                bad.append((name, number, row.reason))
                continue
            try:
                (event,) = a.to_events(row)
            except Rejection as rejection:
                bad.append((name, number, rejection.reason))
                continue
            except Filtered as rule:
                counts[rule.rule] += 1
                continue
            validate(event, NOW)
            counts["good"] += 1
            uuids[event.uuid] += 1
            if event.link:
                pairs.add(event.link)
    assert sorted(bad) == sorted((name, int(row), reason) for name, row, reason in listed)
    assert (counts["records"], counts["good"], len(bad)) == (366, 299, 3)
    assert (counts["GA4 session_start"], counts["GA4 first_visit"]) == (36, 28)
    assert "| **366** | **299** | **64** | **3** |" in readme and "36 `session_start`, 28 `first_visit`" in readme
    assert len(pairs) == 7 and "7 in all." in readme
    assert sorted(uuids.values()).count(2) == 1  # the one exact duplicate row shares its uuid
