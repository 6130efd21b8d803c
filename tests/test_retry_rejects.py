"""retry-rejects: fixed mapping or recovered server, rejected rows sent; nothing accepted sent twice."""

from __future__ import annotations

import orjson
from posthog_migrate.capture import CaptureServer, FaultPlan

from .conftest import TEST_API_KEY, cli_environment, make_rows, run_cli, write_csv, write_jsonl

FAST = ["--rate", "0", "--retry-delay", "0.01", "-q"]


def test_rows_rejected_by_a_wrong_mapping_are_sent_after_fixing_it(tmp_path, capture_server):
    rows = make_rows(200, seed=12)
    for row in rows[::10]:  # every tenth row has its time as epoch milliseconds, not ISO
        row["timestamp"] = 1_709_251_200_000 + row["note_length"]
    write_csv(tmp_path / "events.csv", rows)
    (tmp_path / "wrong.toml").write_text('[columns]\ntimestamp_unit = "iso"\n')
    (tmp_path / "fixed.toml").write_text('[columns]\ntimestamp_unit = "auto"\n')
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    first = run_cli(["run", "events.csv", "--mapping", "wrong.toml", "--host", capture_server.url, "--workdir", "job",
                     *FAST], tmp_path, env)
    assert first.returncode == 3 and "200 = 180 + 20 + 0" in first.stdout
    accepted = {e["uuid"] for e in capture_server.events}
    retry = run_cli(["retry-rejects", "--workdir", "job", "--mapping", "fixed.toml", "--host", capture_server.url,
                     *FAST], tmp_path, env)
    assert retry.returncode == 0, retry.stderr
    assert "20 = 20 + 0 + 0  ✓ balanced" in retry.stdout
    retried = [e for e in capture_server.events if e["uuid"] not in accepted]
    assert len(retried) == 20 and len(capture_server.events) == 200  # nothing accepted was sent again
    assert all(e["timestamp"].startswith("2024-03-01T00:00:0") for e in retried)
    again = run_cli(["retry-rejects", "--workdir", "job", "--mapping", "fixed.toml", "--host", capture_server.url,
                     *FAST], tmp_path, env)
    assert again.returncode == 0 and len(capture_server.events) == 200  # the finished retry job does nothing more


def test_events_the_server_refused_are_resent_byte_identical(tmp_path):
    write_csv(tmp_path / "events.csv", make_rows(300, seed=13))
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    with CaptureServer(faults=FaultPlan.parse(["ok", "422"]), out_path=tmp_path / "received.jsonl") as server:
        first = run_cli(["run", "events.csv", "--host", server.url, "--workdir", "job", "--batch-size", "100",
                         "--concurrency", "1", *FAST], tmp_path, env)
        assert first.returncode == 3, first.stderr
        refused = [orjson.loads(line)["original"] for line in (tmp_path / "job" / "rejects.jsonl").read_bytes()
                   .splitlines()]
        retry = run_cli(["retry-rejects", "--workdir", "job", "--host", server.url, *FAST], tmp_path, env)
        assert retry.returncode == 0, retry.stderr
        received = [orjson.loads(line) for line in (tmp_path / "received.jsonl").read_bytes().splitlines()]
    assert len(received) == 300 and len({e["uuid"] for e in received}) == 300
    by_uuid = {e["uuid"]: e for e in received}
    assert all(by_uuid[event["uuid"]] == event for event in refused)


def test_unreadable_rows_are_reported_as_not_retriable(tmp_path, capture_server):
    write_jsonl(tmp_path / "events.jsonl", make_rows(20))
    with open(tmp_path / "events.jsonl", "ab") as handle:
        handle.write(b'{"broken\n')
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    assert run_cli(["run", "events.jsonl", "--host", capture_server.url, "--workdir", "job", *FAST], tmp_path,
                   env).returncode == 3
    retry = run_cli(["retry-rejects", "--workdir", "job", "--host", capture_server.url, *FAST], tmp_path, env)
    assert retry.returncode == 2
    assert "1 invalid_json" in retry.stderr and "fix the source file" in retry.stderr
    assert "no retriable rows" in retry.stderr


def test_a_restarted_job_forgets_its_retries_and_a_retry_can_restart(tmp_path, capture_server):
    rows = make_rows(50, seed=15)
    for row in rows[::5]:
        row["timestamp"] = 1_709_251_200_000 + row["note_length"]
    write_csv(tmp_path / "events.csv", rows)
    (tmp_path / "wrong.toml").write_text('[columns]\ntimestamp_unit = "iso"\n')
    (tmp_path / "fixed.toml").write_text('[columns]\ntimestamp_unit = "ms"\n')
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    original = ["run", "events.csv", "--mapping", "wrong.toml", "--host", capture_server.url, "--workdir", "job", *FAST]
    retry = ["retry-rejects", "--workdir", "job", "--mapping", "fixed.toml", "--host", capture_server.url, *FAST]
    assert run_cli(original, tmp_path, env).returncode == 3
    assert run_cli(retry, tmp_path, env).returncode == 0
    assert list((tmp_path / "job").glob("retry-*"))
    assert run_cli([*original, "--restart"], tmp_path, env).returncode == 3
    assert not list((tmp_path / "job").glob("retry-*"))  # the old retry belonged to the forgotten run
    again = run_cli([*retry, "--restart"], tmp_path, env)
    assert again.returncode == 0 and "10 = 10 + 0 + 0  ✓ balanced" in again.stdout
