"""PostHog's query API, as ``verify`` asks it: HogQL over HTTP with a personal API key, rate limits waited out.

``POST {api_host}/api/projects/{project_id}/query/`` with ``{"query": {"kind": "HogQLQuery", "query": ...}}``
and ``Authorization: Bearer phx_...``; the answer's ``results`` are rows in the order of its ``columns``.
The personal key is read from ``POSTHOG_PERSONAL_API_KEY`` only (never an option: it would be in the shell's
history and the job's log), is never written anywhere, and is removed from anything a server says before it
is shown. Each refusal becomes a message saying what to fix: which scope the key needs, where to find the
project id. A 429 is waited out (Retry-After when PostHog gives one, else a growing pause), and said so.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import requests
from posthog_migrate.answers import parse_retry_after, scrub_key
from posthog_migrate.errors import ConfigError, Interrupted, QueryFailed
from posthog_migrate.render import Progress, human_duration

PERSONAL_API_KEY_VARIABLE = "POSTHOG_PERSONAL_API_KEY"
QUERY_SCOPE = "query:read"
# A query may scan a month of a big project: PostHog itself gives a query up to a few minutes.
QUERY_TIMEOUT_SECONDS = 300.0
# How often a 429 (or a network error, a 5xx) is waited out before verify gives up.
MAX_WAITS = 8
FIRST_WAIT_SECONDS = 5.0
MAX_WAIT_SECONDS = 120.0
_KEY_PLACEHOLDER = "<personal API key>"
# Capture's ingestion hosts and the app hosts whose API answers queries.
_APP_HOST_OF_INGESTION = {"us.i.posthog.com": "us.posthog.com", "eu.i.posthog.com": "eu.posthog.com"}


def api_host_of(capture_host: str) -> str:
    """The host of the query API for a job sent to ``capture_host``: PostHog Cloud's ingestion hosts
    (``us.i.posthog.com``, ``eu.i.posthog.com``) have their app beside them; a self-hosted PostHog answers
    both on the same URL."""
    parts = urlsplit(capture_host)
    app = _APP_HOST_OF_INGESTION.get((parts.hostname or "").lower())
    return f"{parts.scheme}://{app}" if app else capture_host.rstrip("/")


def personal_api_key() -> str:
    key = os.environ.get(PERSONAL_API_KEY_VARIABLE, "").strip()
    if not key:
        raise ConfigError(
            f"verify asks PostHog's query API what arrived: set {PERSONAL_API_KEY_VARIABLE} to a personal API key "
            f"(phx_…, created in PostHog under Settings → Personal API keys, with the {QUERY_SCOPE} scope). It is "
            "read from the environment only, and never written anywhere."
        )
    return key


@dataclass(frozen=True)
class _Wait:
    """An answer worth waiting out: what went wrong, and how long PostHog asked to wait (None: not said)."""

    problem: str
    seconds: float | None = None


class _Bearer(requests.auth.AuthBase):
    """The personal key as a bearer token (explicit auth, so a .netrc entry for the host cannot replace it)."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.key}"
        return request


class QueryClient:
    """Runs HogQL queries against one project; waits (shown on ``progress``) when PostHog asks it to."""

    def __init__(self, api_host: str, project_id: str, personal_key: str, progress: Progress,
                 stop: threading.Event, timeout: float = QUERY_TIMEOUT_SECONDS):
        self.api_host = api_host.rstrip("/")
        self.project_id = project_id
        self.url = f"{self.api_host}/api/projects/{project_id}/query/"
        self._key = personal_key
        self._progress = progress
        self._stop = stop
        self._timeout = timeout
        self._session = requests.Session()
        self._session.auth = _Bearer(personal_key)
        self.requests = 0
        self.waited_seconds = 0.0

    def rows(self, query: str) -> list[list]:
        """The query's result rows. Raises QueryFailed when PostHog refuses it, or keeps asking to wait."""
        body = orjson.dumps({"query": {"kind": "HogQLQuery", "query": query}})
        delay = FIRST_WAIT_SECONDS
        for attempt in range(MAX_WAITS + 1):
            answer = self._ask(body)
            if not isinstance(answer, _Wait):
                return answer
            if attempt == MAX_WAITS:
                raise QueryFailed(f"{answer.problem}; gave up after {MAX_WAITS} waits. Run verify again later.")
            pause = answer.seconds if answer.seconds is not None else delay
            delay = min(delay * 2, MAX_WAIT_SECONDS)
            self._progress.note(f"{answer.problem}: waiting {human_duration(pause)} before asking again "
                                f"({attempt + 1}/{MAX_WAITS})")
            self.waited_seconds += pause
            if self._stop.wait(pause):
                raise Interrupted
        raise AssertionError("unreachable")

    def _ask(self, body: bytes) -> list[list] | _Wait:
        """The rows of an answer, or what went wrong when waiting may help; raises QueryFailed otherwise."""
        if self._stop.is_set():
            raise Interrupted
        self.requests += 1
        try:
            answer = self._session.post(self.url, data=body, timeout=self._timeout, allow_redirects=False,
                                        headers={"Content-Type": "application/json"})
        except requests.RequestException as error:
            return _Wait(f"PostHog's query API at {self.api_host} did not answer ({type(error).__name__})")
        status = answer.status_code
        if status == 200:
            try:
                return list(orjson.loads(answer.content)["results"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise QueryFailed(f"{self.url} answered 200 with something that is not a query result "
                                  f"({self._quote(answer.text)}): is --api-host PostHog's app URL?") from None
        if status == 429:
            return _Wait("PostHog's query API is rate limiting",
                         parse_retry_after(answer.headers.get("Retry-After"), MAX_WAIT_SECONDS))
        if status >= 500 or status == 408:
            return _Wait(f"PostHog's query API answered {status}")
        raise QueryFailed(self._refusal(status, answer))

    def _refusal(self, status: int, answer: requests.Response) -> str:
        detail = self._detail(answer)
        project, host = self.project_id, self.api_host
        if status == 401:
            return (f"PostHog refused the personal API key (401: {detail}). verify needs a personal API key (phx_…), "
                    f"not the project's phc_ key: create one under Settings → Personal API keys with the "
                    f"{QUERY_SCOPE} scope and set {PERSONAL_API_KEY_VARIABLE}")
        if status == 403:
            return (f"the personal API key may not query project {project} (403: {detail}): give it the "
                    f"{QUERY_SCOPE} scope (Query: Read) and access to this project, under Settings → Personal API "
                    "keys")
        if status == 404:
            return (f"{host} has no project {project} (404: {detail}). The project id is the number after "
                    f"/project/ in the app's URLs ({host}/project/12345/…), also under Settings → Project → "
                    "Project ID; check --api-host too (us.posthog.com and eu.posthog.com are separate clouds)")
        if status in (301, 302, 303, 307, 308):
            location = answer.headers.get("Location", "elsewhere")
            return f"{self.url} redirects to {location}: give the API's own URL with --api-host"
        return f"PostHog's query API answered {status}: {detail}"

    def _detail(self, answer: requests.Response) -> str:
        try:
            document = orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            document = None
        text = document.get("detail") if isinstance(document, dict) and document.get("detail") else answer.text
        return self._quote(str(text))

    def _quote(self, text: str) -> str:
        text = scrub_key(" ".join(text.split()), self._key).replace("<project API key>", _KEY_PLACEHOLDER)
        return text if len(text) <= 300 else text[:300] + "…"
