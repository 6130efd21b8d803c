"""WORKDIR/job.log: what each run of a job did, for the person who was not watching, and never the API key."""

from __future__ import annotations

import orjson
from posthog_migrate.checkpoint import CRASH_EXIT_CODE, CRASH_POINT_VARIABLE

from .conftest import TEST_API_KEY, cli_environment, make_rows, run_cli, write_csv


def _log(root) -> list[dict]:
    return [orjson.loads(line) for line in (root / "job.log").read_bytes().splitlines()]


def test_the_job_log_tells_each_run_afterwards_and_never_holds_the_key(tmp_path, make_server):
    folder = tmp_path / "export"
    folder.mkdir()
    rows = make_rows(300, seed=21)
    rows[0]["timestamp"] = "1971-01-01T00:00:00Z"  # suspicious: a warning
    write_csv(folder / "events.csv", rows)
    (folder / "notes.txt").write_text("not data")  # skipped, with the reason
    flaky = make_server(faults=["503"])  # the first request: retried
    arguments = ["run", "export", "--workdir", "job", "--api-key", TEST_API_KEY, "--rate", "0", "--retry-delay",
                 "0.01", "--concurrency", "1", "-q"]
    first = run_cli([*arguments, "--host", flaky.url], tmp_path)
    assert first.returncode == 0, first.stderr
    echoing = make_server(faults=["401:echo"])  # quotes the request, key included, in its answer
    second = run_cli([*arguments, "--host", echoing.url, "--restart"], tmp_path)
    assert second.returncode == 1, second.stderr

    text = (tmp_path / "job" / "job.log").read_text()
    assert TEST_API_KEY not in text and TEST_API_KEY[:12] not in text
    lines = _log(tmp_path / "job")
    runs = list(dict.fromkeys(line["run"] for line in lines))
    assert len(runs) == 2 and all(line["time"].endswith("Z") for line in lines)
    first_run = [line for line in lines if line["run"] == runs[0]]
    events = [line["event"] for line in first_run]
    assert events[0] == "run_started" and events[-1] == "run_ended"
    started = first_run[0]
    assert started["interface"] == "command line" and started["files"] == 1 and started["format"] == "csv"
    assert "api_key" not in started["settings"] and started["settings"]["concurrency"] == 1
    assert {"uri": str(folder / "notes.txt"), "why": "its ending names no format (give --format to read every "
            "file)"} in [{k: line[k] for k in ("uri", "why")} for line in first_run if line["event"] == "skipped_file"]
    phases = [(line["phase"], line["state"]) for line in first_run if line["event"] == "phase"]
    assert phases == [("prepare", "started"), ("prepare", "done"), ("send", "started"), ("send", "done")]
    assert any("suspicious" in line["message"] and line["count"] == 1 for line in first_run
               if line["event"] == "warning")
    retry, = [line for line in first_run if line["event"] == "retry"]
    assert "503" in retry["problem"] and retry["retry"] == 1 and retry["max_retries"] == 10
    assert {line["step"] for line in first_run if line["event"] == "step"} >= {"sending"}
    assert first_run[-1]["exit_status"] == 0 and first_run[-1]["rows"] == {"read": 300, "sent": 300, "rejected": 0,
                                                                           "filtered": 0}
    second_run = [line for line in lines if line["run"] == runs[1]]
    error, = [line for line in second_run if line["event"] == "error"]
    assert error["type"] == "SendFailed" and "401" in error["message"]
    assert second_run[-1]["event"] == "run_ended" and second_run[-1]["exit_status"] == 1
    assert second_run[-1]["error"] == {"type": "SendFailed", "message": error["message"]}

    status = run_cli(["status", "--workdir", "job"], tmp_path)
    assert "Last run:  ended " in status.stdout
    assert f"ago with exit status 1: SendFailed: {error['message'][:40]}" in status.stdout


def test_a_run_that_recorded_no_end_is_said_so_by_status(tmp_path):
    write_csv(tmp_path / "events.csv", make_rows(50))
    env = cli_environment(**{CRASH_POINT_VARIABLE: "after-prepare"})  # dies like a kill -9, before it logs its end
    crashed = run_cli(["run", "events.csv", "--dry-run", "--workdir", "job"], tmp_path, env)
    assert crashed.returncode == CRASH_EXIT_CODE
    assert [line["event"] for line in _log(tmp_path / "job")][-1] != "run_ended"
    status = run_cli(["status", "--workdir", "job"], tmp_path)
    assert "recorded no end (killed, or still running)" in status.stdout
