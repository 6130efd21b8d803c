"""What PostHog's capture accepts and refuses: its limits, its token checks, and the judging of a body.

Each rule follows what capture's *code* does (see ../shared/reference/posthog-ingestion-facts.md), not
only what its docs say: the sender's tests trust these answers to be PostHog's. Nothing here knows about
HTTP or faults; :func:`judge` takes a body's bytes and gives a :class:`Verdict`.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any
from urllib.parse import parse_qs

import orjson
from posthog_migrate.capture.http import Reply

try:  # isal inflates gzip several times faster than zlib; same interface.
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is an optional extra
    import zlib as _zlib

# capture's limit on a /batch body as it arrives (compressed when gzip'd).
MAX_RAW_BODY_BYTES = 20 * 1024 * 1024
# capture's limit on the single-event endpoints (/capture/, /e/, /i/v0/e/).
MAX_SINGLE_EVENT_RAW_BYTES = 2 * 1024 * 1024
# capture's limit on a body once decompressed; also what stops a gzip bomb from eating memory.
MAX_DECODED_BODY_BYTES = 100 * 1024 * 1024
# Kafka's message limit: one event this big or bigger makes the request fail with 413.
MAX_EVENT_BYTES = 1_000_000
# capture refuses longer tokens without looking them up.
MAX_TOKEN_CHARS = 64
# Personal API keys start with this; sending one to capture is a mistake capture refuses (401).
PERSONAL_API_KEY_PREFIX = "phx_"

# The paths capture answers on, with and without their trailing slash.
BATCH_PATH = re.compile(r"/batch/?")
SINGLE_EVENT_PATH = re.compile(r"/(?:capture|e|i/v0/e)/?")

# What capture answers when it takes a request.
OK_REPLY = Reply(200, b'{"status":"Ok"}', "application/json")
GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + 15  # zlib's way of saying "a gzip container with a 32 KiB window"
_GZIP_QUERY_VALUES = ("gzip", "gzip-js")
# An event may carry the token under any of these (capture's serde aliases); never written out.
_EVENT_TOKEN_KEYS = ("token", "$token", "api_key")
# Formats uuid::Uuid::parse_str accepts: simple, hyphenated, braced, urn.
_HYPHENATED_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID_FORMS = re.compile(rf"[0-9a-fA-F]{{32}}|{_HYPHENATED_UUID}|\{{{_HYPHENATED_UUID}\}}|urn:uuid:{_HYPHENATED_UUID}")
_NO_PROPERTIES: dict[str, Any] = {}

# For the plain-batch fast path (see _plain_batch_lines).
# Top-level keys that need the general loop's care: objects to type-check, or tokens to type-check and strip.
_KEYS_NOT_PLAIN = frozenset(("$set", "$set_once", *_EVENT_TOKEN_KEYS))
# Maps each hex digit to "h" and keeps "-" and "\n"; every other byte (an "h" included) becomes "?".
_UUID_CHAR_CLASSES = bytes(
    ord("h") if chr(byte) in "0123456789abcdefABCDEF" else byte if chr(byte) in "-\n" else ord("?")
    for byte in range(256)
)
# What a hyphenated uuid looks like through _UUID_CHAR_CLASSES.
_HYPHENATED_UUID_CLASSES = b"hhhhhhhh-hhhh-hhhh-hhhh-hhhhhhhhhhhh"


class _Refusal(Exception):
    """A request capture would refuse: its status and the plain-text body explaining why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Verdict:
    """The outcome of judging one body, before any fault is applied."""

    gzip: bool
    status: int = 200
    message: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)  # accepted, token fields removed
    lines: list[bytes] = field(default_factory=list)  # the same events as JSON, one per event
    n_events: int = 0
    historical_migration: bool | None = None
    has_sent_at: bool = False
    decoded_bytes: int = 0
    decoded: bytes = b""  # the body as decompressed (for the echo fault)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate every gzip member of ``data``, refusing (413) before the output passes ``limit``."""
    parts: list[bytes] = []
    total = 0
    while data[:2] == GZIP_MAGIC:
        inflater = _zlib.decompressobj(_GZIP_WBITS)
        try:
            part = inflater.decompress(data, limit + 1 - total)
        except _zlib.error as exc:
            raise _Refusal(400, f"invalid gzip body: {exc}") from None
        total += len(part)
        if total > limit:
            raise _Refusal(413, f"body is over {limit} bytes once decompressed")
        if not inflater.eof:
            raise _Refusal(400, "invalid gzip body: it ends before the gzip stream does")
        parts.append(part)
        data = inflater.unused_data
    if not parts:
        raise _Refusal(400, "invalid gzip body: it does not start with the gzip magic bytes")
    return b"".join(parts)


