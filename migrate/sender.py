"""HTTP to PostHog's /batch/: gzip, retries with backoff, Retry-After, splitting, in-flight limits, rate.

We own the retry loop instead of urllib3's ``Retry``: it does not retry POSTs by default and would
honour a Retry-After of hours. Rules (from reference/posthog-ingestion-facts.md):

* network errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and jitter; a 429
  pauses *every* sender thread (the limit is per project, not per connection); Retry-After is capped;
* 400 and 413 split the batch in halves, sent in order, down to the one event the server refuses, which
  is rejected with the server's message (everything else in the batch still goes);
* 401/403 (the key) and 404/405 (not a capture endpoint) stop the whole run: no batch can succeed;
* any other 4xx is final for that batch: its events are rejected with the server's message.

The :class:`Dispatcher` keeps up to ``concurrency`` requests in flight, one per lane at a time, never
more than ``concurrency`` batches ahead of the oldest unacknowledged one, and reports acknowledgements
in order so the caller can advance its checkpoint.
"""

from __future__ import annotations

import email.utils
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import requests

from migrate.batches import BODY_SUFFIX, Batch, Window, body_prefix
from migrate.errors import SendFailed

try:
    from isal import isal_zlib as _zlib  # ~3.5x faster than zlib at level 1, and a better ratio
except ImportError:  # pragma: no cover - isal is optional
    import zlib as _zlib

# A server asking us to wait longer than this is treated as if it asked for this: the run goes on.
MAX_RETRY_AFTER_SECONDS = 120.0
DEFAULT_MAX_RETRIES = 10
DEFAULT_RETRY_BASE_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_READ_TIMEOUT_SECONDS = 60.0
# How much of an error body is kept in messages and the rejects file.
MAX_ERROR_TEXT = 500
RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
SPLITTABLE_STATUSES = frozenset({400, 413})
KEY_STATUSES = frozenset({401, 403})
NOT_CAPTURE_STATUSES = frozenset({404, 405})


GZIP_WBITS = 31  # zlib's way of asking for a gzip header and trailer
HEADERS = {"Content-Type": "application/json", "Content-Encoding": "gzip", "User-Agent": "posthog-migrate"}


def compress(*pieces: bytes | memoryview) -> bytes:
    """gzip level 1 of the pieces laid end to end: ~5x smaller for event JSON at a fraction of level 6's
    cost. Fed piece by piece, so a body is never assembled just to be compressed. Releases the GIL."""
    compressor = _zlib.compressobj(1, _zlib.DEFLATED, GZIP_WBITS)
    out = [compressor.compress(piece) for piece in pieces]
    out.append(compressor.flush())
    return b"".join(out)


class Interrupted(Exception):
    """The run is stopping (Ctrl-C, SIGTERM): this batch was not acknowledged."""


@dataclass
class SendSettings:
    host: str
    api_key: str
    rate: float = 0.0                      # events per second over all threads; 0 = unlimited
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_base: float = DEFAULT_RETRY_BASE_SECONDS
    timeout: float = DEFAULT_READ_TIMEOUT_SECONDS

    @property
    def url(self) -> str:
        return self.host.rstrip("/") + "/batch/"


@dataclass
class BatchResult:
    """What happened to one batch: which events the server refused (index → message), and effort."""

    batch: Batch
    rejected: dict[int, str] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0


@dataclass
class SendCounters:
    """Totals over the run, shared by the sender threads (guarded by ``lock``)."""

    requests: int = 0
    retries: int = 0
    splits: int = 0
    bytes_raw: int = 0
    bytes_compressed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, status: str, raw: int = 0, compressed: int = 0) -> None:
        with self.lock:
            self.requests += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.bytes_raw += raw
            self.bytes_compressed += compressed


class RateLimiter:
    """Paces events per second across all threads: each batch reserves its slot in time."""

    def __init__(self, events_per_second: float, stop: threading.Event):
        self.rate = events_per_second
        self.stop = stop
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, events: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + events / self.rate
        if self.stop.wait(max(0.0, start - now)):
            raise Interrupted


