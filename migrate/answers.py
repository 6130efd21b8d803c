"""What an answer to a capture request means: the one place that decides "the server accepted this".

PostHog's capture acknowledges a batch with 200 and a JSON object whose ``status`` is ``"Ok"`` (rust
capture) or ``1`` (the older Django capture), or with 204 and no body (see
reference/posthog-ingestion-facts.md). Any other 2xx did not come from capture: a website, the app URL
instead of the ingestion host, a proxy's login page or a captive portal. Counting it as sent would lose
the batch silently, so it stops the run, as do redirects (never followed: a redirected POST loses its
body, or posts the body and the API key to another host) and a 200 saying the project is over its
billing quota (PostHog drops those events).

Every text that comes from a server goes through :func:`scrub_key` before it is shown or stored: a
server that echoes the request would otherwise print the project API key.
"""

from __future__ import annotations

import email.utils
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import orjson

# A server asking us to wait longer than this is treated as if it asked for this: the run goes on.
MAX_RETRY_AFTER_SECONDS = 120.0
# How much of a server's text is kept in rejects and error messages.
MAX_ERROR_TEXT = 500
# How much of a body that is not capture's answer is quoted when stopping the run.
MAX_QUOTED_BODY = 200
RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
SPLITTABLE_STATUSES = frozenset({400, 413})
KEY_STATUSES = frozenset({401, 403})
NOT_CAPTURE_STATUSES = frozenset({404, 405})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
BATCH_PATH_SUFFIXES = ("/batch/", "/batch")
KEY_PLACEHOLDER = "<project API key>"
# The app's URLs answer web pages; events go to the matching ingestion host.
INGESTION_HOST_OF_APP = {"us.posthog.com": "us.i.posthog.com", "app.posthog.com": "us.i.posthog.com",
                         "eu.posthog.com": "eu.i.posthog.com"}
RESUME_HINT = "Nothing after the last acknowledged batch counts as sent: run the same command again to resume."


class Verdict(enum.Enum):
    ACCEPTED = "accepted"  # capture has the events: the request is acknowledged
    RETRY = "retry"        # send the same request again after a delay (408, 429, 5xx)
    SPLIT = "split"        # refused, perhaps for one event: bisect to find it (400, 413)
    REFUSED = "refused"    # final for these events: reject them with the server's message (other 4xx)
    FATAL = "fatal"        # no request can get past this: stop the run (key, host, redirect, quota...)


@dataclass(frozen=True)
class Answer:
    """One answer, judged. ``message`` is for people (rejects file, errors), with the API key scrubbed."""

    verdict: Verdict
    status: int
    message: str
    retry_after: float | None = None  # RETRY only: the server's capped Retry-After, if it gave one

    @property
    def pauses_every_thread(self) -> bool:
        """A 429: the rate limit is the project's, not the connection's, so every sending thread waits."""
        return self.status == 429

    @property
    def problem(self) -> str:
        """A few words for a retry line: "HTTP 503", "rate limited (429)"."""
        return "rate limited (429)" if self.status == 429 else f"HTTP {self.status}"


def scrub_key(text: str, api_key: str) -> str:
    """``text`` without the API key: as is, JSON-escaped, or cut off at the end (servers truncate what they
    echo). Every server text passes through here before it is printed or stored."""
    if not api_key:
        return text
    for form in {api_key, orjson.dumps(api_key).decode()[1:-1]}:
        text = text.replace(form, KEY_PLACEHOLDER)
    # A key cut off by the server's own truncation still gives most of it away; 8 characters are kept,
    # since "phc_" and a few letters say nothing.
    for length in range(len(api_key) - 1, 7, -1):
        if text.endswith(api_key[:length]):
            return text[:-length] + KEY_PLACEHOLDER
    return text


