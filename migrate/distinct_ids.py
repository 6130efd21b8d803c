"""Which ids can stand for a person in PostHog, and which of a row's ids becomes its distinct_id.

PostHog refuses to merge persons through ids it calls illegal (its plugin-server's ``isDistinctIdIllegal``,
in ``person-utils`` / ``person-merge-service``): ``$identify``, ``$create_alias`` and ``$merge_dangerously``
with one on either side are ignored with an ingestion warning, while events sent under one are stored, so
every "user" called ``null`` or ``0`` becomes one person whose device history is never merged. An export
holds such ids when a tracking call ran before the user was known (``String(undefined)``, ``None``...).

So an illegal id is treated as a missing one: a row falls back to the next id its format offers (the
device id, the anonymous id), and a row with nothing else is rejected as ``illegal_distinct_id``. This
module is the one place that decides: every adapter, the generic column mapping and the final validation
ask :func:`is_illegal_id`. Ids are trimmed before they are judged or sent (``" u1 "`` is ``"u1"``), on
events and identity events alike, so that one person never has two spellings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # event.py asks is_illegal_id when it validates: this module cannot import it at load time
    from posthog_migrate.event import Rejection

ILLEGAL_DISTINCT_ID = "illegal_distinct_id"
# PostHog's lists (plugin-server person-utils), each also refused in single or double quotes.
CASE_INSENSITIVE_ILLEGAL_IDS = ("anonymous", "guest", "distinctid", "distinct_id", "id", "not_authenticated",
                                "email", "undefined", "true", "false")
CASE_SENSITIVE_ILLEGAL_IDS = ("[object Object]", "NaN", "None", "none", "null", "0", "undefined")


def _with_quotes(ids: tuple[str, ...]) -> frozenset[str]:
    return frozenset((*ids, *(f"'{i}'" for i in ids), *(f'"{i}"' for i in ids)))


_FOLDED = _with_quotes(CASE_INSENSITIVE_ILLEGAL_IDS)
_EXACT = _with_quotes(CASE_SENSITIVE_ILLEGAL_IDS)
# No illegal id is longer: most real ids (uuids, emails) are answered by one length test.
LONGEST_ILLEGAL_ID = max(map(len, _FOLDED | _EXACT))

# (field, id) pairs a row offered but could not use: what inspect counts ("12,000 rows have user_id 'null'").
PassedOver = tuple[tuple[str, str], ...]


def is_illegal_id(text: str) -> bool:
    """PostHog's rule, for an id already trimmed: empty, one of the case-insensitive names (``Guest``,
    ``UNDEFINED``), one of the case-sensitive ones (``null``, ``0``, ``NaN``: ``nan`` is fine), or any of
    these in quotes (``"undefined"``)."""
    return not text or (len(text) <= LONGEST_ILLEGAL_ID and (text in _EXACT or text.lower() in _FOLDED))


def legal_id(text: str | None) -> str | None:
    """``text`` when it can stand for a person, else None."""
    return None if text is None or is_illegal_id(text) else text


def pick_id(candidates: Iterable[tuple[str, str | None]]) -> tuple[str | None, PassedOver]:
    """The first legal id among ``(field, id)`` candidates in order of preference (None when there is none),
    and the illegal ones passed over on the way, for inspect's count."""
    passed: PassedOver = ()
    for field, text in candidates:
        if text is None:
            continue
        if not is_illegal_id(text):
            return text, passed
        passed += ((field, text),)
    return None, passed


def no_usable_id(detail: str, passed: PassedOver) -> Rejection:
    """The rejection of a row that has no id to send under: ``illegal_distinct_id`` naming the ids PostHog
    would not merge when the row had only those, else ``missing_distinct_id`` with ``detail``."""
    from posthog_migrate.event import Rejection

    if not passed:
        return Rejection("missing_distinct_id", detail)
    named = ", ".join(f"{field} {text!r}" for field, text in passed)
    return Rejection(ILLEGAL_DISTINCT_ID, f"{named}: an id PostHog will not merge persons through (every row with it "
                     "would be one person), and the row has no other id", illegal_ids=passed)


def describe_passed_over(field: str, text: str) -> str:
    """The key under which inspect counts rows: ``user_id 'null'``."""
    return f"{field} {text!r}"


def only_legal(*candidates: tuple[str, str | None]) -> tuple[tuple[str | None, ...], PassedOver]:
    """The ids of ``(field, id)`` candidates with the illegal ones replaced by None, and those passed over."""
    passed = tuple((field, text) for field, text in candidates if text is not None and is_illegal_id(text))
    if not passed:
        return tuple(text for _, text in candidates), ()
    return tuple(legal_id(text) for _, text in candidates), passed
