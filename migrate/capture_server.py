"""A local stand-in for PostHog's capture service: trials, dry runs and tests against real HTTP.

A migration should be tried before it is pointed at a real project, and its sender must be tested
against the answers PostHog really gives, faults included. This server accepts the same requests as
PostHog's capture (``/batch/``, ``/capture/``, ``/e/``, ``/i/v0/e/``), judges them by the rules the
capture *code* applies (see ../shared/reference/posthog-ingestion-facts.md) and keeps what it accepts:
in memory for tests, as JSON lines in a file for people. A :class:`FaultPlan` makes it misbehave on
purpose (rate limits, 5xx, slow answers, dropped connections, partial 413s, and the hosts that are not
PostHog: web pages, redirects, quota limits, errors echoing the request) so retries, splits, stops and
resumes can be exercised on 127.0.0.1.

It serves ``posthog-migrate serve``, the in-process target of ``posthog-migrate run --host local`` and
the test-suite. The project token is checked but never stored, logged or written anywhere.
"""

from __future__ import annotations

import contextlib
import gc
import operator
import os
import random
import re
import selectors
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import repeat
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import parse_qs, urlsplit

import orjson
from posthog_migrate.errors import ConfigError

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

BATCH_PATHS = ("/batch", "/batch/")
SINGLE_EVENT_PATHS = ("/capture", "/capture/", "/e", "/e/", "/i/v0/e", "/i/v0/e/")
_RAW_LIMIT_BY_PATH = {path: MAX_RAW_BODY_BYTES for path in BATCH_PATHS} | {
    path: MAX_SINGLE_EVENT_RAW_BYTES for path in SINGLE_EVENT_PATHS
}

_OK_BODY = b'{"status":"Ok"}'
# What the ``quota`` fault answers: capture's 200 when the project is over its billing quota.
_QUOTA_LIMITED_BODY = b'{"status":"Ok","quota_limited":["events"]}'
# What the ``html`` fault answers: a web page, as from the app URL, a proxy's login or a captive portal.
_HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n<body><h1>Sign in to continue</h1>"
              b"<form method=\"post\" action=\"/login\"><input name=\"user\"><input name=\"password\" "
              b"type=\"password\"></form></body></html>\n")
# How much of the request an ``echo`` fault sends back.
_ECHO_CHARS = 1000
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + 15  # zlib's way of saying "a gzip container with a 32 KiB window"
_GZIP_QUERY_VALUES = ("gzip", "gzip-js")
# An event may carry the token under any of these (capture's serde aliases); never written out.
_EVENT_TOKEN_KEYS = ("token", "$token", "api_key")
# Formats uuid::Uuid::parse_str accepts: simple, hyphenated, braced, urn.
_HYPHENATED_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID_FORMS = re.compile(rf"[0-9a-fA-F]{{32}}|{_HYPHENATED_UUID}|\{{{_HYPHENATED_UUID}\}}|urn:uuid:{_HYPHENATED_UUID}")
_DISCARD_CHUNK_BYTES = 1024 * 1024
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


