"""The identity pass: one $identify per device, for its first user, just before the pair's first event."""

from __future__ import annotations

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from posthog_migrate.adapters.jsonl import JsonLinesAdapter
from posthog_migrate.config import resolve_settings
from posthog_migrate.identity import IdentityCollector
from posthog_migrate.job import open_job
from posthog_migrate.pipeline import dry_run
from posthog_migrate.prepare import prepare

from .conftest import write_jsonl


class LinkingAdapter(JsonLinesAdapter):
    """Generic JSON lines whose rows may say which device a user was on (like Amplitude's)."""

    def to_events(self, record):
        events = super().to_events(record)
        events[-1].properties.pop("device", None)
        if record.get("device"):
            events[-1].link = (events[-1].distinct_id, record["device"])
        return events


def _prepared_bodies(tmp_path, rows, workdir="job", memory="1MiB"):
    write_jsonl(tmp_path / "events.jsonl", rows)
    job_settings = resolve_settings({"sources": (str(tmp_path / "events.jsonl"),), "dry_run": True,
                                     "workdir": str(tmp_path / workdir), "memory": memory, "quiet": True,
                                     "concurrency": 1})
    job = open_job(job_settings, {})
    job.adapter = LinkingAdapter(job.mapping)
    manifest = prepare(job)
    outcome = dry_run(job, manifest, tmp_path / workdir / "bodies")
    events = [e for path in sorted(outcome.dry_run_dir.glob("batch-*.json"))
              for e in orjson.loads(path.read_bytes())["batch"]]
    return manifest, events


def _row(n, user, device, second):
    return {"event": "clicked", "distinct_id": user, "device": device, "insert_id": f"r{n}",
            "timestamp": f"2024-03-01T10:{second // 60:02d}:{second % 60:02d}Z"}


def test_one_identify_per_pair_just_before_its_first_event(tmp_path):
    rows = [_row(0, "u1", "d1", 50), _row(1, "u1", "d1", 10), _row(2, "u2", "d2", 30), _row(3, "u1", "d9", 40),
            _row(4, "u2", None, 5), _row(5, "u1", "d1", 10)]
    manifest, events = _prepared_bodies(tmp_path, rows)
    names = [(e["event"], e["distinct_id"], e["properties"].get("$anon_distinct_id"), e["timestamp"][11:19])
             for e in events]
    assert names == [
        ("clicked", "u2", None, "10:00:05"),
        ("$identify", "u1", "d1", "10:00:10"), ("clicked", "u1", None, "10:00:10"), ("clicked", "u1", None, "10:00:10"),
        ("$identify", "u2", "d2", "10:00:30"), ("clicked", "u2", None, "10:00:30"),
        ("$identify", "u1", "d9", "10:00:40"), ("clicked", "u1", None, "10:00:40"),
        ("clicked", "u1", None, "10:00:50"),
    ]
    assert manifest["stats"]["added_events"] == 3 and manifest["stats"]["rows_read"] == 6
    identifies = [e for e in events if e["event"] == "$identify"]
    assert all(e["properties"]["$import_job_id"] == "job" for e in identifies)
    _, again = _prepared_bodies(tmp_path, rows, workdir="again")
    assert [e["uuid"] for e in again if e["event"] == "$identify"] == [e["uuid"] for e in identifies]


def test_identity_pass_is_the_same_when_pairs_spill_to_disk(tmp_path):
    rng = random.Random(4)
    rows = [_row(n, f"u{rng.randrange(300)}", f"d{rng.randrange(2_000)}", rng.randrange(3_000)) for n in range(6_000)]
    _, in_memory = _prepared_bodies(tmp_path, rows, workdir="big", memory="1GiB")
    _, spilled = _prepared_bodies(tmp_path, rows, workdir="small", memory="1MiB")
    identify = [e for e in in_memory if e["event"] == "$identify"]
    # one per device: for the user seen on it first (in time, then input order)
    first_user = {}
    for row in sorted(rows, key=lambda r: (r["timestamp"], int(r["insert_id"][1:]))):
        first_user.setdefault(row["device"], row["distinct_id"])
    assert sorted((e["properties"]["$anon_distinct_id"], e["distinct_id"]) for e in identify) == sorted(
        first_user.items())
    assert [e["uuid"] for e in spilled] == [e["uuid"] for e in in_memory]


