"""The Amplitude adapter: export rows → PostHog events, and the export's containers (zip, .json.gz, JSON lines).

Golden tests pin the exact events of representative rows (the reference's example row verbatim among
them); container tests read real zips and folders written in tmp_path; the CLI test runs the sample
export's members as a folder through `posthog-migrate run` against the real capture server; a
hypothesis property feeds junk and mutated rows to check that nothing but events, Rejection or
Filtered ever comes out.
"""

from __future__ import annotations

import copy
import gzip
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from posthog_migrate.adapters import adapter_class
from posthog_migrate.adapters.amplitude import AmplitudeAdapter
from posthog_migrate.adapters.base import BadRow
from posthog_migrate.adapters.common import session_uuid7
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import MAX_TIMESTAMP_US, Event, Rejection, parse_timestamp, uuid_from_content, validate
from posthog_migrate.mapping import ColumnMapping, Filtered

from .adapter_helpers import as_sent, rows_of, source
from .conftest import PROJECT_ROOT, TEST_API_KEY, cli_environment, read_received, run_cli

SAMPLE = PROJECT_ROOT / "sample_data" / "amplitude"
# Far enough ahead that validate() never refuses a row for being in the future: that is its own concern.
NOW = MAX_TIMESTAMP_US

# The example row of ../shared/reference/source-formats.md ("Amplitude"), verbatim.
REFERENCE_ROW = """{"uuid":"d0b5b3a6-2e3b-11eb-9a80-0a62134d514d","$insert_id":"ajs-de09c0da","event_id":213979667,
 "event_type":"[Amplitude] Page Viewed","event_time":"2020-11-24 09:59:55.977000",
 "user_id":"u_123","device_id":"a1c9357b-b104-41c5-b4be-2b411489123d","session_id":1606211990000,
 "platform":"Web","os_name":"Chrome","os_version":"86","device_type":"Windows",
 "country":"Canada","region":"Newfoundland and Labrador","city":"St. John's","ip_address":"203.0.113.7",
 "event_properties":{"[Amplitude] Page URL":"https://ex.com/pricing","[Amplitude] Page Location":"https://ex.com/pricing?utm_source=news",
   "[Amplitude] Page Domain":"ex.com","[Amplitude] Page Path":"/pricing","[Amplitude] Page Title":"Pricing"},
 "user_properties":{"plan":"pro","initial_utm_source":"news","initial_referrer":"EMPTY"},
 "groups":{"company":["acme"]},"group_properties":{"company":{"acme":{"tier":"ent"}}}}"""

DEVICE = "a1c9357b-b104-41c5-b4be-2b411489123d"
GEO = {"$geoip_city_name": "St. John's", "$geoip_subdivision_1_name": "Newfoundland and Labrador",
       "$geoip_country_name": "Canada"}


def adapter(**mapping) -> AmplitudeAdapter:
    return AmplitudeAdapter(ColumnMapping(**mapping))


def emitted(row: dict, **mapping) -> list[dict]:
    """Each event as sent, plus what the pipeline reads beside it."""
    return as_sent(adapter(**mapping).to_events(row))


def ios_row(**changes) -> dict:
    row = {
        "uuid": "5F0E6A61-1B7C-4C55-9E7A-8C2D0B6F1A01", "$insert_id": "ios-0001", "event_id": 42,
        "event_type": "[Amplitude] Screen Viewed", "event_time": "2024-03-02 08:15:00.250000",
        "user_id": None, "device_id": "D3F4A3C2-9B1E-4C1A-8E51-3F6B1C0A9E77", "session_id": -1,
        "platform": "iOS", "os_name": "ios", "os_version": "17.3.1", "device_type": "Apple iPhone 14 Pro",
        "device_family": "Apple iPhone", "device_brand": "Apple", "device_manufacturer": "Apple",
        "device_model": "iPhone15,2", "carrier": "Verizon", "language": "English",
        "library": "amplitude-swift/1.4.1", "version_name": "3.4.1", "ip_address": None,
        "country": "Germany", "region": "Berlin", "city": "Berlin", "location_lat": 52.52, "location_lng": 13.4,
        "event_properties": {"[Amplitude] Screen Name": "NoteEditor", "draft": True},
        "user_properties": {}, "groups": {}, "group_properties": {},
    }
    row.update(changes)
    return row


