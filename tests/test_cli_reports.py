"""The README's first command on the bundled samples, and the inspect and status reports."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import orjson
from posthog_migrate.batches import LAYOUT_VERSION

from .conftest import PROJECT_ROOT, TEST_API_KEY, cli_environment, make_rows, run_cli, write_csv, write_jsonl

SAMPLES = PROJECT_ROOT / "sample_data"


def test_readme_first_command_migrates_the_csv_sample_into_the_local_server(tmp_path):
    shutil.copytree(SAMPLES, tmp_path / "sample_data")
    result = run_cli(["run", "sample_data/csv/events.csv", "--host", "local"], tmp_path)
    assert result.returncode == 3, result.stderr  # done, with the sample's 5 deliberately bad rows
    assert "1,500 = 1,495 + 5 + 0  ✓ balanced" in result.stdout
    assert "sending" in result.stderr and "events/s" in result.stderr  # the progress bar
    received = list((tmp_path / ".posthog-migrate").glob("*/local-capture/events.jsonl"))
    assert len(received) == 1 and len(received[0].read_bytes().splitlines()) == 1_495
    assert str(received[0].relative_to(tmp_path)) in result.stdout


def test_every_sample_migrates_and_balances(tmp_path):
    shutil.copytree(SAMPLES, tmp_path / "sample_data")
    cases = [
        (["sample_data/jsonl"], 998, 2),
        (["sample_data/parquet/events.parquet", "--mapping", "sample_data/parquet/mapping.toml"], 1_000, 0),
        (["sample_data/posthog/export.jsonl", "--format", "posthog"], 300, 0),
    ]
    for args, sent, rejected in cases:
        result = run_cli(["run", *args, "--host", "local", "--rate", "0", "-q"], tmp_path)
        assert result.returncode == (3 if rejected else 0), result.stderr
        assert f"= {sent:,} + {rejected:,} + 0  ✓ balanced" in result.stdout


def test_inspect_reports_rows_range_names_days_and_rejects_without_sending(tmp_path):
    shutil.copytree(SAMPLES, tmp_path / "sample_data")
    result = run_cli(["inspect", "sample_data/csv/events.csv", "-q"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Rows read:         1,500" in out and "Events to send:    1,495" in out
    assert "2024-03-01" in out and "2024-03-14" in out
    assert "Top event names:" in out and "$pageview" in out and "Events per day:" in out
    assert "missing_event_name" in out and "row 137" in out
    assert "Distinct ids:      ≈88" in out  # the sample README says 88
    assert not (tmp_path / ".posthog-migrate").exists()  # inspect leaves no job behind


def test_inspect_warns_about_events_younger_than_48_hours(tmp_path):
    now = datetime.now(UTC)
    rows = make_rows(10)
    rows[0]["timestamp"] = (now - timedelta(hours=2)).isoformat()
    write_jsonl(tmp_path / "events.jsonl", rows)
    result = run_cli(["inspect", "events.jsonl", "-q"], tmp_path)
    assert "1 events are less than 48 hours old" in result.stdout


def test_status_tells_phase_progress_and_what_a_resume_does(tmp_path, capture_server):
    write_csv(tmp_path / "events.csv", make_rows(300))
    missing = run_cli(["status", "--workdir", "job"], tmp_path)
    assert missing.returncode == 2 and "no job" in missing.stderr
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    assert run_cli(["run", "events.csv", "--dry-run", "--workdir", "job", "-q"], tmp_path, env).returncode == 0
    prepared = run_cli(["status", "--workdir", "job"], tmp_path)
    assert "prepared" in prepared.stdout and "not read again" in prepared.stdout
    run = run_cli(["run", "events.csv", "--workdir", "job", "--host", capture_server.url, "--rate", "0", "-q"],
                  tmp_path, env)
    assert run.returncode == 0, run.stderr
    done = run_cli(["status", "--workdir", "job"], tmp_path)
    assert "done" in done.stdout and "300 of 300 events (100.0%)" in done.stdout
    state = orjson.loads((tmp_path / "job" / "state.json").read_bytes())
    assert state["send"]["finished"] is True


def test_status_of_a_job_checkpointed_by_an_earlier_layout_says_its_window_is_sent_again(tmp_path, capture_server):
    write_csv(tmp_path / "events.csv", make_rows(300))
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    run = run_cli(["run", "events.csv", "--workdir", "job", "--host", capture_server.url, "--rate", "0",
                   "--batch-size", "50", "-q"], tmp_path, env)
    assert run.returncode == 0, run.stderr
    state_path = tmp_path / "job" / "state.json"
    state = orjson.loads(state_path.read_bytes())
    # As an earlier version left it mid-way: batch 5 of a window starting at batch 4, no layout version.
    state["send"].update(finished=False, next_seq=5, window_first_seq=4)
    del state["send"]["layout"]["version"]
    state_path.write_bytes(orjson.dumps(state))
    status = run_cli(["status", "--workdir", "job"], tmp_path)
    assert status.returncode == 0, status.stderr
    assert "A resume sends again from batch 4, the start of its window" in status.stdout
    state["send"]["layout"]["version"] = LAYOUT_VERSION  # this version's: the watermark holds
    state_path.write_bytes(orjson.dumps(state))
    assert "A resume continues with batch 5" in run_cli(["status", "--workdir", "job"], tmp_path).stdout
