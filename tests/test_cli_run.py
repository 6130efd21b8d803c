"""`posthog-migrate run` end to end, as a real process, against the real capture server on 127.0.0.1."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import orjson
import pytest
from posthog_migrate.capture import CaptureServer, FaultPlan

from .conftest import (
    TEST_API_KEY,
    cli_environment,
    make_rows,
    read_received,
    run_cli,
    write_csv,
    write_jsonl,
    write_parquet,
)

FAST = ["--rate", "0", "--retry-delay", "0.01", "-q"]


def _run(tmp_path: Path, server: CaptureServer, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(["run", *args, "--host", server.url, *FAST], tmp_path,
                   env or cli_environment(POSTHOG_API_KEY=TEST_API_KEY))


def _no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


WRITERS = {
    "events.csv": lambda p, rows: write_csv(p, rows),
    "events.csv.gz": lambda p, rows: write_csv(p, rows, gz=True),
    "events.jsonl": lambda p, rows: write_jsonl(p, rows),
    "events.jsonl.gz": lambda p, rows: write_jsonl(p, rows, gz=True),
    "events.parquet": lambda p, rows: write_parquet(p, rows, row_group_size=300),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_round_trips_into_the_capture_server(tmp_path, make_server, name):
    rows = make_rows(1_200, seed=3)
    WRITERS[name](tmp_path / name, rows)
    server = make_server(out_path=tmp_path / "received.jsonl")
    result = _run(tmp_path, server, name, "--batch-size", "250")
    _no_traceback(result)
    assert result.returncode == 0, result.stderr
    received = read_received(tmp_path / "received.jsonl")
    assert len(received) == 1_200
    by_insert_id = {e["properties"]["plan"] + e["distinct_id"] + e["timestamp"][:19]: e for e in received}
    assert len(by_insert_id) > 1_000
    for event in received:
        assert set(event) == {"uuid", "event", "distinct_id", "timestamp", "properties"}
        assert event["properties"]["$import_source"] == name.split(".")[1]
        assert event["timestamp"].endswith("Z") and len(event["timestamp"]) == 27
        assert isinstance(event["properties"]["note_length"], int)
    assert all(r.historical_migration is True and not r.has_sent_at for r in server.requests)
    assert "✓ balanced" in result.stdout


def test_posthog_export_passes_through_keeping_uuids(tmp_path, capture_server):
    rows = [{"uuid": f"0190f2a4-0000-7000-8000-{n:012d}", "event": "$pageview", "distinct_id": f"d{n % 3}",
             "timestamp": f"2024-02-0{1 + n % 9}T10:00:00Z", "properties": {"$current_url": "https://x.test/"},
             "team_id": 2, "person_id": "p", "elements_chain": ""} for n in range(50)]
    write_jsonl(tmp_path / "export.jsonl", rows)
    result = _run(tmp_path, capture_server, "export.jsonl", "--format", "posthog")
    assert result.returncode == 0, result.stderr
    assert {e["uuid"] for e in capture_server.events} == {r["uuid"] for r in rows}
    assert all("team_id" not in e["properties"] for e in capture_server.events)


def test_events_are_globally_sorted_across_files_in_a_tiny_memory_budget(tmp_path, capture_server):
    folder = tmp_path / "export"
    folder.mkdir()
    for part in range(4):
        write_jsonl(folder / f"part-{part}.jsonl", make_rows(2_500, seed=part))
    result = _run(tmp_path, capture_server, "export", "--memory", "1MiB", "--concurrency", "1",
                  "--batch-size", "400", "--workdir", "job")
    assert result.returncode == 0, result.stderr
    manifest = orjson.loads((tmp_path / "job" / "manifest.json").read_bytes())
    assert len(manifest["runs"]) >= 4  # the sort really spilled several runs (~3,000 events each)
    stamps = [e["timestamp"] for e in capture_server.events]
    assert len(stamps) == 10_000 and stamps == sorted(stamps)


def test_two_runs_on_the_same_input_send_byte_identical_events(tmp_path, make_server):
    write_csv(tmp_path / "events.csv", make_rows(800, seed=9))
    outputs = []
    for attempt in range(2):
        server = make_server(out_path=tmp_path / f"received-{attempt}.jsonl")
        # two separate work directories, one job name (events carry it as $import_job_id)
        result = _run(tmp_path, server, "events.csv", "--job", "backfill", "--workdir", f"attempt-{attempt}",
                      "--concurrency", "1")
        assert result.returncode == 0, result.stderr
        outputs.append((tmp_path / f"received-{attempt}.jsonl").read_bytes())
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) == 800


def test_rejected_rows_are_accounted_and_exit_code_is_3(tmp_path, capture_server):
    rows = make_rows(100, seed=4)
    rows[10]["event"] = ""
    rows[20]["distinct_id"] = "x" * 201
    rows[30]["timestamp"] = "yesterday-ish"
    rows[40]["timestamp"] = "2999-01-01T00:00:00Z"
    write_jsonl(tmp_path / "events.jsonl", rows)
    (tmp_path / "events.jsonl").open("ab").write(b'{"event": "truncated", "distin\n')
    result = _run(tmp_path, capture_server, "events.jsonl", "--workdir", "job")
    _no_traceback(result)
    assert result.returncode == 3
    assert "101 = 96 + 5 + 0" in result.stdout and "✓ balanced" in result.stdout
    rejects = [orjson.loads(line) for line in (tmp_path / "job" / "rejects.jsonl").read_bytes().splitlines()]
    assert sorted((r["row"], r["reason"]) for r in rejects) == [
        (11, "missing_event_name"), (21, "distinct_id_too_long"), (31, "bad_timestamp"),
        (41, "timestamp_in_future"), (101, "invalid_json"),
    ]
    assert all(r["file"].endswith("events.jsonl") and r["detail"] for r in rejects)
    assert len(capture_server.events) == 96


def test_server_refused_batches_land_in_the_rejects_file_and_balance(tmp_path):
    write_csv(tmp_path / "events.csv", make_rows(300, seed=5))
    with CaptureServer(faults=FaultPlan.parse(["ok", "422"])) as server:
        result = _run(tmp_path, server, "events.csv", "--batch-size", "100", "--concurrency", "1",
                      "--workdir", "job")
    assert result.returncode == 3, result.stderr
    rejects = [orjson.loads(x) for x in (tmp_path / "job" / "rejects.jsonl").read_bytes().splitlines()]
    assert len(rejects) == 100 and all(r["reason"] == "server_rejected" and "422" in r["detail"] for r in rejects)
    assert all(r["file"].endswith("events.csv") and r["row"] >= 1 and r["original"]["uuid"] for r in rejects)
    assert "300 = 200 + 100 + 0" in result.stdout and "✓ balanced" in result.stdout


def test_dry_run_writes_request_bodies_and_never_the_key(tmp_path):
    write_csv(tmp_path / "events.csv", make_rows(500, seed=6))
    result = run_cli(["run", "events.csv", "--dry-run", "--out", "bodies", "--batch-size", "120", "--workdir", "job",
                      "-q"], tmp_path, cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert result.returncode == 0, result.stderr
    bodies = sorted((tmp_path / "bodies").glob("batch-*.json"))
    events = [e for body in bodies for e in orjson.loads(body.read_bytes())["batch"]]
    assert len(events) == 500 and all(orjson.loads(b.read_bytes())["historical_migration"] is True for b in bodies)
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert TEST_API_KEY.encode() not in path.read_bytes(), path
    assert TEST_API_KEY not in result.stdout + result.stderr


def test_the_key_never_lands_in_the_work_directory_or_output(tmp_path, capture_server):
    write_csv(tmp_path / "events.csv", make_rows(200))
    result = _run(tmp_path, capture_server, "events.csv", "--workdir", "job")
    assert result.returncode == 0
    assert TEST_API_KEY not in result.stdout + result.stderr
    for path in (tmp_path / "job").rglob("*"):
        if path.is_file():
            assert TEST_API_KEY.encode() not in path.read_bytes(), path


def test_without_a_host_run_refuses_and_says_how(tmp_path):
    write_csv(tmp_path / "events.csv", make_rows(5))
    result = run_cli(["run", "events.csv"], tmp_path)
    assert result.returncode == 2
    assert "--host local" in result.stderr and "--host https://us.i.posthog.com" in result.stderr
    _no_traceback(result)


def test_a_personal_key_is_refused_with_the_fix(tmp_path, capture_server):
    write_csv(tmp_path / "events.csv", make_rows(5))
    result = _run(tmp_path, capture_server, "events.csv", env=cli_environment(POSTHOG_API_KEY="phx_personal"))
    assert result.returncode == 1
    assert "API key" in result.stderr and "phc_" in result.stderr
    _no_traceback(result)


def test_an_unreachable_host_fails_with_a_resume_hint(tmp_path):
    write_csv(tmp_path / "events.csv", make_rows(5))
    result = run_cli(["run", "events.csv", "--host", "http://127.0.0.1:9", "--max-retries", "1", *FAST], tmp_path,
                     cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert result.returncode == 1
    assert "network error" in result.stderr and "resume" in result.stderr
    _no_traceback(result)


def test_a_mapping_naming_a_missing_column_fails_before_sending(tmp_path, capture_server):
    write_csv(tmp_path / "events.csv", make_rows(5))
    (tmp_path / "mapping.toml").write_text('[columns]\nevent = "action"\n')
    result = _run(tmp_path, capture_server, "events.csv", "--mapping", "mapping.toml")
    assert result.returncode == 2
    assert "action" in result.stderr and "Columns found" in result.stderr
    assert capture_server.requests == []
    _no_traceback(result)


def test_the_wrong_format_fails_with_a_hint(tmp_path, capture_server):
    write_parquet(tmp_path / "events.parquet", make_rows(5))
    for fmt in ("csv", "jsonl"):
        result = _run(tmp_path, capture_server, "events.parquet", "--format", fmt)
        assert result.returncode == 2, result.stderr
        assert "--format" in result.stderr
        _no_traceback(result)
    result = _run(tmp_path, capture_server, "events.parquet", "--format", "amplitudes")
    assert result.returncode == 2 and "unknown format" in result.stderr


def test_a_missing_source_fails_naming_it(tmp_path, capture_server):
    result = _run(tmp_path, capture_server, "nope.csv")
    assert result.returncode == 2 and "nope.csv" in result.stderr
    _no_traceback(result)


def test_changed_inputs_refuse_to_resume_and_say_what_changed(tmp_path, capture_server):
    write_csv(tmp_path / "events.csv", make_rows(50))
    assert _run(tmp_path, capture_server, "events.csv", "--job", "j").returncode == 0
    write_csv(tmp_path / "events.csv", make_rows(60))
    result = _run(tmp_path, capture_server, "events.csv", "--job", "j")
    assert result.returncode == 2
    assert "changed" in result.stderr and "events.csv" in result.stderr and "--restart" in result.stderr
    assert _run(tmp_path, capture_server, "events.csv", "--job", "j", "--restart").returncode == 0


def test_mapping_file_and_options_map_custom_columns(tmp_path, capture_server):
    rows = [{"action": "bought", "uid": "", "device": f"dev{n}", "when_ms": 1_709_251_200_000 + n * 1000,
             "plan": "pro", "company_id": "acme", "email": f"u{n}@x.test"} for n in range(20)]
    write_parquet(tmp_path / "custom.parquet", rows)
    (tmp_path / "mapping.toml").write_text(
        '[columns]\nevent = "action"\ndistinct_id = ["uid", "device"]\ntimestamp = "when_ms"\n'
        'timestamp_unit = "ms"\n[person]\nset = ["email"]\n[groups]\ncompany = "company_id"\n'
    )
    result = _run(tmp_path, capture_server, "custom.parquet", "--mapping", "mapping.toml")
    assert result.returncode == 0, result.stderr
    first = min(capture_server.events, key=lambda e: e["timestamp"])
    assert first["event"] == "bought" and first["distinct_id"] == "dev0"
    assert first["timestamp"] == "2024-03-01T00:00:00.000000Z"
    assert first["properties"]["$set"] == {"email": "u0@x.test"}
    assert first["properties"]["$groups"] == {"company": "acme"}
    assert first["properties"]["plan"] == "pro" and "when_ms" not in first["properties"]


def _start_slow_run(tmp_path: Path, server: CaptureServer) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "posthog_migrate", "run", "events.csv", "--host", server.url, "--workdir", "job",
         "--batch-size", "100", "--concurrency", "2", *FAST],
        cwd=tmp_path, env=cli_environment(POSTHOG_API_KEY=TEST_API_KEY),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_checkpoint(tmp_path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not (tmp_path / "job" / "state.json").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("signal_number,exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_gracefully_and_the_rerun_finishes_the_job(tmp_path, signal_number, exit_code):
    write_csv(tmp_path / "events.csv", make_rows(3_000, seed=8))
    # the first 20 requests are slow, so the signal lands mid-run; later ones are answered at once
    with CaptureServer(faults=FaultPlan.parse(["slow:0.1"] * 20)) as server:
        process = _start_slow_run(tmp_path, server)
        _wait_for_checkpoint(tmp_path, process)
        process.send_signal(signal_number)
        _, err = process.communicate(timeout=30)
        assert process.returncode == exit_code, err
        assert "run the same command again to resume" in err
        received_before = len(server.events)
        state = orjson.loads((tmp_path / "job" / "state.json").read_bytes())["send"]
        assert 0 < state["events_sent"] < 3_000 and not state["finished"]
        assert state["events_sent"] <= received_before  # the checkpoint never covers more than was received
        result = run_cli(["run", "events.csv", "--host", server.url, "--workdir", "job", "--batch-size", "100",
                          "--concurrency", "2", *FAST], tmp_path, cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
        assert result.returncode == 0, result.stderr
        uuids = [e["uuid"] for e in server.events]
    assert len(set(uuids)) == 3_000  # nothing lost
    assert len(uuids) - 3_000 <= 2 * 100  # at most concurrency × batch size sent twice
    assert "already sent by an earlier run" in result.stdout


def test_rename_and_drop_options_apply_to_every_event_and_count_as_filtered(tmp_path, capture_server):
    rows = make_rows(100, seed=14)
    write_jsonl(tmp_path / "events.jsonl", rows)
    (tmp_path / "mapping.toml").write_text('[transform]\nrename_properties = { plan = "plan_name" }\n')
    result = _run(tmp_path, capture_server, "events.jsonl", "--mapping", "mapping.toml",
                  "--rename-event", "signed_up=Signed Up", "--drop-event", "note_created",
                  "--drop-property", "note_length")
    assert result.returncode == 0, result.stderr
    dropped = sum(1 for r in rows if r["event"] == "note_created")
    assert f"100 = {100 - dropped} + 0 + {dropped}" in result.stdout and "dropped by the mapping" in result.stdout
    names = {e["event"] for e in capture_server.events}
    assert "Signed Up" in names and "signed_up" not in names and "note_created" not in names
    assert all("note_length" not in e["properties"] and "plan_name" in e["properties"] for e in capture_server.events)


def test_more_input_files_than_the_merge_fan_in_are_compacted_and_still_sorted(tmp_path, capture_server):
    folder = tmp_path / "hourly"
    folder.mkdir()
    for hour in range(70):  # one run per file at least: 70 runs, more than the merge reads at once
        write_jsonl(folder / f"part-{hour:03d}.jsonl", make_rows(20, seed=1000 + hour))
    result = _run(tmp_path, capture_server, "hourly", "--concurrency", "1", "--workdir", "job")
    assert result.returncode == 0, result.stderr
    manifest = orjson.loads((tmp_path / "job" / "manifest.json").read_bytes())
    assert len(manifest["runs"]) <= 64
    assert sorted(p.name for p in (tmp_path / "job" / "runs").iterdir()) == sorted(r["file"] for r in manifest["runs"])
    stamps = [e["timestamp"] for e in capture_server.events]
    assert len(stamps) == 1_400 and stamps == sorted(stamps)


def test_a_zip_archive_is_read_member_by_member(tmp_path, capture_server):
    rows = make_rows(600, seed=77)
    rows[450]["event"] = ""
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        archive.writestr("2024/part-0.jsonl.gz", gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in rows[:300])))
        archive.writestr("2024/part-1.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in rows[300:]))
        archive.writestr("__MACOSX/2024/._part-0.jsonl.gz", b"\x00\x05junk")
    refused = _run(tmp_path, capture_server, "export.zip")
    assert refused.returncode == 2 and "--format" in refused.stderr
    result = _run(tmp_path, capture_server, "export.zip", "--format", "jsonl", "--workers", "2", "--workdir", "job")
    assert result.returncode == 3, result.stderr
    assert "600 = 599 + 1 + 0  ✓ balanced" in result.stdout
    reject = orjson.loads((tmp_path / "job" / "rejects.jsonl").read_bytes())
    assert reject["file"].endswith("export.zip!/2024/part-1.jsonl") and reject["row"] == 151
    again = _run(tmp_path, capture_server, "export.zip", "--format", "jsonl", "--workdir", "job")
    assert again.returncode == 3 and "already sent by an earlier run" in again.stdout  # same fingerprint
    assert len(capture_server.events) == 599