def custom_row(**changes) -> dict:
    row = {
        "uuid": "0b7f3a52-7c1e-11ee-b962-0242ac120002", "event_type": "plan_upgraded",
        "event_time": "2024-03-03 17:45:12.000001", "user_id": "usr_9", "device_id": "dev-9", "session_id": "-1",
        "platform": "Web", "os_name": "Firefox", "os_version": "123", "device_type": "Linux",
        "library": "http/2.0", "ip_address": "198.51.100.9", "country": "United States",
        "event_properties": {"plan": "team", "seats": 12, "amount": 96.5},
        "user_properties": {"plan": "team", "email": "kai@example.com", "company": "EMPTY", "nickname": None,
                            "initial_utm_source": "newsletter", "initial_utm_medium": "EMPTY",
                            "initial_referring_domain": "news.example.com"},
        "groups": {"workspace": ["ws_orbit", "ws_lumen"], "company": "acme", "team": [], "empty": None},
        "group_properties": {"workspace": {"ws_orbit": {"plan": "team", "seats": 12, "region": "EMPTY"},
                                           "ws_lumen": {"plan": "pro"}},
                             "company": {"acme": {}}, "team": {"t1": {"x": 1}}},
    }
    row.update(changes)
    return row


# --- golden ------------------------------------------------------------------------------------------

def test_the_reference_example_row():
    assert emitted(orjson.loads(REFERENCE_ROW)) == [
        {
            "uuid": "5d9a4622-3670-555d-b5af-df2c9bbaa9f9",
            "event": "$groupidentify",
            "distinct_id": "u_123",
            "timestamp": "2020-11-24T09:59:55.977000Z",
            "properties": {"$group_type": "company", "$group_key": "acme", "$group_set": {"tier": "ent"},
                           "$geoip_disable": True},
            "source_event": "(amplitude group_properties)", "link": ["u_123", DEVICE], "added": True,
        },
        {
            "uuid": "d0b5b3a6-2e3b-11eb-9a80-0a62134d514d",
            "event": "$pageview",
            "distinct_id": "u_123",
            "timestamp": "2020-11-24T09:59:55.977000Z",
            "properties": {
                "$current_url": "https://ex.com/pricing?utm_source=news",  # Page Location: keeps the UTMs
                "$host": "ex.com",
                "$pathname": "/pricing",
                "title": "Pricing",
                "$browser": "Chrome",
                "$browser_version": 86,  # a number, as posthog-js sends it
                "$os": "Windows",
                "$device_type": "Desktop",
                "$insert_id": "ajs-de09c0da",
                "$ip": "203.0.113.7",
                # The row's own geo, not a lookup of the IP today (addresses move): so PostHog must not locate it.
                "$geoip_disable": True,
                "$geoip_city_name": "St. John's",
                "$geoip_subdivision_1_name": "Newfoundland and Labrador",
                "$geoip_country_name": "Canada",
                "$session_id": "0175f9b1-f1f0-7ada-a8c6-7c9df91ab41c",
                "$set": {"plan": "pro", **GEO},  # the person's geo too, as PostHog's GeoIP would set it
                "$set_once": {"$initial_utm_source": "news", **{f"$initial_{k[1:]}": v for k, v in GEO.items()}},
                "$groups": {"company": "acme"},
            },
            "source_event": "[Amplitude] Page Viewed", "link": ["u_123", DEVICE], "added": False,
        },
    ]


def test_session_id_is_a_uuid7_on_the_session_start():
    [*_, event] = adapter().to_events(orjson.loads(REFERENCE_ROW))
    session = event.properties["$session_id"]
    assert session == session_uuid7(1606211990000, f"amplitude:{DEVICE}:1606211990000")
    assert session[14] == "7" and int(session.replace("-", "")[:12], 16) == 1606211990000


BERLIN = {"$geoip_city_name": "Berlin", "$geoip_subdivision_1_name": "Berlin", "$geoip_country_name": "Germany",
          "$geoip_latitude": 52.52, "$geoip_longitude": 13.4}


