"""The counts behind inspect and the summary: distinct ids in constant memory."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from posthog_migrate.accounting import HLL_PRECISION, OTHER_EVENTS, DistinctCounter, EventTally, PrepareStats
from posthog_migrate.event import MICROSECONDS_PER_DAY, RECENT_EVENT_AGE_US
from posthog_migrate.job import person_hash


def _tally_of(events) -> EventTally:
    tally = EventTally()
    for name, ts, person in events:
        tally.add(name, None, ts, person, False)
    return tally


@pytest.mark.parametrize("people", [1, 60, 10_000, 200_000])
def test_distinct_ids_are_estimated_within_three_percent(people):
    counter = DistinctCounter()
    hashes = np.array([person_hash(f"user-{n}") for n in range(people)], dtype=np.uint64)
    counter.add_many(hashes)
    counter.add_many(hashes)  # seen twice, counted once
    assert abs(counter.estimate() - people) <= max(1, 0.03 * people)


def test_counts_of_separate_files_merge_into_the_job_count():
    first, second = PrepareStats(), PrepareStats()
    first.add_tally(_tally_of(("e", 1_000 + n, person_hash(f"u{n}")) for n in range(3_000)), 0)
    # 1,000 people in both files
    second.add_tally(_tally_of(("e", 9_000 + n, person_hash(f"u{n}")) for n in range(2_000, 5_000)), 0)
    first.merge(second)
    assert first.events == 6_000 and (first.first_us, first.last_us) == (1_000, 13_999)
    assert abs(first.people.estimate() - 5_000) <= 150
    restored = PrepareStats.from_dict(first.to_dict())
    assert restored.people.estimate() == first.people.estimate()


class _OneByOne:
    """The counting rules stated one event at a time, in plain Python: the oracle for add_tally."""

    def __init__(self, cap: int):
        self.stats, self.cap = PrepareStats(), cap

    def _capped(self, counter: Counter, key: str, other: str | None) -> None:
        if key in counter or len(counter) < self.cap:
            counter[key] += 1
        elif other is not None:
            counter[other] += 1

    def add(self, name: str, source: str | None, ts: int, person: int, added: bool, now_us: int) -> None:
        stats = self.stats
        stats.events += 1
        stats.added_events += added
        self._capped(stats.event_names, name, OTHER_EVENTS)
        if source is not None and source != name:
            self._capped(stats.renamed, f"{source} → {name}", None)
        stats.per_day[ts // MICROSECONDS_PER_DAY] += 1
        stats.first_us = ts if stats.first_us is None else min(stats.first_us, ts)
        stats.last_us = ts if stats.last_us is None else max(stats.last_us, ts)
        stats.recent_events += ts > now_us - RECENT_EVENT_AGE_US
        index = person >> (64 - HLL_PRECISION)
        rest = (person << HLL_PRECISION) & 0xFFFF_FFFF_FFFF_FFFF
        rank = 65 - rest.bit_length() if rest else 64 - HLL_PRECISION + 1
        stats.people.registers[index] = max(stats.people.registers[index], rank)


def test_a_tally_counts_exactly_what_counting_one_by_one_counts(monkeypatch):
    # The mapping loop counts events a chunk at a time (EventTally, numpy); it must agree with the rules
    # applied one event at a time in everything: names (with the cap), renames, days, first/last, recent,
    # people.
    import random

    import posthog_migrate.accounting as accounting

    monkeypatch.setattr(accounting, "MAX_TRACKED_EVENT_NAMES", 50)
    rng = random.Random(3)
    now = 1_700_000_000_000_000
    one_by_one, chunked = _OneByOne(cap=50), PrepareStats()
    tally = EventTally()
    extremes = [0, 1, (1 << 64) - 1, 1 << 50, (1 << 50) - 1, 1 << 49, 12345]  # rest == 0, top bits, ...
    for _chunk in range(5):
        for n in range(2_000):
            name = f"e{rng.randrange(80)}"
            source = rng.choice([None, name, f"src {name}"])
            ts = now - rng.randrange(-10**11, 10**14) if n % 500 else -rng.randrange(10**15)  # before 1970 too
            person = extremes[n % len(extremes)] if n < len(extremes) else rng.getrandbits(64)
            added = rng.random() < 0.1
            one_by_one.add(name, source, ts, person, added, now)
            tally.add(name, source, ts, person, added)
        chunked.add_tally(tally, now)
        assert not tally.names and not tally.timestamps
    assert chunked.to_dict() == one_by_one.stats.to_dict()
    assert chunked.event_names[OTHER_EVENTS] > 0  # the cap was reached


def test_warnings_add_up_across_files_survive_the_manifest_and_are_shown():
    from posthog_migrate.render import preflight_report

    first, second = PrepareStats(), PrepareStats()
    first.warnings["events before 2000-01-01 (suspicious timestamps)"] += 3
    second.warnings["events before 2000-01-01 (suspicious timestamps)"] += 4
    second.warnings["file b.csv: duplicate column 'plan'"] += 1
    first.merge(second)
    restored = PrepareStats.from_dict(first.to_dict())
    assert restored.warnings == Counter({"events before 2000-01-01 (suspicious timestamps)": 7,
                                         "file b.csv: duplicate column 'plan'": 1})
    report = preflight_report(restored, "csv")
    assert "Warnings:" in report and "7  events before 2000-01-01" in report