def _token_problem(token: object) -> str | None:
    """Why capture would answer 401 for this token, or None. Never quotes the token."""
    if token is None:
        return "no api_key or token in the request"
    if not isinstance(token, str):
        return "the api_key must be a string"
    if not token:
        return "the api_key is empty"
    if len(token) > MAX_TOKEN_CHARS:
        return f"the api_key is longer than {MAX_TOKEN_CHARS} characters"
    if not token.isascii():
        return "the api_key holds non-ASCII characters"
    if token.startswith(PERSONAL_API_KEY_PREFIX):
        return "the api_key is a personal API key (phx_...); send the project API key"
    return None


def _without_token(event: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    clean = {key: value for key, value in event.items() if key not in _EVENT_TOKEN_KEYS}
    if "token" in properties:
        clean["properties"] = {key: value for key, value in properties.items() if key != "token"}
    return clean


def judge(raw: bytes, gzip: bool, strict: bool) -> Verdict:
    """Decide a body the way capture would: status, message and the events it would accept.

    Refusals rank as in capture: malformed body or event shapes (400) first, since capture fails to
    deserialise before it looks at anything; then the token (401); then the first event without a
    name or distinct_id (400; dropped instead in lenient mode) or too big (413).
    """
    verdict = Verdict(gzip=gzip)
    try:
        decoded = _gunzip(raw, MAX_DECODED_BODY_BYTES) if gzip else raw
        verdict.decoded_bytes, verdict.decoded = len(decoded), decoded
        _judge_decoded(decoded, strict, verdict)
    except _Refusal as refusal:
        verdict.status, verdict.message = refusal.status, refusal.message
        verdict.events, verdict.lines = [], []
    return verdict


def declares_gzip(content_encoding: str, query: str) -> bool:
    """Whether a request says its body is gzip'd, in its Content-Encoding or its ``compression`` parameter."""
    compression = parse_qs(query).get("compression", [""])[-1].lower()
    return "gzip" in content_encoding.lower() or compression in _GZIP_QUERY_VALUES


def too_big(length: int, limit: int, path: str, gzip: bool) -> Verdict:
    """The verdict on a body over its path's limit as it arrives: 413, judged without being read."""
    return Verdict(gzip=gzip, status=413, message=f"body of {length} bytes is over the {limit}-byte limit of {path}")


def reply_to(verdict: Verdict) -> Reply:
    """What capture answers to a judged request: ``{"status":"Ok"}``, or the refusal in plain text."""
    return OK_REPLY if verdict.status == 200 else Reply.text(verdict.status, verdict.message)


def _checked_shape(index: int, event: Any) -> dict[str, Any]:
    """Refuse (400) the shapes capture's deserialiser rejects, which fail a request in either mode.

    Returns the event's properties ({} when absent) for the checks that follow.
    """
    if type(event) is not dict:
        raise _Refusal(400, f"event {index}: must be a JSON object")
    properties = event.get("properties")
    if type(properties) is not dict:
        if properties is not None or "properties" in event:
            raise _Refusal(400, f"event {index}: 'properties' must be an object")
        properties = _NO_PROPERTIES
    name = event.get("event")
    if name is not None and type(name) is not str:
        raise _Refusal(400, f"event {index}: 'event' must be a string")
    timestamp = event.get("timestamp")
    if timestamp is not None and type(timestamp) is not str:
        raise _Refusal(400, f"event {index}: 'timestamp' must be a string")
    event_uuid = event.get("uuid")  # capture reads "" as "no uuid"
    if event_uuid not in (None, "") and (type(event_uuid) is not str or not _UUID_FORMS.fullmatch(event_uuid)):
        raise _Refusal(400, f"event {index}: 'uuid' must be a UUID string")
    for key in ("$set", "$set_once"):
        value = event.get(key)
        if value is not None and type(value) is not dict:
            raise _Refusal(400, f"event {index}: '{key}' must be an object")
    for key in _EVENT_TOKEN_KEYS:
        value = event.get(key)
        if value is not None and type(value) is not str:
            raise _Refusal(400, f"event {index}: '{key}' must be a string")
    return properties


def _own_token(event: dict[str, Any], properties: dict[str, Any]) -> str | None:
    """The token a single event or bare-array event carries itself (capture's aliases, then properties)."""
    for key in _EVENT_TOKEN_KEYS:
        if event.get(key) is not None:
            return event[key]
    token = properties.get("token")
    return token if type(token) is str else None


def _judge_decoded(decoded: bytes, strict: bool, verdict: Verdict) -> None:
    """Fill ``verdict`` from a decompressed body, or raise the refusal capture would answer with."""
    try:
        body = orjson.loads(decoded)
    except orjson.JSONDecodeError as exc:
        raise _Refusal(400, f"invalid JSON body: {exc}") from None

    batch_token: object = None
    is_batch_shape = isinstance(body, dict) and "batch" in body
    if is_batch_shape:
        events = body["batch"]
        if not isinstance(events, list):
            raise _Refusal(400, "'batch' must be an array of events")
        historical = body.get("historical_migration")
        if historical is not None and not isinstance(historical, bool):
            raise _Refusal(400, "'historical_migration' must be true or false")
        verdict.historical_migration = historical
        sent_at = body.get("sent_at")
        if sent_at is not None and not isinstance(sent_at, str):
            raise _Refusal(400, "'sent_at' must be a string")
        batch_token = body.get("api_key")
        if batch_token is None:
            batch_token = body.get("token")
    elif isinstance(body, list):
        events = body
    elif isinstance(body, dict):
        events = [body]
    else:
        raise _Refusal(400, "the body must be a JSON object or array")
    verdict.has_sent_at = isinstance(body, dict) and body.get("sent_at") is not None
    verdict.n_events = len(events)
    if not events:
        raise _Refusal(400, "the request holds no event")

    event_tokens: set[str] = set()
    first_problem: _Refusal | None = None
    plain_lines = _plain_batch_lines(events) if is_batch_shape else None
    if plain_lines is not None:  # the common case: every event is accepted as it came
        verdict.events, verdict.lines = events, plain_lines
    else:
        event_tokens, first_problem = _judge_each_event(events, is_batch_shape, strict, verdict)

    if is_batch_shape:
        token = batch_token
    elif len(event_tokens) > 1:
        raise _Refusal(400, "the events carry different tokens")
    else:
        token = next(iter(event_tokens), None)
    problem = _token_problem(token)
    if problem is not None:
        raise _Refusal(401, problem)
    if first_problem is not None:
        raise first_problem


def _plain_batch_lines(events: list[Any]) -> list[bytes] | None:
    """The JSON lines of a batch whose events are all plain, or None: the general loop decides then.

    Nearly every batch a sender makes holds only plain events: objects with a non-empty string
    ``event``, a ``distinct_id``, object ``properties`` without a token in them, a string
    ``timestamp`` or none, a hyphenated ``uuid`` or none, and none of the top-level keys in
    _KEYS_NOT_PLAIN. The general loop would accept each such event as it came, whatever the mode, so
    they can be checked a field at a time across the whole batch with builtins (``map``, ``set``,
    ``all``) that loop in C: several times cheaper than _judge_each_event's Python per event. Anything
    else, or an event too big, returns None and the general loop judges the batch from the start, so
    refusals keep their exact messages.
    """
    get = dict.get  # get(event, key) in map() below: event.get(key) without a Python call per event
    if set(map(type, events)) != {dict} or not all(map(_KEYS_NOT_PLAIN.isdisjoint, events)):
        return None
    properties = list(map(get, events, repeat("properties")))
    if set(map(type, properties)) != {dict} or any(map(operator.contains, properties, repeat("token"))):
        return None
    names = list(map(get, events, repeat("event")))
    if set(map(type, names)) != {str} or not all(names):
        return None
    if not set(map(type, map(get, events, repeat("timestamp")))) <= {str, type(None)}:
        return None
    distinct_ids = list(map(get, events, repeat("distinct_id")))
    if None in distinct_ids or "" in distinct_ids:
        return None
    # capture reads a missing or empty uuid as "no uuid"; any other must be a UUID string.
    uuids = [uuid for uuid in map(get, events, repeat("uuid")) if uuid is not None and uuid != ""]
    if not _all_hyphenated_uuids(uuids):
        return None
    lines = list(map(orjson.dumps, events))
    if max(map(len, lines)) >= MAX_EVENT_BYTES:
        return None
    return lines


def _all_hyphenated_uuids(uuids: list[Any]) -> bool:
    """Whether every item is a string in uuid's hyphenated form, checked in one pass over them all.

    Much cheaper than a regex per uuid: the uuids are joined by newlines, each byte is replaced by its
    class (hex digit, "-", newline, anything else) and the result must equal that many hyphenated
    shapes joined by newlines. A newline inside a uuid would add one to the count, so a match also
    proves each uuid sits in its own 36-byte slot.
    """
    try:
        joined = "\n".join(uuids)
    except TypeError:  # one is not a string
        return False
    expected = b"\n".join(repeat(_HYPHENATED_UUID_CLASSES, len(uuids)))
    return joined.isascii() and joined.encode().translate(_UUID_CHAR_CLASSES) == expected


def _judge_each_event(
    events: list[Any], is_batch_shape: bool, strict: bool, verdict: Verdict
) -> tuple[set[str], _Refusal | None]:
    """The general path: judge events one by one, filling ``verdict.events`` and ``verdict.lines``.

    Raises the first shape refusal (400); returns the tokens the events carry themselves (bare arrays
    and single events only) and the first later problem (nameless or id-less in strict mode, too big),
    which the caller raises only once the token has been found good.
    """
    event_tokens: set[str] = set()
    first_problem: _Refusal | None = None
    accepted, lines = verdict.events, verdict.lines
    dumps = orjson.dumps
    for index, event in enumerate(events):
        properties = _checked_shape(index, event)
        carries_token = "token" in event or "$token" in event or "api_key" in event or "token" in properties
        if carries_token and not is_batch_shape:
            own_token = _own_token(event, properties)
            if own_token is not None:
                event_tokens.add(own_token)

        # What capture checks after the token: name, distinct_id, size.
        distinct_id = event.get("distinct_id")
        if distinct_id is None:
            distinct_id = event.get("$distinct_id")
        if distinct_id is None:
            distinct_id = properties.get("distinct_id")
        missing = None
        if not event.get("event"):
            missing = "has no event name"
        elif distinct_id is None or distinct_id == "":
            missing = "has no distinct_id"
        if missing is not None:
            if strict and first_problem is None:
                first_problem = _Refusal(400, f"event {index}: {missing}")
            continue
        if first_problem is not None:
            continue  # the request is refused already; only shape errors (which outrank it) matter now
        if carries_token:
            event = _without_token(event, properties)
        line = dumps(event)
        if len(line) >= MAX_EVENT_BYTES:
            first_problem = _Refusal(
                413, f"event {index}: {len(line)} bytes is too big (events must stay under {MAX_EVENT_BYTES})"
            )
            continue
        accepted.append(event)
        lines.append(line)

    return event_tokens, first_problem