def test_mobile_screen_view_without_ip_or_session():
    assert emitted(ios_row()) == [{
        "uuid": "5f0e6a61-1b7c-4c55-9e7a-8c2d0b6f1a01",  # normalised to lower case
        "event": "$screen",
        "distinct_id": "D3F4A3C2-9B1E-4C1A-8E51-3F6B1C0A9E77",  # no user_id: the device
        "timestamp": "2024-03-02T08:15:00.250000Z",
        "properties": {
            "draft": True,
            "$screen_name": "NoteEditor",
            "$os": "ios",
            "$os_version": "17.3.1",
            "$device_model": "iPhone15,2",
            "$device_manufacturer": "Apple",
            "$app_version": "3.4.1",
            "$network_carrier": "Verizon",
            "$lib": "amplitude-swift",
            "$lib_version": "1.4.1",
            "$insert_id": "ios-0001",
            "$geoip_disable": True,  # no IP: Amplitude's own geo, and PostHog must not locate the sender
            "$geoip_city_name": "Berlin",
            "$geoip_subdivision_1_name": "Berlin",
            "$geoip_country_name": "Germany",
            "$geoip_latitude": 52.52,
            "$geoip_longitude": 13.4,
            "$set": BERLIN,
            "$set_once": {f"$initial_{key[1:]}": value for key, value in BERLIN.items()},
        },
        "source_event": "[Amplitude] Screen Viewed", "link": None, "added": False,
    }]


def test_custom_event_with_groups_and_person_properties():
    own_uuid = "0b7f3a52-7c1e-11ee-b962-0242ac120002"
    common = {"distinct_id": "usr_9", "timestamp": "2024-03-03T17:45:12.000001Z", "link": ["usr_9", "dev-9"]}
    assert emitted(custom_row()) == [
        {"uuid": "0c4c358e-e10c-568e-91ed-d1654b1d27ef", "event": "$groupidentify", **common,
         "properties": {"$group_type": "workspace", "$group_key": "ws_orbit",
                        "$group_set": {"plan": "team", "seats": 12}, "$geoip_disable": True},
         "source_event": "(amplitude group_properties)", "added": True},
        {"uuid": "682b2145-eae0-56b1-be41-b6fb6fdad36a", "event": "$groupidentify", **common,
         "properties": {"$group_type": "workspace", "$group_key": "ws_lumen",
                        "$group_set": {"plan": "pro"}, "$geoip_disable": True},
         "source_event": "(amplitude group_properties)", "added": True},
        {"uuid": own_uuid, "event": "plan_upgraded", **common,
         "properties": {
             "plan": "team", "seats": 12, "amount": 96.5,
             "$browser": "Firefox", "$browser_version": 123, "$os": "Linux", "$device_type": "Desktop",
             "$lib": "http", "$lib_version": "2.0",
             "$ip": "198.51.100.9", "$geoip_disable": True, "$geoip_country_name": "United States",
             "$set": {"plan": "team", "email": "kai@example.com",  # EMPTY and null left out
                      "$geoip_country_name": "United States"},
             "$set_once": {"$initial_utm_source": "newsletter",
                           "$initial_referring_domain": "news.example.com",
                           "$initial_geoip_country_name": "United States"},
             "$groups": {"company": "acme", "workspace": "ws_orbit"},  # the first key of each type
         },
         "source_event": "plan_upgraded", "added": False},
    ]


def test_group_event_uuids_derive_from_the_row_uuid_type_and_key():
    events = adapter().to_events(custom_row())
    assert len({e.uuid for e in events}) == 3
    again = adapter().to_events(custom_row(event_properties={"plan": "other"}))
    assert [e.uuid for e in again[:2]] == [e.uuid for e in events[:2]]
    moved = adapter().to_events(custom_row(uuid="0b7f3a52-7c1e-11ee-b962-0242ac120003"))
    assert not {e.uuid for e in moved} & {e.uuid for e in events}


