"""The Mixpanel adapter: raw export rows → PostHog events, local-time epochs, ID-merge events rebuilt.

Golden tests pin the exact events of representative rows; time tests pin pre-2023 local-time rows in
America/Los_Angeles in winter, in summer and at both DST changes; the CLI tests run the sample exports
through `posthog-migrate run` against the real capture server; a hypothesis property feeds junk and
mutated rows to check that nothing but events, Rejection or Filtered ever comes out.
"""

from __future__ import annotations

import copy
import gzip
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from posthog_migrate.adapters import adapter_class
from posthog_migrate.adapters.base import BadRow
from posthog_migrate.adapters.mixpanel import MixpanelAdapter
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import MAX_TIMESTAMP_US, Event, Rejection, format_timestamp, uuid_from_content, validate
from posthog_migrate.mapping import ColumnMapping, Filtered

from .adapter_helpers import as_sent, rows_of, source
from .conftest import PROJECT_ROOT, TEST_API_KEY, cli_environment, run_cli

SAMPLE = PROJECT_ROOT / "sample_data" / "mixpanel"
NOW = MAX_TIMESTAMP_US  # validate() never refuses a row for being in the future here: not this module's concern
LA = "America/Los_Angeles"


def adapter(**mapping) -> MixpanelAdapter:
    return MixpanelAdapter(ColumnMapping(**mapping))


def emitted(row: dict, **mapping) -> list[dict]:
    """Each event as sent, plus what the pipeline reads beside it."""
    return as_sent(adapter(**mapping).to_events(row))


