"""The HTTP plumbing under the capture server: keep-alive connections, routing by path, answers, a quick stop.

Nothing here knows what capture accepts. A :class:`RoutingServer` is given its :class:`Route` list by its
owner (see ``server.CaptureServer``); :class:`Handler` finds the route for each request in one place,
answers 404 or 405 itself when there is none, and otherwise lets the route's endpoint read the body and
say what to answer.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import urlsplit

_DISCARD_CHUNK_BYTES = 1024 * 1024
_TEXT = "text/plain; charset=utf-8"


class Reply(NamedTuple):
    """An answer to send: its status, body and body's type, and any headers beyond those two."""

    status: int
    body: bytes
    content_type: str = _TEXT
    headers: Sequence[tuple[str, str]] = ()

    @classmethod
    def text(cls, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Reply:
        """A plain-text answer, as capture gives for every refusal."""
        return cls(status, message.encode(), _TEXT, headers)


@dataclass(frozen=True)
class Request:
    """What an endpoint gets of a request. The body is still unread: an endpoint may refuse a body too big
    for it without holding it (it must then discard it, so the client is listening when the answer comes)."""

    method: str
    path: str
    query: str
    headers: Message
    length: int  # the body's Content-Length
    body_file: BinaryIO

    def read_body(self) -> bytes:
        body = self.body_file.read(self.length)
        if len(body) < self.length:
            raise ConnectionResetError("the client closed the connection in the middle of its body")
        return body

    def discard_body(self) -> None:
        left = self.length
        while left > 0:
            chunk = self.body_file.read(min(left, _DISCARD_CHUNK_BYTES))
            if not chunk:
                raise ConnectionResetError("the client closed the connection in the middle of its body")
            left -= len(chunk)


@dataclass(frozen=True)
class Route:
    """An endpoint and the requests it takes: paths matching ``path`` in full, with one of ``methods``.

    ``handle`` returns the answer, or None to close the connection without one (after it has kept, or
    not, what the request held).
    """

    path: re.Pattern[str]
    methods: tuple[str, ...]
    handle: Callable[[Request], Reply | None]


class Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive so a requests.Session reuses it like it would PostHog's."""

    protocol_version = "HTTP/1.1"
    server_version = "posthog-migrate-capture"
    # Headers and body go out in two writes; without this, Nagle + delayed ACK stall each answer ~40 ms.
    disable_nagle_algorithm = True
    server: RoutingServer

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
        url = urlsplit(self.path)
        path = url.path
        length, problem = self._body_length()
        if problem is not None:  # the body's end is unknown: answer, then close the connection
            self._refuse(path, *problem, 0, [("Connection", "close")])
            return
        request = Request(self.command, path, url.query, self.headers, length, self.rfile)
        route = next((route for route in self.server.routes if route.path.fullmatch(path)), None)
        if route is None or self.command not in route.methods:
            request.discard_body()
            if route is None:
                self._refuse(path, 404, f"no capture endpoint at {path}", length)
            else:
                self._refuse(path, 405, f"{path} takes {' or '.join(route.methods)} only", length,
                             [("Allow", ", ".join(route.methods))])
            return
        reply = route.handle(request)
        if reply is None:
            self.close_connection = True  # no answer at all; the socket is closed after this returns
            return
        self._answer(reply)

    def _body_length(self) -> tuple[int, tuple[int, str] | None]:
        """The body's length, or the status and reason to refuse it: it cannot be known (chunked) or is malformed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return 0, (411, "send a Content-Length (chunked bodies are not supported)")
        text = self.headers.get("Content-Length", "0").strip()
        if not text.isdigit():
            return 0, (400, "invalid Content-Length")
        return int(text), None

    def _refuse(self, path: str, status: int, message: str, length: int,
                headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer a request no endpoint took, once the server's owner has recorded it."""
        self.server.record_refusal(path, status, message, length)
        self._answer(Reply.text(status, message, headers))

    def _answer(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def version_string(self) -> str:
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The request line may carry a query string; log the path alone so no key can end up in a log.
        self.log_message("%s %s %s", self.command, urlsplit(self.path).path, code)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


class RoutingServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that routes by path, stops at once and closes idle connections when it does.

    ``record_refusal(path, status, message, body_bytes)`` is called for each request no route took, before
    it is answered. ``listen=False`` binds nothing: the server serves only the connections handed to it
    with :meth:`process_request` (``serve --processes``, where the parent process listens).
    """

    daemon_threads = True
    request_queue_size = 128
    timeout = 0  # handle_request() is only called once the listener is readable: it must never wait

    def __init__(self, address: tuple[str, int], routes: Sequence[Route],
                 record_refusal: Callable[[str, int, str, int], None], quiet: bool = True, listen: bool = True):
        self.routes = tuple(routes)
        self.record_refusal = record_refusal
        self.quiet = quiet
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler, bind_and_activate=listen)
        if not listen:
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
