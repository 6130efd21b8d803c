"""`run --json`, `inspect --json` and `status --json`: one JSON document on stdout, whatever happens (done, rows
rejected, a failure, an interrupt), with progress and messages left on stderr."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from posthog_migrate.capture import CaptureServer

from .conftest import TEST_API_KEY, cli_environment, make_rows, run_cli, write_csv, write_jsonl
from .test_startup_and_progress import _start, _stderr_until

FAST = ["--rate", "0", "--retry-delay", "0.01"]


def _document(result: subprocess.CompletedProcess) -> dict:
    """stdout as the one JSON document it must be (json.loads refuses anything before or after it)."""
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def _rejecting_input(folder: Path) -> None:
    rows = make_rows(100, seed=12)
    rows[5]["event"] = ""
    rows[6]["timestamp"] = "not a time"
    write_jsonl(folder / "events.jsonl", rows)


def test_run_json_counts_a_run_with_rejects_and_status_json_tells_the_same(tmp_path):
    _rejecting_input(tmp_path)
    with CaptureServer() as server:
        result = run_cli(["run", "events.jsonl", "--host", server.url, "--job", "rejecting", "--json", *FAST],
                         tmp_path, cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert result.returncode == 3, result.stderr
    document = _document(result)
    assert document["schema"] == 1 and document["exit_status"] == 3 and document["error"] is None
    assert document["rows"] == {"read": 100, "sent": 98, "rejected": 2, "filtered": 0, "balanced": True}
    assert document["events"]["sent"] == 98 and document["events"]["added"] == 0
    assert document["rejected_by_reason"] == {"missing_event_name": 1, "bad_timestamp": 1}
    assert (tmp_path / document["rejects_path"]).exists()
    assert document["phases"]["prepare"]["state"] == "done" and document["phases"]["send"]["state"] == "done"
    assert document["phases"]["send"]["answers"] == {"200": document["phases"]["send"]["requests"]}
    assert "sending" in result.stderr  # the progress, where it always is

    status = run_cli(["status", "rejecting", "--json"], tmp_path)
    assert status.returncode == 0, status.stderr
    told = _document(status)
    assert told["phase"] == "done" and told["rows"] == document["rows"]
    assert told["events"]["sent"] == 98 and told["last_run"]["exit_status"] == 3
    listed = _document(run_cli(["status", "--json"], tmp_path))  # no job named: the jobs here
    assert listed == {"schema": 1, "command": "status", "exit_status": 0, "jobs": ["rejecting"]}


def test_run_json_on_failures_says_the_error_and_the_counts_so_far(tmp_path, make_server):
    write_csv(tmp_path / "events.csv", make_rows(200))
    no_host = run_cli(["run", "events.csv", "--json"], tmp_path)
    assert no_host.returncode == 2
    document = _document(no_host)
    assert document["exit_status"] == 2 and document["error"]["type"] == "ConfigError"
    assert "say where to send the events" in document["error"]["message"] and "rows" not in document
    assert "Error: say where" in no_host.stderr

    refusing = make_server(faults=["401"])
    arguments = ["run", "events.csv", "--host", refusing.url, "--workdir", "job", "--json", "--concurrency", "1"]
    refused = run_cli([*arguments, *FAST], tmp_path, cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert refused.returncode == 1
    document = _document(refused)
    assert document["exit_status"] == 1 and document["error"]["type"] == "SendFailed"
    assert document["rows"]["read"] == 200 and document["rows"]["sent"] == 0
    assert document["phases"]["prepare"]["state"] == "done" and document["phases"]["send"]["state"] == "failed"
    assert document["phases"]["send"]["answers"] == {"401": 1}

    bad_value = run_cli(["run", "events.csv", "--dry-run", "--batch-size", "0", "--json"], tmp_path)
    assert bad_value.returncode == 2 and "--batch-size 0" in _document(bad_value)["error"]["message"]


@pytest.mark.parametrize(("signal_number", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_run_json_when_interrupted_says_how_far_it_got(tmp_path, signal_number, exit_code):
    write_csv(tmp_path / "events.csv", make_rows(3_000, seed=14))
    process = _start(["run", "events.csv", "--host", "local", "--rate", "500", "--batch-size", "100",
                      "--workdir", "job", "--json"], tmp_path)
    _stderr_until(process, rb"sending: +\d+%")
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr
    document = json.loads(stdout)
    assert document["exit_status"] == exit_code and document["error"]["type"] == "Interrupted"
    assert document["rows"]["read"] == 3_000 and document["rows"]["sent"] < 3_000
    assert document["phases"]["send"]["state"] == "interrupted"
    assert b"run the same command again to resume" in stderr


def test_inspect_json_gives_the_report_numbers_and_its_errors(tmp_path):
    _rejecting_input(tmp_path)
    result = run_cli(["inspect", "events.jsonl", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    document = _document(result)
    assert document["command"] == "inspect" and document["exit_status"] == 0 and document["format"] == "jsonl"
    assert document["rows"] == {"read": 100, "kept": 98, "rejected": 2, "filtered": 0}
    assert document["events"]["to_send"] == 98 and sum(document["event_names"].values()) == 98
    assert sum(document["per_day"].values()) == 98 and document["distinct_ids"] > 0
    assert [(r["reason"], r["row"]) for r in document["first_rejects"]] == [("missing_event_name", 6),
                                                                           ("bad_timestamp", 7)]
    assert "reading" in result.stderr

    missing = run_cli(["inspect", "nothing.csv", "--json"], tmp_path)
    assert missing.returncode == 2
    assert _document(missing)["error"] == {"type": "ConfigError", "message": "nothing.csv: no such file or folder"}


def test_status_json_of_a_missing_job_is_an_error_document(tmp_path):
    result = run_cli(["status", "--workdir", "nowhere", "--json"], tmp_path)
    assert result.returncode == 2
    assert _document(result) == {"schema": 1, "command": "status", "exit_status": 2,
                                 "error": {"type": "ConfigError", "message": "no job at nowhere"}}
