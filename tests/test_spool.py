"""The bounded-memory sort: runs spilled to disk and merged batch-wise, resumable from a cursor."""

from __future__ import annotations

import random
from array import array

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from posthog_migrate.spool import (
    MergeCursor,
    RunFile,
    RunWriter,
    compact_runs,
    make_tiebreak,
    merge_runs,
    split_tiebreak,
)


def _spill(tmp_path, events, run_bytes):
    writer = RunWriter(tmp_path, run_bytes)
    for ts, tiebreak, person in events:
        writer.add(ts, tiebreak, person, 0, f'{{"ts":{ts},"tb":{tiebreak}}}'.encode())
        if writer.full:
            writer.spill()
    return writer.close()


def _keys(tables):
    table = pa.concat_tables(tables)
    return list(zip(table.column("ts").to_pylist(), table.column("tiebreak").to_pylist(), strict=True))


def test_tiebreak_round_trips_file_row_and_sub_event():
    assert split_tiebreak(make_tiebreak(7, 123_456_789, 3)) == (7, 123_456_789, 3)
    # file index dominates row number, row number dominates sub-event: input order is kept on equal times
    assert make_tiebreak(1, 0) > make_tiebreak(0, 2**35)
    assert make_tiebreak(0, 2) > make_tiebreak(0, 1, 255)


def test_sort_across_many_runs_larger_than_the_budget_comes_out_in_order(tmp_path):
    rng = random.Random(1)
    events = [(rng.randrange(10_000), make_tiebreak(rng.randrange(3), n), rng.getrandbits(63)) for n in range(20_000)]
    # ~60 bytes per buffered event: a 30 kB budget forces dozens of runs
    run_paths = _spill(tmp_path, events, run_bytes=30_000)
    assert len(run_paths) > 20
    merged = _keys(merge_runs(run_paths))
    assert merged == sorted((ts, tb) for ts, tb, _ in events)


def test_equal_timestamps_keep_input_order(tmp_path):
    events = [(5, make_tiebreak(0, row), 0) for row in range(1, 500)]
    random.Random(2).shuffle(events)
    run_paths = _spill(tmp_path, events, run_bytes=20_000)
    assert [tb for _, tb in _keys(merge_runs(run_paths))] == [make_tiebreak(0, row) for row in range(1, 500)]


def test_merge_resumed_from_a_cursor_yields_exactly_the_rest(tmp_path):
    rng = random.Random(3)
    events = [(rng.randrange(1_000), make_tiebreak(0, n), 0) for n in range(5_000)]
    run_paths = _spill(tmp_path, events, run_bytes=60_000)
    full = pa.concat_tables(list(merge_runs(run_paths)))
    cut = 2_345
    cursor = MergeCursor.start(len(run_paths)).advanced(full.column("run").to_numpy()[:cut])
    assert cursor.position == cut
    rest = pa.concat_tables(list(merge_runs(run_paths, cursor)))
    assert rest.column("payload").to_pylist() == full.column("payload").to_pylist()[cut:]


def test_runs_carry_payload_person_and_kind(tmp_path):
    writer = RunWriter(tmp_path, 1 << 20)
    writer.add(10, 1, 42, 1, b'{"a":1}')
    run_paths = writer.close()
    row = pa.concat_tables(list(merge_runs(run_paths))).to_pylist()[0]
    assert (row["person"], row["kind"], row["payload"]) == (42, 1, b'{"a":1}')


def test_a_chunk_added_at_once_makes_the_same_run_as_its_events_one_by_one(tmp_path):
    events = [(30, 3, 7, 0, b'{"c":3}'), (10, 1, 5, 1, b'{"a":1}'), (20, 2, 6, 0, b""), (10, 0, 5, 0, b'{"d":"x"}')]
    one_by_one = RunWriter(tmp_path / "one", 1 << 20)
    at_once = RunWriter(tmp_path / "chunks", 1 << 20)
    for folder in (tmp_path / "one", tmp_path / "chunks"):
        folder.mkdir()
    for event in events:
        one_by_one.add(*event)
    for chunk in (events[:1], [], events[1:]):  # an empty chunk too: a chunk of rejects adds nothing
        ts, tiebreaks, people, kinds, payloads = zip(*chunk, strict=True) if chunk else ((),) * 5
        at_once.add_many(array("q", ts), array("q", tiebreaks), array("Q", people), array("B", kinds), list(payloads))
    assert at_once.buffered_bytes == one_by_one.buffered_bytes
    runs = [pa.concat_tables(list(merge_runs(writer.close()))).to_pylist() for writer in (one_by_one, at_once)]
    assert runs[0] == runs[1] and [row["payload"] for row in runs[1]] == [b'{"d":"x"}', b'{"a":1}', b"", b'{"c":3}']


