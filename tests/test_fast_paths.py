"""The fast paths of prepare's mapping answer as the general rules do (issue 15: one implementation, fast for the
common row). The main guard is every adapter test passing unchanged and benchmarks/payload_digest.py's
byte-identity over whole files; these pin the pieces and a few rows whose every value takes the slow way.
"""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from posthog_migrate.adapters.amplitude import FALLBACK_TIME_NOTE, AmplitudeAdapter
from posthog_migrate.adapters.common import drop_misshapen_reserved, session_uuid7
from posthog_migrate.event import (
    MAX_TIMESTAMP_US,
    Event,
    Rejection,
    format_timestamp,
    json_default,
    parse_timestamp,
    sent_timestamp_text,
)
from posthog_migrate.mapping import ColumnMapping

from tests.adapter_helpers import as_sent

# Rows where every field the mapper fast-paths has an unusual value: padded text, empty markers, numbers as ids,
# reserved properties of the wrong shape, an offset time, geo without an IP. Their events were pinned from the
# commit before the fast paths (7e3cb57).
TRICKY_ROWS = [
    # The row's own $set and $set_once (objects) come first, the user properties over them; "initial_" → $set_once.
    {"event_type": "note_created", "user_id": "u1", "device_id": "d1", "event_time": "2023-05-06 12:34:56.123456",
     "uuid": "0b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3", "platform": "iOS", "os_name": " ios ", "os_version": "17.4",
     "carrier": "(not set)", "library": 5.0, "$insert_id": 12.0, "ip_address": " 198.51.100.1 ",
     "event_properties": {"$set": {"plan": "old", "seen": 1}, "$set_once": "junk", "$groups": {"c": ""},
                          "[Amplitude] Page URL": " https://ex.com/a ", "[Amplitude] Page Title": "EMPTY"},
     "user_properties": {"plan": "pro", "blank": " null ", "n": 0, "initial_utm_source": "news", "empty": {}}},
    # A web row with an ISO "T" time and an offset (not sliced: the offset moves it), geo and no IP, big floats.
    {"event_type": "[Amplitude] Element Clicked", "device_id": "d2", "event_time": "2023-05-06T12:34:56.123+02:00",
     "$insert_id": "ins-2", "platform": " web ", "os_name": "Chrome", "os_version": "122", "device_type": "Mac OS X",
     "library": "amplitude-ts/2.1.0", "city": " Paris ", "region": None, "country": "France", "location_lat": 1e16,
     "session_id": 1683376496123,
     "event_properties": {"[Amplitude] Page Location": 17, "[Amplitude] Page URL": "https://ex.com/b",
                          "big": 1.2345678901234567e17, "ctl": "a\x01\x7f\u2028"},
     "user_properties": "{\"initial_referrer\": \"x\", \"ctl\": \"\\u0000\"}"},
]
EXPECTED = [
    [{'uuid': '0b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3',
      'event': 'note_created',
      'distinct_id': 'u1',
      'timestamp': '2023-05-06T12:34:56.123456Z',
      'properties': {'$set': {'plan': 'pro', 'seen': 1, 'n': 0},
                     '$current_url': ' https://ex.com/a ',
                     '$host': 'ex.com',
                     '$pathname': '/a ',
                     '$os': ' ios ',
                     '$os_version': '17.4',
                     '$lib': '5',
                     '$insert_id': '12',
                     '$ip': ' 198.51.100.1 ',
                     '$set_once': {'$initial_utm_source': 'news'}},
      'source_event': 'note_created',
      'link': ['u1', 'd1'],
      'added': False}],
    [{'uuid': 'e710522f-c4a6-58a7-973b-6f09f534bc66',
      'event': '$autocapture',
      'distinct_id': 'd2',
      'timestamp': '2023-05-06T10:34:56.123000Z',
      'properties': {'big': 1.2345678901234566e+17,
                     'ctl': 'a\x01\x7f\u2028',
                     '$current_url': '17',
                     '$pathname': '17',
                     '$event_type': 'click',
                     '$browser': 'Chrome',
                     '$browser_version': 122,
                     '$os': 'Mac OS X',
                     '$device_type': 'Desktop',
                     '$lib': 'amplitude-ts',
                     '$lib_version': '2.1.0',
                     '$insert_id': 'ins-2',
                     '$geoip_disable': True,
                     '$geoip_city_name': ' Paris ',
                     '$geoip_country_name': 'France',
                     '$geoip_latitude': 1e+16,
                     '$session_id': '0187f10e-ddfb-7309-90c8-f2e404d9582d',
                     '$set': {'ctl': '\x00',
                              '$geoip_city_name': ' Paris ',
                              '$geoip_country_name': 'France',
                              '$geoip_latitude': 1e+16},
                     '$set_once': {'$initial_referrer': 'x',
                                   '$initial_geoip_city_name': ' Paris ',
                                   '$initial_geoip_country_name': 'France',
                                   '$initial_geoip_latitude': 1e+16}},
      'source_event': '[Amplitude] Element Clicked',
      'link': None,
      'added': False}],
]


@pytest.mark.parametrize(("row", "expected"), list(zip(TRICKY_ROWS, EXPECTED, strict=True)))
def test_tricky_amplitude_rows_map_to_the_events_they_always_did(row, expected):
    assert as_sent(AmplitudeAdapter(ColumnMapping()).to_events(dict(row))) == expected


@pytest.mark.parametrize("text", [
    "2023-05-06 12:34:56.123456", "2023-05-06T12:34:56.123456", "0001-01-01 00:00:00.000000",
    "9999-12-31 23:59:59.999999", "2024-02-29 00:00:00.000001",
])
def test_an_iso_text_in_the_sent_form_is_sliced_to_what_format_timestamp_writes(text):
    assert sent_timestamp_text(text) == format_timestamp(parse_timestamp(text))