# --- records ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """What one request was and what the server did with it (never the token).

    ``status`` is 0 when the connection was closed without an answer (the ``drop`` faults); ``error``
    is the plain-text body of a non-200 answer, None when nothing was answered.
    """

    path: str
    status: int
    n_events: int
    n_accepted: int
    historical_migration: bool | None
    has_sent_at: bool
    raw_bytes: int
    decoded_bytes: int
    gzip: bool
    fault: str | None
    error: str | None


@dataclass(frozen=True)
class CaptureStats:
    """Running totals, kept even when the server does not keep events in memory."""

    requests: int = 0
    events_accepted: int = 0
    requests_rejected: int = 0  # every request not answered 200, dropped ones and injected faults included
    faults_injected: int = 0


# --- faults -----------------------------------------------------------------------------------------

FAULT_SPEC_HELP = (
    "ok | 429 | 429:retry-after=N | any status 400-599 (e.g. 408, 500, 503), optionally :retry-after=N"
    " and/or :echo | slow:SECONDS | drop | drop-after-accept | 413-partial | html | quota"
    " | 301/302/303/307/308:location=URL"
)
_STATUS_SPEC = re.compile(r"(?P<status>[45]\d\d)(?::retry-after=(?P<retry_after>\d+(?:\.\d+)?))?(?P<echo>:echo)?")
_REDIRECT_SPEC = re.compile(r"(?P<status>30[12378]):location=(?P<location>https?://\S+)", re.IGNORECASE)


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour. ``spec`` is the text it came from; it is what a RequestRecord shows.

    ``kind`` is ``status`` (answer ``status``, with ``Retry-After`` when given, and the request's body
    quoted in the answer with ``echo``, as some servers do), ``slow`` (wait ``delay`` seconds, then handle
    normally), ``drop`` (close without answering, accept nothing), ``drop-after-accept`` (accept as usual,
    then close without answering: the client cannot know), ``413-partial`` (accept the first half of a
    valid batch, then answer 413), ``html`` (answer 200 with a web page, accept nothing), ``quota``
    (answer 200 saying the project is over its billing quota, accept nothing: PostHog drops the events)
    or ``redirect`` (answer ``status`` with a Location of ``location`` plus the request's path).
    """

    spec: str
    kind: str
    status: int = 0
    retry_after: str | None = None
    delay: float = 0.0
    echo: bool = False
    location: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Fault | None:
        """Parse one ``--fault`` value; ``ok`` gives None (no fault), so a script can skip requests."""
        text = spec.strip().lower()
        if text == "ok":
            return None
        if text in ("drop", "drop-after-accept", "413-partial", "html", "quota"):
            return cls(spec=text, kind=text)
        redirect = _REDIRECT_SPEC.fullmatch(spec.strip())  # not lowercased: the URL's path keeps its case
        if redirect is not None:
            location = redirect["location"].rstrip("/")
            return cls(spec=spec.strip(), kind="redirect", status=int(redirect["status"]), location=location)
        if text.startswith("slow:"):
            try:
                delay = float(text.removeprefix("slow:"))
            except ValueError:
                delay = -1.0
            if not 0 <= delay < float("inf"):
                raise ConfigError(f"fault {spec!r}: slow needs a number of seconds, e.g. slow:2.5")
            return cls(spec=text, kind="slow", delay=delay)
        match = _STATUS_SPEC.fullmatch(text)
        if match is None:
            raise ConfigError(f"unknown fault {spec!r}; use one of: {FAULT_SPEC_HELP}")
        return cls(spec=text, kind="status", status=int(match["status"]), retry_after=match["retry_after"],
                   echo=match["echo"] is not None)


class FaultPlan:
    """Which requests misbehave: a script consumed one entry per capture request, then random faults.

    The script covers deterministic scenarios ("the third request gets a 503"); the random part, drawn
    from its own seeded ``random.Random``, covers soak tests. Shared by all handler threads.
    """

    def __init__(
        self,
        scripted: Sequence[Fault | None] = (),
        rate: float = 0.0,
        kinds: Sequence[Fault | None] = (),
        seed: int | None = None,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"fault rate {rate} must be between 0 and 1")
        if rate > 0 and not kinds:
            raise ConfigError("a fault rate needs at least one fault kind to draw from")
        self._script: deque[Fault | None] = deque(scripted)
        self._rate = rate
        self._kinds = list(kinds)
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    @classmethod
    def parse(
        cls,
        scripted: Sequence[str] = (),
        rate: float = 0.0,
        kinds: Sequence[str] = ("429", "503", "drop"),
        seed: int | None = None,
    ) -> FaultPlan:
        """Build a plan from the CLI's strings (see :data:`FAULT_SPEC_HELP`); bad specs raise ConfigError."""
        return cls(
            scripted=[Fault.parse(spec) for spec in scripted],
            rate=rate,
            kinds=[Fault.parse(spec) for spec in kinds],
            seed=seed,
        )

    def next_fault(self) -> Fault | None:
        """The fault for the next capture request, in arrival order; None means handle it normally."""
        with self._lock:
            if self._script:
                return self._script.popleft()
            if self._rate > 0 and self._random.random() < self._rate:
                return self._random.choice(self._kinds)
            return None