def test_element_clicked_becomes_autocapture_with_page_properties():
    row = custom_row(event_type="[Amplitude] Element Clicked", groups={}, group_properties={}, user_properties={},
                     event_properties={"[Amplitude] Page URL": "https://app.ex.com/notes",
                                       "[Amplitude] Page Title": "All notes", "[Amplitude] Element Text": "New"})
    [event] = emitted(row)
    assert event["event"] == "$autocapture" and event["source_event"] == "[Amplitude] Element Clicked"
    assert event["properties"] == {
        "[Amplitude] Element Text": "New", "$current_url": "https://app.ex.com/notes", "$host": "app.ex.com",
        "$pathname": "/notes", "title": "All notes", "$event_type": "click", "$browser": "Firefox",
        "$browser_version": 123, "$os": "Linux", "$device_type": "Desktop", "$lib": "http", "$lib_version": "2.0",
        "$ip": "198.51.100.9", "$geoip_disable": True, "$geoip_country_name": "United States",
        "$set": {"$geoip_country_name": "United States"},
        "$set_once": {"$initial_geoip_country_name": "United States"},
    }
    [changed] = emitted({**row, "event_type": "[Amplitude] Element Changed"})
    assert changed["event"] == "$autocapture" and changed["properties"]["$event_type"] == "change"


@pytest.mark.parametrize("name", ["session_start", "session_end"])
def test_session_markers_are_filtered_not_rejected(name):
    with pytest.raises(Filtered) as caught:
        adapter().to_events(ios_row(event_type=name, user_id=None, device_id=None))
    assert caught.value.rule == "amplitude session_start/session_end"


def test_amplitude_groupidentify_row_becomes_its_group_events():
    row = custom_row(event_type="$groupidentify")
    events = emitted(row)
    assert [(e["event"], e["added"], e["properties"]["$group_key"]) for e in events] == [
        ("$groupidentify", True, "ws_orbit"), ("$groupidentify", False, "ws_lumen")]
    assert events[-1]["uuid"] == row["uuid"] and events[-1]["source_event"] == "$groupidentify"
    with pytest.raises(Filtered):
        adapter().to_events(custom_row(event_type="$groupidentify", group_properties={}))


def test_a_row_makes_at_most_255_events_the_sort_key_has_room_for():
    def row(count: int) -> dict:
        keys = [f"k{n}" for n in range(count)]
        return custom_row(groups={"many": keys}, group_properties={"many": {k: {"n": 1} for k in keys}})

    assert len(adapter().to_events(row(254))) == 255
    with pytest.raises(Rejection) as caught:
        adapter().to_events(row(255))
    assert caught.value.reason == "too_many_events"


# --- identity, uuid, time --------------------------------------------------------------------------

def test_distinct_id_is_the_user_else_the_device_and_link_needs_both():
    [event] = adapter().to_events(ios_row(user_id="EMPTY"))
    assert event.distinct_id == "D3F4A3C2-9B1E-4C1A-8E51-3F6B1C0A9E77" and event.link is None
    [event] = adapter().to_events(ios_row(user_id=12345, device_id=None))
    assert event.distinct_id == "12345" and event.link is None
    [event] = adapter().to_events(ios_row(user_id="same", device_id="same"))
    assert event.link is None
    with pytest.raises(Rejection) as caught:
        adapter().to_events(ios_row(user_id=None, device_id="  "))
    assert caught.value.reason == "missing_distinct_id"
    with pytest.raises(Rejection) as caught:
        adapter().to_events(ios_row(user_id={"id": 1}))
    assert caught.value.reason == "missing_distinct_id"


def test_uuid_falls_back_to_insert_id_then_event_id_then_content():
    row = ios_row(uuid=None)
    by_insert = adapter().to_events(row)[0].uuid
    assert by_insert == adapter().to_events(dict(row))[0].uuid
    assert by_insert != adapter().to_events(ios_row(uuid=None, device_id="other"))[0].uuid  # per device
    by_event_id = adapter().to_events(ios_row(uuid=None, **{"$insert_id": None}))[0].uuid
    assert by_event_id not in (by_insert, None)
    content_row = ios_row(uuid=None, event_id=None, **{"$insert_id": None})
    by_content = adapter().to_events(content_row)[0].uuid
    assert by_content == uuid_from_content("amplitude", content_row["device_id"],
                                           parse_timestamp("2024-03-02T08:15:00.25Z"), content_row["event_type"],
                                           content_row)
    assert len({by_insert, by_event_id, by_content}) == 3
    with pytest.raises(Rejection) as caught:
        adapter().to_events(ios_row(uuid="not-a-uuid"))
    assert caught.value.reason == "bad_uuid"