def test_no_events_means_no_runs(tmp_path):
    assert RunWriter(tmp_path, 1 << 20).close() == []
    assert list(merge_runs([])) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-(2**40), 2**40), st.integers(0, 50)), min_size=1, max_size=400),
       st.integers(2_000, 40_000))
def test_merge_is_a_sorted_permutation_of_the_input(tmp_path_factory, raw, run_bytes):
    directory = tmp_path_factory.mktemp("runs")
    events = [(ts, make_tiebreak(file, row), 0) for row, (ts, file) in enumerate(raw)]
    run_paths = _spill(directory, events, run_bytes)
    assert _keys(merge_runs(run_paths)) == sorted((ts, tb) for ts, tb, _ in events)


def test_compaction_merges_runs_down_to_the_fan_in_without_changing_the_stream(tmp_path):
    rng = random.Random(9)
    events = [(rng.randrange(5_000), make_tiebreak(rng.randrange(4), n), 0) for n in range(6_000)]
    run_paths = _spill(tmp_path, events, run_bytes=8_000)
    assert len(run_paths) > 30
    before = pa.concat_tables(list(merge_runs(run_paths))).drop_columns(["run"])
    runs = [RunFile.written(p, pa.ipc.open_file(str(p)).read_all().num_rows) for p in run_paths]
    compacted = compact_runs(tmp_path, runs, fan_in=4)
    assert len(compacted) <= 4 and sum(run.rows for run in compacted) == 6_000
    after = pa.concat_tables(list(merge_runs([tmp_path / run.file for run in compacted]))).drop_columns(["run"])
    assert after.equals(before)


SPILL_MEMORY_SCRIPT = """
import resource, sys
from pathlib import Path
from posthog_migrate.spool import RunWriter

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

writer = RunWriter(Path(sys.argv[1]), 1 << 30)
payload = b"x" * 900
for start in range(0, 100_000, 1_000):  # ~90 MB of payloads, in reverse time order: the sort moves every row
    rows = range(start, start + 1_000)
    writer.add_many([-row for row in rows], list(rows), list(rows), [0] * 1_000, [payload] * 1_000)
before = peak_mib()
writer.spill()
print(before, peak_mib())
"""


def test_a_spill_sorts_its_buffer_without_a_second_copy_of_it(tmp_path):
    # The spill is prepare's memory peak: each worker's buffer (up to its share of --memory) plus what sorting
    # it costs. Gathering the whole buffer into sorted order at once doubled it; a record batch at a time adds
    # a few MB.
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", SPILL_MEMORY_SCRIPT, str(tmp_path)], capture_output=True,
                            text=True, check=True)
    before, after = map(int, result.stdout.split())
    assert after - before < 30, f"peak memory grew by {after - before} MiB while spilling a 90 MB buffer"
    [run] = tmp_path.glob("run-*.arrow")
    table = pa.ipc.open_file(str(run)).read_all()
    assert table.num_rows == 100_000
    assert table.column("ts").to_pylist() == sorted(table.column("ts").to_pylist())


NO_PANDAS_SCRIPT = """
import sys
from pathlib import Path
from posthog_migrate.batches import BatchLayout, cut_windows
from posthog_migrate.identity import IdentityCollector
from posthog_migrate.spool import MergeCursor, RunWriter, merge_slices

identities = IdentityCollector(Path(sys.argv[1]), 1 << 20, tag="00000-")  # what a prepare worker spills too
identities.see("user-1", "device-1", 5, 1)
identities.spill()

paths = []
for run in range(3):
    writer = RunWriter(Path(sys.argv[1]), 1 << 20, prefix=f"run-{run}-")
    for row in range(2_000):
        writer.add((row * 7919 + run) % 5_000, (run << 40) | row, row, 0, b'{"event":"e"}')
    paths += writer.close()
start = MergeCursor.start(len(paths))
events = sum(len(batch.starts) for window in cut_windows(merge_slices(paths, start), start, 0, BatchLayout(lanes=2))
             for batch in window.batches)
print(events, "pandas" in sys.modules)
"""


def test_spilling_runs_and_pairs_merging_and_cutting_batches_never_import_pandas(tmp_path):
    # pyarrow imports pandas, when it is installed, on the first pa.array or to_numpy call: ~45 MB in each of
    # prepare's workers and in send's process, for nothing (the spool's columns are plain numbers and bytes).
    pytest.importorskip("pandas")
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", NO_PANDAS_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["6000", "False"]
