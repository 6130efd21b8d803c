"""Pulling amplitude:// and mixpanel:// sources through their export APIs: real processes against the
stand-ins of tests/vendor_standins.py (which log every request) and the real capture server."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from posthog_migrate.capture import CaptureServer
from posthog_migrate.checkpoint import CRASH_EXIT_CODE, CRASH_POINT_VARIABLE
from posthog_migrate.pull.sources import HOUR, parse_api_uri

from .conftest import TEST_API_KEY, cli_environment, read_received, run_cli
from .vendor_standins import (
    AMPLITUDE_KEY,
    AMPLITUDE_SECRET,
    MIXPANEL_SECRET,
    PROJECT_ID,
    SERVICE_ACCOUNT,
    SERVICE_SECRET,
    StandInData,
    VendorStandIn,
    amplitude_events,
    mixpanel_events,
    profiles,
)

AMPLITUDE_ENV = {"AMPLITUDE_API_KEY": AMPLITUDE_KEY, "AMPLITUDE_SECRET_KEY": AMPLITUDE_SECRET}
SERVICE_ENV = {"MIXPANEL_SERVICE_ACCOUNT": SERVICE_ACCOUNT, "MIXPANEL_SERVICE_SECRET": SERVICE_SECRET}
FAST = ["--retry-delay", "0.01", "-q"]


def _env(**extra: str) -> dict[str, str]:
    return cli_environment(POSTHOG_API_KEY=TEST_API_KEY, **extra)


def _amplitude(stand_in: VendorStandIn, start: str, end: str) -> str:
    return f"amplitude://export?start={start}&end={end}&endpoint={stand_in.url}"


def _run(tmp_path: Path, sources: list[str], host: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(["run", *sources, "--host", host, "--workdir", "job", *FAST, *extra], tmp_path, env)


def _days(first: str, count: int) -> list[str]:
    start = datetime.fromisoformat(first)
    return [f"{start + timedelta(days=n):%Y-%m-%d}" for n in range(count)]


def _hours_asked(stand_in: VendorStandIn, statuses: tuple[int, ...] = (200, 404)) -> Counter:
    """How often each hour was fetched, counting the answers that are complete chunks."""
    asked = Counter()
    for entry in stand_in.requests("amplitude"):
        if entry.status in statuses:
            hour = datetime.strptime(entry.params["start"], "%Y%m%dT%H")
            while hour <= datetime.strptime(entry.params["end"], "%Y%m%dT%H"):
                asked[hour] += 1
                hour += HOUR
    return asked


def _assert_delivered(server: CaptureServer, uuids: set[str]) -> None:
    """Every event of the source arrived; every duplicate is byte-identical to its first copy."""
    first_copy: dict[str, bytes] = {}
    for event in server.events:
        line = orjson.dumps(event)
        assert first_copy.setdefault(event["uuid"], line) == line, "a re-sent event differs from its first copy"
    received = {uuid for uuid, line in first_copy.items() if orjson.loads(line)["event"] not in ("$identify",)}
    assert uuids <= received


# --- the plan ----------------------------------------------------------------------------------------

@given(vendor=st.sampled_from(["amplitude", "mixpanel"]), first=st.integers(0, 900), length=st.integers(0, 800),
       hour=st.integers(0, 23), splits=st.lists(st.integers(0, 10_000), max_size=8))
def test_the_chunks_cover_the_range_once_and_nothing_outside_it(vendor, first, length, hour, splits):
    start = datetime(2023, 1, 1) + timedelta(days=first)
    end = start + timedelta(days=length)
    if vendor == "amplitude":
        uri = f"amplitude://export?start={start:%Y-%m-%d}T{hour:02d}&end={end:%Y-%m-%d}"
    else:
        uri = f"mixpanel://export?start={start:%Y-%m-%d}&end={end:%Y-%m-%d}"
    source = parse_api_uri(uri)
    chunks = source.plan()
    for pick in splits:  # halving, as timeouts and size limits ask, keeps the cover exact
        chunk = chunks[pick % len(chunks)]
        if chunk.halves():
            at = chunks.index(chunk)
            chunks[at:at + 1] = chunk.halves()
    units = [chunk.first + n * chunk.unit for chunk in chunks for n in range(chunk.units)]
    step = chunks[0].unit
    expected = [source.first + n * step for n in range((source.last - source.first) // step + 1)]
    assert units == expected  # each hour or day once, in order, from start to end inclusive
    assert all(chunk.units <= (24 if vendor == "amplitude" else 31) for chunk in chunks)


# --- Amplitude ---------------------------------------------------------------------------------------

def test_amplitude_pull_asks_for_each_day_once_and_a_404_day_is_an_empty_chunk(tmp_path):
    events = amplitude_events(["2024-01-01", "2024-01-03", "2024-01-05"], hours=range(0, 24, 2))
    with VendorStandIn(StandInData(amplitude=events)) as stand_in, CaptureServer() as server:
        source = _amplitude(stand_in, "2024-01-01T05", "2024-01-05T10")
        result = run_cli(["run", source, "--host", server.url, "--workdir", "job", "--retry-delay", "0.01"],
                         tmp_path, _env(**AMPLITUDE_ENV))
        assert result.returncode == 0, result.stderr
        asked = [(entry.params["start"], entry.params["end"], entry.status) for entry in stand_in.log]
        assert asked == [("20240101T05", "20240101T23", 200), ("20240102T00", "20240102T23", 404),
                         ("20240103T00", "20240103T23", 200), ("20240104T00", "20240104T23", 404),
                         ("20240105T00", "20240105T10", 200)]
        assert "5 chunks downloaded (2 empty: no data)" in result.stderr
        inside = {e["uuid"] for e in events if "2024-01-01 05" <= e["server_upload_time"][:13] <= "2024-01-05 10"}
        _assert_delivered(server, inside)
        sent = {event["uuid"] for event in server.events}
        assert not {e["uuid"] for e in events} - inside & sent  # nothing uploaded outside the range
        # A second run asks for nothing: the empty days are complete too.
        again = run_cli(["run", source, "--host", server.url, "--workdir", "job", "-q"], tmp_path,
                        _env(**AMPLITUDE_ENV))
        assert again.returncode == 0, again.stderr
        assert len(stand_in.log) == 5


def test_a_day_over_the_size_limit_is_halved_down_to_hours(tmp_path):
    events = amplitude_events(["2024-02-10"], per_hour=4, hours=range(24))
    hour_bytes = max(sum(len(orjson.dumps(e)) + 1 for e in events if e["server_upload_time"][11:13] == f"{h:02d}")
                     for h in range(24))
    with VendorStandIn(StandInData(amplitude=events), size_cap=int(hour_bytes * 2.5)) as stand_in:
        result = _run(tmp_path, [_amplitude(stand_in, "2024-02-10", "2024-02-10")], "local", _env(**AMPLITUDE_ENV))
        assert result.returncode == 0, result.stderr
        assert stand_in.requests("amplitude", 400)  # the day, then halves of it, were too big
        asked = _hours_asked(stand_in)
        assert list(asked.values()) == [1] * 24 and min(asked) == datetime(2024, 2, 10)
        assert "asking for it in two halves (20240210T00-20240210T11, 20240210T12-20240210T23)" in result.stderr
    received = {orjson.loads(line)["uuid"] for line in (tmp_path / "job/local-capture/events.jsonl").open("rb")}
    assert {e["uuid"] for e in events} <= received


def test_a_range_over_365_days_is_fetched_a_day_at_a_time(tmp_path):
    events = amplitude_events(["2023-01-01", "2023-07-01", "2024-02-15"], hours=[3])
    with VendorStandIn(StandInData(amplitude=events)) as stand_in:
        result = _run(tmp_path, [_amplitude(stand_in, "2023-01-01", "2024-02-15")], "local", _env(**AMPLITUDE_ENV),
                      "--dry-run")
        assert result.returncode == 0, result.stderr
        asked = _hours_asked(stand_in)
        assert len(stand_in.log) == 411 and len(asked) == 411 * 24 and set(asked.values()) == {1}
        assert len(stand_in.requests("amplitude", 200)) == 3


def test_kill_9_mid_download_mid_prepare_and_mid_send_loses_nothing_and_downloads_nothing_twice(tmp_path):
    days = _days("2024-03-01", 6)
    events = amplitude_events(days, per_hour=6)
    with VendorStandIn(StandInData(amplitude=events)) as stand_in, CaptureServer() as server:
        source = _amplitude(stand_in, days[0], days[-1])
        command = [sys.executable, "-m", "posthog_migrate", "run", source, "--host", server.url, "--workdir", "job",
                   "--batch-size", "50", "--concurrency", "2", *FAST]
        stand_in.faults["amplitude"] = ["ok", "ok", "stall:300"]  # the third day's body stops half-way
        process = subprocess.Popen(command, cwd=tmp_path, env=_env(**AMPLITUDE_ENV), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        assert stand_in.stalled.wait(60), "the download never reached the third day"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        stand_in.release.set()
        book = orjson.loads((tmp_path / "job/downloads/pull.json").read_bytes())
        chunks = next(iter(book["sources"].values()))["chunks"]
        assert [("bytes" in chunk) for chunk in chunks] == [True, True, False, False, False, False]
        status = run_cli(["status", "--workdir", "job"], tmp_path)
        assert "downloading from the export API: 2 of 6 chunks complete" in status.stdout
        for point in ("after-prepare-file@3", "after-checkpoint@2"):
            crashed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                     env=_env(**AMPLITUDE_ENV, **{CRASH_POINT_VARIABLE: point}))
            assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=_env(**AMPLITUDE_ENV))
        assert done.returncode == 0, done.stderr
        asked = Counter(entry.params["start"] for entry in stand_in.log)
        assert asked == Counter({f"{day.replace('-', '')}T00": 1 for day in days}) + Counter(["20240303T00"])
        _assert_delivered(server, {e["uuid"] for e in events})


def test_a_chunk_renamed_into_place_before_the_kill_is_kept_not_fetched_again(tmp_path):
    events = amplitude_events(["2024-04-01", "2024-04-02"])
    with VendorStandIn(StandInData(amplitude=events)) as stand_in:
        source = _amplitude(stand_in, "2024-04-01", "2024-04-02")
        crash = {CRASH_POINT_VARIABLE: "after-download-rename"}
        crashed = _run(tmp_path, [source], "local", _env(**AMPLITUDE_ENV, **crash))
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
        result = _run(tmp_path, [source], "local", _env(**AMPLITUDE_ENV))
        assert result.returncode == 0, result.stderr
        assert [entry.params["start"] for entry in stand_in.log] == ["20240401T00", "20240402T00"]


# --- Mixpanel ----------------------------------------------------------------------------------------

def _mixpanel(stand_in: VendorStandIn, start: str, end: str, extra: str = "") -> str:
    return f"mixpanel://export?project_id={PROJECT_ID}&start={start}&end={end}&endpoint={stand_in.url}{extra}"


def test_mixpanel_pull_asks_a_month_at_a_time_and_a_cut_body_is_asked_for_again_whole(tmp_path):
    small = mixpanel_events(["2024-01-20"], per_day=2, prefix="jan")   # under 1,400 bytes: never gzip'd
    big = mixpanel_events(_days("2024-02-01", 29), per_day=8, prefix="feb")
    late = mixpanel_events(["2024-02-14"], per_day=3, prefix="late")  # in the export from the second call on
    with VendorStandIn(StandInData(mixpanel=small + big, mixpanel_late=late)) as stand_in:
        stand_in.faults["export"] = ["ok", "cut:2000"]
        result = _run(tmp_path, [_mixpanel(stand_in, "2024-01-15", "2024-03-10")], "local", _env(**SERVICE_ENV))
        assert result.returncode == 0, result.stderr
        asked = [(e.params["from_date"], e.params["to_date"], e.status) for e in stand_in.log]
        assert asked == [("2024-01-15", "2024-01-31", 200), ("2024-02-01", "2024-02-29", 200),
                         ("2024-02-01", "2024-02-29", 200), ("2024-03-01", "2024-03-10", 200)]
        assert all(e.params["project_id"] == PROJECT_ID and e.auth == SERVICE_ACCOUNT for e in stand_in.log)
    folder = next((tmp_path / "job/downloads").glob("mixpanel-export-*"))
    assert sorted(path.name for path in folder.iterdir()) == ["2024-01-15_2024-01-31.jsonl",
                                                              "2024-02-01_2024-02-29.jsonl.gz"]  # March: empty
    received = [orjson.loads(line) for line in (tmp_path / "job/local-capture/events.jsonl").open("rb")]
    insert_ids = {event["properties"].get("$insert_id") for event in received}
    assert {e["properties"]["$insert_id"] for e in small + big + late} <= insert_ids


def test_a_mixpanel_chunk_that_times_out_is_halved(tmp_path):
    events = mixpanel_events(_days("2024-05-01", 31), per_day=2)
    with VendorStandIn(StandInData(mixpanel=events)) as stand_in:
        stand_in.faults["export"] = ["slow:2"]
        source = _mixpanel(stand_in, "2024-05-01", "2024-05-31", "&timeout=0.5")
        result = _run(tmp_path, [source], "local", _env(MIXPANEL_API_SECRET=MIXPANEL_SECRET))
        assert result.returncode == 0, result.stderr
        assert "no answer within 0.5 s; asking for it in two halves (2024-05-01_2024-05-15, " in result.stderr
        answered = [(e.params["from_date"], e.params["to_date"]) for e in stand_in.log if e.status == 200]
        assert answered == [("2024-05-01", "2024-05-15"), ("2024-05-16", "2024-05-31")]
        assert all(e.auth == MIXPANEL_SECRET for e in stand_in.log)  # the legacy secret, as user name


def test_a_rate_limit_waits_as_retry_after_says_or_backs_off_and_shows_the_wait(tmp_path):
    events = mixpanel_events(_days("2024-06-01", 3))
    with VendorStandIn(StandInData(mixpanel=events)) as stand_in:
        stand_in.faults["export"] = ["429:retry-after=1", "429:retry-after-date=2", "429"]
        started = time.monotonic()
        result = _run(tmp_path, [_mixpanel(stand_in, "2024-06-01", "2024-07-02")], "local", _env(**SERVICE_ENV))
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        waits = [line for line in result.stderr.splitlines() if line.startswith("Mixpanel rate limit: waiting")]
        assert len(waits) == 3 and waits[0] == "Mixpanel rate limit: waiting 1.0 s, 0/2 chunks done"
        assert waits[2] == "Mixpanel rate limit: waiting 0.6 s, 0/2 chunks done"  # 60 × --retry-delay
        assert elapsed >= 1 + 1 + 0.6
        assert [e.status for e in stand_in.log] == [429, 429, 429, 200, 200]


@pytest.mark.parametrize(("uri_kind", "env", "fault", "expected"), [
    ("amplitude", {"AMPLITUDE_API_KEY": "wrong", "AMPLITUDE_SECRET_KEY": "wrong"}, None,
     "Amplitude refused the credentials (401 (Invalid credentials)): check AMPLITUDE_API_KEY and AMPLITUDE_SECRET_KEY"),
    ("amplitude", AMPLITUDE_ENV, "403", "Amplitude refused the credentials (403"),
    ("mixpanel", {"MIXPANEL_SERVICE_ACCOUNT": SERVICE_ACCOUNT, "MIXPANEL_SERVICE_SECRET": "wrong"}, None,
     "Mixpanel refused the credentials (401 (Invalid credentials)): check MIXPANEL_SERVICE_ACCOUNT and"),
    ("mixpanel", SERVICE_ENV, "402", "Mixpanel answered 402: the project's plan does not include the raw data export"),
    ("mixpanel", SERVICE_ENV, "403", "Mixpanel answered 403 (You do not have access to this project): the "
                                     "credentials have no access"),
    ("amplitude", {}, None, "no Amplitude credentials: set AMPLITUDE_API_KEY and AMPLITUDE_SECRET_KEY"),
])
def test_a_refusal_stops_the_run_with_the_fix(tmp_path, uri_kind, env, fault, expected):
    with VendorStandIn(StandInData()) as stand_in:
        if fault:
            stand_in.faults["amplitude" if uri_kind == "amplitude" else "export"] = [fault]
        source = (_amplitude(stand_in, "2024-01-01", "2024-01-02") if uri_kind == "amplitude"
                  else _mixpanel(stand_in, "2024-01-01", "2024-01-02"))
        result = _run(tmp_path, [source], "local", _env(**env))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_credentials_are_never_written_to_the_work_directory_nor_printed(tmp_path):
    secrets = [AMPLITUDE_KEY, AMPLITUDE_SECRET, SERVICE_SECRET, MIXPANEL_SECRET,
               base64.b64encode(f"{AMPLITUDE_KEY}:{AMPLITUDE_SECRET}".encode()).decode(),
               base64.b64encode(f"{SERVICE_ACCOUNT}:{SERVICE_SECRET}".encode()).decode()]
    data = StandInData(amplitude=amplitude_events(["2024-01-01"]), mixpanel=mixpanel_events(["2024-01-01"]),
                       profiles=profiles(5))
    credentials = tmp_path / "vendors.env"
    credentials.write_text(f"export MIXPANEL_SERVICE_ACCOUNT={SERVICE_ACCOUNT}\n"
                           f"MIXPANEL_SERVICE_SECRET='{SERVICE_SECRET}'  \n# a comment\n")
    outputs = []
    with VendorStandIn(data) as stand_in:
        stand_in.faults["amplitude"] = ["500", "429:retry-after=0"]
        stand_in.faults["export"] = ["401"]  # echoes nothing, but goes through the scrubber all the same
        runs = [
            (["run", _amplitude(stand_in, "2024-01-01", "2024-01-01"), "--host", "local", "--workdir", "a",
              "--retry-delay", "0.01"], _env(**AMPLITUDE_ENV)),
            (["run", _mixpanel(stand_in, "2024-01-01", "2024-01-01"), "--host", "local", "--workdir", "m",
              "--source-credentials", str(credentials)], _env()),
            (["run", _mixpanel(stand_in, "2024-01-01", "2024-01-01"),
              f"mixpanel://engage?project_id={PROJECT_ID}&endpoint={stand_in.url}", "--host", "local", "--workdir",
              "m2", "--source-credentials", str(credentials)], _env()),
            (["run", f"amplitude://{AMPLITUDE_KEY}:{AMPLITUDE_SECRET}@export?start=2024-01-01&end=2024-01-01",
              "--host", "local"], _env()),
            (["run", f"mixpanel://export?start=2024-01-01&end=2024-01-01&api_secret={MIXPANEL_SECRET}",
              "--host", "local"], _env()),
        ]
        for arguments, env in runs:
            result = run_cli(arguments, tmp_path, env)
            outputs.append((result.returncode, result.stdout + result.stderr))
    codes = [code for code, _ in outputs]
    assert codes == [0, 2, 0, 2, 2]  # the second: the 401 fault
    assert "remove the credentials from the URI" in outputs[3][1] and "remove api_secret from the URI" in outputs[4][1]
    written = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and path != credentials)
    for secret in secrets:
        assert secret.encode() not in written
        assert all(secret not in text for _, text in outputs)


# --- Engage ------------------------------------------------------------------------------------------

def test_engage_pages_are_read_under_one_session_and_a_killed_pull_continues_at_its_page(tmp_path):
    data = StandInData(profiles=profiles(2_500))
    with VendorStandIn(data) as stand_in:
        source = f"mixpanel://engage?project_id={PROJECT_ID}&endpoint={stand_in.url}"
        crash = {CRASH_POINT_VARIABLE: "after-engage-page@2"}
        crashed = _run(tmp_path, [source], "local", _env(**SERVICE_ENV, **crash))
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
        result = _run(tmp_path, [source], "local", _env(**SERVICE_ENV))
        sessions = [entry.params.get("session_id") for entry in stand_in.log]
        assert [entry.params.get("page") for entry in stand_in.log] == [None, "1", "2"]
        assert sessions[0] is None and sessions[1] is not None and sessions[1] == sessions[2]
        assert all(entry.params["project_id"] == PROJECT_ID and entry.status == 200 for entry in stand_in.log)
    folder = next((tmp_path / "job/downloads").glob("mixpanel-engage-*"))
    pages = [orjson.loads(path.read_bytes()) for path in sorted(folder.glob("page-*.json"))]
    assert [len(page["results"]) for page in pages] == [1000, 1000, 500]
    assert [p["$distinct_id"] for page in pages for p in page["results"]] == [f"u{n}" for n in range(2_500)]
    assert result.returncode == 0, result.stderr
    assert "✓ balanced" in result.stdout and "Profiles:          2,500" in result.stdout
    received = read_received(tmp_path / "job/local-capture/events.jsonl")
    assert sorted(event["distinct_id"] for event in received if event["event"] == "$set") == \
        sorted(f"u{n}" for n in range(2_500))


def test_a_profile_listing_that_expired_while_stopped_is_listed_again_from_its_first_page(tmp_path):
    data = StandInData(profiles=profiles(1_500))
    with VendorStandIn(data) as stand_in:
        crash = {CRASH_POINT_VARIABLE: "after-engage-page@1"}
        source = f"mixpanel://engage?project_id={PROJECT_ID}&endpoint={stand_in.url}"
        assert _run(tmp_path, [source], "local", _env(**SERVICE_ENV, **crash)).returncode == CRASH_EXIT_CODE
    with VendorStandIn(data) as restarted:  # a new server: the session is unknown there (400)
        result = _run(tmp_path, [source.replace(stand_in.url, restarted.url)], "local", _env(**SERVICE_ENV))
        assert [(e.params.get("page"), e.status) for e in restarted.log] == [("1", 400), (None, 200), ("1", 200)]
    assert "listing the profiles again from the first page" in result.stderr
    folder = next((tmp_path / "job/downloads").glob("mixpanel-engage-*"))
    pages = [orjson.loads(path.read_bytes()) for path in sorted(folder.glob("page-*.json"))]
    assert [len(page["results"]) for page in pages] == [1000, 500]
    assert len({page["session_id"] for page in pages}) == 1


def test_group_profiles_pages_say_their_group_type(tmp_path):
    data = StandInData(group_profiles=[{"$distinct_id": "acme", "$properties": {"$name": "Acme"}}])
    with VendorStandIn(data) as stand_in:
        source = f"mixpanel://engage?project_id={PROJECT_ID}&data_group_id=7&group_type=company&endpoint={stand_in.url}"
        result = _run(tmp_path, [source], "local", _env(**SERVICE_ENV))
        assert stand_in.log[0].params["data_group_id"] == "7" and "group_type" not in stand_in.log[0].params
    assert result.returncode == 0, result.stderr
    page = orjson.loads(next((tmp_path / "job/downloads").glob("mixpanel-engage-*/page-00000.json")).read_bytes())
    assert page["group_type"] == "company" and page["results"][0]["$distinct_id"] == "acme"
    # A group's profile: $groupidentify of its type, not a person's $set.
    [event] = read_received(tmp_path / "job/local-capture/events.jsonl")
    assert event["event"] == "$groupidentify"
    assert event["properties"]["$group_type"] == "company" and event["properties"]["$group_key"] == "acme"


# --- the job around the pull -------------------------------------------------------------------------

def test_a_changed_range_is_refused_like_a_changed_input(tmp_path):
    with VendorStandIn(StandInData(amplitude=amplitude_events(["2024-01-01"]))) as stand_in:
        assert _run(tmp_path, [_amplitude(stand_in, "2024-01-01", "2024-01-02")], "local",
                    _env(**AMPLITUDE_ENV)).returncode == 0
        asked = len(stand_in.log)
        result = _run(tmp_path, [_amplitude(stand_in, "2024-01-01", "2024-01-03")], "local", _env(**AMPLITUDE_ENV))
        assert result.returncode == 2
        assert ("was prepared from different inputs or mapping: no longer pulled: "
                "amplitude://export?end=2024-01-02&start=2024-01-01; now pulled: "
                "amplitude://export?end=2024-01-03&start=2024-01-01") in result.stderr
        assert len(stand_in.log) == asked  # refused before asking the API anything


def test_restart_keeps_the_downloads_and_redownload_fetches_them_again(tmp_path):
    with VendorStandIn(StandInData(amplitude=amplitude_events(["2024-01-01"]))) as stand_in:
        source = _amplitude(stand_in, "2024-01-01", "2024-01-01")
        assert _run(tmp_path, [source], "local", _env(**AMPLITUDE_ENV)).returncode == 0
        assert _run(tmp_path, [source], "local", _env(**AMPLITUDE_ENV), "--restart").returncode == 0
        assert len(stand_in.log) == 1
        refused = _run(tmp_path, [source], "local", _env(**AMPLITUDE_ENV), "--redownload")
        assert refused.returncode == 2 and "--redownload starts the job over from new downloads" in refused.stderr
        assert _run(tmp_path, [source], "local", _env(**AMPLITUDE_ENV), "--restart", "--redownload").returncode == 0
        assert len(stand_in.log) == 2
        next((tmp_path / "job/downloads").glob("amplitude-export-*/*.zip")).unlink()  # lost before a restart
        result = _run(tmp_path, [source], "local", _env(**AMPLITUDE_ENV), "--restart")
        assert result.returncode == 0 and "missing or changed since it was downloaded" in result.stderr
        assert len(stand_in.log) == 3


def test_inspect_reuses_what_a_run_downloaded_and_a_run_what_inspect_downloaded(tmp_path):
    events = amplitude_events(["2024-01-01"])
    with VendorStandIn(StandInData(amplitude=events)) as stand_in:
        source = _amplitude(stand_in, "2024-01-01", "2024-01-01")
        inspected = run_cli(["inspect", source], tmp_path, _env(**AMPLITUDE_ENV))
        assert inspected.returncode == 0, inspected.stderr
        assert f"Rows read:         {len(events)}" in inspected.stdout
        with VendorStandIn(StandInData(amplitude=events)) as elsewhere:  # another endpoint, the same job
            moved = source.replace(stand_in.url, elsewhere.url)
            result = run_cli(["run", moved, "--host", "local", "-q"], tmp_path, _env(**AMPLITUDE_ENV))
            assert result.returncode == 0, result.stderr
            again = run_cli(["inspect", moved], tmp_path, _env(**AMPLITUDE_ENV))
            assert again.returncode == 0 and not elsewhere.log
        assert len(stand_in.log) == 1


def test_a_range_ending_now_warns_that_late_events_are_not_in_the_job(tmp_path):
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    with VendorStandIn(StandInData()) as stand_in:
        result = _run(tmp_path, [_amplitude(stand_in, today, today)], "local", _env(**AMPLITUDE_ENV))
        mixpanel = _run(tmp_path, [_mixpanel(stand_in, today, today)], "local", _env(**SERVICE_ENV))
    assert "Amplitude exports events about 2 hours after it receives them" in result.stderr
    assert "Pull the tail later as a job of its own" in result.stderr
    assert result.returncode == 2 and "no data in the range" in result.stderr  # every hour answered 404
    assert "Mixpanel exports events up to 5 days late" in mixpanel.stderr