def test_event_time_is_utc_whatever_the_source_timezone():
    [utc] = adapter().to_events(ios_row())
    [berlin] = adapter(timezone="Europe/Berlin").to_events(ios_row())
    assert utc.timestamp_us == berlin.timestamp_us == parse_timestamp("2024-03-02T08:15:00.25Z")


@pytest.mark.parametrize("value", [None, "", "yesterday", "2024-02-30 10:00:00", {"t": 1}, True, 10**40])
def test_unusable_event_time_is_rejected(value):
    with pytest.raises(Rejection) as caught:
        adapter().to_events(ios_row(event_time=value))
    assert caught.value.reason == "bad_timestamp"


def test_drop_events_accepts_the_source_or_the_posthog_name_and_time_filters_apply():
    with pytest.raises(Filtered):
        adapter(drop_events=("$screen",)).to_events(ios_row())
    with pytest.raises(Filtered):
        adapter(drop_events=("[Amplitude] Screen Viewed",)).to_events(ios_row())
    with pytest.raises(Filtered):
        adapter(since="2024-03-03").to_events(ios_row())
    with pytest.raises(Filtered):
        adapter(until="2024-03-02T08:15:00.25Z").to_events(ios_row())
    assert adapter(since="2024-03-02", until="2024-03-03").to_events(ios_row())


def test_reserved_property_names_of_the_wrong_shape_are_dropped():
    row = ios_row(event_properties={"$set": "x", "$set_once": [1], "$groups": {"a": 1}, "$group_set": 2,
                                    "ok": 1}, user_properties={"plan": "pro"}, country=None, region=None, city=None,
                  location_lat=None, location_lng=None)
    [event] = adapter().to_events(row)
    validate(event, NOW)
    assert event.properties["ok"] == 1 and event.properties["$set"] == {"plan": "pro"}
    assert not {"$set_once", "$groups", "$group_set"} & event.properties.keys()


# --- malformed rows ----------------------------------------------------------------------------------

MALFORMED = [
    {},
    {"event_type": None},
    {"event_type": "x"},
    {"event_type": "x", "user_id": "u"},
    {"event_type": ["x"], "user_id": "u", "event_time": "2024-01-01 00:00:00"},
    {"event_type": "x", "user_id": "u", "event_time": "2024-01-01 00:00:00", "event_properties": [1, 2]},
    {"event_type": "x", "user_id": "u", "event_time": "2024-01-01 00:00:00", "event_properties": "{not json"},
    {"event_type": "x", "user_id": "u", "event_time": "2024-01-01 00:00:00", "user_properties": 7},
    {"event_type": "x", "user_id": "u", "event_time": "2024-01-01 00:00:00", "groups": ["a"]},
    {"event_type": "x", "user_id": "u", "event_time": "2024-01-01 00:00:00",
     "groups": {"": ["k"], "t": [None, {"a": 1}, True, [], ""], "u": 3.0, "v": {"nested": "junk"}},
     "group_properties": {"t": [1], "u": {"3": "not-an-object"}, "v": None}},
    {"event_type": "x", "user_id": "u", "event_time": "2024-01-01 00:00:00", "session_id": "abc",
     "platform": ["Web"], "os_name": {"a": 1}, "library": {"n": 1}, "ip_address": 12, "city": [],
     "location_lat": "north", "event_properties": {"[Amplitude] Page Location": {"u": 1}}},
    {"event_type": "x", "user_id": "u", "event_time": "2024-01-01 00:00:00", "session_id": 1e300},
    {"event_type": "x", "user_id": "u", "event_time": "2024-01-01 00:00:00", "uuid": 12},
    {"event_type": "x", "user_id": "u" * 100_000, "event_time": "2024-01-01 00:00:00"},
    {"event_type": "x" * 2_000_000, "user_id": "u", "event_time": "2024-01-01 00:00:00"},
    {"event_type": "x", "user_id": "u", "event_time": "0001-01-01T00:00:00+05:00"},
    {"event_type": "x", "user_id": "u", "event_time": "9999-12-31T23:59:59-05:00"},
    {"event_type": "x", "user_id": "u", "event_time": "2024-01-01 00:00:00",
     "event_properties": {"[Amplitude] Page URL": "http://[::1"}},
    {"event_type": "x", "user_id": "u", "event_time": "2024-01-01 00:00:00",
     "event_properties": {"deep": [[[[[[{"a": [None]}]]]]]]}},
]


