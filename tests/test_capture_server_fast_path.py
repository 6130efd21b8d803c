"""The capture server's fast path for plain batches judges exactly as its general, event-by-event loop.

The fast path (``_plain_batch_lines``) checks a batch a field at a time with C-level builtins and hands
anything unusual to the general loop. These tests pin that the split is invisible: for any batch, the
status, message, accepted events and JSON lines are those the general loop alone gives.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from posthog_migrate.capture import rules
from posthog_migrate.capture.rules import _HYPHENATED_UUID, _all_hyphenated_uuids, _plain_batch_lines, judge

TOKEN = "phc_TestProjectKey0123456789abcdefghijklmnop"


def plain_event(i: int = 0) -> dict[str, Any]:
    """An event like the ones the tool sends (its key order, a hyphenated uuid)."""
    return {
        "uuid": str(uuid.UUID(int=i + 1)),
        "event": "plan_upgraded",
        "distinct_id": f"device-{i}",
        "timestamp": "2023-01-10T17:07:01.777572Z",
        "properties": {"plan": "pro", "n": i, "$set": {"plan": "pro"}, "$lib": "posthog-migrate"},
    }


def batch(events: list[Any]) -> bytes:
    return orjson.dumps({"api_key": TOKEN, "historical_migration": True, "batch": events})


def judged(body: bytes, strict: bool) -> tuple[int, str, list[bytes], list[bytes], int]:
    verdict = judge(body, False, strict)
    # Events as JSON, so that two paths' dicts compare by content and key order alike.
    return verdict.status, verdict.message, list(map(orjson.dumps, verdict.events)), verdict.lines, verdict.n_events


def judged_by_general_loop(body: bytes, strict: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(rules, "_plain_batch_lines", lambda events: None)
        return judged(body, strict)


# --- the fast path is taken, and agrees --------------------------------------------------------------


def test_a_batch_of_plain_events_takes_the_fast_path_and_is_accepted_as_sent() -> None:
    events = [plain_event(i) for i in range(5)]
    events[1]["uuid"] = events[1]["uuid"].upper()
    events[2]["uuid"] = None  # capture reads a null or empty uuid as "no uuid"
    events[3]["uuid"] = ""
    del events[4]["timestamp"]
    assert _plain_batch_lines(events) == [orjson.dumps(event) for event in events]
    status, _, accepted, lines, _ = judged(batch(events), strict=True)
    assert (status, accepted, lines) == (200, lines, [orjson.dumps(event) for event in events])


UNUSUAL = {
    "braced-uuid": {"uuid": "{" + str(uuid.UUID(int=9)) + "}"},
    "simple-uuid": {"uuid": uuid.UUID(int=9).hex},
    "urn-uuid": {"uuid": uuid.UUID(int=9).urn},
    "bad-uuid": {"uuid": "row-17"},
    "numeric-uuid": {"uuid": 17},
    "no-properties": {"properties": None},
    "list-properties": {"properties": ["a"]},
    "token-in-properties": {"properties": {"token": TOKEN, "plan": "pro"}},
    "token-on-event": {"token": TOKEN},
    "dollar-token-on-event": {"$token": None},
    "api-key-on-event": {"api_key": 7},
    "set": {"$set": {"plan": "pro"}},
    "string-set-once": {"$set_once": "plan"},
    "nameless": {"event": None},
    "empty-name": {"event": ""},
    "numeric-name": {"event": 7},
    "null-distinct-id": {"distinct_id": None},
    "empty-distinct-id": {"distinct_id": ""},
    "null-distinct-id-but-dollar-one": {"distinct_id": None, "$distinct_id": "user-9"},
    "numeric-timestamp": {"timestamp": 1712145600},
}


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
@pytest.mark.parametrize("change", UNUSUAL.values(), ids=UNUSUAL.keys())
def test_a_batch_with_one_unusual_event_is_judged_as_the_general_loop_judges_it(
    change: dict[str, Any], strict: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [plain_event(i) for i in range(3)]
    events[1].update(change)
    assert _plain_batch_lines(events) is None
    body = batch(events)
    assert judged(body, strict) == judged_by_general_loop(body, strict, monkeypatch)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_an_event_too_big_is_left_to_the_general_loop(strict: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    events = [plain_event(0), plain_event(1)]
    events[1]["properties"]["pad"] = "x" * rules.MAX_EVENT_BYTES
    assert _plain_batch_lines(events) is None
    body = batch(events)
    assert judged(body, strict)[:2] == (413, f"event 1: {len(orjson.dumps(events[1]))} bytes is too big "
                                              f"(events must stay under {rules.MAX_EVENT_BYTES})")
    assert judged(body, strict) == judged_by_general_loop(body, strict, monkeypatch)


# A value of each JSON type, falsy and truthy (and properties carrying a token), for every field.
ODD = [None, True, False, 0, 7, 1.5, "", "x", [], ["a"], {}, {"a": 1}, {"token": TOKEN}]
REMOVED = object()
FIELDS = ["uuid", "event", "distinct_id", "$distinct_id", "timestamp", "properties", "$set", "$set_once", "token",
          "$token", "api_key", "type"]


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
@pytest.mark.parametrize("key", FIELDS)
def test_every_field_with_every_type_of_value_or_none_is_judged_as_the_general_loop_judges_it(
    key: str, strict: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for value in [*ODD, REMOVED]:
        events = [plain_event(i) for i in range(3)]
        if value is REMOVED:
            events[1].pop(key, None)
        else:
            events[1][key] = value
        body = batch(events)
        assert judged(body, strict) == judged_by_general_loop(body, strict, monkeypatch), (key, value)


# --- any batch at all ---------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=6))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
ODD_VALUES = st.sampled_from(ODD)
HEX_ISH = "0123456789abcdefABCDEF-\n{}xg:é٣０"
UUID_VALUES = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: u.urn),
    st.text(HEX_ISH, min_size=34, max_size=38),
)
FIELD_VALUES = {
    key: st.one_of(ODD_VALUES, values, JSON_VALUES)
    for key, values in {
        "uuid": UUID_VALUES,
        "event": st.just("signed up"),
        "distinct_id": st.just("user-1"),
        "timestamp": st.just("2024-04-03T12:00:00Z"),
        "properties": st.dictionaries(st.sampled_from(["plan", "token", "distinct_id"]), JSON_VALUES, max_size=3),
        "$distinct_id": st.just("user-2"),
        "$set": st.dictionaries(st.text(max_size=4), JSON_SCALARS, max_size=2),
        "$set_once": st.dictionaries(st.text(max_size=4), JSON_SCALARS, max_size=2),
        "token": st.just(TOKEN),
        "$token": st.just(TOKEN),
        "api_key": st.just(TOKEN),
        "type": st.just("capture"),
    }.items()
}


@st.composite
def batches(draw: st.DrawFn) -> list[Any]:
    """Plain events, but for one or two whose fields are changed, removed or added, or not objects at all."""
    events: list[Any] = [plain_event(i) for i in range(draw(st.integers(1, 4)))]
    for _ in range(draw(st.integers(1, 2))):
        index = draw(st.integers(0, len(events) - 1))
        if draw(st.integers(0, 9)) == 0:
            events[index] = draw(JSON_VALUES)
            continue
        event = events[index] if type(events[index]) is dict else plain_event()
        for key in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), min_size=1, max_size=2)):
            if key in event and draw(st.integers(0, 3)) == 0:
                del event[key]
            else:
                event[key] = draw(FIELD_VALUES[key])
        events[index] = event
    return events


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch_events=batches(), strict=st.booleans())
def test_any_batch_is_judged_as_the_general_loop_judges_it(
    batch_events: list[Any], strict: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = batch(batch_events)
    assert judged(body, strict) == judged_by_general_loop(body, strict, monkeypatch)


# --- the uuid check ---------------------------------------------------------------------------------


def test_uuids_in_hyphenated_form_pass_in_any_case() -> None:
    uuids = [str(uuid.UUID(int=n)) for n in (0, 1, 2**128 - 1)] + ["0123ABCD-ef45-6789-AbCd-0123456789aB"]
    assert _all_hyphenated_uuids(uuids)
    assert _all_hyphenated_uuids([])


@pytest.mark.parametrize(
    "odd",
    [
        str(uuid.UUID(int=1))[:-1],  # 35 characters
        str(uuid.UUID(int=1)) + "0",  # 37
        str(uuid.UUID(int=1)).replace("-", "x", 1),
        str(uuid.UUID(int=1)).replace("0", "g", 1),
        str(uuid.UUID(int=1)).replace("0", "٣", 1),  # a digit, but not an ASCII one
        str(uuid.UUID(int=1)).replace("0", "０", 1),  # fullwidth zero
        str(uuid.UUID(int=1))[:20] + "\n" + str(uuid.UUID(int=1))[21:],
        uuid.UUID(int=1).hex,  # capture takes it, but it is not the hyphenated form
        17,
        None,
    ],
)
def test_anything_else_fails_the_uuid_check(odd: Any) -> None:
    assert not _all_hyphenated_uuids([str(uuid.UUID(int=5)), odd, str(uuid.UUID(int=6))])


def test_the_uuid_check_cannot_be_fooled_by_lengths_that_add_up() -> None:
    valid = str(uuid.UUID(int=0xABC))
    # One uuid a character short and the next a character long: joined, the characters line up.
    assert not _all_hyphenated_uuids([valid[:-1], "0" + valid])
    # A uuid holding a newline and a second uuid's worth of characters, followed by a short one.
    assert not _all_hyphenated_uuids([valid + "\n" + valid[:18], valid[19:]])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.uuids().map(str), st.text(HEX_ISH, min_size=34, max_size=38)), max_size=5))
def test_the_uuid_check_agrees_with_the_regex(uuids: list[str]) -> None:
    expected = all(re.fullmatch(_HYPHENATED_UUID, item, re.ASCII) for item in uuids)
    assert _all_hyphenated_uuids(uuids) == expected
