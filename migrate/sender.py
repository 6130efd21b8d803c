"""HTTP to PostHog's /batch/: gzip, retries with backoff, Retry-After, splitting, in-flight limits, rate.

We own the retry loop instead of urllib3's ``Retry``: it does not retry POSTs by default and would
honour a Retry-After of hours. What each answer means is decided in one place, posthog_migrate.answers
(from reference/posthog-ingestion-facts.md); here it is acted on:

* accepted (200 with capture's ``{"status": "Ok"}`` or ``1``, 204 empty): the request is acknowledged;
* network errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and jitter, each retry
  reported to ``on_retry``; a 429 pauses *every* sender thread (the limit is per project, not per
  connection); Retry-After is capped;
* 400 and 413 split the batch in halves, sent in order, down to the one event the server refuses, which
  is rejected with the server's message (everything else in the batch still goes), unless the server
  refuses everything (posthog_migrate.refusals: the batch is held back, then the run stops);
* any other 4xx is final for that batch: its events are rejected with the server's message;
* everything else stops the whole run, as no batch could succeed: a refused key (401/403), not a capture
  endpoint (404/405), a redirect (never followed), a 2xx that is not capture's answer, a quota limit.

The :class:`Dispatcher` keeps up to ``concurrency`` requests in flight, one per lane at a time, never
more than ``concurrency`` batches ahead of the oldest unacknowledged one, and reports acknowledgements
in order so the caller can advance its checkpoint.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import requests
from posthog_migrate.answers import MAX_ERROR_TEXT, Answer, Verdict, judge_answer, scrub_key
from posthog_migrate.batches import BODY_SUFFIX, Batch, Window, body_prefix
from posthog_migrate.errors import Interrupted, SendFailed
from posthog_migrate.refusals import BatchWatch, Ranges, RefusalMonitor, probe_index, without_index

try:
    from isal import isal_zlib as _zlib  # ~3.5x faster than zlib at level 1, and a better ratio
except ImportError:  # pragma: no cover - isal is optional
    import zlib as _zlib

DEFAULT_MAX_RETRIES = 10
DEFAULT_RETRY_BASE_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_READ_TIMEOUT_SECONDS = 60.0


GZIP_WBITS = 31  # zlib's way of asking for a gzip header and trailer
HEADERS = {"Content-Type": "application/json", "Content-Encoding": "gzip", "User-Agent": "posthog-migrate"}


def compress(*pieces: bytes | memoryview) -> bytes:
    """gzip level 1 of the pieces laid end to end: ~5x smaller for event JSON at a fraction of level 6's
    cost. Fed piece by piece, so a body is never assembled just to be compressed. Releases the GIL."""
    compressor = _zlib.compressobj(1, _zlib.DEFLATED, GZIP_WBITS)
    out = [compressor.compress(piece) for piece in pieces]
    out.append(compressor.flush())
    return b"".join(out)


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

    def reject(self, indices: Iterable[int], answer: Answer) -> None:
        for index in indices:
            self.rejected[index] = f"server answered {answer.status}: {answer.message}"


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
    """An answer that no batch could get past (bad key, wrong host, a redirect, a quota limit)."""


@dataclass(frozen=True)
class RetryNotice:
    """A request is about to be sent again (for the progress display)."""

    problem: str        # a few words: "connection refused", "HTTP 503"
    retry: int          # this is retry number ``retry`` of ``max_retries``
    max_retries: int
    delay: float        # seconds until it is sent again
    gives_up_in: float  # roughly how long until the run stops, if every retry fails the same way


OnRetry = Callable[[RetryNotice], None]


class Sender:
    """Sends one batch to completion: retries, splits, and reports the events the server refused."""

    def __init__(self, settings: SendSettings, counters: SendCounters, stop: threading.Event,
                 on_retry: OnRetry | None = None):
        self.settings = settings
        self.counters = counters
        self.stop = stop
        self.on_retry = on_retry
        self.pause = SharedPause(stop)
        self.rate = RateLimiter(settings.rate, stop)
        self.refusals = RefusalMonitor(settings.url, stop)
        # One Session (so one kept-alive connection) per sending thread: the Dispatcher's threads live for
        # the whole run, so a connection is opened once per thread, not once per batch.
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _pinned_session(self.settings.url)
        return session

    def send(self, batch: Batch) -> BatchResult:
        """Send the batch, bisecting what the server refuses (400/413) down to the events at fault."""
        result = BatchResult(batch)
        self.rate.acquire(batch.n_events)
        watch = self.refusals.watch()
        pending: Ranges = [(0, batch.n_events)]
        while pending:
            start, end = pending.pop()
            answer = self._post_with_retries(batch.joined(start, end), result)
            if answer.verdict is Verdict.ACCEPTED:
                self.refusals.accepted(batch.payload(index) for index in range(start, end))
                continue
            if answer.verdict is Verdict.SPLIT and end - start > 1:
                with self.counters.lock:
                    self.counters.splits += 1
                middle = start + (end - start) // 2
                pending += [(middle, end), (start, middle)]  # the first half is sent first: order is kept
            else:
                result.reject(range(start, end), answer)
            if answer.verdict is Verdict.SPLIT and self.refusals.refused(watch, answer):
                pending = self._hold_if_refused_wholesale(batch, pending, result, watch)
        return result

    def _hold_if_refused_wholesale(self, batch: Batch, pending: Ranges, result: BatchResult,
                                   watch: BatchWatch) -> Ranges:
        """The batch is suspect (see posthog_migrate.refusals): try one event alone (the probe), and unless the
        probe shows the refusals are about these events, hold the batch back. Returns the ranges to send."""
        canary = self.refusals.canary
        if canary is not None:
            # Accepted before: sent again (PostHog collapses it) it says whether the server has changed.
            answer = self._post_with_retries(canary, result)
            if answer.verdict is Verdict.ACCEPTED:
                self.refusals.accepted()
                return pending
        elif pending:
            probe = probe_index(batch, pending)
            pending = without_index(pending, probe)
            answer = self._post_with_retries(batch.joined(probe, probe + 1), result)
            if answer.verdict is Verdict.ACCEPTED:
                self.refusals.accepted([batch.payload(probe)])
                return pending
            result.reject([probe], answer)
            if answer.verdict is not Verdict.SPLIT or not self.refusals.refused(watch, answer):
                return pending
        if not self.refusals.hold(watch):
            raise Interrupted
        return pending  # something was accepted meanwhile: these refusals are about the events

    def _backoff(self, attempt: int) -> float:
        ceiling = self._backoff_ceiling(attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _backoff_ceiling(self, attempt: int) -> float:
        return min(MAX_BACKOFF_SECONDS, self.settings.retry_base * (2 ** attempt))

    def _post_with_retries(self, events: bytes | memoryview, result: BatchResult) -> Answer:
        """The judged answer to a request of ``events`` (comma-joined), after retrying what is worth retrying.

        Raises FatalResponse for an answer no batch can get past, SendFailed when the retries run out.
        """
        # The body is build_body() of those events; compressed from its pieces, it is never assembled.
        pieces = (body_prefix(self.settings.api_key), events, BODY_SUFFIX)
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
                    allow_redirects=False,  # a redirected POST loses its body, or takes the key elsewhere
                )
            except requests.RequestException as error:
                self.counters.count("network error", raw_bytes, len(compressed))
                problem, pause_everyone = self._network_problem(error), False
                detail = scrub_key(str(error), self.settings.api_key)[:MAX_ERROR_TEXT]
                last_problem = f"network error: {type(error).__name__}: {detail}"
                delay = self._backoff(attempt)
            else:
                self.counters.count(str(response.status_code), raw_bytes, len(compressed))
                answer = judge_answer(response.status_code, response.headers, response.content,
                                      self.settings.host, self.settings.api_key)
                if answer.verdict is Verdict.FATAL:
                    raise FatalResponse(answer.message)
                if answer.verdict is not Verdict.RETRY:
                    return answer
                problem, pause_everyone = answer.problem, answer.pauses_every_thread
                last_problem = f"HTTP {answer.status}: {answer.message}"
                delay = answer.retry_after if answer.retry_after is not None else self._backoff(attempt)
            if attempt == self.settings.max_retries:
                break
            self._report_retry(problem, attempt, delay)
            if pause_everyone:
                self.pause.extend(delay)  # the shared pause does the waiting, for every thread
                delay = 0.0
            if self.stop.wait(delay):
                raise Interrupted
        raise SendFailed(
            f"gave up on a batch after {self.settings.max_retries + 1} attempts; last: {last_problem}. "
            "Everything acknowledged so far is checkpointed: run the same command again to resume."
        )

    def _report_retry(self, problem: str, attempt: int, delay: float) -> None:
        """Tell ``on_retry`` that retry ``attempt + 1`` comes in ``delay`` seconds, and roughly when the
        run gives up if every retry fails alike (the backoffs still to come, at their average)."""
        if self.on_retry is None:
            return
        later = sum(0.75 * self._backoff_ceiling(a) for a in range(attempt + 1, self.settings.max_retries))
        self.on_retry(RetryNotice(problem, attempt + 1, self.settings.max_retries, delay, delay + later))

    def _network_problem(self, error: requests.RequestException) -> str:
        """A few words for a network error, for the retry display."""
        if isinstance(error, requests.ConnectTimeout):
            return f"no connection within {CONNECT_TIMEOUT_SECONDS:g} s"
        if isinstance(error, requests.ReadTimeout):
            return f"no answer within {self.settings.timeout:g} s"
        text = str(error)
        for clue, words in (("refused", "connection refused"), ("Name or service", "host name not found"),
                            ("NameResolution", "host name not found"), ("reset", "connection reset"),
                            ("aborted", "connection closed without an answer"),
                            ("RemoteDisconnected", "connection closed without an answer")):
            if clue in text:
                return words
        return f"network error ({type(error).__name__})"


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
        sender.refusals.on_hold = self.wake  # a batch held back may leave nothing able to run: see _raise_if_stalled

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
                if durable == self._next:  # else a checkpoint being written may yet let the batch start
                    self._raise_if_stalled()
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
                if deadline is None:
                    self._raise_if_stalled()
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._condition.wait(0.2)
        self._report(on_acknowledged)
        if deadline is None and self._error is not None:
            raise self._error

    def _raise_if_stalled(self) -> None:
        """Stop the run when every request in flight is a batch held back (see posthog_migrate.refusals) and no
        other batch may start: nothing could be accepted any more to release them. Condition held."""
        held = self.sender.refusals.held
        if held and held >= len(self._busy_lanes):
            raise self.sender.refusals.failure()

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