@pytest.mark.parametrize("row", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_rows_end_as_rejections_or_valid_events(row):
    """What the pipeline does with a row (to_events, then validate) never raises anything else."""
    try:
        for event in adapter().to_events(row):
            validate(event, NOW)
    except (Rejection, Filtered):
        pass


# --- property: junk in, events / Rejection / Filtered out ------------------------------------------

VALID_ROW = orjson.loads(REFERENCE_ROW)
FIELDS = sorted(set(VALID_ROW) | set(ios_row()) | {"client_event_time", "amplitude_id", "data"})
NESTED = ("event_properties", "user_properties", "groups", "group_properties")
NAMES = ["[Amplitude] Page Viewed", "[Amplitude] Screen Viewed", "[Amplitude] Element Clicked", "session_start",
         "$groupidentify", "$identify", "note_created", ""]
json_values = st.recursive(
    # what orjson reads: integers of 64 bits (larger ones arrive as floats), finite floats
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["EMPTY", "-1", "2024-03-01 10:00:00.000000", "1606211990000"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=16,
)
DELETE = object()


@st.composite
def mutated_rows(draw) -> dict:
    row = copy.deepcopy(VALID_ROW)
    for _ in range(draw(st.integers(1, 6))):
        value = draw(st.one_of(json_values, st.just(DELETE), st.sampled_from(NAMES)))
        if draw(st.booleans()):
            field = draw(st.sampled_from(FIELDS))
            if value is DELETE:
                row.pop(field, None)
            else:
                row[field] = value
        else:
            outer = draw(st.sampled_from(NESTED))
            target = row.get(outer)
            if isinstance(target, dict):
                key = draw(st.sampled_from(sorted(target) or ["k"]) | st.text(max_size=8)
                           | st.sampled_from(["$set", "$groups", "[Amplitude] Page Location", "initial_x"]))
                if value is DELETE:
                    target.pop(key, None)
                else:
                    target[key] = value
    return row


random_rows = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=12)


def check_outcome(row: dict) -> None:
    try:
        events = adapter().to_events(row)
    except (Rejection, Filtered):
        return
    assert events and all(isinstance(e, Event) for e in events)
    assert not events[-1].added and all(e.added for e in events[:-1])
    assert len({e.uuid for e in events}) == len(events)
    for event in events:
        validate(event, NOW)
    assert [e.to_json() for e in adapter().to_events(copy.deepcopy(row))] == [e.to_json() for e in events]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(random_rows, mutated_rows()))
def test_any_row_gives_valid_events_or_a_rejection_or_a_filter(row):
    check_outcome(row)


# --- containers ----------------------------------------------------------------------------------------





def amplitude_line(n: int, event_type: str = "note_created") -> bytes:
    return orjson.dumps({"uuid": f"00000000-0000-1000-8000-{n:012d}", "event_type": event_type,
                         "event_time": f"2024-03-01 10:00:{n % 60:02d}.000000", "device_id": f"d{n}",
                         "user_id": None, "session_id": -1})


def write_export_zip(path: Path) -> Path:
    early = b"".join(amplitude_line(n) + b"\n" for n in (1, 2, 3))
    late = amplitude_line(4) + b"\n\n" + b'{"event_type": "truncated", "dev\n' + amplitude_line(5) + b"\n"
    with zipfile.ZipFile(path, "w") as archive:
        # written out of order: the reader sorts by name
        archive.writestr("187520/187520_2024-03-01_11#0.json.gz", gzip.compress(late, mtime=0))
        archive.writestr("187520/README.txt", b"not an export member")
        archive.writestr("187520/", b"")
        archive.writestr("__MACOSX/187520/._187520_2024-03-01_10#0.json.gz", b"\x00\x05\x16\x07 resource fork")
        archive.writestr("187520/187520_2024-03-01_10#0.json.gz", gzip.compress(early, mtime=0))
    return path