def _claim_order(sighting):
    user, device, ts, tiebreak = sighting
    return device, ts, tiebreak, user


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("xyz"), st.integers(0, 50), st.integers(0, 9)),
                max_size=200), st.integers(1, 20))
def test_claims_come_by_device_earliest_first_across_spills(tmp_path_factory, sightings, spill_every):
    collector = IdentityCollector(tmp_path_factory.mktemp("pairs"), budget_bytes=0)
    for n, (user, device, ts, tiebreak) in enumerate(sightings):
        collector.see(user, device, ts, tiebreak)
        if n % spill_every == 0:
            collector.spill()
    claims = [(c.user, c.device, c.ts, c.tiebreak) for c in collector.claims()]
    assert claims == sorted(claims, key=_claim_order)
    # each pair's earliest sighting is there (later ones of a pair may be too, from other spills)
    earliest: dict = {}
    for user, device, ts, tiebreak in sightings:
        earliest[(user, device)] = min(earliest.get((user, device), (ts, tiebreak)), (ts, tiebreak))
    assert {(u, d, *first) for (u, d), first in earliest.items()} <= set(claims)
    assert {(u, d) for u, d, _, _ in claims} == set(earliest)


class ExplodingAdapter(JsonLinesAdapter):
    """Maps a row to as many events as its "copies" column says (an adapter gone wrong)."""

    def to_events(self, record):
        event = super().to_events(record)[-1]
        copies = []
        for n in range(record.get("copies", 1) - 1):
            extra = type(event)(event.event, event.distinct_id, event.timestamp_us, event.uuid[:-4] + f"{n:04x}",
                                dict(event.properties), added=True)
            copies.append(extra)
        return [*copies, event]


def test_a_row_mapping_to_more_events_than_the_sort_key_holds_is_rejected(tmp_path):
    rows = [{**_row(0, "u1", None, 1), "copies": 255}, {**_row(1, "u1", None, 2), "copies": 256}]
    write_jsonl(tmp_path / "events.jsonl", rows)
    job = open_job(resolve_settings({"sources": (str(tmp_path / "events.jsonl"),), "dry_run": True,
                                     "workdir": str(tmp_path / "job"), "quiet": True}), {})
    job.adapter = ExplodingAdapter(job.mapping)
    manifest = prepare(job)
    assert manifest["stats"]["events"] == 255 and manifest["stats"]["rejected"] == {"too_many_events": 1}


def test_more_pair_runs_than_the_merge_fan_in_are_compacted_first(tmp_path, monkeypatch):
    import posthog_migrate.identity as identity

    monkeypatch.setattr(identity, "MAX_MERGE_FAN_IN", 3)
    collector = IdentityCollector(tmp_path, budget_bytes=0)
    rng = random.Random(8)
    sightings = []
    for n in range(400):
        sightings.append((f"u{rng.randrange(30)}", f"d{rng.randrange(4)}", rng.randrange(1_000), n))
        collector.see(*sightings[-1])
        if n % 20 == 19:
            collector.spill()
    assert len(collector.run_names) == 20
    claims = [(c.user, c.device, c.ts, c.tiebreak) for c in collector.claims()]
    # each pair once, at its earliest sighting (the spills repeat pairs: their later sightings decide nothing)
    earliest: dict = {}
    for user, device, ts, tiebreak in sightings:
        earliest[(user, device)] = min(earliest.get((user, device), (ts, tiebreak)), (ts, tiebreak))
    assert claims == sorted([(u, d, *first) for (u, d), first in earliest.items()], key=_claim_order)
    assert len(collector.run_names) <= 3
