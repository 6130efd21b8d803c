"""--shard K/N: N processes (machines, pods) each migrate one shard of the people, together all of them once."""

from __future__ import annotations

from collections import defaultdict

import orjson
from posthog_migrate.adapters.jsonl import JsonLinesAdapter
from posthog_migrate.config import resolve_settings
from posthog_migrate.job import open_job
from posthog_migrate.pipeline import dry_run
from posthog_migrate.prepare import prepare

from .conftest import PROJECT_ROOT, TEST_API_KEY, cli_environment, make_rows, run_cli, write_jsonl


def test_shards_together_send_every_event_once_each_person_in_one_shard(tmp_path, capture_server):
    rows = make_rows(3_000, people=200, seed=41)
    for bad in (5, 500, 2_500):
        rows[bad]["event"] = ""  # rejected before its person is known: reported by its position's shard
    for late in range(10, 3_000, 100):
        rows[late]["timestamp"] = "2999-01-01T00:00:00Z"  # rejected by validation: by its person's shard
    write_jsonl(tmp_path / "events.jsonl", rows)
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    rejected = 0
    shard_of_person: dict[str, set[int]] = defaultdict(set)
    for k in (1, 2, 3):
        before = len(capture_server.events)
        result = run_cli(["run", "events.jsonl", "--shard", f"{k}/3", "--job", "backfill", "--host", capture_server.url,
                          "--rate", "0", "-q"], tmp_path, env)
        assert result.returncode in (0, 3), result.stderr
        assert "✓ balanced" in result.stdout
        for event in capture_server.events[before:]:
            shard_of_person[event["distinct_id"]].add(k)
        rejects = tmp_path / ".posthog-migrate" / f"backfill-shard-{k}-of-3" / "rejects.jsonl"
        rejected += len(rejects.read_bytes().splitlines())
    uuids = [e["uuid"] for e in capture_server.events]
    assert len(uuids) == len(set(uuids)) == 2_967  # every valid event exactly once
    assert all(len(shards) == 1 for shards in shard_of_person.values())
    assert len({next(iter(s)) for s in shard_of_person.values()}) == 3  # all three shards had people
    assert rejected == 33  # each rejected row reported by exactly one shard
    assert {e["properties"]["$import_job_id"] for e in capture_server.events} == {"backfill"}


def test_a_bad_shard_spec_is_a_usage_error(tmp_path):
    write_jsonl(tmp_path / "events.jsonl", make_rows(3))
    result = run_cli(["run", "events.jsonl", "--shard", "4/3", "--dry-run"], tmp_path)
    assert result.returncode == 2 and "K/N" in result.stderr


def test_a_shard_cannot_resume_as_another(tmp_path):
    write_jsonl(tmp_path / "events.jsonl", make_rows(30))
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    assert run_cli(["run", "events.jsonl", "--shard", "1/2", "--workdir", "w", "--dry-run", "-q"], tmp_path,
                   env).returncode == 0
    again = run_cli(["run", "events.jsonl", "--shard", "2/2", "--workdir", "w", "--dry-run", "-q"], tmp_path, env)
    assert again.returncode == 2 and "shard" in again.stderr
    manifest = orjson.loads((tmp_path / "w" / "manifest.json").read_bytes())
    assert manifest["fingerprint"]["shard"] == [0, 2]


def _summary_counts(stdout: str) -> dict[str, int]:
    """The "N  reason" lines of a summary's rejected/filtered breakdowns."""
    counts: dict[str, int] = {}
    for line in stdout.splitlines():
        number, _, reason = line.strip().partition("  ")
        if number.replace(",", "").isdigit() and reason.strip():
            counts[reason.strip()] = int(number.replace(",", ""))
    return counts


def test_amplitude_shards_skip_other_people_before_mapping_and_match_one_run(tmp_path, capture_server):
    # Amplitude tells a row's person before mapping it (Adapter.person_of): each shard maps only its own
    # people's rows. Together the shards must still send exactly what one unsharded run sends, count each
    # filtered or rejected row once, and keep every person (and its $identify) in one shard.
    export = PROJECT_ROOT / "sample_data" / "amplitude" / "export.zip"
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    whole = run_cli(["run", str(export), "--format", "amplitude", "--job", "whole", "--host", capture_server.url,
                     "--rate", "0", "-q"], tmp_path, env)
    assert whole.returncode in (0, 3), whole.stderr
    expected = sorted(orjson.dumps(e) for e in capture_server.events)
    whole_counts = _summary_counts(whole.stdout)
    assert whole_counts.get("amplitude session_start/session_end", 0) > 0  # the sample has such rows

    summed: dict[str, int] = defaultdict(int)
    shard_of_person: dict[str, set[int]] = defaultdict(set)
    start = len(capture_server.events)
    for k in (1, 2, 3):
        before = len(capture_server.events)
        result = run_cli(["run", str(export), "--format", "amplitude", "--job", "split", "--shard", f"{k}/3",
                          "--host", capture_server.url, "--rate", "0", "-q"], tmp_path, env)
        assert result.returncode in (0, 3), result.stderr
        assert "✓ balanced" in result.stdout
        for event in capture_server.events[before:]:
            shard_of_person[event["distinct_id"]].add(k)
        for reason, count in _summary_counts(result.stdout).items():
            summed[reason] += count
    shards_sent = [e for e in capture_server.events[start:]]
    for event in shards_sent:
        event["properties"]["$import_job_id"] = "whole"  # the one difference: the job's name
    assert sorted(orjson.dumps(e) for e in shards_sent) == expected
    assert all(len(shards) == 1 for shards in shard_of_person.values())
    other = summed.pop("belongs to another shard than 1/3", 0) + summed.pop("belongs to another shard than 2/3", 0) \
        + summed.pop("belongs to another shard than 3/3", 0)
    assert other > 0
    assert dict(summed) == whole_counts  # each filtered or rejected row counted by exactly one shard


class _UnreliablePersonOf(JsonLinesAdapter):
    """A plugin whose person_of raises for some rows and answers a non-text for others."""

    def person_of(self, record):
        number = int(record["insert_id"][1:])
        if number % 3 == 0:
            raise KeyError("no such field")
        if number % 3 == 1:
            return 12345  # not text: must count as "not known before mapping"
        return record["distinct_id"]


def test_a_failing_person_of_costs_nothing_but_speed(tmp_path):
    # The shards fall back to mapping the row and deciding by its event: still every event exactly once.
    rows = make_rows(600, people=50, seed=5)
    for n, row in enumerate(rows):
        row["insert_id"] = f"r{n}"
    write_jsonl(tmp_path / "events.jsonl", rows)
    sent: list[str] = []
    for k in (1, 2):
        settings = resolve_settings({"sources": (str(tmp_path / "events.jsonl"),), "dry_run": True, "quiet": True,
                                     "workdir": str(tmp_path / f"shard-{k}"), "shard": f"{k}/2"})
        job = open_job(settings, {})
        job.adapter = _UnreliablePersonOf(job.mapping)
        outcome = dry_run(job, prepare(job), tmp_path / f"shard-{k}" / "bodies")
        sent += [event["uuid"] for path in sorted(outcome.dry_run_dir.glob("batch-*.json"))
                 for event in orjson.loads(path.read_bytes())["batch"]]
    assert len(sent) == len(set(sent)) == 600