class SharedPause:
    """After a 429 every thread waits until the same moment, instead of each hammering on."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self._until = 0.0
        self._lock = threading.Lock()

    def extend(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def wait(self) -> None:
        while True:
            with self._lock:
                remaining = self._until - time.monotonic()
            if remaining <= 0:
                return
            if self.stop.wait(remaining):
                raise Interrupted


def parse_retry_after(value: str | None) -> float | None:
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
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


Acknowledge = Callable[[Window, BatchResult], None]


def _pinned_session(url: str) -> requests.Session:
    """A Session that reads the environment (proxies, CA bundle, .netrc) once instead of on every request.

    With ``trust_env`` requests looks all of that up again per call, about a fifth of its CPU per request;
    none of it changes during a run, so it is resolved for our one URL up front and pinned on the session.
    """
    session = requests.Session()
    environment = session.merge_environment_settings(url, {}, None, None, None)
    session.proxies.update(environment["proxies"])
    session.verify, session.cert = environment["verify"], environment["cert"]
    session.auth = requests.utils.get_netrc_auth(url)
    session.trust_env = False
    return session


class FatalResponse(SendFailed):
    """An answer that no batch could get past (bad key, wrong host)."""


class Sender:
    """Sends one batch to completion: retries, splits, and reports the events the server refused."""

    def __init__(self, settings: SendSettings, counters: SendCounters, stop: threading.Event):
        self.settings = settings
        self.counters = counters
        self.stop = stop
        self.pause = SharedPause(stop)
        self.rate = RateLimiter(settings.rate, stop)
        # One Session (so one kept-alive connection) per sending thread: the Dispatcher's threads live for
        # the whole run, so a connection is opened once per thread, not once per batch.
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _pinned_session(self.settings.url)
        return session

    def send(self, batch: Batch) -> BatchResult:
        result = BatchResult(batch)
        self.rate.acquire(batch.n_events)
        self._send_part(batch, 0, batch.n_events, result)
        return result

    def _send_part(self, batch: Batch, start: int, end: int, result: BatchResult) -> None:
        """Send events ``start:end`` of the batch, bisecting on 400/413."""
        status, message = self._post_with_retries(batch, start, end, result)
        if 200 <= status < 300:
            return
        if status in SPLITTABLE_STATUSES and end - start > 1:
            with self.counters.lock:
                self.counters.splits += 1
            middle = start + (end - start) // 2
            self._send_part(batch, start, middle, result)   # first half first: order is kept
            self._send_part(batch, middle, end, result)
            return
        for index in range(start, end):
            result.rejected[index] = f"server answered {status}: {message}"

    def _backoff(self, attempt: int) -> float:
        ceiling = min(MAX_BACKOFF_SECONDS, self.settings.retry_base * (2 ** attempt))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _post_with_retries(self, batch: Batch, start: int, end: int, result: BatchResult) -> tuple[int, str]:
        # The body is build_body() of those events; compressed from its pieces, it is never assembled.
        pieces = (body_prefix(self.settings.api_key), batch.joined(start, end), BODY_SUFFIX)
        raw_bytes = sum(len(piece) for piece in pieces)
        compressed = compress(*pieces)
        last_problem = ""
        for attempt in range(self.settings.max_retries + 1):
            self.pause.wait()
            if attempt:
                result.retries += 1
                with self.counters.lock:
                    self.counters.retries += 1
            result.requests += 1
            try:
                response = self._session().post(
                    self.settings.url, data=compressed, headers=HEADERS,
                    timeout=(CONNECT_TIMEOUT_SECONDS, self.settings.timeout),
                )
            except requests.RequestException as error:
                self.counters.count("network error", raw_bytes, len(compressed))
                last_problem = f"network error: {type(error).__name__}: {str(error)[:MAX_ERROR_TEXT]}"
                delay = self._backoff(attempt)
            else:
                status = response.status_code
                self.counters.count(str(status), raw_bytes, len(compressed))
                text = response.text[:MAX_ERROR_TEXT].strip()
                if status not in RETRYABLE_STATUSES:
                    self._raise_if_fatal(status, text)
                    return status, text
                last_problem = f"HTTP {status}: {text}"
                delay = parse_retry_after(response.headers.get("Retry-After"))
                if delay is None:
                    delay = self._backoff(attempt)
                if status == 429:
                    self.pause.extend(delay)
                    delay = 0.0  # the shared pause does the waiting
            if attempt == self.settings.max_retries:
                break
            if self.stop.wait(delay):
                raise Interrupted
        raise SendFailed(
            f"gave up on a batch after {self.settings.max_retries + 1} attempts; last: {last_problem}. "
            "Everything acknowledged so far is checkpointed: run the same command again to resume."
        )

    def _raise_if_fatal(self, status: int, text: str) -> None:
        if status in KEY_STATUSES:
            raise FatalResponse(
                f"{self.settings.url} refused the project API key ({status}: {text}). Use the project's "
                "public token (starts with phc_, from Project settings), via --api-key or POSTHOG_API_KEY; "
                "a personal API key (phx_) does not work for capture."
            )
        if status in NOT_CAPTURE_STATUSES:
            raise FatalResponse(
                f"{self.settings.url} answered {status}: this does not look like a PostHog capture "
                "endpoint. Check --host (e.g. https://us.i.posthog.com or https://eu.i.posthog.com)."
            )


class Dispatcher:
    """Runs batches on ``concurrency`` threads and reports them acknowledged, in sequence order.

    A batch may start when (1) fewer than ``concurrency`` requests are in flight, (2) no earlier batch
    of its lane is unacknowledged (a person's events never overtake each other), and (3) it is fewer
    than ``concurrency`` batches ahead of the oldest batch not yet acknowledged *and saved*, which
    bounds what a crash can make us re-send to ``concurrency`` batches.
    """

    def __init__(self, sender: Sender, concurrency: int, stop: threading.Event, grace_seconds: float = 10.0,
                 persisted: Callable[[], int] | None = None):
        self.sender = sender
        # The watermark as saved on disk (it may trail the reported one while a write is in progress).
        self._persisted = persisted
        self.concurrency = concurrency
        self.stop = stop
        self.grace_seconds = grace_seconds
        self._condition = threading.Condition()
        self._busy_lanes: set[int] = set()
        self._done: dict[int, BatchResult] = {}
        self._unreported: dict[int, Window] = {}
        self._next = 0
        self._error: BaseException | None = None
        self._on_acknowledged: Acknowledge | None = None

    def run(self, windows: Iterator[Window], skip_before: int, on_acknowledged: Acknowledge) -> None:
        """Send every batch with seq >= ``skip_before``; call ``on_acknowledged`` in seq order.

        Raises Interrupted when ``stop`` was set, SendFailed when a batch could not be delivered.
        Either way, every batch reported before the exception was really acknowledged, and batches
        that finish within the grace period are still reported.
        """
        self._next = skip_before
        self._on_acknowledged = on_acknowledged
        # ``concurrency`` long-lived sending threads, each with its own kept-alive connection; a batch is
        # queued only once it may start, when at most concurrency - 1 others are in flight, so one of the
        # threads is (about to be) free for it.
        work: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        threads = [threading.Thread(target=self._worker, args=(work,), name=f"sender-{number}", daemon=True)
                   for number in range(self.concurrency)]
        for thread in threads:
            thread.start()
        try:
            for window in windows:
                for batch in window.batches:
                    if batch.seq < skip_before:
                        continue
                    self._unreported[batch.seq] = window
                    self._wait_until_startable(batch, on_acknowledged)
                    work.put(batch)
            self._drain(on_acknowledged, deadline=None)
        except (Interrupted, SendFailed):
            self.stop.set()  # other threads abandon their retries: the run is ending
            self._drain(on_acknowledged, deadline=time.monotonic() + self.grace_seconds)
            raise
        finally:
            for _ in threads:
                work.put(None)  # each thread ends after the batch in hand (daemons: a stuck one is left)

    def poll(self) -> None:
        """Report the batches that finished so far. Only from the thread in :meth:`run`, while it runs.

        For the producer of the windows to call between steps of its own work: acknowledgements, and so
        the checkpoint writes that gate how far ahead sending may go, then keep flowing while the next
        window is cut, rather than waiting until it is ready (which left the senders idle meanwhile).
        """
        if self._on_acknowledged is not None:
            self._report(self._on_acknowledged)

    def _wait_until_startable(self, batch: Batch, on_acknowledged: Acknowledge) -> None:
        while True:
            self._report(on_acknowledged)
            with self._condition:
                if self._error is not None:
                    raise self._error
                if self.stop.is_set():
                    raise Interrupted
                durable = self._next if self._persisted is None else min(self._next, self._persisted())
                if (len(self._busy_lanes) < self.concurrency and batch.lane not in self._busy_lanes
                        and batch.seq < durable + self.concurrency):
                    self._busy_lanes.add(batch.lane)
                    return
                self._condition.wait(0.5)

    def wake(self) -> None:
        """Something the dispatcher waits for changed (e.g. the checkpoint was saved)."""
        with self._condition:
            self._condition.notify_all()

    def _drain(self, on_acknowledged: Acknowledge, deadline: float | None) -> None:
        """Wait for the threads in flight (until ``deadline``, if given), reporting as they finish."""
        while True:
            self._report(on_acknowledged)
            with self._condition:
                if not self._busy_lanes:
                    break
                if deadline is None and self._error is not None:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._condition.wait(0.2)
        self._report(on_acknowledged)
        if deadline is None and self._error is not None:
            raise self._error

    def _worker(self, work: queue.SimpleQueue[Batch | None]) -> None:
        while (batch := work.get()) is not None:
            self._work(batch)

    def _work(self, batch: Batch) -> None:
        try:
            result = self.sender.send(batch)
        except BaseException as error:  # handed to the dispatching thread, which raises it
            with self._condition:
                if self._error is None or isinstance(self._error, Interrupted):
                    self._error = error
                self._busy_lanes.discard(batch.lane)
                self._condition.notify_all()
            return
        with self._condition:
            self._done[batch.seq] = result
            self._busy_lanes.discard(batch.lane)
            self._condition.notify_all()

    def _report(self, on_acknowledged: Acknowledge) -> None:
        """Report finished batches in seq order, as far as the contiguous run goes (the watermark)."""
        while True:
            with self._condition:
                result = self._done.pop(self._next, None)
            if result is None:
                return
            on_acknowledged(self._unreported.pop(self._next), result)
            self._next += 1