def test_zip_members_are_read_in_name_order_with_continuous_row_numbers(tmp_path):
    rows = rows_of(adapter().read(source(write_export_zip(tmp_path / "export.zip"))))
    assert [number for number, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert [row["device_id"] for _, row in rows if isinstance(row, dict)] == ["d1", "d2", "d3", "d4", "d5"]
    bad = rows[4][1]
    assert isinstance(bad, BadRow) and bad.reason == "invalid_json"
    assert "187520/187520_2024-03-01_11#0.json.gz, line 3" in bad.detail


def test_zip_is_recognised_by_its_bytes_and_read_through_pyarrow_for_uris(tmp_path):
    renamed = write_export_zip(tmp_path / "export.download")
    by_bytes = rows_of(adapter().read(source(renamed)))
    by_uri = rows_of(adapter().read(source(f"file://{renamed}")))
    assert len(by_bytes) == 6 and [r for _, r in by_uri if isinstance(r, dict)] == [
        r for _, r in by_bytes if isinstance(r, dict)]


def test_loose_json_gz_and_plain_json_lines_are_read(tmp_path):
    data = b"".join(amplitude_line(n) + b"\n" for n in range(1, 5))
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(data))
    (tmp_path / "b.json").write_bytes(data)
    for name in ("a.json.gz", "b.json"):
        rows = rows_of(adapter().read(source(tmp_path / name)))
        assert [n for n, _ in rows] == [1, 2, 3, 4] and all(isinstance(r, dict) for _, r in rows)


