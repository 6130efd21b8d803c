"""The capture server: a PostHog-compatible capture endpoint on 127.0.0.1, and ``serve()`` to run one until stopped.

:class:`CaptureServer` answers on capture's paths (see ``rules``), lets its :class:`~.faults.FaultPlan`
misbehave (see ``faults``) and keeps what it accepts: in memory for tests, as JSON lines in a file for
people, counted either way. The project token is checked but never stored, logged or written anywhere.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from posthog_migrate.capture.faults import FaultPlan, apply_fault
from posthog_migrate.capture.http import Reply, Request, Route, RoutingServer
from posthog_migrate.capture.query import QUERY_PATH, QueryEndpoint
from posthog_migrate.capture.rules import (
    BATCH_PATH,
    GZIP_MAGIC,
    MAX_RAW_BODY_BYTES,
    MAX_SINGLE_EVENT_RAW_BYTES,
    SINGLE_EVENT_PATH,
    Verdict,
    declares_gzip,
    judge,
    too_big,
)
from posthog_migrate.errors import ConfigError


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


class CaptureServer:
    """A PostHog-compatible capture endpoint on a background thread.

    ``strict`` follows capture's code (one nameless or id-less event fails the whole request);
    ``strict=False`` follows PostHog's docs (such events are dropped, the request gets 200).
    ``out_path`` gets every accepted event as a JSON line (appended, so a restarted server keeps what
    it had). ``keep_in_memory=False`` keeps only counts (see :attr:`stats`), for long runs whose memory
    must not grow with the export; ``events`` and ``requests`` then stay empty.

    The query endpoint (``/api/projects/{id}/query/``, see ``query``) answers over the accepted events, read
    back from memory or from ``out_path`` (a file written by an earlier server included) when it is first
    asked, so that capturing pays nothing for it. ``ingestion_lag`` (seconds) makes an accepted event
    queryable only that long after it was accepted, as PostHog's ingestion does.
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
        ingestion_lag: float = 0.0,
    ):
        if not 0 <= ingestion_lag < float("inf"):
            raise ConfigError(f"ingestion lag {ingestion_lag} must be 0 or a positive number of seconds")
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
        self._httpd: RoutingServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.ingestion_lag = ingestion_lag
        # With a lag: (when, events accepted, bytes of out_path) after each request that accepted any, oldest first.
        self._accepted_at: deque[tuple[float, int, int]] = deque()
        self._landed_events = self._landed_bytes = 0  # how far the query endpoint has read
        self._query = QueryEndpoint(self._newly_landed)

    def start(self, listen: bool = True) -> CaptureServer:
        """Bind (port 0 picks a free one) and serve on a daemon thread. A server runs once.

        ``listen=False`` binds nothing: the server serves only the connections given to
        :meth:`serve_connection`, accepted by another process (``serve --processes``, see ``workers``).
        """
        if self._httpd is not None:
            raise RuntimeError("this CaptureServer has already been started")
        if self.out_path is not None:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
            drop_partial_last_line(self.out_path)
            # Unbuffered: each request's lines go out in one write(), which O_APPEND places whole at
            # the file's end, so several servers (serve --processes) can share one file.
            self._out = open(self.out_path, "ab", buffering=0)  # noqa: SIM115 - open until stop()
            if self.ingestion_lag:  # what an earlier server wrote there was ingested long ago
                self._accepted_at.append((float("-inf"), 0, os.path.getsize(self.out_path)))
        try:
            self._httpd = RoutingServer((self.host, self.port), self._routes(), self._record_refusal, self.quiet,
                                        listen)
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

    def _routes(self) -> list[Route]:
        """Every endpoint this server answers on; the HTTP layer answers 404 or 405 to anything else."""
        return [
            Route(BATCH_PATH, ("POST",), partial(self._capture, raw_limit=MAX_RAW_BODY_BYTES)),
            Route(SINGLE_EVENT_PATH, ("POST",), partial(self._capture, raw_limit=MAX_SINGLE_EVENT_RAW_BYTES)),
            Route(QUERY_PATH, ("POST",), self._query.handle),
        ]

    def _capture(self, request: Request, raw_limit: int) -> Reply | None:
        """The capture endpoints: judge the body as capture would, let a fault have its way, keep what is accepted."""
        fault = self.faults.next_fault() if self.faults is not None else None
        verdict = self._read_and_judge(request, raw_limit)
        reply, kept = apply_fault(fault, verdict, request.path, self.faults)
        status = reply.status if reply is not None else 0
        record = RequestRecord(
            path=request.path,
            status=status,
            n_events=verdict.n_events,
            n_accepted=len(kept),
            historical_migration=verdict.historical_migration,
            has_sent_at=verdict.has_sent_at,
            raw_bytes=request.length,
            decoded_bytes=verdict.decoded_bytes,
            gzip=verdict.gzip,
            fault=fault.spec if fault is not None else None,
            error=reply.body.decode() if reply is not None and status != 200 else None,  # a refusal is plain text
        )
        if isinstance(kept, range):  # the usual case, a prefix (all of them): slices, no work per event
            events, lines = verdict.events[kept.start:kept.stop], verdict.lines[kept.start:kept.stop]
        else:
            events, lines = [verdict.events[i] for i in kept], [verdict.lines[i] for i in kept]
        blob = b"\n".join(lines) + b"\n" if lines else b""
        # Recorded before answering: once a client has its 200, the events are already there.
        self._commit(events, blob, record)
        return reply

    def _read_and_judge(self, request: Request, raw_limit: int) -> Verdict:
        declared_gzip = declares_gzip(request.headers.get("Content-Encoding", ""), request.query)
        if request.length > raw_limit:
            request.discard_body()  # read it all, so the client is listening when the 413 comes
            return too_big(request.length, raw_limit, request.path, declared_gzip)
        raw = request.read_body()
        return judge(raw, declared_gzip or raw[:2] == GZIP_MAGIC, self.strict)

    def _record_refusal(self, path: str, status: int, message: str, body_bytes: int) -> None:
        """Keep the record of a request no endpoint took (unknown path, wrong method, no usable length)."""
        self._commit([], b"", RequestRecord(path, status, 0, 0, None, False, body_bytes, 0, False, None, message))

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
            if self.ingestion_lag and events:
                out_bytes = self._out.tell() if self._out is not None else 0
                self._accepted_at.append((time.monotonic(), self._counts["events_accepted"] + len(events), out_bytes))
            counts = self._counts
            counts["requests"] += 1
            counts["events_accepted"] += len(events)
            counts["requests_rejected"] += record.status != 200
            counts["faults_injected"] += record.fault is not None


    def _newly_landed(self) -> list[dict[str, Any]] | Iterator[dict[str, Any]]:
        """The events accepted since the query endpoint last asked (and, with an ingestion lag, at least that long
        ago), in acceptance order: from memory, else read back from ``out_path``."""
        with self._lock:
            events_end, bytes_end = self._counts["events_accepted"], None
            if self.ingestion_lag:
                events_end, bytes_end = self._landed_events, self._landed_bytes
                while self._accepted_at and self._accepted_at[0][0] <= time.monotonic() - self.ingestion_lag:
                    _, events_end, bytes_end = self._accepted_at.popleft()
            if self.keep_in_memory:
                landed = self._events[self._landed_events:events_end]
                self._landed_events = events_end
                return landed
        if self.out_path is None:
            raise LookupError("this capture server keeps no events to query: start it with --out FILE")
        return self._read_landed_lines(bytes_end)

    def _read_landed_lines(self, end: int | None) -> Iterator[dict[str, Any]]:
        """The whole lines of ``out_path`` after those already read, up to byte ``end`` (None: its end)."""
        try:
            with open(self.out_path, "rb") as handle:
                handle.seek(self._landed_bytes)
                data = handle.read() if end is None else handle.read(max(0, end - self._landed_bytes))
        except FileNotFoundError:
            return
        whole = data[:data.rfind(b"\n") + 1]  # another process may be writing the last line
        self._landed_bytes += len(whole)
        for line in whole.splitlines():
            if line.strip():
                yield orjson.loads(line)


