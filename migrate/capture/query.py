"""The local server's query endpoint: ``POST /api/projects/{id}/query/``, answering the HogQL that ``verify`` sends.

PostHog's query API takes ``{"query": {"kind": "HogQLQuery", "query": "SELECT ..."}}`` with a personal API key
(``Authorization: Bearer phx_...``) and answers ``{"columns": [...], "results": [[...], ...]}``. This endpoint
answers the same way over what the capture server has accepted, so that ``verify`` can be tried and tested
end to end with no PostHog at hand. It understands exactly two queries (whitespace and the case of keywords
are free; anything else is answered 400, naming this subset):

- counts: ``SELECT toDate(toTimeZone(timestamp, 'UTC')) AS day, event, count(DISTINCT uuid) AS found FROM events
  WHERE properties.$import_job_id = 'JOB' AND timestamp >= toDateTime('YYYY-MM-DD 00:00:00', 'UTC')
  AND timestamp < toDateTime('YYYY-MM-DD 00:00:00', 'UTC') GROUP BY day, event ORDER BY day, event
  LIMIT n [OFFSET m]`` (see :func:`counts_query`);
- persons: ``SELECT distinct_id, person_id FROM person_distinct_ids WHERE distinct_id IN ('a', 'b', ...)
  ORDER BY distinct_id LIMIT n`` (see :func:`persons_query`): ids without a person have no row.

The builders below make these texts for ``verify``, so that what it sends and what this endpoint reads are
defined in one place. Events count as PostHog stores them: one per uuid within a (UTC day, event) group, a
re-sent event collapsing into the first. Persons follow PostHog's merge rules (see ``persons``).
"""

from __future__ import annotations

import re
import threading
import uuid as uuid_module
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import orjson
from posthog_migrate.capture.http import Reply, Request
from posthog_migrate.capture.persons import People

QUERY_PATH = re.compile(r"/api/projects/(?P<project>[^/]+)/query/?")
PERSONAL_API_KEY_PREFIX = "phx_"
# The most rows one query may ask for (HogQL's own cap on a LIMIT).
MAX_LIMIT = 50_000
_JSON = "application/json"
_STRING = r"'(?:[^'\\]|\\.)*'"
_DAY = r"\d{4}-\d{2}-\d{2}"
_COUNTS = re.compile(
    r"SELECT toDate\(toTimeZone\(timestamp, 'UTC'\)\) AS day, event, count\(DISTINCT uuid\) AS found "
    rf"FROM events WHERE properties\.\$import_job_id = (?P<job>{_STRING}) "
    rf"AND timestamp >= toDateTime\('(?P<start>{_DAY}) 00:00:00', 'UTC'\) "
    rf"AND timestamp < toDateTime\('(?P<end>{_DAY}) 00:00:00', 'UTC'\) "
    r"GROUP BY day, event ORDER BY day, event LIMIT (?P<limit>\d+)(?: OFFSET (?P<offset>\d+))?",
    re.IGNORECASE)
_PERSONS = re.compile(
    rf"SELECT distinct_id, person_id FROM person_distinct_ids WHERE distinct_id IN \((?P<ids>{_STRING}"
    rf"(?:, {_STRING})*)\) ORDER BY distinct_id LIMIT (?P<limit>\d+)", re.IGNORECASE)
_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0"}
_SUBSET = ("this local server answers only the two queries posthog-migrate verify sends (counts of DISTINCT uuid "
           "by day and event for one $import_job_id, and person_distinct_ids by distinct_id): see the README")


def hogql_string(text: str) -> str:
    """``text`` as a HogQL string literal."""
    return "'" + "".join(_ESCAPES.get(char, char) for char in text) + "'"


def _literal_value(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda match: _UNESCAPES.get(match[1], match[1]), body, flags=re.DOTALL)


def counts_query(job_id: str, start_day: str, end_day: str, limit: int, offset: int = 0) -> str:
    """Distinct uuids per (UTC day, event) of the events tagged ``job_id``, for ``start_day <= day < end_day``."""
    return (
        "SELECT toDate(toTimeZone(timestamp, 'UTC')) AS day, event, count(DISTINCT uuid) AS found\n"
        f"FROM events\nWHERE properties.$import_job_id = {hogql_string(job_id)}\n"
        f"  AND timestamp >= toDateTime('{start_day} 00:00:00', 'UTC')\n"
        f"  AND timestamp < toDateTime('{end_day} 00:00:00', 'UTC')\n"
        f"GROUP BY day, event\nORDER BY day, event\nLIMIT {limit} OFFSET {offset}"
    )


def persons_query(distinct_ids: Iterable[str], limit: int) -> str:
    """The person of each of ``distinct_ids`` (an id without a person has no row)."""
    listed = ", ".join(hogql_string(distinct_id) for distinct_id in distinct_ids)
    return (f"SELECT distinct_id, person_id\nFROM person_distinct_ids\nWHERE distinct_id IN ({listed})\n"
            f"ORDER BY distinct_id\nLIMIT {limit}")


