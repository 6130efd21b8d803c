"""Misbehaving on purpose: the faults the capture server can inject, and when it injects them.

A sender must be tested against more than PostHog's happy answers: rate limits, 5xx, slow answers,
dropped connections, partial 413s, and the hosts that are not PostHog at all (web pages, redirects,
quota limits, errors echoing the request). A :class:`FaultPlan` says which requests get which
:class:`Fault`; :func:`apply_fault` turns a judged request into what the fault answers instead.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

from posthog_migrate.capture.http import Reply
from posthog_migrate.capture.rules import Verdict, reply_to
from posthog_migrate.errors import ConfigError

# What the ``quota`` fault answers: capture's 200 when the project is over its billing quota.
_QUOTA_LIMITED_BODY = b'{"status":"Ok","quota_limited":["events"]}'
# What the ``html`` fault answers: a web page, as from the app URL, a proxy's login or a captive portal.
_HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n<body><h1>Sign in to continue</h1>"
              b"<form method=\"post\" action=\"/login\"><input name=\"user\"><input name=\"password\" "
              b"type=\"password\"></form></body></html>\n")
# How much of the request an ``echo`` fault sends back.
_ECHO_CHARS = 1000

FAULT_SPEC_HELP = (
    "ok | 429 | 429:retry-after=N | any status 400-599 (e.g. 408, 500, 503), optionally :retry-after=N"
    " and/or :echo | slow:SECONDS | drop | drop-after-accept | 413-partial | lose | html | quota"
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
    valid batch, then answer 413), ``lose`` (answer 200 ``{"status":"Ok"}`` as usual, but keep none or only a
    part of the events, a seeded choice: what a pipeline that drops events downstream of capture does),
    ``html`` (answer 200 with a web page, accept nothing), ``quota``
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
        if text in ("drop", "drop-after-accept", "413-partial", "lose", "html", "quota"):
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

    def kept_by_a_loss(self, count: int) -> list[int]:
        """Which of ``count`` accepted events a ``lose`` fault keeps: none half of the time, else a part (at least
        one, never all), drawn from the plan's seeded random."""
        with self._lock:
            if count < 2 or self._random.random() < 0.5:
                return []
            return sorted(self._random.sample(range(count), self._random.randrange(1, count)))


def apply_fault(fault: Fault | None, verdict: Verdict, path: str,
                plan: FaultPlan | None = None) -> tuple[Reply | None, Sequence[int]]:
    """Let ``fault`` (drawn from ``plan``) have its way with a judged request to ``path``.

    Returns what to answer (None: close the connection without answering) and which of the verdict's events
    to accept (their indices).
    """
    answer = reply_to(verdict)
    n_accepted = len(verdict.events)
    if fault is None:
        return answer, range(n_accepted)
    if fault.kind == "slow":
        time.sleep(fault.delay)
    elif fault.kind == "status":
        retry_after = [("Retry-After", fault.retry_after)] if fault.retry_after is not None else []
        # With a request id, as proxies and gateways give: no two refusals are worded exactly alike.
        message = f"{_status_text(fault.status)} (injected fault, request id {os.urandom(6).hex()})"
        if fault.echo:
            message += ": could not process " + verdict.decoded[:_ECHO_CHARS].decode("utf-8", "replace")
        return Reply.text(fault.status, message, retry_after), ()
    elif fault.kind == "html":
        return Reply(200, _HTML_PAGE, "text/html; charset=utf-8"), ()
    elif fault.kind == "quota":
        return Reply(200, _QUOTA_LIMITED_BODY, "application/json"), ()
    elif fault.kind == "redirect":
        return Reply.text(fault.status, f"moved to {fault.location}", [("Location", f"{fault.location}{path}")]), ()
    elif fault.kind == "drop":
        return None, ()
    elif fault.kind == "drop-after-accept":
        return None, range(n_accepted)
    elif fault.kind == "413-partial" and verdict.status == 200:
        message = "an event in this batch is too big (injected fault; its first half was kept)"
        return Reply.text(413, message), range(n_accepted // 2)
    elif fault.kind == "lose" and verdict.status == 200 and plan is not None:
        return answer, plan.kept_by_a_loss(n_accepted)
    return answer, range(n_accepted)


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
