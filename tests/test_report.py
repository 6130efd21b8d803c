"""The counts behind inspect and the summary: distinct ids in constant memory."""

from __future__ import annotations

import pytest

from migrate.job import person_hash
from migrate.report import DistinctCounter, PrepareStats


@pytest.mark.parametrize("people", [1, 60, 10_000, 200_000])
def test_distinct_ids_are_estimated_within_three_percent(people):
    counter = DistinctCounter()
    for n in range(people):
        counter.add(person_hash(f"user-{n}"))
        counter.add(person_hash(f"user-{n}"))  # seen twice, counted once
    assert abs(counter.estimate() - people) <= max(1, 0.03 * people)


def test_counts_of_separate_files_merge_into_the_job_count():
    first, second = PrepareStats(), PrepareStats()
    for n in range(3_000):
        first.add_event("e", 1_000 + n, person_hash(f"u{n}"), 0, False)
    for n in range(2_000, 5_000):  # 1,000 people in both files
        second.add_event("e", 9_000 + n, person_hash(f"u{n}"), 0, False)
    first.merge(second)
    assert first.events == 6_000 and (first.first_us, first.last_us) == (1_000, 13_999)
    assert abs(first.people.estimate() - 5_000) <= 150
    restored = PrepareStats.from_dict(first.to_dict())
    assert restored.people.estimate() == first.people.estimate()


def test_a_tally_counts_exactly_what_add_event_counts(monkeypatch):
    # The mapping loop counts events a chunk at a time (EventTally, numpy); it must agree with add_event
    # one event at a time in everything: names (with the cap), renames, days, first/last, recent, people.
    import random

    import migrate.report as report

    monkeypatch.setattr(report, "MAX_TRACKED_EVENT_NAMES", 50)
    rng = random.Random(3)
    now = 1_700_000_000_000_000
    one_by_one, chunked = report.PrepareStats(), report.PrepareStats()
    tally = report.EventTally()
    extremes = [0, 1, (1 << 64) - 1, 1 << 50, (1 << 50) - 1, 1 << 49, 12345]  # rest == 0, top bits, ...
    for _chunk in range(5):
        for n in range(2_000):
            name = f"e{rng.randrange(80)}"
            source = rng.choice([None, name, f"src {name}"])
            ts = now - rng.randrange(-10**11, 10**14) if n % 500 else -rng.randrange(10**15)  # before 1970 too
            person = extremes[n % len(extremes)] if n < len(extremes) else rng.getrandbits(64)
            added = rng.random() < 0.1
            one_by_one.add_event(name, ts, person, now, added, source)
            tally.names.append(name)
            tally.source_names.append(source)
            tally.timestamps.append(ts)
            tally.people.append(person)
            tally.added += added
        chunked.add_tally(tally, now)
        assert not tally.names and not tally.timestamps
    assert chunked.to_dict() == one_by_one.to_dict()
    assert chunked.event_names[report.OTHER_EVENTS] > 0  # the cap was reached
