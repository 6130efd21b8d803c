"""``posthog-migrate serve --processes N``: the local capture server in N worker processes.

One server process handles one request at a time on one core (Python's GIL), and a fast sender on
the same machine waits for it: in the 1M-event benchmark the server was the bottleneck of the send
phase, busy 85% of a core while the sender used 45% of the other. With N processes the server's
work is spread over N cores.

How the connections are shared:
- The parent process listens and accepts. It hands each new connection to the next worker in turn
  (round robin) over a Unix socket (SCM_RIGHTS), so a sender's few long-lived keep-alive connections
  are split evenly. SO_REUSEPORT would let the kernel choose instead, but it hashes each connection
  to a process: with 4 connections and 2 processes, half the time one process gets 3 of them.
- Each worker is a :class:`CaptureServer` that does not listen: it serves the connections it is handed
  and appends what it accepts to the shared ``--out`` file, one write() per request, so the lines of
  different requests never interleave.
- Ctrl-C (or SIGTERM, which the command line turns into one) stops the parent, which closes every
  worker's channel. A worker then stops its server and sends its counts back; the parent adds them up.
  Workers run in a process group of their own, so signals meant for the group (a terminal's Ctrl-C,
  `timeout`) reach the parent only.
  A worker whose parent was killed sees its channel close and stops too: no server is left behind.

Fault injection is not offered here: a fault script is a sequence over one server's requests.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

import orjson
from posthog_migrate.capture.server import (
    CaptureServer,
    CaptureStats,
    ServeSummary,
    cannot_listen,
    tune_collector_for_serving,
)
from posthog_migrate.errors import ConfigError

# Seconds a new worker has to import, open the out file and say it is ready.
WORKER_START_SECONDS = 60
# Seconds a stopping worker has to close its connections and send its counts.
WORKER_STOP_SECONDS = 30
_READY = b"ready"
_CONNECTION = b"c"  # the byte carrying one connection's descriptor (its value means nothing)
_MAX_HANDED = 64  # descriptors (and bytes) a worker takes in one read


class _Worker:
    """The parent's handle on one worker process: the process and the channel connections go through."""

    def __init__(self, index: int, host: str, port: int, out_path: str | None, strict: bool):
        self.index = index
        # A stream pair (SEQPACKET is Linux-only): each descriptor travels with its own byte, and the
        # worker reads up to _MAX_HANDED at a time, so a read never leaves a descriptor behind.
        self.channel, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        settings = {"host": host, "port": port, "out_path": out_path, "strict": strict}
        with child_end:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "posthog_migrate.capture.workers", str(child_end.fileno()),
                 orjson.dumps(settings).decode()],
                pass_fds=(child_end.fileno(),),
                # Its own process group: a terminal's Ctrl-C (or `timeout`, or a supervisor) signals the
                # parent's group, and the parent stops the workers through their channels.
                process_group=0,
            )

    def wait_until_ready(self) -> None:
        self.channel.settimeout(WORKER_START_SECONDS)
        answer = b""
        with contextlib.suppress(OSError):  # a timeout or a reset: not ready either way
            while len(answer) < len(_READY) and (piece := self.channel.recv(len(_READY) - len(answer))):
                answer += piece
        self.channel.settimeout(None)
        if answer != _READY:
            raise ConfigError(f"capture worker {self.index + 1} did not start (its error, if any, is above)")

    def hand_over(self, connection: socket.socket) -> None:
        socket.send_fds(self.channel, [_CONNECTION], [connection.fileno()])

    def stop(self) -> CaptureStats | None:
        """Close the channel's sending side (the worker's cue to stop) and collect its counts."""
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_WR)
        self.channel.settimeout(WORKER_STOP_SECONDS)
        answer = b""
        with contextlib.suppress(OSError):  # the worker sends its counts, then closes its end
            while piece := self.channel.recv(4096):
                answer += piece
        try:
            counts = orjson.loads(answer)
        except orjson.JSONDecodeError:
            counts = None
        self.channel.close()
        try:
            self.process.wait(WORKER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return CaptureStats(**counts) if isinstance(counts, dict) else None


class WorkersGone(ConfigError):
    """Every worker process stopped on its own, so nothing serves any more. ``summary`` is what they took."""

    def __init__(self, summary: ServeSummary):
        super().__init__("every capture worker process stopped (their errors, if any, are above)")
        self.summary = summary


def serve_in_processes(host: str, port: int, out_path: str | None, strict: bool, processes: int,
                       on_ready: Callable[[str], None] | None,
                       on_warning: Callable[[str], None] | None) -> ServeSummary:
    """Listen, start the workers, hand them connections until KeyboardInterrupt, then return the totals."""
    if not hasattr(socket, "send_fds"):
        raise ConfigError("--processes above 1 needs a Unix system (it passes connections between processes)")
    try:
        listener = socket.create_server((host, port), backlog=128)
    except OSError as exc:
        raise cannot_listen(host, port, exc) from None
    bound_host, bound_port = listener.getsockname()[:2]
    workers: list[_Worker] = []
    try:
        with listener:
            workers = [_Worker(index, host, bound_port, out_path, strict) for index in range(processes)]
            for worker in workers:
                worker.wait_until_ready()
            if on_ready is not None:
                on_ready(f"http://{bound_host}:{bound_port}")
            all_stopped = False
            with contextlib.suppress(KeyboardInterrupt):
                all_stopped = not _hand_out_connections(listener, workers, on_warning or _ignore)
    finally:
        with _signals_ignored():  # a second Ctrl-C must not cut the stopping (and the counts) short
            totals = [worker.stop() for worker in workers]
    counted = [stats for stats in totals if stats is not None]
    total = CaptureStats(**{key: sum(getattr(stats, key) for stats in counted) for key in asdict(CaptureStats())})
    summary = ServeSummary(total, tuple(stats.requests if stats is not None else None for stats in totals))
    if all_stopped:
        raise WorkersGone(summary)
    return summary


def _ignore(message: str) -> None:
    pass


@contextlib.contextmanager
def _signals_ignored():
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _hand_out_connections(listener: socket.socket, workers: list[_Worker], warn: Callable[[str], None]) -> bool:
    """Accept until interrupted, giving each connection to the next worker still alive; False once none is."""
    alive = list(workers)
    turn = 0
    while alive:
        try:
            connection, _ = listener.accept()
        except OSError as error:  # e.g. out of descriptors, or a connection reset while queued: keep serving
            warn(f"accepting a connection failed: {error}")
            time.sleep(0.1)
            continue
        with connection:  # the worker holds its own copy of the descriptor once handed over
            while alive:
                worker = alive[turn % len(alive)]
                turn += 1
                try:
                    worker.hand_over(connection)
                    break
                except OSError:
                    alive.remove(worker)
                    warn(f"capture worker {worker.index + 1} stopped; serving with {len(alive)} process(es)")
    return False


# --- inside a worker process ---------------------------------------------------------------------------


def _worker_main(channel_fd: int, settings: dict) -> None:
    # Signals do not reach a worker (its own process group, see _Worker): it serves until its channel
    # closes, whether the parent is stopping or was killed.
    tune_collector_for_serving()
    channel = socket.socket(fileno=channel_fd)
    server = CaptureServer(settings["host"], settings["port"], settings["out_path"], settings["strict"],
                           quiet=True, keep_in_memory=False).start(listen=False)
    try:
        channel.sendall(_READY)
        while True:
            message, descriptors, _, _ = socket.recv_fds(channel, _MAX_HANDED, _MAX_HANDED)
            if not message:
                break  # the parent closed the channel
            for descriptor in descriptors:
                server.serve_connection(socket.socket(fileno=descriptor))
    finally:
        server.stop()
    with contextlib.suppress(OSError):
        channel.sendall(orjson.dumps(asdict(server.stats)))
    channel.close()


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]), orjson.loads(sys.argv[2]))