def _normalised(query: str) -> str:
    """The query with its whitespace made canonical outside string literals, so the patterns can be exact."""
    parts = re.split(f"({_STRING})", query.strip().rstrip(";"))
    for index in range(0, len(parts), 2):
        text = re.sub(r"\s+", " ", parts[index])
        text = re.sub(r"\(\s", "(", text)
        text = re.sub(r"\s(?=[),])", "", text)
        parts[index] = re.sub(r",(?! )", ", ", text)
    return "".join(parts)


def _utc_day(timestamp: object) -> str:
    """The UTC day of an event's timestamp as PostHog would store it (now when it is missing or unreadable)."""
    if isinstance(timestamp, str):
        if len(timestamp) >= 11 and timestamp[10] == "T" and timestamp.endswith("Z"):
            return timestamp[:10]  # what posthog-migrate sends: RFC 3339 in UTC
        try:
            moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%d")
        except ValueError:
            pass
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _person_uuid(person_id: int) -> str:
    return str(uuid_module.UUID(int=(0x0188 << 112) | person_id))


class Landed:
    """What a project holds once ingestion is done with the accepted events: the uuids of each (job, UTC day,
    event), and the persons."""

    def __init__(self) -> None:
        self.uuids: defaultdict[tuple[str, str, str], set[str]] = defaultdict(set)
        self.people = People()

    def add(self, event: dict) -> None:
        properties = event.get("properties")
        job_id = properties.get("$import_job_id") if isinstance(properties, dict) else None
        if isinstance(job_id, str):
            uuid = event.get("uuid") or str(uuid_module.uuid4())  # capture gives a uuid-less event a random one
            self.uuids[(job_id, _utc_day(event.get("timestamp")), str(event.get("event")))].add(str(uuid))
        self.people.see(event)

    def counts(self, job_id: str, start: str, end: str) -> list[list]:
        return sorted([day, event, len(uuids)] for (job, day, event), uuids in self.uuids.items()
                      if job == job_id and start <= day < end)

    def persons(self, distinct_ids: list[str]) -> list[list]:
        rows = []
        for distinct_id in sorted(set(distinct_ids)):
            person_id = self.people.person_id(distinct_id)
            if person_id is not None:
                rows.append([distinct_id, _person_uuid(person_id)])
        return rows


class QueryEndpoint:
    """Answers the query API over the events ``newly_landed()`` hands over: those accepted since its last call
    (and, with an ingestion lag, accepted long enough ago to be queryable), in the order they were accepted.
    ``newly_landed`` raises LookupError with the reason when the server keeps nothing to query."""

    def __init__(self, newly_landed: Callable[[], Iterable[dict]]):
        self._newly_landed = newly_landed
        self._landed = Landed()
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Reply:
        body = request.read_body()
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not key:
            return _error(401, "authentication_error", "not_authenticated",
                          "Authentication credentials were not provided.")
        if not key.startswith(PERSONAL_API_KEY_PREFIX):
            return _error(401, "authentication_error", "authentication_failed",
                          "Personal API key found in request Authorization header is invalid.")
        try:
            document = orjson.loads(body)
            query = document["query"]
            text = query["query"]
            if query.get("kind") != "HogQLQuery" or not isinstance(text, str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _error(400, "validation_error", "parse_error",
                          'send {"query": {"kind": "HogQLQuery", "query": "SELECT ..."}}')
        with self._lock:
            try:
                for event in self._newly_landed():
                    self._landed.add(event)
            except LookupError as reason:
                return _error(400, "validation_error", "no_data", str(reason))
            return self._answer(text)

    def _answer(self, text: str) -> Reply:
        normalised = _normalised(text)
        if match := _COUNTS.fullmatch(normalised):
            rows = self._landed.counts(_literal_value(match["job"]), match["start"], match["end"])
            columns, types = ["day", "event", "found"], ["Date", "String", "UInt64"]
        elif match := _PERSONS.fullmatch(normalised):
            ids = [_literal_value(literal) for literal in re.findall(_STRING, match["ids"])]
            rows = self._landed.persons(ids)
            columns, types = ["distinct_id", "person_id"], ["String", "UUID"]
        else:
            return _error(400, "validation_error", "unsupported_query", _SUBSET)
        limit = int(match["limit"])
        offset = int(match.groupdict().get("offset") or 0)
        if limit > MAX_LIMIT:
            return _error(400, "validation_error", "invalid_input", f"LIMIT {limit} is over {MAX_LIMIT}")
        page = rows[offset:offset + limit]
        answer = {"columns": columns, "types": types, "results": page, "hasMore": offset + limit < len(rows),
                  "limit": limit, "offset": offset, "query": text}
        return Reply(200, orjson.dumps(answer), _JSON)


def _error(status: int, kind: str, code: str, detail: str) -> Reply:
    """An error as PostHog's API gives it: JSON with type, code and detail."""
    return Reply(status, orjson.dumps({"type": kind, "code": code, "detail": detail, "attr": None}), _JSON)