def _write_all(out: BinaryIO, data: bytes) -> None:
    """One write() in practice (a regular file takes it whole); a short one is finished, not dropped."""
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


def drop_partial_last_line(path: Path) -> None:
    """Cut a line a killed server left half-written at the end of its events file (its batch was never
    acknowledged, so the client sends it again): the lines appended next must not join onto it."""
    try:
        with open(path, "rb+") as stream:
            size = stream.seek(0, os.SEEK_END)
            if size == 0:
                return
            stream.seek(size - 1)
            if stream.read(1) == b"\n":
                return
            # Back to the last complete line's end, reading the tail a block at a time.
            end = size
            while end > 0:
                start = max(0, end - (1 << 16))
                stream.seek(start)
                newline = stream.read(end - start).rfind(b"\n")
                if newline >= 0:
                    stream.truncate(start + newline + 1)
                    return
                end = start
            stream.truncate(0)
    except FileNotFoundError:
        return


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


@dataclass(frozen=True)
class ServeSummary:
    """What :func:`serve` took, for its caller to report once it has stopped.

    With several processes, ``requests_per_process`` holds each one's share of ``stats.requests``, None
    for a process that did not report (``stats`` then leaves it out).
    """

    stats: CaptureStats
    requests_per_process: tuple[int | None, ...] = ()