def wall_clock(text: str) -> int:
    """How a pre-2023 project stores a local time: the wall clock, encoded as if it were UTC (seconds)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def page_view(**changes) -> dict:
    properties = {
        "time": 1709287200123, "distinct_id": "$device:18e0a1b2-77aa-4c3e-9f10-0a1b2c3d4e5f",
        "$browser": "Chrome", "$browser_version": 122, "$os": "Mac OS X", "$device": "Mac",
        "$current_url": "https://acmenotes.com/pricing?utm_source=newsletter",
        "current_domain": "acmenotes.com", "current_url_path": "/pricing", "current_page_title": "Pricing",
        "current_url_protocol": "https:", "$referrer": "https://news.example.com/post",
        "$referring_domain": "news.example.com", "utm_source": "newsletter",
        "$device_id": "18e0a1b2-77aa-4c3e-9f10-0a1b2c3d4e5f", "$insert_id": "5d958f87542c4b1e",
        "mp_lib": "web", "$lib_version": "2.49.0", "$city": "Lyon", "$region": "Auvergne-Rhone-Alpes",
        "mp_country_code": "FR", "$mp_api_endpoint": "api-js.mixpanel.com", "$mp_api_timestamp_ms": 1709287201999,
        "mp_processing_time_ms": 1709287205000, "$geo_source": "reverse_geocoding", "token": "old-project-token",
    }
    properties.update(changes)
    return {"event": "$mp_web_page_view", "properties": properties}


def ios_event(**changes) -> dict:
    properties = {
        "time": 1709290800, "distinct_id": "usr_42", "$user_id": "usr_42", "$device_id": "C0FFEE00-1111",
        "$os": "iOS", "$os_version": "17.3.1", "$app_version_string": "3.4.1", "$app_build_number": "341",
        "$manufacturer": "Apple", "$model": "iPhone15,2", "$carrier": "Verizon", "mp_lib": "swift",
        "$lib_version": "4.2.0", "$city": "Brooklyn", "$region": "New York", "mp_country_code": "US",
        "note_length": 512, "$insert_id": "ios-note-0001",
    }
    properties.update(changes)
    return {"event": "Note Created", "properties": properties}


# --- golden ------------------------------------------------------------------------------------------

LYON_PERSON = {"$browser": "Chrome", "$browser_version": 122, "$os": "Mac OS X", "$device": "Mac",
               "$geoip_city_name": "Lyon", "$geoip_subdivision_1_name": "Auvergne-Rhone-Alpes",
               "$geoip_country_code": "FR", "$geoip_country_name": "France"}
BROOKLYN_PERSON = {"$os": "iOS", "$os_version": "17.3.1", "$device_model": "iPhone15,2",
                   "$device_manufacturer": "Apple", "$geoip_city_name": "Brooklyn",
                   "$geoip_subdivision_1_name": "New York", "$geoip_country_code": "US",
                   "$geoip_country_name": "United States"}

def test_web_page_view():
    assert emitted(page_view()) == [{
        "uuid": "263cfef4-6f9e-5771-99e9-fc9c9c4871bf",
        "event": "$pageview",
        "distinct_id": "$device:18e0a1b2-77aa-4c3e-9f10-0a1b2c3d4e5f",
        "timestamp": "2024-03-01T10:00:00.123000Z",  # time in ms: the ms are kept
        "properties": {
            "$browser": "Chrome", "$browser_version": 122, "$os": "Mac OS X", "$device": "Mac",
            "$current_url": "https://acmenotes.com/pricing?utm_source=newsletter",
            "current_url_protocol": "https:", "$referrer": "https://news.example.com/post",
            "$referring_domain": "news.example.com", "utm_source": "newsletter",
            "$device_id": "18e0a1b2-77aa-4c3e-9f10-0a1b2c3d4e5f", "$insert_id": "5d958f87542c4b1e",
            "$lib_version": "2.49.0",
            "$pathname": "/pricing", "$host": "acmenotes.com", "title": "Pricing", "$lib": "web",
            "$geoip_disable": True, "$geoip_city_name": "Lyon", "$geoip_subdivision_1_name": "Auvergne-Rhone-Alpes",
            "$geoip_country_name": "France",  # from the ISO code, as PostHog's importer (and GeoIP) names it
            "$geoip_country_code": "FR",
            # The person's browser, OS, device and geo, as PostHog's SDKs set them; first values set once.
            "$set": LYON_PERSON,
            "$set_once": {f"$initial_{key[1:]}": value for key, value in LYON_PERSON.items()},
        },
        "source_event": "$mp_web_page_view", "link": None, "added": False,
    }]


def test_insert_id_uuid_is_the_same_as_posthogs_importer():
    namespace = uuid.UUID(bytes=b"posthog_mixpanel")
    assert str(namespace) == "706f7374-686f-675f-6d69-7870616e656c"
    [event] = adapter().to_events(page_view())
    assert event.uuid == str(uuid.uuid5(namespace, "5d958f87542c4b1e")) == "263cfef4-6f9e-5771-99e9-fc9c9c4871bf"


def test_mobile_event_with_user_and_device():
    assert emitted(ios_event()) == [{
        "uuid": str(uuid.uuid5(uuid.UUID(bytes=b"posthog_mixpanel"), "ios-note-0001")),
        "event": "Note Created",
        "distinct_id": "usr_42",
        "timestamp": "2024-03-01T11:00:00.000000Z",
        "properties": {
            "$user_id": "usr_42", "$device_id": "C0FFEE00-1111", "$os": "iOS", "$os_version": "17.3.1",
            "$lib_version": "4.2.0", "note_length": 512, "$insert_id": "ios-note-0001",
            "$app_version": "3.4.1", "$app_build": "341", "$device_manufacturer": "Apple",
            "$device_model": "iPhone15,2", "$network_carrier": "Verizon", "$lib": "swift",
            "$geoip_disable": True, "$geoip_city_name": "Brooklyn", "$geoip_subdivision_1_name": "New York",
            "$geoip_country_name": "United States", "$geoip_country_code": "US",
            "$set": BROOKLYN_PERSON,
            "$set_once": {f"$initial_{key[1:]}": value for key, value in BROOKLYN_PERSON.items()},
        },
        # Simplified ID merge: the device's anonymous events were sent as "$device:<$device_id>"; that is the id
        # the user's $identify must merge.
        "source_event": "Note Created", "link": ["usr_42", "$device:C0FFEE00-1111"], "added": False,
    }]


def test_mixpanel_identify_becomes_posthogs_identify():
    row = {"event": "$identify", "properties": {
        "time": wall_clock("2022-07-15T10:00:00"), "distinct_id": "ana@example.com",
        "$identified_id": "ana@example.com", "$anon_id": "a31fa472-61c7-40c0-b007-f066e9a3f289",
        "$insert_id": "mp-identify-0001", "mp_lib": "web", "$city": "San Francisco", "$region": "California",
        "mp_country_code": "US", "$browser": "Chrome"}}
    assert emitted(row, timezone=LA) == [{
        "uuid": "cb571062-d36c-56f2-b640-900e6dfe9fac",
        "event": "$identify",
        "distinct_id": "ana@example.com",
        "timestamp": "2022-07-15T17:00:00.000000Z",  # 10:00 PDT
        "properties": {"$anon_distinct_id": "a31fa472-61c7-40c0-b007-f066e9a3f289", "$geoip_disable": True,
                       "$geoip_city_name": "San Francisco", "$geoip_subdivision_1_name": "California",
                       "$geoip_country_name": "United States", "$geoip_country_code": "US"},
        # The merge it makes: the identity pass sends it, unless another user merged that id first.
        "source_event": "$identify", "link": ["ana@example.com", "a31fa472-61c7-40c0-b007-f066e9a3f289"],
        "added": False,
    }]


def test_create_alias_is_rebuilt():
    row = {"event": "$create_alias", "properties": {"time": 1667840400, "distinct_id": "ana@example.com",
                                                    "alias": "ana.work@example.com", "$insert_id": "alias-1",
                                                    "mp_lib": "web"}}
    assert emitted(row) == [{
        "uuid": str(uuid.uuid5(uuid.UUID(bytes=b"posthog_mixpanel"), "alias-1")),
        "event": "$create_alias", "distinct_id": "ana@example.com", "timestamp": "2022-11-07T17:00:00.000000Z",
        "properties": {"alias": "ana.work@example.com", "$geoip_disable": True},
        "source_event": "$create_alias", "link": ["ana@example.com", "ana.work@example.com"], "added": False,
    }]


def test_merge_becomes_create_alias_one_per_other_id():
    two = {"event": "$merge", "properties": {"time": 1667840460, "distinct_id": "ben@example.com",
                                             "$distinct_ids": ["benjamin@example.com", "ben@example.com"],
                                             "$insert_id": "merge-1"}}
    [event] = emitted(two)
    assert (event["event"], event["distinct_id"], event["properties"]["alias"]) == (
        "$create_alias", "ben@example.com", "benjamin@example.com")
    assert event["source_event"] == "$merge" and not event["added"]
    three = copy.deepcopy(two)
    three["properties"]["$distinct_ids"] = ["x1", "ben@example.com", "x2", "x1"]
    events = emitted(three)
    assert [(e["distinct_id"], e["properties"]["alias"], e["added"]) for e in events] == [
        ("ben@example.com", "x1", True), ("ben@example.com", "x2", False)]
    assert events[-1]["uuid"] == event["uuid"] and events[0]["uuid"] != event["uuid"]
    no_own = copy.deepcopy(two)
    del no_own["properties"]["distinct_id"]
    [event] = emitted(no_own)
    assert (event["distinct_id"], event["properties"]["alias"]) == ("benjamin@example.com", "ben@example.com")


def test_a_merge_makes_at_most_255_events_the_sort_key_has_room_for():
    def merge(others: int) -> dict:
        return {"event": "$merge", "properties": {"time": 1, "distinct_id": "a",
                                                  "$distinct_ids": ["a", *(f"id{n}" for n in range(others))]}}

    assert len(adapter().to_events(merge(255))) == 255
    with pytest.raises(Rejection) as caught:
        adapter().to_events(merge(256))
    assert caught.value.reason == "too_many_events"


@pytest.mark.parametrize("row", [
    {"event": "$merge", "properties": {"time": 1, "distinct_id": "a", "$distinct_ids": ["a"]}},
    {"event": "$merge", "properties": {"time": 1, "distinct_id": "a", "$distinct_ids": "a,b"}},
    {"event": "$identify", "properties": {"time": 1, "$identified_id": "a", "$anon_id": "a"}},
    {"event": "$identify", "properties": {"time": 1, "distinct_id": "a"}},
    {"event": "$create_alias", "properties": {"time": 1, "distinct_id": "a", "alias": ""}},
    {"event": "$create_alias", "properties": {"time": 1, "alias": "b"}},
])
def test_merge_events_without_two_ids_are_filtered(row):
    with pytest.raises(Filtered) as caught:
        adapter().to_events(row)
    assert caught.value.rule == f"mixpanel {row['event']} without two different ids"


# --- time ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("local", "utc"), [
    ("2022-01-15T10:00:00", "2022-01-15T18:00:00.000000Z"),  # winter: PST, UTC-8
    ("2022-07-15T10:00:00", "2022-07-15T17:00:00.000000Z"),  # summer: PDT, UTC-7
    ("2022-11-06T01:30:00", "2022-11-06T08:30:00.000000Z"),  # happens twice: the first (PDT)
    ("2022-03-13T02:30:00", "2022-03-13T10:30:00.000000Z"),  # never happens: the offset before the change
])
def test_pre_2023_times_are_the_local_wall_clock(local, utc):
    row = page_view(time=wall_clock(local))
    [event] = adapter(timezone=LA).to_events(row)
    assert format_timestamp(event.timestamp_us) == utc
    [as_utc] = adapter().to_events(row)  # without --source-timezone nothing moves
    assert format_timestamp(as_utc.timestamp_us) == local + ".000000Z"


def test_time_units_and_precision():
    def stamp(value, **mapping) -> str:
        return format_timestamp(adapter(**mapping).to_events(page_view(time=value))[0].timestamp_us)

    assert stamp(1709287200) == "2024-03-01T10:00:00.000000Z"
    assert stamp(1709287200.25) == "2024-03-01T10:00:00.250000Z"
    assert stamp("1709287200") == "2024-03-01T10:00:00.000000Z"
    assert stamp(1709287200123) == "2024-03-01T10:00:00.123000Z"
    assert stamp(1709287200123, timezone=LA) == "2024-03-01T18:00:00.123000Z"
    assert stamp("2024-03-01T10:00:00") == "2024-03-01T10:00:00.000000Z"
    assert stamp("2024-03-01T10:00:00", timezone=LA) == "2024-03-01T18:00:00.000000Z"
    assert stamp("2024-03-01T10:00:00+01:00", timezone=LA) == "2024-03-01T09:00:00.000000Z"


@pytest.mark.parametrize("value", [None, "", "soon", True, {"t": 1}, [1], 1e300, "9" * 5000, -1e20])
def test_unusable_time_is_rejected(value):
    with pytest.raises(Rejection) as caught:
        adapter(timezone=LA).to_events(page_view(time=value))
    assert caught.value.reason == "bad_timestamp"


def test_time_filters_and_dropped_events():
    with pytest.raises(Filtered):
        adapter(since="2024-03-02").to_events(page_view())
    with pytest.raises(Filtered):
        adapter(drop_events=("$pageview",)).to_events(page_view())
    with pytest.raises(Filtered):
        adapter(drop_events=("$mp_web_page_view",)).to_events(page_view())
    with pytest.raises(Filtered):
        adapter(drop_events=("$create_alias",)).to_events(
            {"event": "$merge", "properties": {"time": 1, "distinct_id": "a", "$distinct_ids": ["a", "b"]}})


# --- identity and uuid ---------------------------------------------------------------------------------

def test_distinct_id_falls_back_to_user_then_device():
    [event] = adapter().to_events(ios_event(distinct_id=None))
    assert event.distinct_id == "usr_42"
    [event] = adapter().to_events(ios_event(distinct_id="", **{"$user_id": None}))
    assert event.distinct_id == "C0FFEE00-1111" and event.link is None
    [event] = adapter().to_events(ios_event(distinct_id=12345.0))
    assert event.distinct_id == "12345"
    for bad in ({"distinct_id": None, "$user_id": None, "$device_id": None}, {"distinct_id": ["a"]}):
        with pytest.raises(Rejection) as caught:
            adapter().to_events(ios_event(**bad))
        assert caught.value.reason == "missing_distinct_id"


def test_without_insert_id_the_uuid_comes_from_the_content():
    row = ios_event(**{"$insert_id": None})
    [event] = adapter().to_events(row)
    assert event.uuid == uuid_from_content("mixpanel", "usr_42", event.timestamp_us, "Note Created", row)
    assert event.uuid == adapter().to_events(copy.deepcopy(row))[0].uuid
    assert event.uuid != adapter().to_events(ios_event(**{"$insert_id": None, "note_length": 513}))[0].uuid


def test_properties_must_be_an_object():
    for value in (None, [1], "nope", 5):
        with pytest.raises(Rejection) as caught:
            adapter().to_events({"event": "x", "properties": value})
        assert caught.value.reason == "properties_not_object"
    [event] = adapter().to_events({"event": "x", "properties": orjson.dumps(page_view()["properties"]).decode()})
    assert event.distinct_id.startswith("$device:")


# --- malformed rows, and the property ----------------------------------------------------------------

MALFORMED = [
    {}, {"event": None}, {"event": ""}, {"event": "x"}, {"event": "x", "properties": {}},
    {"event": {"n": 1}, "properties": {"time": 1, "distinct_id": "a"}},
    {"event": "x", "properties": {"time": 1, "distinct_id": "a" * 300}},
    {"event": "x" * 2_000_000, "properties": {"time": 1, "distinct_id": "a"}},
    {"event": "x", "properties": {"time": 1, "distinct_id": "a", "$current_url": "http://[::1"}},
    {"event": "x", "properties": {"time": 1, "distinct_id": "a", "$current_url": ["a"], "$city": {"c": 1},
                                  "mp_country_code": 7, "$set": "x", "$groups": {"a": None}}},
    {"event": "x", "properties": {"time": "0001-01-01T00:00:00", "distinct_id": "a"}},
    {"event": "x", "properties": {"time": -62135596800, "distinct_id": "a"}},
    {"event": "$merge", "properties": {"time": 1, "distinct_id": "a", "$distinct_ids": [None, {}, [], True, 3]}},
    {"event": "$identify", "properties": {"time": 1, "$identified_id": {"x": 1}, "$anon_id": ["y"]}},
]


@pytest.mark.parametrize("row", MALFORMED, ids=range(len(MALFORMED)))
@pytest.mark.parametrize("zone", ["UTC", LA])
def test_malformed_rows_end_as_rejections_or_valid_events(row, zone):
    try:
        for event in adapter(timezone=zone).to_events(row):
            validate(event, NOW)
    except (Rejection, Filtered):
        pass


json_values = st.recursive(
    # what orjson reads: integers of 64 bits (larger ones arrive as floats), finite floats
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["EMPTY", "1709287200", "2022-11-06T01:30:00", "$device:x"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=16,
)
PROPERTY_NAMES = sorted(set(page_view()["properties"]) | set(ios_event()["properties"])
                        | {"$identified_id", "$anon_id", "alias", "$distinct_ids", "$set", "$groups"})
EVENT_NAMES = ["$mp_web_page_view", "$identify", "$create_alias", "$merge", "Note Created", "", "$pageview"]
DELETE = object()


@st.composite
def mutated_rows(draw) -> dict:
    row = copy.deepcopy(draw(st.sampled_from([page_view(), ios_event()])))
    row["event"] = draw(st.sampled_from(EVENT_NAMES) | st.just(row["event"]))
    for _ in range(draw(st.integers(1, 6))):
        key = draw(st.sampled_from(PROPERTY_NAMES) | st.text(max_size=8))
        value = draw(json_values | st.just(DELETE))
        if value is DELETE:
            row["properties"].pop(key, None)
        else:
            row["properties"][key] = value
    if draw(st.integers(0, 9)) == 0:
        row["properties"] = draw(json_values)
    return row


random_rows = st.dictionaries(st.sampled_from(["event", "properties"]) | st.text(max_size=8), json_values,
                              max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(random_rows, mutated_rows()), st.sampled_from(["UTC", LA]))
def test_any_row_gives_valid_events_or_a_rejection_or_a_filter(row, zone):
    mixpanel = adapter(timezone=zone)
    try:
        events = mixpanel.to_events(row)
    except (Rejection, Filtered):
        return
    assert events and all(isinstance(e, Event) for e in events)
    assert not events[-1].added and all(e.added for e in events[:-1])
    assert len({e.uuid for e in events}) == len(events)
    for event in events:
        validate(event, NOW)
    assert [e.to_json() for e in mixpanel.to_events(copy.deepcopy(row))] == [e.to_json() for e in events]


# --- reading -------------------------------------------------------------------------------------------





def test_plain_and_gzip_exports_are_read_with_bad_lines_as_bad_rows(tmp_path):
    data = b"".join(orjson.dumps(page_view(time=n)) + b"\n" for n in range(1, 4)) + b'{"event": "cut\n'
    (tmp_path / "export.jsonl").write_bytes(data)
    (tmp_path / "export.jsonl.gz").write_bytes(gzip.compress(data))
    for name in ("export.jsonl", "export.jsonl.gz"):
        rows = rows_of(adapter().read(source(tmp_path / name)))
        assert [n for n, _ in rows] == [1, 2, 3, 4]
        assert isinstance(rows[3][1], BadRow) and rows[3][1].reason == "invalid_json"


def test_a_file_that_is_not_a_mixpanel_export_is_refused(tmp_path):
    posthog_rows = [{"event": "$pageview", "distinct_id": "a", "timestamp": "2024-03-01T00:00:00Z",
                     "properties": {"$current_url": "https://x"}} for _ in range(5)]
    (tmp_path / "posthog.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in posthog_rows))
    with pytest.raises(ConfigError, match=r"posthog\.jsonl: this is not a Mixpanel export.*--format"):
        rows_of(adapter().read(source(tmp_path / "posthog.jsonl")))


def test_the_registry_knows_the_format():
    assert adapter_class("mixpanel") is MixpanelAdapter
    assert MixpanelAdapter.name == MixpanelAdapter.source_tag == "mixpanel" and MixpanelAdapter.extensions == ()


# --- the samples, and the CLI --------------------------------------------------------------------------

SAMPLES = {  # file: (records, good, filtered, {record: reason})
    "export-2024-03.jsonl.gz": (732, 728, 0, {41: "invalid_json", 730: "properties_not_object",
                                              731: "bad_timestamp", 732: "missing_distinct_id"}),
    "legacy-2022-11.jsonl": (167, 166, 1, {}),
    "people-2024-03.json": (21, 20, 0, {8: "illegal_distinct_id"}),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_samples_map_as_their_readme_says(name):
    records, good, filtered, rejects = SAMPLES[name]
    mixpanel = adapter(timezone=LA if name.startswith("legacy") else "UTC")
    outcome = {"good": 0, "filtered": 0}
    rejected = {}
    rows = rows_of(mixpanel.read(source(SAMPLE / name)))
    for number, row in rows:
        if isinstance(row, BadRow):
            rejected[number] = row.reason
            continue
        try:
            for event in mixpanel.to_events(row):
                validate(event, NOW)
        except Rejection as rejection:
            rejected[number] = rejection.reason
            continue
        except Filtered:
            outcome["filtered"] += 1
            continue
        outcome["good"] += 1
    assert (len(rows), outcome, rejected) == (records, {"good": good, "filtered": filtered}, rejects)
    assert f"| `{name}` |" in (SAMPLE / "README.md").read_text()
    assert f"| {records} | {good} | {filtered} | {len(rejects)} |" in (SAMPLE / "README.md").read_text()


def test_the_samples_are_byte_stable(tmp_path):
    subprocess.run([sys.executable, str(SAMPLE / "generate.py"), "--out", str(tmp_path)], check=True, timeout=60)
    for name in (*SAMPLES, "README.md"):
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), name
    assert sum((SAMPLE / name).stat().st_size for name in SAMPLES) < 300_000


def test_the_legacy_sample_through_the_cli_in_its_timezone(tmp_path, capture_server):
    result = run_cli(["run", str(SAMPLE / "legacy-2022-11.jsonl"), "--format", "mixpanel", "--source-timezone", LA,
                      "--host", capture_server.url, "--rate", "0", "-q"], tmp_path,
                     cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert "167 = 166 + 0 + 1  ✓ balanced" in result.stdout
    events = capture_server.events
    assert len(events) == 166
    first = {line["properties"]["$insert_id"]: line["properties"]["time"]
             for line in map(orjson.loads, (SAMPLE / "legacy-2022-11.jsonl").read_bytes().splitlines())
             if isinstance(line.get("properties"), dict) and "$insert_id" in line["properties"]}
    by_insert_id = {e["properties"]["$insert_id"]: e for e in events if "$insert_id" in e["properties"]}
    for insert_id, wall in first.items():
        if insert_id not in by_insert_id:
            continue  # $identify / $create_alias are rebuilt without their bookkeeping
        local = datetime.fromtimestamp(wall, UTC).replace(tzinfo=None)
        sent = datetime.fromisoformat(by_insert_id[insert_id]["timestamp"])
        offset_hours = (local - sent.replace(tzinfo=None)).total_seconds() / 3600
        assert offset_hours in (-7, -8), (insert_id, local, sent)
    names = sorted({e["event"] for e in events})
    assert names == ["$create_alias", "$identify", "Page View"]
    assert all(e["properties"]["$geoip_disable"] is True for e in events)


def test_the_2024_sample_through_the_cli(tmp_path, capture_server):
    result = run_cli(["run", str(SAMPLE / "export-2024-03.jsonl.gz"), "--format", "mixpanel",
                      "--host", capture_server.url, "--rate", "0", "-q"], tmp_path,
                     cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "732 = 728 + 4 + 0  ✓ balanced" in result.stdout
    events = capture_server.events
    identifies = [e for e in events if e["event"] == "$identify"]
    # one per person seen with both $user_id and $device_id: 10 who sign up, 10 customers
    assert len(events) == 728 + len(identifies) and len(identifies) == 20
    assert {e["distinct_id"] for e in events if e["event"] == "Sign Up"} < {e["distinct_id"] for e in identifies}
    assert all(e["properties"]["$anon_distinct_id"] != e["distinct_id"] for e in identifies)
    assert not any(key in e["properties"] for e in events for key in ("$mp_api_endpoint", "token", "time"))