def judge_answer(status: int, headers: Mapping[str, str], body: bytes, host: str, api_key: str) -> Answer:
    """What the answer ``status``/``headers``/``body`` of ``host``'s /batch/ means for the request."""
    if 200 <= status < 300:
        document = _json_object(body) if status == 200 else None
        if _is_capture_acceptance(status, body, document):
            quota = _quota_limited(document)
            if quota:
                return Answer(Verdict.FATAL, status, _quota_message(host, quota))
            return Answer(Verdict.ACCEPTED, status, "")
    text = scrub_key(body.decode("utf-8", "replace"), api_key).strip()
    message = text[:MAX_ERROR_TEXT]
    if status in REDIRECT_STATUSES:
        return Answer(Verdict.FATAL, status, _redirect_message(host, status, headers.get("Location")))
    if status in RETRYABLE_STATUSES:
        return Answer(Verdict.RETRY, status, message, parse_retry_after(headers.get("Retry-After")))
    if status in KEY_STATUSES:
        return Answer(Verdict.FATAL, status, (
            f"{_batch_url(host)} refused the project API key ({status}: {message}). Use the project's public "
            "token (starts with phc_, from Project settings), via --api-key or POSTHOG_API_KEY; a personal "
            "API key (phx_) does not work for capture."
        ))
    if status in NOT_CAPTURE_STATUSES:
        return Answer(Verdict.FATAL, status, (
            f"{_batch_url(host)} answered {status}: this does not look like a PostHog capture endpoint. "
            "Check --host (e.g. https://us.i.posthog.com or https://eu.i.posthog.com)."
        ))
    if status in SPLITTABLE_STATUSES:
        return Answer(Verdict.SPLIT, status, message)
    if 400 <= status < 500:
        return Answer(Verdict.REFUSED, status, message)
    # A 2xx that is not capture's answer, or a status capture never gives (1xx, other 3xx, 6xx...).
    return Answer(Verdict.FATAL, status, _not_capture_answer_message(host, status, text))


def parse_retry_after(value: str | None, cap: float = MAX_RETRY_AFTER_SECONDS) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), cap)


def _batch_url(host: str) -> str:
    return host.rstrip("/") + "/batch/"


def _json_object(body: bytes) -> dict | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _is_capture_acceptance(status: int, body: bytes, document: dict | None) -> bool:
    """204 with no body, or 200 whose body (``document``, parsed) says ``"status": "Ok"`` or ``1``."""
    if status == 204:
        return not body.strip()
    if document is None:
        return False
    ok = document.get("status")
    return ok == "Ok" or (type(ok) is int and ok == 1)


def _quota_limited(document: dict | None) -> list[str] | None:
    """What an accepted answer says PostHog is dropping for billing, when that includes events; else None.

    Capture names the kinds over quota (``["events"]``, ``["recordings"]``); we send only events.
    """
    limited = (document or {}).get("quota_limited")
    if not limited:
        return None
    names = limited if isinstance(limited, list) else [limited]
    if all(isinstance(name, str) and name != "events" for name in names):
        return None  # e.g. only recordings: not what we send
    return [str(name) for name in names]


def _quoted(text: str) -> str:
    """The start of a server's text on one line, for an error message."""
    flat = " ".join(text.split())
    if not flat:
        return "an empty body"
    shown = flat[:MAX_QUOTED_BODY] + ("…" if len(flat) > MAX_QUOTED_BODY else "")
    return f'"{shown}"'


def _app_host_hint(host: str) -> str:
    hostname = (urlsplit(host).hostname or "").lower()
    ingestion = INGESTION_HOST_OF_APP.get(hostname)
    return f" (for {hostname}, that is --host https://{ingestion})" if ingestion else ""


def _not_capture_answer_message(host: str, status: int, text: str) -> str:
    return (
        f"{_batch_url(host)} answered {status} with {_quoted(text)}, which is not PostHog capture's answer "
        f"({{\"status\": \"Ok\"}}), so the batch does not count as sent. Likely causes: --host is not PostHog's "
        f"ingestion host but a website or the app URL{_app_host_hint(host)}; events go to "
        "https://us.i.posthog.com, https://eu.i.posthog.com or your self-hosted URL. Or a proxy or captive "
        f"portal answered instead of PostHog. {RESUME_HINT}"
    )


def _redirect_message(host: str, status: int, location: str | None) -> str:
    never = ("Redirects are never followed: a redirected POST loses its body or posts the events and the API "
             "key to another host. Nothing was sent there.")
    if not location:
        return f"{host} answered {status} (a redirect) without saying where to: check --host. {never}"
    target = urljoin(_batch_url(host), location)
    parts = urlsplit(target)
    path = parts.path
    for suffix in BATCH_PATH_SUFFIXES:
        if path.endswith(suffix):
            suggested = f"{parts.scheme}://{parts.netloc}{path.removesuffix(suffix)}"
            return f"{host} redirects to {suggested}: run with --host {suggested}. {never}"
    return (f"{host} redirects capture requests to {target}, which is not a capture endpoint (a login page or "
            f"a proxy?): check --host and the network. {never}")


def _quota_message(host: str, quota: list[str]) -> str:
    return (
        f"{host} accepted the request but says the project is over its billing quota for {', '.join(quota)} "
        "(quota_limited): PostHog is dropping these events, so the batch does not count as sent. Raise the "
        "project's billing limit in PostHog, then run the same command again to resume: it sends the dropped "
        "batch again."
    )
