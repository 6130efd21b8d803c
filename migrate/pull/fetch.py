"""One request to a vendor's export API, asked again until it gives a verified answer.

What each answer means (source-apis.md §1-§5, and PostHog's client):

* 200: the body is streamed to a temporary file beside its final name, hashed as it comes, then verified
  (:mod:`posthog_migrate.pull.verify`); a body cut short or damaged is asked for again, from its start:
  the exports are not byte-stable between calls, so a download never resumes at a byte offset;
* Amplitude's 404 is "no data in the range": an empty chunk, complete;
* 429: wait as long as ``Retry-After`` says (seconds or an HTTP date), else back off, showing the wait;
* a timeout, 504, Amplitude's 400 (over 4 GB) or Mixpanel's 413: the chunk is too big for one request, so
  the caller halves it (down to an hour or a day; below that it is retried, then stops);
* 401/403 (credentials), Mixpanel's 402 (no raw export in the plan) and other 4xx stop the run with the fix;
* network errors and other 5xx are retried with backoff, up to ``--max-retries``, then the run stops,
  naming the chunk; a re-run continues with it (complete chunks are kept).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from threading import Event

import orjson
import requests
from posthog_migrate.answers import parse_retry_after
from posthog_migrate.errors import ConfigError, PullFailed
from posthog_migrate.pull.credentials import WHERE_TO_FIND, Credentials
from posthog_migrate.pull.sources import ApiSource
from posthog_migrate.pull.verify import Incomplete
from posthog_migrate.sender import Interrupted
from urllib3 import exceptions as urllib3_errors

CONNECT_TIMEOUT_SECONDS = 30.0
STREAM_BYTES = 1 << 20
# A 429 without Retry-After waits this many times --retry-delay (60 s by default, as PostHog's client does),
# doubling up to an hour: Mixpanel counts 60 queries an hour.
RATE_LIMIT_WAIT_FACTOR = 60
MAX_RATE_LIMIT_WAIT_SECONDS = 3600.0
# 429s in a row for one request before the run stops (resumable): about a day of waiting at the cap.
MAX_RATE_LIMIT_WAITS = 30
MAX_BACKOFF_SECONDS = 60.0
MAX_ERROR_CHARS = 300
USER_AGENT = "posthog-migrate"
# What to do when even an hour (Amplitude) or a day (Mixpanel) is too big for one request.
TOO_BIG_HINTS = {
    "amplitude": "Amplitude answers 400 when an hour holds over 4 GB (export that hour with Amplitude's S3 export "
                 "instead) or when the range, credentials or API key's permissions are wrong.",
    "mixpanel": "Narrow the export with event=... or where=... (one job each), or export that day from Mixpanel's "
                "UI.",
}


class TooBig(Exception):
    """The API could not answer the chunk in one piece (timeout, 504, over its size limit): halve it.
    ``refused``: the API said so with a 400 (Amplitude), which a single hour cannot get past by retrying."""

    def __init__(self, why: str, refused: bool = False):
        super().__init__(why)
        self.refused = refused


@dataclass
class Body:
    """A verified answer, in its temporary file: its size and SHA-256, and whether it holds any data."""

    path: Path
    size: int
    sha256: str
    has_data: bool


@dataclass
class FetchSettings:
    max_retries: int
    retry_delay: float
    stop: Event
    notify: Callable[[str], None]          # a line for the user (rate-limit waits, retries)
    on_bytes: Callable[[int], None]        # bytes received, for the progress bar
    waiting: Callable[[str], None]         # what the progress bar shows while waiting ("" when done)


class Fetcher:
    """Requests for one source, with its credentials, retries and waits."""

    def __init__(self, source: ApiSource, credentials: Credentials, settings: FetchSettings):
        self.source = source
        self.credentials = credentials
        self.auth = credentials.basic_auth(source)
        self.settings = settings
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT

    def fetch(self, what: str, query: dict, form: dict | None, temporary: Path,
              verify: Callable[[Path], bool], progress: Callable[[], str], splittable: bool) -> Body | None:
        """The verified body of one request, in ``temporary``; None for Amplitude's 404 (no data).

        ``what`` names the chunk or page in messages; ``progress()`` says how far the pull is ("37/52 chunks
        done") in the rate-limit line. Raises TooBig when the request should be halved and ``splittable``;
        a request that cannot be halved is retried instead.
        """
        failures = waits = backoffs = 0
        while True:
            if self.settings.stop.is_set():
                raise Interrupted
            try:
                return self._attempt(query, form, temporary, verify)
            except _RateLimited as limit:  # waiting is no failure: never counted against --max-retries
                waits += 1
                if waits > MAX_RATE_LIMIT_WAITS:
                    raise PullFailed(f"{self.source.label} {what}: still rate limited after {waits - 1} waits; run "
                                     "the same command again later to continue (complete chunks are kept)") from None
                if limit.retry_after is None:
                    backoffs += 1
                self._wait_for_rate_limit(limit.retry_after, backoffs, progress())
                continue
            except requests.ReadTimeout:  # no answer at all in time
                error: Exception = TooBig(f"no answer within {self.source.read_timeout:g} s")
            except TooBig as too_big:
                error = too_big
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, urllib3_errors.HTTPError,
                    _Transient, Incomplete) as transient:
                error = transient
            if isinstance(error, TooBig):
                if splittable:
                    raise error
                if error.refused:
                    raise PullFailed(f"{self.source.label} {what}: refused even for the smallest range ({error}). "
                                     f"{TOO_BIG_HINTS[self.source.vendor]}")
            failures += 1
            problem = self.credentials.scrub(_describe(error))
            if failures > self.settings.max_retries:
                raise PullFailed(
                    f"{self.source.label} {what} failed {failures} times (last: {problem}). Every complete "
                    "chunk is kept: run the same command again to continue with this one.")
            delay = min(MAX_BACKOFF_SECONDS, self.settings.retry_delay * 2 ** (failures - 1))
            delay *= random.uniform(0.75, 1.25)
            self.settings.notify(f"{self.source.label} {what}: {problem}; retry {failures}/"
                                 f"{self.settings.max_retries} in {delay:.1f} s")
            self._sleep(delay)

    def _attempt(self, query: dict, form: dict | None, temporary: Path, verify: Callable[[Path], bool],
                 ) -> Body | None:
        timeout = (CONNECT_TIMEOUT_SECONDS, self.source.read_timeout)
        temporary.unlink(missing_ok=True)  # an earlier attempt's: never continued at a byte offset
        # Mixpanel gzips bodies over 1,400 bytes when asked (the file keeps them gzip'd: smaller, and every
        # reader sniffs the magic bytes); Amplitude's zip is compressed already.
        encoding = "gzip" if (self.source.vendor, self.source.kind) == ("mixpanel", "export") else "identity"
        headers = {"Accept-Encoding": encoding}
        if form is None:
            response = self.session.get(self.source.url, params=query, auth=self.auth, headers=headers,
                                        timeout=timeout, stream=True)
        else:
            response = self.session.post(self.source.url, params=query, data=form, auth=self.auth, headers=headers,
                                         timeout=timeout, stream=True)
        with response:
            if response.status_code == 200:
                try:
                    return self._save(response, temporary, verify)
                except urllib3_errors.ReadTimeoutError:  # the body stalled: too big to come in one piece
                    raise TooBig(f"the answer stalled for {self.source.read_timeout:g} s") from None
            self._judge(response)
            return None  # Amplitude's 404: no data in the range

    def _save(self, response: requests.Response, temporary: Path, verify: Callable[[Path], bool]) -> Body:
        coding = response.headers.get("Content-Encoding", "identity").lower()
        if coding not in ("identity", "gzip", ""):
            raise _Transient(f"the answer came in an encoding not asked for ({coding})")
        digest = hashlib.sha256()
        size = 0
        with open(temporary, "wb") as out:
            # The bytes as sent (a gzip'd body stays gzip'd): decode_content=False.
            for block in response.raw.stream(STREAM_BYTES, decode_content=False):
                if self.settings.stop.is_set():
                    raise Interrupted
                out.write(block)
                digest.update(block)
                size += len(block)
                self.settings.on_bytes(len(block))
            out.flush()
            os.fsync(out.fileno())
        has_data = verify(temporary)
        return Body(temporary, size, digest.hexdigest(), has_data)

    def _judge(self, response: requests.Response) -> None:
        """Raise what a non-200 answer means; return for Amplitude's 404 (no data)."""
        status, vendor = response.status_code, self.source.vendor
        text = self.credentials.scrub(_error_text(response))
        if status == 404 and vendor == "amplitude" and self.source.kind == "export":
            return
        if status == 429:
            raise _RateLimited(parse_retry_after(response.headers.get("Retry-After"), MAX_RATE_LIMIT_WAIT_SECONDS))
        if status == 504 or (status == 400 and vendor == "amplitude") or status == 413:
            raise TooBig(f"{status}{': ' + text if text else ''}", refused=status != 504)
        if status in (401, 403):
            raise ConfigError(_credentials_message(self.source, status, text))
        if status == 402:
            raise ConfigError(f"Mixpanel answered 402: the project's plan does not include the raw data export "
                              f"API ({text or 'no message'}). Export the data from Mixpanel's UI (or upgrade the "
                              "plan), and migrate the files.")
        if status == 408 or status >= 500:
            raise _Transient(f"{status}{': ' + text if text else ''}")
        hint = " (expired or wrong credentials: check them)" if "authenticate" in text.lower() else ""
        raise BadRequest(f"{self.source.label} refused the request with {status}: {text or 'no message'}{hint}. "
                          f"Check {self.source.key}.")

    def _wait_for_rate_limit(self, retry_after: float | None, backoffs: int, done: str) -> None:
        """Wait as long as the API said, else the ``backoffs``-th backoff (doubling), showing the wait."""
        if retry_after is None:
            retry_after = min(MAX_RATE_LIMIT_WAIT_SECONDS,
                              RATE_LIMIT_WAIT_FACTOR * self.settings.retry_delay * 2 ** (backoffs - 1))
        line = f"{self.source.vendor.capitalize()} rate limit: waiting {human_wait(retry_after)}, {done}"
        self.settings.notify(line)
        self.settings.waiting(line)
        try:
            self._sleep(retry_after)
        finally:
            self.settings.waiting("")

    def _sleep(self, seconds: float) -> None:
        """Sleep, but stop at once on Ctrl-C."""
        if self.settings.stop.wait(max(0.0, seconds)):
            raise Interrupted


class BadRequest(ConfigError):
    """The API refused the request's parameters (400, or another 4xx not handled otherwise)."""


class _RateLimited(Exception):
    def __init__(self, retry_after: float | None):
        super().__init__("429")
        self.retry_after = retry_after


class _Transient(Exception):
    """An answer worth asking for again (5xx, 408, a body in an encoding not asked for)."""


def human_wait(seconds: float) -> str:
    """``45 s``, ``14 min``, ``1 h 05 min``: a wait as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


def _error_text(response: requests.Response) -> str:
    """The server's error message: the ``error`` of a JSON body (``{"request": ..., "error": ...}``), else
    the start of the text."""
    try:
        raw = response.raw.read(64 * 1024, decode_content=True) or b""
    except Exception:  # the answer is an error already; its body is only a detail
        raw = b""
    try:
        body = orjson.loads(raw)
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])[:MAX_ERROR_CHARS]
    except orjson.JSONDecodeError:
        pass
    return " ".join(raw.decode("utf-8", "replace").split())[:MAX_ERROR_CHARS]


def _credentials_message(source: ApiSource, status: int, text: str) -> str:
    said = f" ({text})" if text else ""
    if source.vendor == "amplitude":
        return (f"Amplitude refused the credentials ({status}{said}): check AMPLITUDE_API_KEY and AMPLITUDE_SECRET_KEY"
                f" (the project's API key and secret key; {WHERE_TO_FIND['amplitude']}).")
    if status == 403:
        return (f"Mixpanel answered 403{said}: the credentials have no access to this project's data: check "
                "project_id, and that the service account is a member of the project (role Analyst or above), "
                f"or use the project's MIXPANEL_API_SECRET ({WHERE_TO_FIND['mixpanel']}).")
    return (f"Mixpanel refused the credentials ({status}{said}): check MIXPANEL_SERVICE_ACCOUNT and "
            f"MIXPANEL_SERVICE_SECRET, or MIXPANEL_API_SECRET ({WHERE_TO_FIND['mixpanel']}).")


def _describe(error: BaseException) -> str:
    if isinstance(error, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return "the connection failed or was cut" + (f" ({type(error).__name__})")
    return str(error)
