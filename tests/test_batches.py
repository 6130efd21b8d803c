"""Batch cutting: caps always hold, lanes keep people apart, the layout is a pure function of the input."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pyarrow as pa
import pytest
from posthog_migrate.batches import (
    ENVELOPE_BYTES,
    Batch,
    BatchLayout,
    _cut_lane,
    _payload_source,
    build_body,
    cut_windows,
)
from posthog_migrate.spool import MergeCursor, RunWriter, make_tiebreak, merge_runs, merge_slices


def _prepared_runs(tmp_path, count, seed=5, people=30, max_payload=400):
    rng = random.Random(seed)
    writer = RunWriter(tmp_path, 200_000)
    for row in range(count):
        person = rng.randrange(people)
        payload = orjson.dumps({"distinct_id": f"p{person}", "row": row, "pad": "x" * rng.randrange(max_payload)})
        writer.add(rng.randrange(100_000), make_tiebreak(0, row), person * 7919, 0, payload)
        if writer.full:
            writer.spill()
    return writer.close()


def _windows(run_paths, layout, cursor=None, first_seq=0):
    cursor = cursor or MergeCursor.start(len(run_paths))
    return list(cut_windows(merge_slices(run_paths, cursor), cursor, first_seq, layout))


@pytest.mark.parametrize("lanes,max_events,max_bytes", [(1, 100, 1 << 20), (4, 250, 30_000), (3, 10_000, 20_000)])
def test_caps_hold_for_every_batch(tmp_path, lanes, max_events, max_bytes):
    run_paths = _prepared_runs(tmp_path, 3_000)
    layout = BatchLayout(lanes=lanes, max_events=max_events, max_bytes=max_bytes)
    batches = [b for w in _windows(run_paths, layout) for b in w.batches]
    assert sum(b.n_events for b in batches) == 3_000
    for batch in batches:
        assert batch.n_events <= max_events
        body = build_body(batch.payloads, "phc_" + "k" * 60)
        assert len(body) <= max_bytes
        assert sum(len(p) for p in batch.payloads) + batch.n_events - 1 <= max_bytes - ENVELOPE_BYTES


def test_batches_in_one_window_never_share_a_person(tmp_path):
    run_paths = _prepared_runs(tmp_path, 4_000)
    for window in _windows(run_paths, BatchLayout(lanes=4, max_events=200, max_bytes=1 << 20)):
        people_by_lane: dict[int, set] = {}
        for batch in window.batches:
            people = {orjson.loads(p)["distinct_id"] for p in batch.payloads}
            people_by_lane.setdefault(batch.lane, set()).update(people)
        lanes = list(people_by_lane.values())
        for i, a in enumerate(lanes):
            for b in lanes[i + 1:]:
                assert not a & b


def test_sequence_numbers_are_contiguous_and_windows_chain(tmp_path):
    run_paths = _prepared_runs(tmp_path, 2_000)
    windows = _windows(run_paths, BatchLayout(lanes=3, max_events=100, max_bytes=1 << 20))
    seqs = [b.seq for w in windows for b in w.batches]
    assert seqs == list(range(len(seqs)))
    for before, after in zip(windows, windows[1:], strict=False):
        assert before.end == after.start and before.end_seq == after.first_seq
    assert windows[-1].end.position == 2_000


def test_layout_is_deterministic_and_resumable_from_any_window(tmp_path):
    run_paths = _prepared_runs(tmp_path, 2_500)
    layout = BatchLayout(lanes=2, max_events=150, max_bytes=1 << 20)
    first = _windows(run_paths, layout)
    again = _windows(run_paths, layout)
    assert [b.payloads for w in first for b in w.batches] == [b.payloads for w in again for b in w.batches]
    middle = first[len(first) // 2]
    resumed = _windows(run_paths, layout, middle.start, middle.first_seq)
    expected = [(b.seq, b.payloads) for w in first[len(first) // 2:] for b in w.batches]
    assert [(b.seq, b.payloads) for w in resumed for b in w.batches] == expected


def test_a_lane_over_the_cap_is_cut_evenly_not_into_full_plus_crumbs():
    cuts = _cut_lane(np.full(130, 10), BatchLayout(lanes=2, max_events=100, max_bytes=1 << 20))
    assert [end - start for start, end in cuts] == [65, 65]


def test_a_lane_is_cut_by_bytes_when_events_are_large():
    layout = BatchLayout(lanes=1, max_events=1_000, max_bytes=ENVELOPE_BYTES + 10_000)
    cuts = _cut_lane(np.full(25, 999), layout)
    assert all(1000 * (end - start) - 1 <= 10_000 for start, end in cuts)
    assert [end - start for start, end in cuts] == [9, 9, 7]  # even pieces, each under the byte cap
    assert cuts[0][0] == 0 and all(a[1] == b[0] for a, b in zip(cuts, cuts[1:], strict=False)) and cuts[-1][1] == 25


def test_body_is_the_batch_shape_with_historical_flag_and_no_sent_at():
    body = orjson.loads(build_body([b'{"event":"a"}', b'{"event":"b"}'], "phc_key"))
    assert body == {"api_key": "phc_key", "historical_migration": True, "batch": [{"event": "a"}, {"event": "b"}]}
    assert "sent_at" not in body


def test_window_holds_a_little_less_than_lanes_times_batch_events(tmp_path):
    run_paths = _prepared_runs(tmp_path, 3_000)
    windows = _windows(run_paths, BatchLayout(lanes=4, max_events=100, max_bytes=1 << 22))
    assert all(w.end.position - w.start.position == 360 for w in windows[:-1])  # 4 x 100 x WINDOW_FILL
    assert pa.concat_tables(list(merge_runs(run_paths))).num_rows == 3_000
    one_lane = _windows(run_paths, BatchLayout(lanes=1, max_events=100, max_bytes=1 << 22))
    assert all(w.end.position - w.start.position == 100 for w in one_lane[:-1])  # one lane: full batches


def test_each_lanes_share_of_a_window_is_usually_one_batch(tmp_path):
    # 4 lanes of 2,000-event batches and many people: a window of exactly 4 x 2,000 events put more than
    # 2,000 in about half of the lanes, each then sent as two half batches (758 requests per 1M events).
    run_paths = _prepared_runs(tmp_path, 60_000, people=20_000, max_payload=20)
    layout = BatchLayout(lanes=4, max_events=2_000, max_bytes=1 << 22)
    windows = _windows(run_paths, layout)
    assert sum(len(w.batches) for w in windows) == 4 * len(windows)
    assert all(b.n_events <= 2_000 for w in windows for b in w.batches)


def test_a_windows_batches_are_numbered_round_robin_over_its_lanes(tmp_path):
    # One person with most events: their lane needs several batches. The other lanes' batches are
    # numbered among the first, so they start at once instead of waiting behind that lane's second batch.
    rng = random.Random(3)
    writer = RunWriter(tmp_path, 1 << 30)
    for row in range(2_000):
        person = 0 if row % 4 else rng.randrange(1, 400)
        writer.add(row, make_tiebreak(0, row), person * 7919, 0, orjson.dumps({"row": row, "p": person}))
    run_paths = writer.close()
    layout = BatchLayout(lanes=4, max_events=100, max_bytes=1 << 22)
    for window in _windows(run_paths, layout):
        lanes = [batch.lane for batch in window.batches]
        turns: list[list[int]] = []
        for lane in lanes:  # split the numbering into rounds: a round ends when a lane comes again
            if not turns or lane in turns[-1]:
                turns.append([])
            turns[-1].append(lane)
        assert turns[0] == sorted(set(lanes)), lanes  # every lane of the window in the first round
        assert all(set(later) <= set(earlier) for earlier, later in zip(turns, turns[1:], strict=False))
    heavy = [w for w in _windows(run_paths, layout) if len(w.batches) > len({b.lane for b in w.batches})]
    assert heavy, "the test needs windows where a lane has several batches"


def test_batches_hold_each_lanes_events_in_merged_order_byte_for_byte(tmp_path):
    # The reference: the merged stream as plain tables, split by lane in order, one window at a time.
    run_paths = _prepared_runs(tmp_path, 3_000)
    layout = BatchLayout(lanes=3, max_events=120, max_bytes=25_000)
    merged = pa.concat_tables(list(merge_runs(run_paths)))
    payloads, people = merged.column("payload").to_pylist(), merged.column("person").to_pylist()
    for window in _windows(run_paths, layout):
        rows = range(window.start.position, window.end.position)
        for lane in range(layout.lanes):
            expected = [payloads[row] for row in rows if people[row] % layout.lanes == lane]
            got = [p for batch in window.batches if batch.lane == lane for p in batch.payloads]
            assert got == expected


def test_a_window_cut_from_a_longer_merged_step_copies_only_its_own_payloads(tmp_path):
    # Many runs over the same time span: each merge step takes rows from all of them, and is much longer than a
    # window, so a window is a slice of a step that shares the step's payload pieces. The array gathered from
    # must hold that slice's payloads only (it held the whole step's, copied once per window: a cost per event
    # that grew with the number of runs), and gather exactly them, in merged order.
    run_paths = _prepared_runs(tmp_path, 6_000, people=50, max_payload=300)
    assert len(run_paths) >= 5
    step = max(merge_slices(run_paths), key=lambda merged: merged.num_rows)
    assert len({int(run) for run in step.run}) == len(run_paths)
    everything = pa.concat_arrays(step.pieces).to_pylist()
    third = step.num_rows // 3
    for window in (step.slice(0, third), step.slice(third, 2 * third), step.slice(2 * third)):
        source, rows, comma = _payload_source([window])
        assert source[comma].as_py() == b","
        assert len(source) == window.num_rows + 1  # a run's rows in a window are consecutive: nothing else copied
        assert source.take(pa.array(rows)).to_pylist() == [everything[row] for row in window.order]


def test_batch_bodies_and_halves_are_build_body_of_their_events(tmp_path):
    run_paths = _prepared_runs(tmp_path, 1_000)
    batches = [b for w in _windows(run_paths, BatchLayout(lanes=2, max_events=90)) for b in w.batches]
    given = Batch.from_payloads(7, 0, [b'{"a":1}', b'{"bb":[2]}', b'{}'], [1, 2, 3], [0, 1, 0])
    for batch in [*batches, given]:
        payloads = batch.payloads
        assert batch.body("phc_key") == build_body(payloads, "phc_key")
        middle = batch.n_events // 2
        assert batch.body("phc_key", 0, middle) == build_body(payloads[:middle], "phc_key")
        assert batch.body("phc_key", middle) == build_body(payloads[middle:], "phc_key")
        assert [batch.payload(i) for i in range(batch.n_events)] == payloads
    assert given.count_kind(1) == 1 and list(given.tiebreaks) == [1, 2, 3]


def test_a_checkpoint_of_the_earlier_layout_counts_as_another_layout():
    # Version 1 cut full windows and numbered a window's batches lane by lane, and recorded only these
    # three settings. A resume compares the recorded layout with this one: equal would mean "skip the
    # batches already acknowledged in the current window", but the same numbers now name other batches.
    layout = BatchLayout(lanes=4, max_events=2_000, max_bytes=5 << 20)
    version_1 = {"lanes": 4, "max_events": 2_000, "max_bytes": 5 << 20}
    assert layout.as_dict() != version_1
    assert layout.as_dict() == BatchLayout(lanes=4, max_events=2_000, max_bytes=5 << 20).as_dict()