def serve(
    port: int = 8010,
    *,
    out_path: str | None = None,
    strict: bool = True,
    faults: FaultPlan | None = None,
    host: str = "127.0.0.1",
    processes: int = 1,
    ingestion_lag: float = 0.0,
    on_ready: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> ServeSummary:
    """Run a capture server in the foreground until KeyboardInterrupt (``posthog-migrate serve``).

    Prints nothing: ``on_ready(url)`` is called once requests are accepted, ``on_warning(message)`` when
    a worker process stops or a connection cannot be accepted while serving, and the totals are returned.
    Accepted events are only counted unless ``out_path`` is given. ``processes`` above 1 serves in that
    many worker processes (see ``workers``; not with ``faults``, which are scripted in one server's
    request order).
    """
    if faults is not None and processes > 1:
        raise ConfigError("faults are scripted in request order for one server: use --processes 1 with "
                          "--fault or --fault-rate")
    if ingestion_lag and processes > 1:
        raise ConfigError("an ingestion lag is kept by one server: use --processes 1 with --ingestion-lag")
    check_out_file(out_path)
    if processes > 1:
        from posthog_migrate.capture.workers import serve_in_processes

        return serve_in_processes(host, port, out_path, strict, processes, on_ready, on_warning)
    tune_collector_for_serving()
    server = CaptureServer(host, port, out_path, strict, faults, quiet=True, keep_in_memory=False,
                           ingestion_lag=ingestion_lag)
    try:
        server.start()
    except OSError as exc:
        raise cannot_listen(host, port, exc) from None
    try:
        if on_ready is not None:
            on_ready(server.url)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    finally:
        server.stop()
    return ServeSummary(server.stats)


def cannot_listen(host: str, port: int, error: OSError) -> ConfigError:
    return ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}; pick another --port")


def tune_collector_for_serving() -> None:
    """For a process that does nothing but serve.

    A request's parsed events (two tracked dicts each) die by reference counting once it is answered,
    but at the default threshold (700 more live objects) the cycle collector runs several times per
    request and traverses them while they are alive: about a tenth of the server's CPU, to find no
    garbage. At 50,000 it runs only within very big requests, and any cycle is still reclaimed in the end.
    """
    gc.set_threshold(50_000)
