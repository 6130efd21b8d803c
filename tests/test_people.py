"""People, not only events: ids PostHog will not merge, merges decided per device, profiles, person-properties modes.

Rows are shaped like real exports (Amplitude, Mixpanel, Segment, warehouse tables). The adapter tests pin what
each row becomes; the CLI tests run `posthog-migrate inspect` and `run` as real processes into the local capture
server and check what arrives, what the summary says, and that the books balance.
"""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from posthog_migrate.accounting import PrepareStats
from posthog_migrate.adapters.amplitude import AmplitudeAdapter
from posthog_migrate.adapters.jsonl import JsonLinesAdapter
from posthog_migrate.adapters.mixpanel import MixpanelAdapter
from posthog_migrate.adapters.posthog import PostHogAdapter
from posthog_migrate.adapters.segment import SegmentAdapter
from posthog_migrate.distinct_ids import is_illegal_id
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import MAX_TIMESTAMP_US, Event, Rejection, validate
from posthog_migrate.identity import Claim, decide
from posthog_migrate.mapping import ColumnMapping, Filtered
from posthog_migrate.transform import EventFinisher

from .adapter_helpers import rows_of, source
from .conftest import read_received, run_cli, write_csv, write_jsonl

NOW = MAX_TIMESTAMP_US
TABLET = "8d2f4a10-3c1b-4e55-9a7f-0b6e2d1c9a33"


def amplitude_row(n: int, **changes) -> dict:
    row = {"uuid": str(uuid.UUID(int=n + 1, version=4)), "$insert_id": f"ins-{n}", "event_type": "note_created",
           "event_time": f"2024-03-01 10:{n // 60:02d}:{n % 60:02d}.000000", "amplitude_id": 100 + n,
           "user_id": None, "device_id": TABLET, "session_id": -1, "platform": "Web", "os_name": "Chrome",
           "os_version": "122", "device_type": "Mac OS X", "ip_address": None, "country": None,
           "event_properties": {}, "user_properties": {}}
    row.update(changes)
    return row


def run_local(folder: Path, *args: str):
    """`posthog-migrate run ... --host local`: the result, the events the local server received, the output."""
    result = run_cli(["run", *args, "--host", "local", "--rate", "0", "-q", "--workdir", "job"], folder)
    assert "Traceback" not in result.stderr, result.stderr
    received = folder / "job" / "local-capture" / "events.jsonl"
    return result, read_received(received) if received.exists() else []


def merges(events: list[dict]) -> list[tuple[str, str]]:
    """(distinct_id, other id) of every merge event sent."""
    return [(e["distinct_id"], e["properties"].get("$anon_distinct_id", e["properties"].get("alias")))
            for e in events if e["event"] in ("$identify", "$create_alias")
            and ("$anon_distinct_id" in e["properties"] or "alias" in e["properties"])]


# --- 1. ids PostHog will not merge ------------------------------------------------------------------------

ILLEGAL = ["anonymous", "Anonymous", "GUEST", "distinctid", "distinct_id", "ID", "not_authenticated", "Email",
           "undefined", "UNDEFINED", "true", "False", "[object Object]", "NaN", "None", "none", "null", "0",
           '"undefined"', "'null'", "'Guest'", '"0"', "", "   "]
LEGAL = ["nan", "Null", "NULL", "0.0", "00", "undefinedx", "[object object]", "user_0", "guest@example.com", "nil"]


@pytest.mark.parametrize("text", ILLEGAL)
def test_posthogs_illegal_ids_are_recognised_in_every_case_and_quoting(text):
    assert is_illegal_id(text.strip())


@pytest.mark.parametrize("text", LEGAL)
def test_ids_that_only_look_like_them_are_legal(text):
    assert not is_illegal_id(text)


@pytest.mark.parametrize("user_id", ["null", "undefined", "Guest", '"undefined"', "0", 0, "  "])
def test_an_amplitude_row_whose_user_id_is_illegal_falls_back_to_its_device(user_id):
    [event] = AmplitudeAdapter(ColumnMapping()).to_events(amplitude_row(1, user_id=user_id))
    assert event.distinct_id == TABLET and event.link is None  # never an $identify with it
    assert event.illegal_ids == ((("user_id", str(user_id)),) if str(user_id).strip() else ())


