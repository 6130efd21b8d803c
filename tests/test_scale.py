"""What keeps big jobs cheap: the identity pass sees each pair once, send's merge reads windows of several record
batches, and the temporary-disk estimate of a platform's export is close to what its runs take."""

from __future__ import annotations

import gzip
import json
import random

import orjson
import pyarrow as pa
from posthog_migrate import spool
from posthog_migrate.identity import IdentityCollector, decide
from posthog_migrate.spool import MergeCursor, RunWriter, make_tiebreak, merge_runs

from .conftest import TEST_API_KEY, cli_environment, run_cli


def test_a_pair_seen_in_every_file_reaches_the_identity_pass_once(tmp_path):
    collector = IdentityCollector(tmp_path, budget_bytes=0)
    for file_index in range(30):  # each input file spills its own run of pairs: here all hold alice on d1
        collector.see("alice", "d1", 1_000 - file_index, make_tiebreak(file_index, 5))
        collector.see("bob", "d1", 5_000 + file_index, make_tiebreak(file_index, 6))
        collector.see("carol", f"d{file_index + 2}", 7, make_tiebreak(file_index, 7))
        collector.spill()
    claims = [(claim.device, claim.user, claim.ts) for claim in collector.claims()]
    assert claims[:2] == [("d1", "alice", 971), ("d1", "bob", 5_000)]  # each pair once: its earliest sighting
    assert len(claims) == 2 + 30
    shared = []
    decisions = list(decide(iter(collector.claims()), shared.append))
    assert [(d.action, d.claim.user, d.claim.device) for d in decisions][:1] == [("identify", "alice", "d1")]
    assert shared == ["d1"] and len(decisions) == 31


def test_merge_windows_of_several_record_batches_give_the_sorted_stream_and_resume_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(spool, "MERGE_WINDOW_BYTES_PER_RUN", 1 << 20)  # windows of several batches per run
    rng = random.Random(5)
    paths, expected = [], []
    for run in range(6):
        writer = RunWriter(tmp_path, 1 << 30, prefix=f"run-{run}-")
        for row in range(3_000):
            ts, tiebreak = rng.randrange(50_000), make_tiebreak(run, row)
            payload = orjson.dumps({"ts": ts, "pad": "x" * rng.randrange(100, 400)})
            writer.add(ts, tiebreak, row, 0, payload)
            expected.append((ts, tiebreak, payload))
        paths += writer.close()
    assert pa.ipc.open_file(str(paths[0])).num_record_batches >= 4
    expected.sort()
    merged = pa.concat_tables(list(merge_runs(paths)))
    assert merged.column("payload").to_pylist() == [payload for _, _, payload in expected]
    cut = 7_777
    cursor = MergeCursor.start(len(paths)).advanced(merged.column("run").to_numpy()[:cut])
    rest = pa.concat_tables(list(merge_runs(paths, cursor)))
    assert rest.column("payload").to_pylist() == [payload for _, _, payload in expected[cut:]]


def _amplitude_row(rng: random.Random, n: int) -> dict:
    device = rng.randrange(300)
    return {
        "uuid": f"00000000-0000-4000-8000-{n:012d}", "event_type": rng.choice(["Page Viewed", "note_created"]),
        "event_time": f"2023-03-{1 + n % 28:02d} 10:{n % 60:02d}:{n * 7 % 60:02d}.{n:06d}",
        "user_id": f"user-{device // 3}" if device % 4 else None, "device_id": f"device-{device}",
        "session_id": 1_677_000_000_000 + n // 20, "platform": "Web", "os_name": "Chrome", "country": "Canada",
        "ip_address": "203.0.113.7",
        "event_properties": {f"property_{k}": [f"text-{rng.randrange(99)}", rng.randrange(10_000), rng.random() < 0.5,
                                               None, round(rng.random(), 3)][k % 5] for k in range(25)},
        "user_properties": {"plan": rng.choice(["free", "pro"]), "notes": rng.randrange(500), "locale": "en-US"},
    }


def test_the_temporary_disk_estimate_of_a_platform_export_is_close_to_its_runs(tmp_path):
    rng = random.Random(12)
    with gzip.open(tmp_path / "export_2023-03-01_0#0.json.gz", "wb", compresslevel=1) as out:
        for n in range(4_000):
            out.write(orjson.dumps(_amplitude_row(rng, n)) + b"\n")
    inspected = run_cli(["inspect", ".", "--format", "amplitude", "--json", "-q"], tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    estimate = json.loads(inspected.stdout)["temporary_disk_bytes"]
    ran = run_cli(["run", ".", "--format", "amplitude", "--dry-run", "--workdir", "job", "-q"], tmp_path,
                  cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert ran.returncode == 0, ran.stderr
    runs = sum(run["bytes"] for run in json.loads((tmp_path / "job" / "manifest.json").read_text())["runs"])
    # An upper bound (a warning that comes early costs nothing), but not the small rows' twice-too-much.
    assert runs <= estimate <= 2 * runs, (runs, estimate)
