"""The Heap adapter: Heap Connect tables as CSV, Parquet (and Avro when fastavro is installed), the
user_migrations / users / sessions lookups, and junk.

Rules from ../shared/reference/source-formats.md ("Common rules", "Heap"): the event is the table's name,
ids are int64 read as text, identity wins over the user id, user_migrations are applied first,
$current_url comes from domain+path+query+hash, "direct" is no referrer, uuid = UUIDv5("heap:" + event_id).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from posthog_migrate.adapters import adapter_class
from posthog_migrate.adapters.common import session_uuid7
from posthog_migrate.adapters.heap import HeapAdapter, current_url, split_version
from posthog_migrate.adapters.segment import TABLE_KEY
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import INSERT_ID_NAMESPACE, Rejection, parse_timestamp, validate
from posthog_migrate.mapping import ColumnMapping, Filtered

from .adapter_helpers import (
    as_json,
    assert_one_valid_event_or_a_rejection,
    events_of,
    json_values,
    rows_of,
    source,
)
from .conftest import PROJECT_ROOT, TEST_API_KEY, cli_environment, run_cli, write_csv, write_jsonl

NOW = parse_timestamp("2024-06-01T00:00:00Z")
BIG_USER = "8382649207485012345"  # an int64 that a float would round: must stay exact
PAGEVIEW = {
    "event_id": "5543219876543210987", "user_id": BIG_USER, "session_id": "1234567890123456",
    "time": "2024-03-05 14:03:27.412 UTC", "library": "web", "platform": "Mac OS X 10.15.7",
    "device_type": "Desktop", "browser": "Chrome", "country": "United States", "region": "California",
    "city": "San Francisco", "ip": "203.0.113.24", "referrer": "https://www.google.com/search?q=notes",
    "landing_page": "acmenotes.com/", "domain": "acmenotes.com", "path": "/pricing", "query": "?plan=team",
    "hash": "#faq", "title": "Pricing – Acme Notes", "utm_source": "google", "utm_medium": "cpc",
}


def adapter(**options) -> HeapAdapter:
    return HeapAdapter(ColumnMapping(source_options=tuple(sorted(options.items()))))










def heap_uuid(event_id: str) -> str:
    return str(uuid.uuid5(INSERT_ID_NAMESPACE, f"heap:{event_id}"))


def day_session(session: str, user: str, moment: str) -> str:
    day_ms = parse_timestamp(moment) // 1000 // 86_400_000 * 86_400_000
    return session_uuid7(day_ms, f"heap:{user}:{session}")


# --- golden ------------------------------------------------------------------------------------------------

def test_golden_pageview_from_a_csv_table(tmp_path):
    folder = tmp_path / "pageviews"
    folder.mkdir()
    write_csv(folder / "part-00000.csv", [PAGEVIEW])
    events = events_of(adapter(), folder / "part-00000.csv")
    assert as_json(events) == [{
        "json": {
            "uuid": heap_uuid("5543219876543210987"), "event": "$pageview", "distinct_id": BIG_USER,
            "timestamp": "2024-03-05T14:03:27.412000Z",
            "properties": {
                "landing_page": "acmenotes.com/", "utm_source": "google", "utm_medium": "cpc", "$lib": "web",
                "$os": "Mac OS X", "$os_version": "10.15.7", "$browser": "Chrome", "$device_type": "Desktop",
                "$ip": "203.0.113.24", "$referrer": "https://www.google.com/search?q=notes",
                "$referring_domain": "www.google.com",
                "$current_url": "https://acmenotes.com/pricing?plan=team#faq", "$host": "acmenotes.com",
                "$pathname": "/pricing", "title": "Pricing – Acme Notes",
                "$session_id": day_session("1234567890123456", BIG_USER, "2024-03-05T14:03:27.412Z"),
            }},
        "source_event": "pageviews", "link": None, "added": False}]
    assert events[0].uuid == "c6890030-b217-5c9e-9576-259f1df7d608"  # fixed forever: re-runs must dedupe
    validate(events[0], NOW)


def test_golden_custom_event_from_parquet_with_int64_ids_identity_and_no_ip(tmp_path):
    row = {"event_id": 9001, "user_id": 8382649207485012345, "session_id": 77, "identity": "ann@example.com",
           "time": datetime(2024, 3, 6, 9, 30, tzinfo=UTC), "library": "iOS", "platform": "iOS 17.2.1",
           "device_type": "Mobile", "country": "Germany", "region": "Berlin", "city": "Berlin", "ip": None,
           "referrer": "direct", "domain": None, "path": "/notes/new", "note_length": 412, "shared": False}
    folder = tmp_path / "heap" / "note_created"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row]), folder / "part-00001.parquet")
    events = events_of(adapter(), folder / "part-00001.parquet")
    assert as_json(events) == [{
        "json": {
            "uuid": heap_uuid("9001"), "event": "note_created", "distinct_id": "ann@example.com",
            "timestamp": "2024-03-06T09:30:00.000000Z",
            "properties": {
                "note_length": 412, "shared": False, "$lib": "iOS", "$os": "iOS", "$os_version": "17.2.1",
                "$device_type": "Mobile", "$geoip_disable": True, "$geoip_city_name": "Berlin",
                "$geoip_subdivision_1_name": "Berlin", "$geoip_country_name": "Germany",
                "$pathname": "/notes/new", "$session_id": day_session("77", BIG_USER, "2024-03-06T09:30:00Z"),
            }},
        "source_event": "note_created", "link": ["ann@example.com", BIG_USER], "added": False}]


def test_golden_users_row_becomes_a_set_event(tmp_path):
    write_csv(tmp_path / "users.csv", [{"user_id": "42", "identity": "bob@example.com", "email": "bob@example.com",
                                        "plan": "pro", "joindate": "2023-11-02 08:00:00", "seats": "5",
                                        "last_modified": "2024-03-01 10:00:00 UTC", "handle": ""}])
    events = events_of(adapter(), tmp_path / "users.csv")
    assert as_json(events) == [{
        "json": {"uuid": str(uuid.uuid5(INSERT_ID_NAMESPACE, "heap:user:42:1709287200000000")), "event": "$set",
                 "distinct_id": "bob@example.com", "timestamp": "2024-03-01T10:00:00.000000Z",
                 # $geoip_disable: else PostHog would locate the migration machine onto the person
                 "properties": {"$geoip_disable": True, "$set": {"email": "bob@example.com", "plan": "pro", "seats": 5},
                                "$set_once": {"joindate": "2023-11-02 08:00:00"}}},
        "source_event": "(person profile)", "link": ["bob@example.com", "42"], "added": False}]


def test_the_registry_knows_heap():
    assert adapter_class("heap") is HeapAdapter
    assert HeapAdapter.extensions == () and HeapAdapter.source_tag == "heap"


# --- tables -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("relative", "expected"), [
    ("pageviews.csv", "$pageview"), ("pageviews/part-0001.csv", "$pageview"),
    ("sync_1/checkout_clicked_buy/part-00000-a1b2.csv", "checkout_clicked_buy"),
    ("signup_completed.csv.gz", "signup_completed"),
])
def test_the_event_is_the_table_name(tmp_path, relative, expected):
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, [{"event_id": "1", "user_id": "2", "time": "2024-03-01 00:00:00"}], gz=relative.endswith(".gz"))
    (event,) = events_of(adapter(), path)
    assert event.event == expected


def test_all_events_table_names_each_row(tmp_path):
    write_csv(tmp_path / "all_events.csv", [
        {"event_id": "1", "user_id": "2", "time": "2024-03-01 00:00:00", "event_table_name": "pageviews"},
        {"event_id": "2", "user_id": "2", "time": "2024-03-01 00:00:01", "event_table_name": "2024_promo"},
    ])
    assert [e.event for e in events_of(adapter(), tmp_path / "all_events.csv")] == ["$pageview", "2024_promo"]


@pytest.mark.parametrize("table", ["sessions", "user_migrations"])
def test_lookup_tables_given_as_inputs_are_filtered(tmp_path, table):
    rows = ([{"session_id": "5", "user_id": "1", "time": "2024-03-01 00:00:00"}] if table == "sessions"
            else [{"from_user_id": "1", "to_user_id": "2"}])
    write_csv(tmp_path / f"{table}.csv", rows)
    a = adapter()
    ((_, row),) = rows_of(a.read(source(tmp_path / f"{table}.csv")))
    with pytest.raises(Filtered, match=f"\\[source\\] {table}"):
        a.to_events(row)


def test_csv_ids_stay_text_other_cells_are_inferred(tmp_path):
    write_csv(tmp_path / "purchase.csv", [{"event_id": "0012", "user_id": "0042", "session_id": "007",
                                           "time": "2024-03-01 00:00:00", "amount": "19.5", "zip": "02134",
                                           "path": "404", "title": "1"}])
    (event,) = events_of(adapter(), tmp_path / "purchase.csv")
    assert event.distinct_id == "0042" and event.uuid == heap_uuid("0012")
    assert event.properties["amount"] == 19.5 and event.properties["zip"] == "02134"
    assert event.properties["$pathname"] == "404" and event.properties["title"] == "1"


def test_url_pieces_and_referrer():
    assert current_url({"domain": "ex.com", "path": "a", "query": "x=1", "hash": "top"}) == "https://ex.com/a?x=1#top"
    assert current_url({"domain": "ex.com"}) == "https://ex.com/"
    assert current_url({"domain": "http://ex.com/", "path": "/b"}) == "http://ex.com/b"
    assert current_url({"path": "/b"}) is None
    for referrer in ("direct", "Direct", "", None):
        props = adapter().to_events({**PAGEVIEW, TABLE_KEY: "pageviews", "referrer": referrer})[0].properties
        assert "$referrer" not in props and "$referring_domain" not in props


def test_platform_and_browser_versions_are_split():
    assert split_version("Mac OS X 10.15.7") == ("Mac OS X", "10.15.7")
    assert split_version("Windows 10") == ("Windows", "10")
    assert split_version("Chrome OS 14541.0.0") == ("Chrome OS", "14541.0.0")
    assert split_version("Linux") == ("Linux", None)
    props = adapter().to_events({**PAGEVIEW, TABLE_KEY: "pageviews", "browser": "Firefox 123.0"})[0].properties
    assert (props["$browser"], props["$browser_version"]) == ("Firefox", "123.0")


def test_time_forms():
    for stamp in ("2024-03-05 14:03:27.412 UTC", "2024-03-05 14:03:27.412", "2024-03-05T14:03:27.412Z",
                  1709647407412):
        event = adapter().to_events({**PAGEVIEW, TABLE_KEY: "pageviews", "time": stamp})[0]
        assert event.timestamp_us == 1709647407412000, stamp


def test_without_event_id_the_uuid_comes_from_the_content():
    row = {**PAGEVIEW, TABLE_KEY: "pageviews", "event_id": None}
    assert adapter().to_events(dict(row))[0].uuid == adapter().to_events(dict(row))[0].uuid
    assert adapter().to_events(dict(row))[0].uuid != adapter().to_events({**row, "title": "x"})[0].uuid


@pytest.mark.parametrize(("fields", "reason"), [
    ({"user_id": None}, "missing_distinct_id"),
    ({"user_id": "null", "identity": ""}, "missing_distinct_id"),
    ({"user_id": [1]}, "missing_distinct_id"),
    ({"time": None}, "bad_timestamp"),
    ({"time": "soon"}, "bad_timestamp"),
    ({TABLE_KEY: None}, "missing_event_name"),
    ({TABLE_KEY: ""}, "missing_event_name"),
    ({TABLE_KEY: "all_events"}, "missing_event_name"),
])
def test_unusable_rows_are_rejected(fields, reason):
    with pytest.raises(Rejection) as caught:
        adapter().to_events({**PAGEVIEW, TABLE_KEY: "pageviews", **fields})
    assert caught.value.reason == reason


def test_drop_events_and_time_filters():
    a = HeapAdapter(ColumnMapping(drop_events=("pageviews",), since="2024-03-06"))
    with pytest.raises(Filtered):
        a.to_events({**PAGEVIEW, TABLE_KEY: "pageviews"})
    with pytest.raises(Filtered):
        a.to_events({**PAGEVIEW, TABLE_KEY: "note_created"})


def test_a_file_that_is_not_heap_is_a_config_error(tmp_path):
    write_jsonl(tmp_path / "ga4.jsonl", [{"event_name": "page_view", "user_pseudo_id": "p"}] * 5)
    with pytest.raises(ConfigError, match="ga4.jsonl.*--format"):
        rows_of(adapter().read(source(tmp_path / "ga4.jsonl")))


# --- lookups: user_migrations, users, sessions ---------------------------------------------------------------

def test_user_migrations_from_csv_and_parquet_are_applied_before_the_distinct_id(tmp_path):
    migrations = [{"from_user_id": "111", "to_user_id": "222"}, {"from_user_id": "222", "to_user_id": "333"},
                  {"from_user_id": "8", "to_user_id": "9"}, {"from_user_id": "9", "to_user_id": "8"}]
    write_csv(tmp_path / "user_migrations.csv", migrations)
    pq.write_table(pa.Table.from_pylist([{k: int(v) for k, v in m.items()} for m in migrations]),
                   tmp_path / "user_migrations.parquet")
    for name in ("user_migrations.csv", "user_migrations.parquet"):
        a = adapter(user_migrations=str(tmp_path / name))
        by_user = {u: a.to_events({**PAGEVIEW, TABLE_KEY: "pageviews", "user_id": u})[0] for u in ("111", "5", "8")}
        assert by_user["111"].distinct_id == "333"  # a chain is followed to its end
        assert by_user["5"].distinct_id == "5"
        assert by_user["8"].distinct_id in ("8", "9")  # a cycle ends, it does not hang
        # the session stays the device's: keyed by the user id the row had
        assert by_user["111"].properties["$session_id"] == day_session(
            PAGEVIEW["session_id"], "111", "2024-03-05T14:03:27.412Z")


def test_users_lookup_gives_the_identity_of_migrated_users(tmp_path):
    write_csv(tmp_path / "um.csv", [{"from_user_id": "111", "to_user_id": "222"}])
    write_csv(tmp_path / "users.csv", [{"user_id": "222", "identity": "carol@example.com"}])
    a = adapter(user_migrations=str(tmp_path / "um.csv"), users=str(tmp_path / "users.csv"))
    event = a.to_events({**PAGEVIEW, TABLE_KEY: "pageviews", "user_id": "111"})[0]
    assert (event.distinct_id, event.link) == ("carol@example.com", ("carol@example.com", "222"))
    own = a.to_events({**PAGEVIEW, TABLE_KEY: "pageviews", "user_id": "111", "identity": "own@example.com"})[0]
    assert own.distinct_id == "own@example.com"


def test_sessions_lookup_gives_the_session_start(tmp_path):
    write_csv(tmp_path / "sessions.csv", [{"session_id": "1234567890123456", "user_id": BIG_USER,
                                           "time": "2024-03-05 13:58:00 UTC"}])
    a = adapter(sessions=str(tmp_path / "sessions.csv"))
    first = a.to_events({**PAGEVIEW, TABLE_KEY: "pageviews"})[0]
    # a later event of the session, after midnight: still the same session
    later = a.to_events({**PAGEVIEW, TABLE_KEY: "pageviews", "event_id": "2", "time": "2024-03-06 00:10:00"})[0]
    session = uuid.UUID(first.properties["$session_id"])
    assert session.version == 7 and int(session.hex[:12], 16) == parse_timestamp("2024-03-05T13:58:00Z") // 1000
    assert later.properties["$session_id"] == first.properties["$session_id"]


@pytest.mark.parametrize(("option", "content", "match"), [
    ("user_migrations", None, "no such file"),
    ("user_migrations", "from,to\n1,2\n", "from_user_id and to_user_id"),
    ("users", "user_id,email\n1,a@b.c\n", "user_id and identity"),
    ("sessions", "session_id\n1\n", "session_id and time"),
])
def test_bad_lookup_files_are_config_errors(tmp_path, option, content, match):
    path = tmp_path / "lookup.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        adapter(**{option: str(path)})
    with pytest.raises(ConfigError, match="path"):
        adapter(**{option: 42})


def test_a_misspelt_setting_is_a_config_error_not_ignored(tmp_path):
    with pytest.raises(ConfigError, match="user_migration\\b.*user_migrations, users, sessions"):
        adapter(user_migration="um.csv")


# --- Avro (optional) -----------------------------------------------------------------------------------------

def test_avro_dump_when_fastavro_is_installed(tmp_path):
    fastavro = pytest.importorskip("fastavro")
    schema = fastavro.parse_schema({"type": "record", "name": "pageviews", "fields": [
        {"name": "event_id", "type": "long"}, {"name": "user_id", "type": "long"},
        {"name": "session_id", "type": ["null", "long"]}, {"name": "time", "type": "string"},
        {"name": "domain", "type": ["null", "string"]}, {"name": "path", "type": ["null", "string"]},
        {"name": "referrer", "type": ["null", "string"]}]})
    folder = tmp_path / "pageviews"
    folder.mkdir()
    records = [{"event_id": 10 + n, "user_id": 8382649207485012345, "session_id": 5, "time": "2024-03-01 10:00:00",
                "domain": "acmenotes.com", "path": f"/p{n}", "referrer": "direct"} for n in range(3)]
    with open(folder / "part-00000.avro", "wb") as handle:
        fastavro.writer(handle, schema, records)
    events = events_of(adapter(), folder / "part-00000.avro")
    assert [e.event for e in events] == ["$pageview"] * 3
    assert [e.uuid for e in events] == [heap_uuid(str(10 + n)) for n in range(3)]
    assert events[2].distinct_id == BIG_USER and events[2].properties["$current_url"] == "https://acmenotes.com/p2"
    (tmp_path / "junk.avro").write_bytes(b"not avro at all")
    with pytest.raises(ConfigError, match="junk.avro"):
        rows_of(adapter().read(source(tmp_path / "junk.avro")))


def test_avro_without_fastavro_is_a_config_error_with_the_fix(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_fastavro(name, *args, **kwargs):
        if name == "fastavro":
            raise ImportError("no fastavro here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fastavro)
    (tmp_path / "part.avro").write_bytes(b"Obj\x01")
    with pytest.raises(ConfigError, match="fastavro"):
        rows_of(adapter().read(source(tmp_path / "part.avro")))


# --- property test -------------------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["", "direct", "2024-03-01 10:00:00 UTC", "Mac OS X 10.15.7", "pageviews", "users"]))
JSON_VALUES = json_values(SCALARS)
KEYS = st.sampled_from([*PAGEVIEW, "identity", "event_table_name", "joindate", "last_modified", TABLE_KEY]) | st.text(
    max_size=8)


@st.composite
def mutated_rows(draw):
    row = copy.deepcopy({**PAGEVIEW, TABLE_KEY: draw(st.sampled_from(
        ["pageviews", "users", "sessions", "note_created", "all_events"]))})
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(sorted(row)) | KEYS)
        if draw(st.booleans()):
            row.pop(key, None)
        else:
            row[key] = draw(JSON_VALUES)
    return row


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.dictionaries(KEYS, JSON_VALUES, max_size=10), mutated_rows()))
def test_any_record_becomes_valid_events_or_a_rejection(row):
    assert_one_valid_event_or_a_rejection(adapter(), row, NOW)


# --- end to end ------------------------------------------------------------------------------------------------

def test_heap_tables_end_to_end_with_user_migrations(tmp_path, make_server):
    tables = tmp_path / "heap"
    (tables / "pageviews").mkdir(parents=True)
    write_csv(tables / "pageviews" / "part-00000.csv", [
        {**PAGEVIEW, "event_id": str(n), "user_id": str(100 + n % 3), "time": f"2024-03-01 10:0{n}:00 UTC"}
        for n in range(6)])
    pq.write_table(pa.Table.from_pylist([
        {"event_id": 50 + n, "user_id": 100 + n % 3, "session_id": 9, "time": f"2024-03-01 11:0{n}:00",
         "note_length": n * 10} for n in range(4)]), tables / "note_created.parquet")
    write_csv(tables / "sessions.csv", [{"session_id": "9", "user_id": "100", "time": "2024-03-01 09:00:00"}])
    write_csv(tmp_path / "user_migrations.csv", [{"from_user_id": "101", "to_user_id": "100"}])
    (tmp_path / "mapping.toml").write_text('[source]\nuser_migrations = "user_migrations.csv"\n')
    server = make_server()
    result = run_cli(["run", "heap", "--format", "heap", "--mapping", "mapping.toml", "--host", server.url,
                      "--rate", "0", "-q", "--workdir", "job"], tmp_path, cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 = 10 + 0 + 1" in result.stdout and "✓ balanced" in result.stdout
    received = server.events
    assert len(received) == 10 and len({e["uuid"] for e in received}) == 10
    assert {e["distinct_id"] for e in received} == {"100", "102"}  # 101 was migrated into 100
    assert sorted(e["event"] for e in received) == ["$pageview"] * 6 + ["note_created"] * 4
    assert {e["uuid"] for e in received if e["event"] == "note_created"} == {heap_uuid(str(50 + n)) for n in range(4)}
    assert all(e["properties"]["$import_source"] == "heap" for e in received)
    rejects = tmp_path / "job" / "rejects.jsonl"
    assert not rejects.exists() or not rejects.read_bytes().strip()
    assert orjson.loads(orjson.dumps(received[0]))["properties"]["$session_id"]


# --- the bundled sample ----------------------------------------------------------------------------------------

SAMPLE = PROJECT_ROOT / "sample_data" / "heap"


def test_the_sample_is_byte_stable_and_small(tmp_path):
    subprocess.run([sys.executable, str(SAMPLE / "generate.py"), "--out", str(tmp_path)], check=True, timeout=60)
    names = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(SAMPLE) for p in SAMPLE.rglob("*") if p.is_file() and p.name != "generate.py")
    for name in names:
        if name.suffix == ".parquet":  # its bytes also carry the writing pyarrow's version: compare the table
            assert pq.read_table(tmp_path / name).equals(pq.read_table(SAMPLE / name)), name
        else:
            assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), name
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 300_000


def test_the_sample_gives_what_its_readme_says(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)  # the mapping's lookup paths are relative to the repository's root
    a = HeapAdapter(ColumnMapping.from_toml(SAMPLE / "mapping.toml"))
    readme = (SAMPLE / "README.md").read_text()
    listed = re.findall(r"^\| `([^`]+)` \| (\d+) \| `(\w+)` \|", readme, re.MULTILINE)
    bad, ids, names = [], Counter(), Counter()
    records = 0
    for path in sorted(p for p in (SAMPLE / "tables").rglob("*") if p.is_file()):
        for number, row in rows_of(a.read(source(path))):
            records += 1
            try:
                if not isinstance(row, dict):
                    raise Rejection(row.reason, row.detail)
                (event,) = a.to_events(row)
            except Rejection as rejection:
                bad.append((str(path.relative_to(SAMPLE)), number, rejection.reason))
                continue
            validate(event, NOW)
            ids[event.distinct_id] += 1
            names[event.event] += 1
    assert sorted(bad) == sorted((path, int(row), reason) for path, row, reason in listed)
    assert records == 221 and sum(names.values()) == 218 and "221 records: 218 good" in readme
    assert names["$set"] == 13 and names["signup_completed"] == 13 and names["$pageview"] == 150
    # everyone who signed up is one person under their email, before and after the signup
    assert sum(1 for distinct_id in ids if distinct_id.endswith("@example.com")) == 13
    assert all(distinct_id.isdigit() for distinct_id in ids if "@" not in distinct_id)


def test_the_sample_through_the_cli_from_the_repository_root(tmp_path, make_server):
    shutil.copytree(SAMPLE, tmp_path / "sample_data" / "heap")
    server = make_server()
    result = run_cli(["run", "sample_data/heap/tables", "--format", "heap", "--mapping",
                      "sample_data/heap/mapping.toml", "--host", server.url, "--rate", "0", "-q", "--workdir", "job"],
                     tmp_path, cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert result.returncode == 3, result.stdout + result.stderr  # done, 3 rows rejected on purpose
    assert "221 = 218 + 3 + 0  ✓ balanced" in result.stdout
    assert len(server.events) == 218 + 13  # and one $identify per (identity, heap user) pair


def test_a_changed_lookup_file_stops_a_resume_and_is_named(tmp_path):
    shutil.copytree(PROJECT_ROOT / "sample_data" / "heap", tmp_path / "heap")
    args = ["run", "heap/tables", "--format", "heap", "--mapping", "heap/mapping.toml", "--dry-run", "--workdir", "job",
            "-q"]
    first = run_cli(args, tmp_path)
    assert first.returncode in (0, 3), first.stderr
    with open(tmp_path / "heap" / "lookups" / "user_migrations.csv", "a") as handle:
        handle.write("999999,888888\n")
    again = run_cli(args, tmp_path)
    assert again.returncode == 2
    assert "user_migrations.csv" in again.stderr and "changed" in again.stderr
