"""Persons as PostHog's ingestion makes them: every distinct id is a person, and ``$identify``,
``$create_alias`` and ``$merge_dangerously`` merge persons by PostHog's rules.

Read from PostHog's plugin-server (``person-state.ts``: ``handleIdentifyOrAlias``, ``merge``,
``mergeDistinctIds``, ``isMergeAllowed``; ``person-utils``: ``isDistinctIdIllegal``), so that what the local
server answers about persons is what a real project would hold after the same events:

- an id PostHog calls illegal (``null``, ``anonymous``, ``0``...) is never merged, on either side;
- merging an id into itself does nothing;
- otherwise the event's person becomes *identified*, and: neither id has a person → one new person holds
  both; one has → the other id joins it; both have different persons → they merge, unless the person of the
  id being merged away is already identified (``$merge_dangerously`` merges anyway).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

# isDistinctIdIllegal: compared case-insensitively, and with single or double quotes around them. The pipeline's
# rule (posthog_migrate.distinct_ids) holds the same lists: this package imports nothing of the pipeline, and a
# test checks that the two agree.
_ILLEGAL_ANY_CASE = frozenset(("anonymous", "guest", "distinctid", "distinct_id", "id", "not_authenticated", "email",
                               "undefined", "true", "false"))
_ILLEGAL_EXACT = frozenset(("[object Object]", "NaN", "None", "none", "null", "0", "undefined"))
# The events that merge persons, and the property naming the id merged into the event's distinct_id.
MERGE_EVENTS = {"$identify": "$anon_distinct_id", "$create_alias": "alias", "$merge_dangerously": "alias"}
# What PostHog's ingestion warnings call a refused merge.
ILLEGAL_ID_WARNING = "cannot_merge_with_illegal_distinct_id"
ALREADY_IDENTIFIED_WARNING = "cannot_merge_already_identified"


def _quoted_forms(ids: Iterable[str]) -> frozenset[str]:
    return frozenset(form for text in ids for form in (text, f"'{text}'", f'"{text}"'))


_ILLEGAL_LOWERED = _quoted_forms(_ILLEGAL_ANY_CASE)
_ILLEGAL_AS_IS = _quoted_forms(_ILLEGAL_EXACT)


def is_illegal_distinct_id(distinct_id: str) -> bool:
    """Whether PostHog refuses to merge this id with any other (it still stores events that carry it)."""
    text = distinct_id.strip()
    return not text or text.lower() in _ILLEGAL_LOWERED or text in _ILLEGAL_AS_IS


def merged_pair(event: dict) -> tuple[str, str] | None:
    """(the event's distinct_id, the id it merges in) when the event asks for a merge, else None."""
    key = MERGE_EVENTS.get(event.get("event"))
    properties = event.get("properties")
    if key is None or not isinstance(properties, dict) or properties.get(key) in (None, ""):
        return None
    return str(event.get("distinct_id")), str(properties[key])


@dataclass
class Person:
    id: int
    distinct_ids: set[str] = field(default_factory=set)
    identified: bool = False


class People:
    """The persons of a project, built event by event in the order ingestion processes them."""

    def __init__(self) -> None:
        self._person_of: dict[str, Person] = {}
        self._ids = itertools.count(1)
        self.refused: list[tuple[str, str, str]] = []  # (warning, distinct_id, other id), as ingestion warns

    def person_id(self, distinct_id: str) -> int | None:
        person = self._person_of.get(distinct_id)
        return None if person is None else person.id

    def see(self, event: dict) -> None:
        """Apply one accepted event: a merge it asks for first, then its distinct_id has a person."""
        pair = merged_pair(event)
        if pair is not None:
            self._merge(pair[1], pair[0], dangerously=event.get("event") == "$merge_dangerously")
        distinct_id = str(event.get("distinct_id"))
        if distinct_id not in self._person_of:
            self._new_person([distinct_id])

    def _new_person(self, distinct_ids: list[str], identified: bool = False) -> Person:
        person = Person(next(self._ids), set(distinct_ids), identified)
        for distinct_id in distinct_ids:
            self._person_of[distinct_id] = person
        return person

    def _merge(self, other_id: str, into_id: str, dangerously: bool) -> None:
        """``merge(otherPersonDistinctId, mergeIntoDistinctId)`` of PostHog's person state."""
        if other_id == into_id:
            return
        for illegal in (into_id, other_id):
            if is_illegal_distinct_id(illegal):
                self.refused.append((ILLEGAL_ID_WARNING, into_id, other_id))
                return
        other, into = self._person_of.get(other_id), self._person_of.get(into_id)
        if other is None and into is None:
            self._new_person([into_id, other_id], identified=True)
        elif into is None:
            self._join(other, into_id)
        elif other is None:
            self._join(into, other_id)
        elif other is not into:
            if other.identified and not dangerously:
                self.refused.append((ALREADY_IDENTIFIED_WARNING, into_id, other_id))
            else:
                for distinct_id in other.distinct_ids:
                    self._person_of[distinct_id] = into
                into.distinct_ids |= other.distinct_ids
        # The event's person is identified whatever became of the merge (updateIsIdentified).
        self._person_of[into_id].identified = True

    def _join(self, person: Person, distinct_id: str) -> None:
        person.distinct_ids.add(distinct_id)
        self._person_of[distinct_id] = person
