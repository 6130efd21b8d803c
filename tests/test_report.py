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