@pytest.mark.parametrize(("adapter", "row"), [
    (AmplitudeAdapter, amplitude_row(1, user_id="undefined", device_id="null")),
    (SegmentAdapter, {"type": "track", "event": "x", "messageId": "m1", "userId": "0", "anonymousId": "anonymous",
                      "timestamp": "2024-03-01T00:00:00Z"}),
    (MixpanelAdapter, {"event": "x", "properties": {"time": 1709251200, "distinct_id": "undefined",
                                                     "$device_id": "[object Object]"}}),
    (PostHogAdapter, {"uuid": str(uuid.UUID(int=5)), "event": "x", "distinct_id": "None",
                      "timestamp": "2024-03-01T00:00:00Z", "properties": {}}),
    (JsonLinesAdapter, {"event": "x", "user_id": "Guest", "anonymous_id": "'null'", "timestamp": 1709251200}),
])
def test_a_row_with_only_illegal_ids_is_rejected_as_illegal_distinct_id(adapter, row):
    with pytest.raises(Rejection) as caught:
        for event in adapter(ColumnMapping()).to_events(row):
            validate(event, NOW)
    assert caught.value.reason == "illegal_distinct_id"
    assert caught.value.illegal_ids  # inspect counts them


def test_no_merge_is_made_with_an_illegal_id_on_either_side():
    mixpanel = MixpanelAdapter(ColumnMapping())
    identify = {"event": "$identify", "properties": {"time": 1709251200, "$identified_id": "ana@example.com",
                                                     "$anon_id": "undefined", "$insert_id": "i1"}}
    with pytest.raises(Rejection, match="anon_id 'undefined'"):
        mixpanel.to_events(identify)
    merge = {"event": "$merge", "properties": {"time": 1709251200, "distinct_id": "ana@example.com",
                                               "$distinct_ids": ["ana@example.com", "null", "ana.work@example.com"]}}
    assert [(e.distinct_id, e.properties["alias"]) for e in mixpanel.to_events(merge)] == [
        ("ana@example.com", "ana.work@example.com")]
    segment = SegmentAdapter(ColumnMapping())
    [event] = segment.to_events({"type": "identify", "messageId": "m2", "userId": "ana", "anonymousId": "null",
                                 "traits": {"plan": "pro"}, "timestamp": "2024-03-01T00:00:00Z"})
    assert "$anon_distinct_id" not in event.properties and event.link is None and event.properties["$set"]
    [passed_through] = PostHogAdapter(ColumnMapping()).to_events({
        "uuid": str(uuid.UUID(int=6)), "event": "$identify", "distinct_id": "ana", "timestamp": "2024-03-01T00:00:00Z",
        "properties": {"$anon_distinct_id": "anonymous", "$set": {"plan": "pro"}}})
    assert "$anon_distinct_id" not in passed_through.properties and passed_through.properties["$set"]
    assert passed_through.illegal_ids == (("$anon_distinct_id", "anonymous"),)
    # whatever an adapter does, validation never lets one through
    for name, key in (("$identify", "$anon_distinct_id"), ("$create_alias", "alias"), ("$merge_dangerously", "alias")):
        with pytest.raises(Rejection) as caught:
            validate(Event(name, "ana", 1, str(uuid.UUID(int=7)), {key: '"null"'}), NOW)
        assert caught.value.reason == "illegal_distinct_id"


def test_ids_are_trimmed_on_events_and_on_the_links_that_make_identify_events():
    [event] = SegmentAdapter(ColumnMapping()).to_events({
        "type": "track", "event": "x", "messageId": "m1", "userId": " ana ", "anonymousId": "\tdev-1 ",
        "timestamp": "2024-03-01T00:00:00Z"})
    assert (event.distinct_id, event.link) == ("ana", ("ana", "dev-1"))
    [event] = AmplitudeAdapter(ColumnMapping()).to_events(amplitude_row(1, user_id=" ana ", device_id=f" {TABLET}"))
    assert (event.distinct_id, event.link) == ("ana", ("ana", TABLET))