@pytest.mark.parametrize("text", [
    "2023-05-06 12:34:56.123", "2023-05-06 12:34:56", "2023-05-06 12:34:56.123+02", "2023-05-06 12:34:56.12345Z",
    "2023-05-06 12:34:56,123456", "2023-05-06 12:34:56.12345\u0663", "20230506T123456.123456+0000",
    "2023-05-06 12:34:56.1234567",
])
def test_any_other_form_is_formatted_from_the_instant(text):
    assert sent_timestamp_text(text) is None


def test_an_event_with_values_plain_orjson_refuses_is_written_the_general_way():
    properties = {"amount": Decimal("9.50"), 3: "a non-text key", "tags": ("a", "b"), "plain": "text"}
    event = Event("e", "u1", 0, "0b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3", properties)
    expected = orjson.dumps({"uuid": event.uuid, "event": "e", "distinct_id": "u1",
                             "timestamp": "1970-01-01T00:00:00.000000Z", "properties": properties},
                            default=json_default, option=orjson.OPT_NON_STR_KEYS)
    assert event.to_json() == expected
    assert b'"amount":9.5,"3":"a non-text key","tags":["a","b"]' in expected


# --- what Amplitude's to_events remembers of the last row (issue 15's second round) -----------------------------

def amplitude_row(**fields) -> dict:
    return {"event_type": "e", "event_time": "2023-05-06 12:34:56.123456",
            "uuid": "0b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3", **fields}


def test_a_rows_ids_are_judged_anew_when_they_differ_from_the_last_rows_in_either_id():
    mapper = AmplitudeAdapter(ColumnMapping())
    first = mapper.to_events(amplitude_row(user_id="u1", device_id="d1"))[-1]
    assert (first.distinct_id, first.link, first.illegal_ids) == ("u1", ("u1", "d1"), ())
    # The same user, a device PostHog will not merge through: passed over, not linked (not the last row's answer).
    second = mapper.to_events(amplitude_row(user_id="u1", device_id="null"))[-1]
    assert (second.distinct_id, second.link, second.illegal_ids) == ("u1", None, (("device_id", "null"),))
    # The same ids once padded: trimmed by the rule, then the same person and link as the first row.
    third = mapper.to_events(amplitude_row(user_id=" u1 ", device_id="d1"))[-1]
    assert (third.distinct_id, third.link) == ("u1", ("u1", "d1"))


def test_numeric_ids_on_a_first_row_are_read_by_the_rule_not_taken_for_the_memos_empty_state():
    with pytest.raises(Rejection) as rejected:
        AmplitudeAdapter(ColumnMapping()).to_events(amplitude_row(user_id=0, device_id=0))
    assert rejected.value.illegal_ids == (("user_id", "0"), ("device_id", "0"))
    numbered = AmplitudeAdapter(ColumnMapping()).to_events(amplitude_row(user_id=7, device_id=7.0))[-1]
    assert (numbered.distinct_id, numbered.link) == ("7", None)


def test_a_session_is_reused_only_for_the_same_device_and_start():
    mapper = AmplitudeAdapter(ColumnMapping())
    start = 1683376496123
    for device, session in [("d1", start), ("d1", start), ("d2", start), (None, start), ("d1", start),
                            ("d1", start + 1)]:
        fields = {"device_id": device} if device is not None else {"user_id": "u9"}
        event = mapper.to_events(amplitude_row(session_id=session, **fields))[-1]
        assert event.properties["$session_id"] == session_uuid7(session, f"amplitude:{device or ''}:{session}")


@pytest.mark.parametrize("event_time", [
    "9999-12-31 23:59:59.500000",  # the sent form, past the last second PostHog keeps
    "2023-02-30 12:00:00.000000",  # the sent form's fields, not a date
    "0000-01-01 00:00:00.000000",  # no year 0
])
def test_an_event_time_in_the_sent_form_that_is_no_usable_time_falls_back_as_the_rule_says(event_time):
    event = AmplitudeAdapter(ColumnMapping()).to_events(
        amplitude_row(device_id="d1", event_time=event_time, client_event_time="2023-05-06 01:02:03.000004"))[-1]
    assert (event.timestamp_us, event.timestamp_text) == (parse_timestamp("2023-05-06 01:02:03.000004"), None)
    assert event.notes == (FALLBACK_TIME_NOTE.format(field="client_event_time"),)
    assert b'"timestamp":"2023-05-06T01:02:03.000004Z"' in event.to_json()


def test_the_last_usable_microsecond_in_the_sent_form_is_the_rows_own_time():
    event = AmplitudeAdapter(ColumnMapping()).to_events(amplitude_row(device_id="d1",
                                                                      event_time="9999-12-31 23:59:59.000000"))[-1]
    assert (event.timestamp_us, event.notes) == (MAX_TIMESTAMP_US, ())


@pytest.mark.parametrize("key", ["$set", "$set_once", "$group_set", "$groups"])
def test_each_reserved_object_of_the_wrong_shape_is_dropped_alone(key):
    properties = {"a": 1, key: "junk", "b": {"c": 2}}
    drop_misshapen_reserved(properties)
    assert properties == {"a": 1, "b": {"c": 2}}
    kept = {"$set": {"x": 1}, "$set_once": {}, "$group_set": {"y": 2}, "$groups": {"company": "c1"}}
    drop_misshapen_reserved(kept)
    assert list(kept) == ["$set", "$set_once", "$group_set", "$groups"]