# --- judging a body ---------------------------------------------------------------------------------


class _Refusal(Exception):
    """A request capture would refuse: its status and the plain-text body explaining why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Verdict:
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
    while data[:2] == _GZIP_MAGIC:
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


def _judge(raw: bytes, gzip: bool, strict: bool) -> _Verdict:
    """Decide a body the way capture would: status, message and the events it would accept.

    Refusals rank as in capture: malformed body or event shapes (400) first, since capture fails to
    deserialise before it looks at anything; then the token (401); then the first event without a
    name or distinct_id (400; dropped instead in lenient mode) or too big (413).
    """
    verdict = _Verdict(gzip=gzip)
    try:
        decoded = _gunzip(raw, MAX_DECODED_BODY_BYTES) if gzip else raw
        verdict.decoded_bytes, verdict.decoded = len(decoded), decoded
        _judge_decoded(decoded, strict, verdict)
    except _Refusal as refusal:
        verdict.status, verdict.message = refusal.status, refusal.message
        verdict.events, verdict.lines = [], []
    return verdict


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


def _judge_decoded(decoded: bytes, strict: bool, verdict: _Verdict) -> None:
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
    events: list[Any], is_batch_shape: bool, strict: bool, verdict: _Verdict
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


# --- HTTP ---------------------------------------------------------------------------------------------


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


class _Reply(NamedTuple):
    """An answer to send: ``error`` is the plain-text body of a non-200; ``body`` replaces capture's own
    200 body (``{"status":"Ok"}``) or the error text, with its ``content_type``."""

    status: int
    error: str
    body: bytes | None = None
    content_type: str | None = None


def _apply_fault(fault: Fault | None, verdict: _Verdict, path: str) -> tuple[_Reply | None, int, list[tuple[str, str]]]:
    """Let ``fault`` have its way with a judged request to ``path``.

    Returns what to answer (None: close the connection without answering), how many of the verdict's
    events to accept, and any extra headers.
    """
    answer = _Reply(verdict.status, verdict.message)
    n_accepted = len(verdict.events)
    if fault is None:
        return answer, n_accepted, []
    if fault.kind == "slow":
        time.sleep(fault.delay)
    elif fault.kind == "status":
        retry_after = [("Retry-After", fault.retry_after)] if fault.retry_after is not None else []
        # With a request id, as proxies and gateways give: no two refusals are worded exactly alike.
        message = f"{_status_text(fault.status)} (injected fault, request id {os.urandom(6).hex()})"
        if fault.echo:
            message += ": could not process " + verdict.decoded[:_ECHO_CHARS].decode("utf-8", "replace")
        return _Reply(fault.status, message), 0, retry_after
    elif fault.kind == "html":
        return _Reply(200, "", _HTML_PAGE, "text/html; charset=utf-8"), 0, []
    elif fault.kind == "quota":
        return _Reply(200, "", _QUOTA_LIMITED_BODY, "application/json"), 0, []
    elif fault.kind == "redirect":
        return _Reply(fault.status, f"moved to {fault.location}"), 0, [("Location", f"{fault.location}{path}")]
    elif fault.kind == "drop":
        return None, 0, []
    elif fault.kind == "drop-after-accept":
        return None, n_accepted, []
    elif fault.kind == "413-partial" and verdict.status == 200:
        message = "an event in this batch is too big (injected fault; its first half was kept)"
        return _Reply(413, message), n_accepted // 2, []
    return answer, n_accepted, []


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive so a requests.Session reuses it like it would PostHog's."""

    protocol_version = "HTTP/1.1"
    server_version = "posthog-migrate-capture"
    # Headers and body go out in two writes; without this, Nagle + delayed ACK stall each answer ~40 ms.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_POST

    def _handle(self) -> None:
        capture = self.server.capture
        url = urlsplit(self.path)
        path = url.path
        try:
            length = self._content_length()
        except _Refusal as refusal:  # the body's end is unknown: answer, then close the connection
            self._record_and_answer(path, refusal.status, refusal.message, 0, [("Connection", "close")])
            return
        raw_limit = _RAW_LIMIT_BY_PATH.get(path)
        if raw_limit is None or self.command != "POST":
            self._discard(length)
            if raw_limit is None:
                self._record_and_answer(path, 404, f"no capture endpoint at {path}", length, [])
            else:
                self._record_and_answer(path, 405, f"{path} takes POST only", length, [("Allow", "POST")])
            return

        fault = capture.faults.next_fault() if capture.faults is not None else None
        verdict = self._read_and_judge(url.query, path, length, raw_limit)
        answer, n_accepted, headers = _apply_fault(fault, verdict, path)
        status = answer.status if answer is not None else 0
        error = answer.error if answer is not None and status != 200 else None
        record = RequestRecord(
            path=path,
            status=status,
            n_events=verdict.n_events,
            n_accepted=n_accepted,
            historical_migration=verdict.historical_migration,
            has_sent_at=verdict.has_sent_at,
            raw_bytes=length,
            decoded_bytes=verdict.decoded_bytes,
            gzip=verdict.gzip,
            fault=fault.spec if fault is not None else None,
            error=error,
        )
        blob = b"\n".join(verdict.lines[:n_accepted]) + b"\n" if n_accepted else b""
        # Recorded before answering: once a client has its 200, the events are already there.
        capture._commit(verdict.events[:n_accepted], blob, record)
        if answer is None:
            self.close_connection = True  # no answer at all; the socket is closed after this returns
            return
        self._answer(status, error or "", headers, answer.body, answer.content_type)

    def _read_and_judge(self, query: str, path: str, length: int, raw_limit: int) -> _Verdict:
        compression = parse_qs(query).get("compression", [""])[-1].lower()
        declared_gzip = "gzip" in self.headers.get("Content-Encoding", "").lower() or compression in _GZIP_QUERY_VALUES
        if length > raw_limit:
            self._discard(length)  # read it all, so the client is listening when the 413 comes
            message = f"body of {length} bytes is over the {raw_limit}-byte limit of {path}"
            return _Verdict(gzip=declared_gzip, status=413, message=message)
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise ConnectionResetError("the client closed the connection in the middle of its body")
        return _judge(raw, declared_gzip or raw[:2] == _GZIP_MAGIC, self.server.capture.strict)

    def _record_and_answer(
        self, path: str, status: int, error: str, length: int, headers: Sequence[tuple[str, str]]
    ) -> None:
        record = RequestRecord(path, status, 0, 0, None, False, length, 0, False, None, error)
        self.server.capture._commit([], b"", record)
        self._answer(status, error, headers)

    def _content_length(self) -> int:
        """The body's length, or a refusal when it cannot be known (chunked) or is malformed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _Refusal(411, "send a Content-Length (chunked bodies are not supported)")
        text = self.headers.get("Content-Length", "0").strip()
        if not text.isdigit():
            raise _Refusal(400, "invalid Content-Length")
        return int(text)

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, _DISCARD_CHUNK_BYTES))
            if not chunk:
                raise ConnectionResetError("the client closed the connection in the middle of its body")
            length -= len(chunk)

    def _answer(self, status: int, error: str, headers: Sequence[tuple[str, str]], body: bytes | None = None,
                content_type: str | None = None) -> None:
        if body is None:
            body, content_type = (
                (_OK_BODY, "application/json") if status == 200 else (error.encode(), "text/plain; charset=utf-8")
            )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def version_string(self) -> str:
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The request line may carry a query string; log the path alone so no key can end up in a log.
        self.log_message("%s %s %s", self.command, urlsplit(self.path).path, code)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.capture.quiet:
            super().log_message(format, *args)


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its CaptureServer, stops at once and closes idle connections."""

    daemon_threads = True
    request_queue_size = 128
    timeout = 0  # handle_request() is only called once the listener is readable: it must never wait

    def __init__(self, address: tuple[str, int], capture: CaptureServer, listen: bool = True):
        self.capture = capture
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler, bind_and_activate=listen)
        if not listen:  # a worker of `serve --processes`: its parent listens and hands it connections
            self.socket.close()
            self.server_name, self.server_port = address[:2]
        self._stopping = threading.Event()
        self._wake_reader, self._wake_writer = socket.socketpair()

    def serve_until_stopped(self) -> None:
        """Accept connections until stop_serving().

        Unlike serve_forever(), which polls for its stop request, this wakes the moment stop is asked
        for, so a stop (and every test's teardown) does not wait out a poll interval.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._stopping.is_set():
                ready = [key.fileobj for key, _ in selector.select()]
                if self in ready and not self._stopping.is_set():
                    self.handle_request()

    def stop_serving(self) -> None:
        self._stopping.set()
        self._wake_writer.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves the host's FQDN, which can stall on a sandbox's DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Wake every handler thread blocked on an idle keep-alive connection, so nothing is served late."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (or a drop fault did its job): nothing to report
        super().handle_error(request, client_address)


# --- the server -------------------------------------------------------------------------------------


class CaptureServer:
    """A PostHog-compatible capture endpoint on a background thread.

    ``strict`` follows capture's code (one nameless or id-less event fails the whole request);
    ``strict=False`` follows PostHog's docs (such events are dropped, the request gets 200).
    ``out_path`` gets every accepted event as a JSON line (appended, so a restarted server keeps what
    it had). ``keep_in_memory=False`` keeps only counts (see :attr:`stats`), for long runs whose memory
    must not grow with the export; ``events`` and ``requests`` then stay empty.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        out_path: str | os.PathLike[str] | None = None,
        strict: bool = True,
        faults: FaultPlan | None = None,
        quiet: bool = True,
        keep_in_memory: bool = True,
    ):
        self.host = host
        self.port = port
        self.out_path = Path(out_path) if out_path is not None else None
        self.strict = strict
        self.faults = faults
        self.quiet = quiet
        self.keep_in_memory = keep_in_memory
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._records: list[RequestRecord] = []
        self._counts = {"requests": 0, "events_accepted": 0, "requests_rejected": 0, "faults_injected": 0}
        self._out: BinaryIO | None = None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self, listen: bool = True) -> CaptureServer:
        """Bind (port 0 picks a free one) and serve on a daemon thread. A server runs once.

        ``listen=False`` binds nothing: the server serves only the connections given to
        :meth:`serve_connection`, accepted by another process (``serve --processes``, see
        migrate/capture_workers.py).
        """
        if self._httpd is not None:
            raise RuntimeError("this CaptureServer has already been started")
        if self.out_path is not None:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: each request's lines go out in one write(), which O_APPEND places whole at
            # the file's end, so several servers (serve --processes) can share one file.
            self._out = open(self.out_path, "ab", buffering=0)  # noqa: SIM115 - open until stop()
        try:
            self._httpd = _HTTPServer((self.host, self.port), self, listen)
        except BaseException:
            if self._out is not None:
                self._out.close()
            raise
        if not listen:
            return self
        self._thread = threading.Thread(
            target=self._httpd.serve_until_stopped,
            name=f"capture-server:{self._httpd.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close open connections and the out file. Safe to call twice."""
        if self._httpd is None or self._stopped:
            return
        self._stopped = True
        self._httpd.stop_serving()
        if self._thread is not None:
            self._thread.join()
        self._httpd.close_connections()
        self._httpd.server_close()
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None

    def serve_connection(self, connection: socket.socket) -> None:
        """Serve a connection another process accepted, on its own thread (a ``listen=False`` server)."""
        try:
            if self._httpd is None or self._stopped:
                raise ConnectionAbortedError("the server is stopped")
            address = connection.getpeername()
        except OSError:  # stopped, or the client has gone already
            connection.close()
            return
        # Tracked now, not when its thread gets going: a stop() in between must still close it.
        self._httpd.track(connection)
        self._httpd.process_request(connection, address)

    def __enter__(self) -> CaptureServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL clients use, with the port actually bound."""
        if self._httpd is None:
            raise RuntimeError("start the CaptureServer before asking for its url")
        host, port = self._httpd.server_address[:2]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"  # listening everywhere; this machine reaches it on loopback
        return f"http://{host}:{port}"

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of every accepted event, in acceptance order."""
        with self._lock:
            return list(self._events)

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of every request's record, in the order they were answered."""
        with self._lock:
            return list(self._records)

    @property
    def stats(self) -> CaptureStats:
        with self._lock:
            return CaptureStats(**self._counts)

    def _commit(self, events: list[dict[str, Any]], blob: bytes, record: RequestRecord) -> None:
        """Keep one request's accepted events and its record, atomically with respect to other requests."""
        with self._lock:
            if self._stopped:
                # A request that got this far after stop() began (its connection not yet closed): it is
                # neither kept nor counted, so it must not be answered 200. The client sees the connection
                # close and sends it again.
                raise ConnectionAbortedError("the capture server is stopping")
            if self.keep_in_memory:
                self._events.extend(events)
                self._records.append(record)
            if blob and self._out is not None:
                _write_all(self._out, blob)
            counts = self._counts
            counts["requests"] += 1
            counts["events_accepted"] += len(events)
            counts["requests_rejected"] += record.status != 200
            counts["faults_injected"] += record.fault is not None


def _write_all(out: BinaryIO, data: bytes) -> None:
    """One write() in practice (a regular file takes it whole); a short one is finished, not dropped."""
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


def check_out_file(out_path: str | None) -> None:
    """Say at start, naming the file, when --out cannot be appended to."""
    if out_path is None:
        return
    try:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "ab"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out_path}: {exc.strerror or exc}") from None