def test_inspect_counts_rows_per_illegal_id_and_run_sends_none_of_them(tmp_path):
    rows = [amplitude_row(n, user_id="null") for n in range(12)]  # 12 rows with user_id 'null', on the tablet
    rows += [amplitude_row(20 + n, user_id="undefined", device_id="0") for n in range(3)]  # nothing usable: rejected
    rows += [amplitude_row(30, user_id="alice")]
    write_jsonl(tmp_path / "export.json", rows)
    inspected = run_cli(["inspect", "export.json", "--format", "amplitude", "-q"], tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert "Illegal ids:       18 rows had an id PostHog will not merge persons through" in inspected.stdout
    assert "          12  rows have user_id 'null'" in inspected.stdout
    assert "           3  rows have user_id 'undefined'" in inspected.stdout
    assert "           3  rows have device_id '0'" in inspected.stdout
    assert "           3  illegal_distinct_id" in inspected.stdout  # among the rejected, by reason
    people = orjson.loads(run_cli(["inspect", "export.json", "--format", "amplitude", "--json"], tmp_path).stdout)
    assert people["people"]["illegal_ids"] == {"user_id 'null'": 12, "user_id 'undefined'": 3, "device_id '0'": 3}
    assert people["people"]["person_properties"] == "set"
    result, received = run_local(tmp_path, "export.json", "--format", "amplitude")
    assert result.returncode == 3 and "16 = 13 + 3 + 0  ✓ balanced" in result.stdout
    assert "rows have user_id 'null'" in result.stdout  # the summary says it too
    ran = orjson.loads(run_cli(["run", "export.json", "--format", "amplitude", "--host", "local", "--workdir", "job",
                                "--json", "-q"], tmp_path).stdout)  # the job is done: the same books, as JSON
    assert ran["people"]["illegal_ids"]["user_id 'null'"] == 12
    assert {e["distinct_id"] for e in received} == {TABLET, "alice"}
    assert merges(received) == [("alice", TABLET)]
    rejects = [orjson.loads(line) for line in (tmp_path / "job" / "rejects.jsonl").read_bytes().splitlines()]
    assert {r["reason"] for r in rejects} == {"illegal_distinct_id"}


# --- 2. identity that joins what the events use ----------------------------------------------------------------

def test_decide_merges_each_device_into_its_first_user_only():
    sighting = lambda device, ts, user: Claim(device, ts, ts, user)  # noqa: E731
    held = lambda device, ts, user, plain: Claim(device, ts, ts, user, 1, 0, "$identify", "identify",  # noqa: E731
                                                  b"merge", plain)
    claims = [sighting("tablet", 1, "alice"), sighting("tablet", 5, "bob"), held("tablet", 6, "bob", b"plain"),
              held("tablet", 7, "alice", b"alice plain"),
              sighting("phone", 2, "carol"), held("phone", 2, "carol", b"carol plain"),  # the same instant
              Claim("laptop", 3, 3, "dan", 1, 0, "$create_alias", "alias", b"alias", None),
              Claim("laptop", 4, 4, "erin", 1, 0, "$create_alias", "alias", b"alias", None)]
    shared = []
    decided = [(d.action, d.claim.device, d.claim.user, d.payload)
               for d in decide(iter(sorted(claims, key=lambda c: (c.device, c.ts, c.tiebreak))), shared.append)]
    assert decided == [
        ("send", "laptop", "dan", b"alias"), ("filter", "laptop", "erin", None),
        ("send", "phone", "carol", b"merge"),  # the source's own merge at the first instant: no new $identify
        ("identify", "tablet", "alice", None), ("send", "tablet", "bob", b"plain"),
        ("send", "tablet", "alice", b"alice plain"),  # merged already: its properties, not a second merge
    ]
    assert shared == ["laptop", "tablet"]


def test_a_device_claimed_by_two_users_merges_into_the_first_and_keeps_the_second_users_events(tmp_path):
    rows = [amplitude_row(0), amplitude_row(1, user_id="alice"), amplitude_row(2, user_id="alice"),
            amplitude_row(3, user_id="bob"), amplitude_row(4, user_id="bob", device_id="bobs-phone")]
    write_jsonl(tmp_path / "export.json", rows)
    inspected = run_cli(["inspect", "export.json", "--format", "amplitude", "-q"], tmp_path)
    assert "Shared devices:    1 devices (or anonymous ids) used by more than one user" in inspected.stdout
    assert "Events to send:    7 " in inspected.stdout  # 5 rows and 2 $identify: alice's tablet, bob's phone
    result, received = run_local(tmp_path, "export.json", "--format", "amplitude")
    assert result.returncode == 0 and "Shared devices:    1 devices" in result.stdout
    assert sorted(merges(received)) == [("alice", TABLET), ("bob", "bobs-phone")]  # never (bob, tablet)
    in_time = sorted(received, key=lambda e: e["timestamp"])
    assert [e["distinct_id"] for e in in_time if e["event"] == "note_created"] == [TABLET, "alice", "alice", "bob",
                                                                                   "bob"]


def test_a_segment_identify_of_a_device_another_user_claimed_keeps_its_traits_but_not_the_merge(tmp_path):
    def message(n, kind, user, anonymous, **more):
        return {"type": kind, "messageId": f"m{n}", "userId": user, "anonymousId": anonymous,
                "timestamp": f"2024-03-01T10:00:{n:02d}Z", **more}

    messages = [message(1, "page", None, "tablet", name="Home"),
                message(2, "identify", "alice", "tablet", traits={"email": "alice@example.com"}),
                message(3, "track", "alice", "tablet", event="Note Created"),
                message(4, "identify", "bob", "tablet", traits={"email": "bob@example.com"}),  # bob's first event
                message(5, "track", "bob", "tablet", event="Note Created"),
                message(6, "alias", "carol", None, previousId="tablet")]
    write_jsonl(tmp_path / "messages.jsonl", messages)
    result, received = run_local(tmp_path, "messages.jsonl", "--format", "segment")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 = 5 + 0 + 1  ✓ balanced" in result.stdout  # carol's alias: filtered, PostHog would refuse it
    assert "$create_alias of an id another user merged first (PostHog would refuse it)" in result.stdout
    assert merges(received) == [("alice", "tablet")]  # alice's own identify call: one $identify, with its traits
    identifies = {e["distinct_id"]: e["properties"] for e in received if e["event"] == "$identify"}
    assert identifies["alice"]["$set"] == {"email": "alice@example.com"}
    assert identifies["bob"]["$set"] == {"email": "bob@example.com"} and "$anon_distinct_id" not in identifies["bob"]
    assert [e["distinct_id"] for e in sorted(received, key=lambda e: e["timestamp"])
            if e["event"] == "Note Created"] == ["alice", "bob"]


def test_mixpanel_anonymous_history_joins_the_user_under_the_id_it_was_sent_with(tmp_path):
    device = "18e0a1b2-77aa-4c3e-9f10-0a1b2c3d4e5f"
    anonymous = [{"event": "$mp_web_page_view", "properties": {
        "time": 1709287200 + n, "distinct_id": f"$device:{device}", "$device_id": device, "$insert_id": f"a{n}",
        "$current_url": "https://acmenotes.com/"}} for n in range(3)]
    signed_up = [{"event": "Sign Up", "properties": {
        "time": 1709287300 + n, "distinct_id": "usr_7", "$user_id": "usr_7", "$device_id": device,
        "$insert_id": f"s{n}"}} for n in range(2)]
    write_jsonl(tmp_path / "export.jsonl", anonymous + signed_up)
    result, received = run_local(tmp_path, "export.jsonl", "--format", "mixpanel")
    assert result.returncode == 0, result.stdout + result.stderr
    assert merges(received) == [("usr_7", f"$device:{device}")]  # what the anonymous events were sent under
    assert {e["distinct_id"] for e in received if e["event"] == "$pageview"} == {f"$device:{device}"}
    order = [e["event"] for e in received if e["distinct_id"] == "usr_7"]
    assert order[0] == "$identify"  # before the user's first event


@pytest.mark.parametrize(("canonical", "before", "rule", "expected"), [
    ("ABCD-1234-EF56", "ana@example.com", "posthog", "ana@example.com"),  # a device's uuid in capitals
    ("$device:18e0a1b2", "ana@example.com", "posthog", "ana@example.com"),
    ("ana@example.com", "$device:18e0a1b2", "posthog", "ana@example.com"),  # resolved to a real user: kept
    (None, "ana@example.com", "posthog", "ana@example.com"),
    ("ABCD-1234-EF56", "ana@example.com", "canonical", "ABCD-1234-EF56"),
])
def test_distinct_id_before_identity_follows_posthogs_importer(canonical, before, rule, expected):
    row = {"event": "x", "properties": {"time": 1709287200, "distinct_id": canonical,
                                        "$distinct_id_before_identity": before, "$insert_id": "i-1"}}
    [event] = MixpanelAdapter(ColumnMapping(source_options=(("distinct_id", rule),))).to_events(row)
    assert event.distinct_id == expected
    assert event.uuid == str(uuid.uuid5(uuid.UUID(bytes=b"posthog_mixpanel"), "i-1"))  # PostHog's importer's too


def test_mixpanel_distinct_id_rule_is_checked():
    with pytest.raises(ConfigError, match=r'\[source\] distinct_id = .resolved.: write "posthog"'):
        MixpanelAdapter(ColumnMapping(source_options=(("distinct_id", "resolved"),)))


def group_rows(types: int) -> list[dict]:
    return [amplitude_row(n, user_id="alice", groups={f"type{t}": [f"key{t}"] for t in range(types)})
            for n in range(types + 1)]


def test_more_group_types_than_posthog_keeps_are_refused_at_inspect_and_before_sending(tmp_path):
    write_jsonl(tmp_path / "export.json", group_rows(6))
    inspected = run_cli(["inspect", "export.json", "--format", "amplitude", "-q"], tmp_path)
    assert inspected.returncode == 2
    assert "Group types:       6 (PostHog keeps 5 per project): type0 (7 events)" in inspected.stdout
    assert ("the job names 6 group types: type0 (7 events), type1 (7 events), type2 (7 events), type3 (7 events), "
            "type4 (7 events), type5 (7 events). PostHog keeps 5 per project") in inspected.stderr
    assert '[transform] drop_group_types = ["type5"]' in inspected.stderr
    result, received = run_local(tmp_path, "export.json", "--format", "amplitude")
    assert result.returncode == 2 and "the job names 6 group types" in result.stderr and not received
    (tmp_path / "mapping.toml").write_text('[transform]\ndrop_group_types = ["type5"]\n')
    result, received = run_local(tmp_path, "export.json", "--format", "amplitude", "--mapping", "mapping.toml",
                                 "--restart")
    assert result.returncode == 0, result.stderr
    assert {key for e in received for key in e["properties"].get("$groups", {})} == {f"type{t}" for t in range(5)}


# --- 3. profiles ------------------------------------------------------------------------------------------------

ENGAGE_PAGE = {"page": 0, "page_size": 1000, "session_id": "1234567890-EXAMPL", "status": "ok", "total": 3,
               "results": [
                   {"$distinct_id": "ana@example.com", "$properties": {
                       "$created": "2023-12-12T11:20:47", "$email": "ana@example.com", "$first_name": "Ana",
                       "$last_name": "Lima", "$last_seen": "2024-03-01T09:00:00", "$country_code": "BR",
                       "plan": "pro"}},
                   {"$distinct_id": 4, "$properties": {"$name": "Ben", "$email": "ben@example.com"}},  # no $last_seen
                   {"$distinct_id": "null", "$properties": {"$name": "Nobody"}}]}


def test_an_engage_profile_becomes_one_set_event_with_posthogs_names():
    mixpanel = MixpanelAdapter(ColumnMapping())
    [event] = mixpanel.to_events(ENGAGE_PAGE["results"][0])
    assert (event.event, event.distinct_id, event.source_event) == ("$set", "ana@example.com", "(person profile)")
    assert event.properties == {
        "$geoip_disable": True,
        "$set": {"email": "ana@example.com", "first_name": "Ana", "last_name": "Lima",
                 "$geoip_country_code": "BR", "$geoip_country_name": "Brazil", "plan": "pro", "name": "Ana Lima"},
        "$set_once": {"$initial_created_at": "2023-12-12T11:20:47"},
    }
    assert event.timestamp_us == 1709283600_000000 and not event.after_last_event  # at its $last_seen
    [again] = mixpanel.to_events(json.loads(json.dumps(ENGAGE_PAGE["results"][0])))
    changed = dict(ENGAGE_PAGE["results"][0], **{"$properties": {"plan": "team"}})
    assert again.uuid == event.uuid != mixpanel.to_events(changed)[0].uuid
    [untimed] = mixpanel.to_events(ENGAGE_PAGE["results"][1])
    assert untimed.distinct_id == "4" and untimed.after_last_event
    with pytest.raises(Rejection) as caught:
        mixpanel.to_events(ENGAGE_PAGE["results"][2])
    assert caught.value.reason == "illegal_distinct_id"


@pytest.mark.parametrize("layout", ["pretty page", "page per line", "profile per line"])
def test_engage_files_are_read_as_pages_or_profiles(tmp_path, layout):
    path = tmp_path / "people.json"
    if layout == "pretty page":
        path.write_text(json.dumps(ENGAGE_PAGE, indent=2))
    elif layout == "page per line":
        second = dict(ENGAGE_PAGE, page=1, results=ENGAGE_PAGE["results"][:1])
        path.write_bytes(orjson.dumps(ENGAGE_PAGE) + b"\n" + orjson.dumps(second) + b"\n")
    else:
        write_jsonl(path, ENGAGE_PAGE["results"])
    rows = rows_of(MixpanelAdapter(ColumnMapping()).read(source(path)))
    expected = 4 if layout == "page per line" else 3
    assert [number for number, _ in rows] == list(range(1, expected + 1))  # a row number per profile
    assert [row["$distinct_id"] for _, row in rows][:3] == ["ana@example.com", 4, "null"]


def test_profiles_and_events_in_one_job_profiles_last_and_counted(tmp_path):
    events = [{"event": "Note Created", "properties": {"time": 1709287200 + n, "distinct_id": "ana@example.com",
                                                       "$insert_id": f"n{n}"}} for n in range(3)]
    write_jsonl(tmp_path / "events.jsonl", events)
    (tmp_path / "people.json").write_text(json.dumps(ENGAGE_PAGE, indent=2))
    inspected = run_cli(["inspect", "events.jsonl", "people.json", "--format", "mixpanel", "-q"], tmp_path)
    assert "Profiles:          2  (person profile) → $set" in inspected.stdout
    assert "Events to send:    5" in inspected.stdout
    result, received = run_local(tmp_path, "events.jsonl", "people.json", "--format", "mixpanel")
    assert result.returncode == 3 and "6 = 5 + 1 + 0  ✓ balanced" in result.stdout  # 'null': rejected
    assert "Profiles:          2  (person profile) → $set" in result.stdout
    profiles = {e["distinct_id"]: e for e in received if e["event"] == "$set"}
    assert profiles["ana@example.com"]["timestamp"] == "2024-03-01T09:00:00.000000Z"  # its $last_seen
    assert profiles["4"]["timestamp"] == "2024-03-01T10:00:02.000001Z"  # 1 µs after the job's last event
    assert received[-1]["distinct_id"] == "4"


def test_mixpanel_group_profiles_become_groupidentify_events(tmp_path):
    (tmp_path / "companies.json").write_bytes(orjson.dumps({"page": 0, "session_id": "s", "results": [
        {"$distinct_id": "acme", "$properties": {"$name": "Acme", "tier": "enterprise",
                                                 "$last_seen": "2024-03-01T09:00:00"}}]}))
    (tmp_path / "mapping.toml").write_text('[source]\ngroup_type = "company"\n')
    result, received = run_local(tmp_path, "companies.json", "--format", "mixpanel", "--mapping", "mapping.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    [group] = received
    assert group["event"] == "$groupidentify" and group["distinct_id"] == "$company_acme"
    assert {k: group["properties"][k] for k in ("$group_type", "$group_key", "$group_set")} == {
        "$group_type": "company", "$group_key": "acme", "$group_set": {"name": "Acme", "tier": "enterprise"}}


def test_a_warehouse_persons_table_through_the_mapping(tmp_path):
    write_csv(tmp_path / "users.csv", [
        {"user_id": "u1", "email": "u1@example.com", "plan": "pro", "signup_date": "2023-01-05",
         "updated_at": "2024-02-01T00:00:00Z"},
        {"user_id": "undefined", "email": "x@example.com", "plan": "free", "signup_date": "", "updated_at": ""},
        {"user_id": "u2", "email": "u2@example.com", "plan": "", "signup_date": "2023-02-01", "updated_at": ""}])
    (tmp_path / "mapping.toml").write_text('[profiles]\ndistinct_id = "user_id"\nset_once = ["signup_date"]\n'
                                           'timestamp = "updated_at"\n')
    result, received = run_local(tmp_path, "users.csv", "--mapping", "mapping.toml")
    assert result.returncode == 3 and "3 = 2 + 1 + 0  ✓ balanced" in result.stdout, result.stdout + result.stderr
    by_id = {e["distinct_id"]: e for e in received}
    assert by_id["u1"]["properties"]["$set"] == {"email": "u1@example.com", "plan": "pro"}
    assert by_id["u1"]["properties"]["$set_once"] == {"signup_date": "2023-01-05"}
    assert by_id["u1"]["timestamp"] == "2024-02-01T00:00:00.000000Z"
    assert by_id["u2"]["timestamp"] == "2024-02-01T00:00:00.000001Z"  # no updated_at: after the job's last


def test_a_warehouse_groups_table_and_its_checks(tmp_path):
    write_csv(tmp_path / "companies.csv", [{"company_id": "acme", "name": "Acme", "updated_at": "2024-02-01"}])
    (tmp_path / "mapping.toml").write_text('[group_profiles]\ngroup_type = "company"\ngroup_key = "company_id"\n'
                                           'timestamp = "updated_at"\n')
    result, received = run_local(tmp_path, "companies.csv", "--mapping", "mapping.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(e["event"], e["properties"]["$group_key"], e["properties"]["$group_set"]) for e in received] == [
        ("$groupidentify", "acme", {"name": "Acme"})]
    (tmp_path / "mapping.toml").write_text('[profiles]\ndistinct_id = "id"\n')
    wrong = run_cli(["inspect", "companies.csv", "--mapping", "mapping.toml"], tmp_path)
    assert wrong.returncode == 2 and "[profiles] distinct_id → id" in wrong.stderr
    (tmp_path / "mapping.toml").write_text('[profiles]\ndistinct_id = "company_id"\n')
    platform = run_cli(["inspect", "companies.csv", "--format", "segment", "--mapping", "mapping.toml"], tmp_path)
    assert platform.returncode == 2 and "[profiles] and [group_profiles] map CSV" in platform.stderr


def test_profiles_without_a_time_in_a_job_without_events_are_sent_two_days_back_with_a_warning(tmp_path):
    write_jsonl(tmp_path / "people.jsonl", ENGAGE_PAGE["results"][1:2])
    result, received = run_local(tmp_path, "people.jsonl", "--format", "mixpanel")
    assert result.returncode == 0 and "1 = 1 + 0 + 0  ✓ balanced" in result.stdout, result.stdout + result.stderr
    assert "profiles without a time, in a job without dated events" in result.stdout
    [profile] = received
    placed = datetime.fromisoformat(profile["timestamp"])
    age = datetime.now(UTC) - placed
    assert profile["event"] == "$set" and timedelta(hours=48) <= age < timedelta(hours=72)
    assert placed.hour == placed.minute == 0  # the start of a day: a re-run that day sends the same event


# --- 4. person properties that do not go back in time ------------------------------------------------------

def finished(mode: str, events: list[Event]) -> list[Event]:
    return EventFinisher(ColumnMapping(person_mode=mode), "amplitude", "job").finish(events)


def test_person_mode_set_once_turns_every_set_into_set_once_and_skip_sends_none():
    def row_events() -> list[Event]:
        return AmplitudeAdapter(ColumnMapping()).to_events(amplitude_row(
            1, user_id="alice", country="France", user_properties={"plan": "pro", "initial_utm_source": "news"}))

    [as_set] = finished("set", row_events())
    [once] = finished("set_once", row_events())
    assert "$set" not in once.properties
    assert once.properties["$set_once"] == {**as_set.properties["$set_once"], **as_set.properties["$set"]}
    [skipped] = finished("skip", row_events())
    assert not {"$set", "$set_once"} & skipped.properties.keys()
    profile = MixpanelAdapter(ColumnMapping()).to_events(ENGAGE_PAGE["results"][0])
    with pytest.raises(Filtered, match="mode = .skip."):
        finished("skip", profile)


def test_person_properties_option_and_mapping_mode_through_the_cli(tmp_path):
    write_jsonl(tmp_path / "export.json", [amplitude_row(1, user_id="alice", user_properties={"plan": "pro"})])
    inspected = run_cli(["inspect", "export.json", "--format", "amplitude", "--person-properties", "set_once", "-q"],
                        tmp_path)
    assert "Person properties: set_once: every $set is sent as a $set_once" in inspected.stdout
    result, received = run_local(tmp_path, "export.json", "--format", "amplitude", "--person-properties", "set_once")
    [event] = [e for e in received if e["event"] == "note_created"]
    assert event["properties"]["$set_once"] == {"plan": "pro"} and "$set" not in event["properties"]
    (tmp_path / "mapping.toml").write_text('[person]\nmode = "sometimes"\n')
    wrong = run_cli(["inspect", "export.json", "--format", "amplitude", "--mapping", "mapping.toml"], tmp_path)
    assert wrong.returncode == 2 and "[person] mode = 'sometimes': choose one of set, set_once, skip" in wrong.stderr


# --- 5. where PostHog's importer is right --------------------------------------------------------------------

def test_an_amplitude_web_row_with_referrer_viewport_and_a_numeric_browser_version():
    adapter = AmplitudeAdapter(ColumnMapping())
    [event] = adapter.to_events(amplitude_row(1, device_family="Apple iPad", event_properties={
        "[Amplitude] Page Referrer": "https://news.example.com/post?id=3",
        "[Amplitude] Viewport Height": 900, "[Amplitude] Viewport Width": 1440}))
    properties = event.properties
    assert (properties["$referrer"], properties["$referring_domain"]) == ("https://news.example.com/post?id=3",
                                                                        "news.example.com")
    assert (properties["$viewport_height"], properties["$viewport_width"]) == (900, 1440)
    assert properties["$browser_version"] == 122 and properties["$device_type"] == "Tablet"
    assert not any(key.startswith("[Amplitude]") for key in properties)


@pytest.mark.parametrize(("os_name", "family", "expected"), [
    ("Windows", None, "Desktop"), ("Mac OS X", "Apple Mac", "Desktop"), ("iOS", "Apple iPhone", "Mobile"),
    ("Android", "Samsung Galaxy", "Mobile"), ("iOS", "Apple iPad", "Tablet"), (None, None, None)])
def test_amplitude_web_rows_say_desktop_mobile_or_tablet(os_name, family, expected):
    [event] = AmplitudeAdapter(ColumnMapping()).to_events(amplitude_row(1, device_type=os_name, device_family=family))
    assert event.properties.get("$device_type") == expected


def test_an_amplitude_row_without_a_usable_event_time_takes_its_client_time_and_the_summary_says_so(tmp_path):
    rows = [amplitude_row(1, event_time=None, client_event_time="2024-03-01 10:00:01.500000"),
            amplitude_row(2, event_time="2024-03-01 99:00", client_event_time=None,
                          server_upload_time="2024-03-01 10:05:00.000000"),
            amplitude_row(3, event_time=None, client_event_time="soon", server_upload_time=None)]
    write_jsonl(tmp_path / "export.json", rows)
    result, received = run_local(tmp_path, "export.json", "--format", "amplitude")
    assert result.returncode == 3 and "3 = 2 + 1 + 0  ✓ balanced" in result.stdout
    assert sorted(e["timestamp"] for e in received) == ["2024-03-01T10:00:01.500000Z", "2024-03-01T10:05:00.000000Z"]
    assert ("1  Amplitude rows whose event_time is missing or invalid: their client_event_time was used"
            in result.stdout)
    assert ("1  Amplitude rows whose event_time is missing or invalid: their server_upload_time was used"
            in result.stdout)


def test_mixpanel_country_names_and_numeric_insert_ids():
    [event] = MixpanelAdapter(ColumnMapping()).to_events({"event": "x", "properties": {
        "time": 1709287200, "distinct_id": "ana", "mp_country_code": "gb", "$insert_id": 12345}})
    assert event.properties["$geoip_country_name"] == "United Kingdom"
    assert event.properties["$set"]["$geoip_country_name"] == "United Kingdom"
    # PostHog's importer reads text insert ids only (a number gets a random uuid); ours is the number's text
    assert event.uuid == str(uuid.uuid5(uuid.UUID(bytes=b"posthog_mixpanel"), "12345"))


# --- accounting -------------------------------------------------------------------------------------------------

def test_the_people_counters_survive_the_manifest_and_add_up_across_files():
    first, second = PrepareStats(), PrepareStats()
    first.add_illegal_ids(["user_id 'null'", "user_id 'null'"])
    second.add_illegal_ids(["device_id '0'"])
    first.shared_devices, second.shared_devices = 1, 2
    first.profiles["(person profile) → $set"] = 3
    second.group_types.update({"company": 4})
    first.merge(PrepareStats.from_dict(second.to_dict()))
    loaded = PrepareStats.from_dict(orjson.loads(orjson.dumps(first.to_dict())))
    assert loaded.illegal_ids == {"user_id 'null'": 2, "device_id '0'": 1}
    assert (loaded.shared_devices, loaded.profiles, loaded.group_types) == (
        3, {"(person profile) → $set": 3}, {"company": 4})
    older = {key: value for key, value in first.to_dict().items()
             if key not in ("illegal_ids", "shared_devices", "profiles", "group_types")}
    assert PrepareStats.from_dict(older).shared_devices == 0  # a manifest written before these existed


def test_a_gzipped_engage_page_is_read_too(tmp_path):
    (tmp_path / "people.json.gz").write_bytes(gzip.compress(json.dumps(ENGAGE_PAGE, indent=1).encode()))
    rows = rows_of(MixpanelAdapter(ColumnMapping()).read(source(tmp_path / "people.json.gz")))
    assert len(rows) == 3


def test_a_prepare_killed_after_a_spill_resumes_to_the_same_merges_and_profiles(tmp_path):
    """Held merges, sightings and untimed profiles are spilled with the file's checkpoints: a prepare killed after
    one sends, once resumed, exactly what an uninterrupted one sends."""
    import subprocess
    import sys

    from posthog_migrate.checkpoint import CRASH_EXIT_CODE, CRASH_POINT_VARIABLE

    from .conftest import cli_environment

    rows = []
    for n in range(12_000):  # more than a chunk (5,000 rows): the first checkpoint comes inside the file
        user, device = f"usr_{n % 3_000}", f"dev-{n % 2_500}"  # devices shared by more than one user
        if n % 10 == 0:
            rows.append({"event": "$identify", "properties": {"time": 1709287200 + n, "$identified_id": user,
                                                              "$anon_id": f"$device:{device}", "$insert_id": f"i{n}"}})
        else:
            rows.append({"event": "Note Created", "properties": {"time": 1709287200 + n, "distinct_id": user,
                                                                 "$user_id": user, "$device_id": device,
                                                                 "$insert_id": f"e{n}"}})
    write_jsonl(tmp_path / "events.jsonl", rows)
    write_jsonl(tmp_path / "people.jsonl", [
        {"$distinct_id": f"usr_{n}", "$properties": {"$email": f"u{n}@example.com", **(
            {"$last_seen": "2024-03-01T12:00:00"} if n % 4 else {})}} for n in range(300)])
    env = cli_environment()
    command = [sys.executable, "-m", "posthog_migrate", "run", "events.jsonl", "people.jsonl", "--format", "mixpanel",
               "--dry-run", "--memory", "1MiB", "--job", "same", "--workers", "1", "-q"]
    clean = subprocess.run([*command, "--workdir", "clean"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert "Shared devices:    2,500 devices" in clean.stdout and "Profiles:          300" in clean.stdout
    crashed = subprocess.run([*command, "--workdir", "job"], cwd=tmp_path, capture_output=True, text=True,
                             env={**env, CRASH_POINT_VARIABLE: "after-prepare-checkpoint@1"})
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    resumed = subprocess.run([*command, "--workdir", "job"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    def sent(job: str) -> list[dict]:
        return [e for path in sorted((tmp_path / job / "dry-run").glob("batch-*.json"))
                for e in orjson.loads(path.read_bytes())["batch"]]

    assert sent("job") == sent("clean")
    assert (orjson.loads((tmp_path / "job" / "manifest.json").read_bytes())["stats"]
            == orjson.loads((tmp_path / "clean" / "manifest.json").read_bytes())["stats"])
    merged = merges(sent("clean"))
    assert len({other for _, other in merged}) == len(merged)  # each device merged once, into one user