def test_files_that_are_not_amplitude_exports_are_refused_naming_the_file(tmp_path):
    mixpanel = b"".join(orjson.dumps({"event": "x", "properties": {"time": n}}) + b"\n" for n in range(5))
    (tmp_path / "mixpanel.json").write_bytes(mixpanel)
    with pytest.raises(ConfigError, match=r"mixpanel\.json: this is not an Amplitude export.*--format"):
        rows_of(adapter().read(source(tmp_path / "mixpanel.json")))
    with zipfile.ZipFile(tmp_path / "csvs.zip", "w") as archive:
        archive.writestr("events.csv", "a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"csvs\.zip: the zip holds no \.json\.gz or \.json files"):
        rows_of(adapter().read(source(tmp_path / "csvs.zip")))
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 then nothing useful")
    with pytest.raises(ConfigError, match=r"broken\.zip: not a readable zip archive"):
        rows_of(adapter().read(source(tmp_path / "broken.zip")))


def test_a_corrupt_member_names_the_zip_and_the_member(tmp_path):
    member = gzip.compress(b"".join(amplitude_line(n) + b"\n" for n in range(1, 200)))
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        archive.writestr("1/1_2024-03-01_1#0.json.gz", member[: len(member) // 2])
    with pytest.raises(ConfigError, match=r"export\.zip: member 1/1_2024-03-01_1#0\.json\.gz: the gzip data"):
        rows_of(adapter().read(source(tmp_path / "export.zip")))


def test_the_registry_knows_the_format():
    assert adapter_class("amplitude") is AmplitudeAdapter
    assert AmplitudeAdapter.name == AmplitudeAdapter.source_tag == "amplitude" and AmplitudeAdapter.extensions == ()


# --- the sample export, and the CLI ----------------------------------------------------------------

SAMPLE_ROWS, SAMPLE_GOOD, SAMPLE_FILTERED = 1333, 1003, 326
SAMPLE_REJECTS = {141: "invalid_json", 308: "missing_distinct_id", 437: "bad_timestamp", 1258: "bad_uuid"}
SAMPLE_GROUP_EVENTS, SAMPLE_LINKED_PAIRS = 643, 24


def test_the_sample_export_maps_as_its_readme_says():
    amplitude = adapter()
    counts = {"events": 0, "added": 0, "filtered": 0}
    rejected, pairs = {}, set()
    rows = rows_of(amplitude.read(source(SAMPLE / "export.zip")))
    for number, row in rows:
        if isinstance(row, BadRow):
            rejected[number] = row.reason
            continue
        try:
            events = amplitude.to_events(row)
            for event in events:
                validate(event, NOW)
        except Rejection as rejection:
            rejected[number] = rejection.reason
            continue
        except Filtered:
            counts["filtered"] += 1
            continue
        counts["events"] += 1
        counts["added"] += len(events) - 1
        pairs.update(e.link for e in events if e.link)
    assert len(rows) == SAMPLE_ROWS and rejected == SAMPLE_REJECTS
    assert counts == {"events": SAMPLE_GOOD, "added": SAMPLE_GROUP_EVENTS, "filtered": SAMPLE_FILTERED}
    assert len(pairs) == SAMPLE_LINKED_PAIRS
    readme = (SAMPLE / "README.md").read_text()
    assert f"| records | {SAMPLE_ROWS} |" in readme
    assert f"timed by its `client_event_time`) | {SAMPLE_GOOD} |" in readme
    assert all(f"| {number} |" in readme and f"`{reason}`" in readme for number, reason in SAMPLE_REJECTS.items())


def test_the_sample_is_byte_stable(tmp_path):
    subprocess.run([sys.executable, str(SAMPLE / "generate.py"), "--out", str(tmp_path)], check=True, timeout=60)
    for name in ("export.zip", "README.md"):
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), name
    assert (SAMPLE / "export.zip").stat().st_size < 300_000


def test_a_folder_of_export_members_through_the_cli(tmp_path, make_server):
    """The S3-style layout: each .json.gz is its own input; rows, rejects and identities add up."""
    folder = tmp_path / "amplitude-export" / "187520"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(SAMPLE / "export.zip") as archive:
        for info in archive.infolist():
            (folder / Path(info.filename).name).write_bytes(archive.read(info))
    server = make_server(out_path=tmp_path / "received.jsonl")
    result = run_cli(["run", str(tmp_path / "amplitude-export"), "--format", "amplitude", "--host", server.url,
                      "--rate", "0", "-q", "--workdir", "job"], tmp_path, cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 3, result.stdout + result.stderr  # done, some rows rejected
    assert f"{SAMPLE_ROWS:,} = {SAMPLE_GOOD:,} + 4 + {SAMPLE_FILTERED}  ✓ balanced" in result.stdout
    received = read_received(tmp_path / "received.jsonl")
    names = {}
    for event in received:
        names[event["event"]] = names.get(event["event"], 0) + 1
    assert len(received) == SAMPLE_GOOD + SAMPLE_GROUP_EVENTS + SAMPLE_LINKED_PAIRS
    assert names["$groupidentify"] == SAMPLE_GROUP_EVENTS and names["$identify"] == SAMPLE_LINKED_PAIRS
    assert "session_start" not in names and "[Amplitude] Page Viewed" not in names and names["$pageview"] > 0
    assert len({e["uuid"] for e in received}) == len(received)
    by_person: dict[str, list[str]] = {}
    for event in received:
        by_person.setdefault(event["distinct_id"], []).append(event["timestamp"])
    assert all(stamps == sorted(stamps) for stamps in by_person.values())  # each person's events in time order
    assert all(e["properties"]["$import_source"] == "amplitude" for e in received)
    # Every row has Amplitude's geo: sent as it is, never looked up from the IP today.
    assert all(e["properties"]["$geoip_disable"] is True for e in received)
    assert all(e["properties"]["$set"]["$geoip_country_name"] for e in received if e["event"] == "$pageview")
    rejects = [orjson.loads(line) for line in (tmp_path / "job" / "rejects.jsonl").read_bytes().splitlines()]
    assert sorted((Path(r["file"]).name, r["row"], r["reason"]) for r in rejects) == [
        ("187520_2024-03-01_15#0.json.gz", 6, "invalid_json"),
        ("187520_2024-03-01_22#0.json.gz", 21, "missing_distinct_id"),
        ("187520_2024-03-02_11#0.json.gz", 9, "bad_timestamp"),
        ("187520_2024-03-03_8#0.json.gz", 13, "bad_uuid"),
    ]


def test_the_sample_zip_through_the_cli(tmp_path, capture_server):
    result = run_cli(["run", str(SAMPLE / "export.zip"), "--format", "amplitude", "--host", capture_server.url,
                      "--rate", "0", "-q"], tmp_path, cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "✓ balanced" in result.stdout
    assert len(capture_server.events) == SAMPLE_GOOD + SAMPLE_GROUP_EVENTS + SAMPLE_LINKED_PAIRS


def test_a_bom_at_the_start_of_a_member_is_not_part_of_row_one(tmp_path):
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        archive.writestr("1/1_2024-03-01_1#0.json", b"\xef\xbb\xbf" + amplitude_line(1) + b"\n")
    [(number, row)] = rows_of(adapter().read(source(tmp_path / "export.zip")))
    assert number == 1 and isinstance(row, dict) and row["device_id"] == "d1"