def serve(
    port: int,
    out_path: str | None,
    strict: bool,
    fault_specs: Sequence[str],
    fault_rate: float,
    fault_kinds: Sequence[str],
    seed: int | None,
    host: str = "127.0.0.1",
    processes: int = 1,
) -> None:
    """Run a capture server in the foreground until Ctrl-C or SIGTERM (``posthog-migrate serve``).

    ``processes`` above 1 serves in that many worker processes (see migrate/capture_workers.py).
    """
    faults = None
    if fault_specs or fault_rate:
        faults = FaultPlan.parse(fault_specs, fault_rate, fault_kinds, seed)
        if processes > 1:
            raise ConfigError("faults are scripted in request order for one server: use --processes 1 with "
                              "--fault or --fault-rate")
    check_out_file(out_path)
    mode = "strict, like PostHog's capture code" if strict else "lenient, like PostHog's docs"
    where = f"appended to {out_path}" if out_path else "counted, not stored (add --out FILE to keep them)"
    with stop_on_sigterm():
        if processes > 1:
            from posthog_migrate.capture_workers import serve_in_processes

            serve_in_processes(host, port, out_path, strict, processes, mode, where)
            return
        tune_collector_for_serving()
        server = CaptureServer(host, port, out_path, strict, faults, quiet=True, keep_in_memory=False)
        try:
            server.start()
        except OSError as exc:
            raise cannot_listen(host, port, exc) from None
        try:
            fault_note = f"; faults: {len(fault_specs)} scripted, rate {fault_rate}" if faults is not None else ""
            announce(server.url, f"{mode}{fault_note}", where)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
        finally:
            server.stop()
        print(f"Stopped: {stopped_summary(server.stats)}.", flush=True)


def cannot_listen(host: str, port: int, error: OSError) -> ConfigError:
    return ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}; pick another --port")


def announce(url: str, details: str, where: str) -> None:
    """The line `serve` prints once it accepts requests (tests and the benchmark wait for it)."""
    print(f"Capture endpoint at {url} ({details}). Accepted events are {where}. Ctrl-C stops.", flush=True)


def tune_collector_for_serving() -> None:
    """For a process that does nothing but serve.

    A request's parsed events (two tracked dicts each) die by reference counting once it is answered,
    but at the default threshold (700 more live objects) the cycle collector runs several times per
    request and traverses them while they are alive: about a tenth of the server's CPU, to find no
    garbage. At 50,000 it runs only within very big requests, and any cycle is still reclaimed in the end.
    """
    gc.set_threshold(50_000)


def stopped_summary(stats: CaptureStats) -> str:
    return (f"{stats.requests} requests, {stats.events_accepted} events accepted, "
            f"{stats.requests_rejected} requests rejected")


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (kill, a supervisor, a benchmark's stop) stops the server like Ctrl-C: the out file is
    closed, worker processes are stopped and the summary is printed."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
