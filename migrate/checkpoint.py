"""The job's state on disk: atomic writes, fingerprints, the send watermark, test crash points.

Everything a resume trusts is written with :func:`atomic_write_json`: a temp file in the same folder,
flushed and fsync'd, renamed over the old file, and the folder fsync'd, so a crash at any instant
leaves either the old state or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from posthog_migrate.errors import ConfigError

STATE_VERSION = 1
# Environment variable naming a crash point, for the resume tests: the process exits there at once.
CRASH_POINT_VARIABLE = "POSTHOG_MIGRATE_CRASH_AT"
CRASH_EXIT_CODE = 99


def crash_point(name: str) -> None:
    """Exit abruptly (no cleanup, like a kill -9) when the tests ask for a crash here."""
    wanted = os.environ.get(CRASH_POINT_VARIABLE, "")
    if wanted and wanted.split("@", 1)[0] == name:
        # "name@N": crash on the N-th time this point is reached.
        count = int(wanted.split("@", 1)[1]) if "@" in wanted else 1
        _crash_counts[name] = _crash_counts.get(name, 0) + 1
        if _crash_counts[name] >= count:
            os._exit(CRASH_EXIT_CODE)


_crash_counts: dict[str, int] = {}


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_json(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    payload = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    with open(temporary, "wb") as handle:
        handle.write(payload[: len(payload) // 2])
        crash_point("mid-state-write")
        handle.write(payload[len(payload) // 2:])
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def read_json(path: Path) -> Any | None:
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError):  # (a file where a folder of the path should be: none either)
        return None
    except orjson.JSONDecodeError:
        raise ConfigError(
            f"{path} is damaged (not valid JSON). It is only ever replaced atomically, so something else "
            "wrote it; start the job over with --restart."
        ) from None


def digest(data: Any) -> str:
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


@dataclass
class SendProgress:
    """The send phase's watermark: everything before ``next_seq`` was acknowledged by the server.

    ``window_first_seq`` and ``cursor`` locate the window that holds ``next_seq``, which is where a
    resume starts merging; the counters cover exactly the batches before ``next_seq``.
    """

    next_seq: int = 0
    window_first_seq: int = 0
    cursor: list[int] = field(default_factory=list)
    events_sent: int = 0
    rows_sent: int = 0
    batches_sent: int = 0
    server_rejected_events: int = 0
    server_rejected_rows: int = 0
    rejects_bytes: int = 0
    retries: int = 0
    requests: int = 0
    updated_at: float = 0.0
    layout: dict = field(default_factory=dict)
    host: str = ""
    finished: bool = False
    # The counters as they were when the window holding ``next_seq`` began: a resume with another batch
    # layout re-sends that whole window, so it rewinds the counters (and the rejects file) to here.
    window_start: dict = field(default_factory=dict)

    COUNTERS = ("events_sent", "rows_sent", "batches_sent", "server_rejected_events", "server_rejected_rows",
                "rejects_bytes")

    def mark_window_start(self) -> None:
        self.window_start = {name: getattr(self, name) for name in self.COUNTERS}

    def rewind_to_window_start(self) -> None:
        for name, value in self.window_start.items():
            setattr(self, name, value)
        self.next_seq = self.window_first_seq

    def to_dict(self) -> dict:
        """A snapshot (for the checkpoint thread), its lists and dicts copied.

        Taken after every acknowledged batch: ``dataclasses.asdict``'s recursive deep copy cost ~40x this.
        """
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data.update(cursor=list(self.cursor), layout=dict(self.layout), window_start=dict(self.window_start))
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SendProgress:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class JobState:
    """``state.json`` of a job: which phase it is in and how far sending got."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = read_json(path) or {"version": STATE_VERSION}
        if self.data.get("version") != STATE_VERSION:
            raise ConfigError(f"{path} was written by another version of posthog-migrate; use --restart")

    @property
    def send(self) -> SendProgress:
        return SendProgress.from_dict(self.data.get("send", {}))

    def save_send(self, progress: dict) -> None:
        """Replace the send checkpoint with ``progress`` (a SendProgress as a dict), atomically."""
        self.data["send"] = {**progress, "updated_at": time.time()}
        atomic_write_json(self.path, self.data)

class CheckpointWriter:
    """Persists the send watermark on a thread of its own, one write covering every acknowledgement that
    arrived while the previous write was in progress (a group commit).

    A durable write costs a few milliseconds (two fsyncs and a rename); doing one per batch on the
    dispatching thread capped sending at a few hundred batches a second. The dispatcher stays within
    ``concurrency`` batches of :attr:`persisted_seq`, so a crash still re-sends at most that many batches.
    """

    def __init__(self, state: JobState, persisted_seq: int, on_persisted: Callable[[], None]):
        self.state = state
        self.persisted_seq = persisted_seq
        self._on_persisted = on_persisted
        self._condition = threading.Condition()
        self._pending: dict | None = None
        self._writing = False
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)
        self._thread.start()

    def saved_seq(self) -> int:
        """The watermark as saved on disk. Raises the error that stopped the writing thread (a full disk, say):
        the dispatcher waits for this watermark to advance, and would otherwise wait for ever."""
        with self._condition:
            if self._error is not None:
                raise self._error
            return self.persisted_seq

    def submit(self, progress: SendProgress) -> None:
        """Queue a snapshot of ``progress`` (later snapshots replace earlier unwritten ones)."""
        snapshot = progress.to_dict()
        with self._condition:
            if self._error is not None:
                raise self._error
            self._pending = snapshot
            self._condition.notify_all()

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._pending is None and not self._closing:
                    self._condition.wait()
                if self._pending is None:
                    return
                snapshot, self._pending, self._writing = self._pending, None, True
            try:
                crash_point("after-send-before-checkpoint")
                self.state.save_send(snapshot)
                crash_point("after-checkpoint")
            except BaseException as error:  # reported to the dispatching thread by submit/close
                with self._condition:
                    self._error, self._writing = error, False
                    self._condition.notify_all()
                return
            with self._condition:
                self.persisted_seq = snapshot["next_seq"]
                self._writing = False
                self._condition.notify_all()
            self._on_persisted()

    def close(self) -> None:
        """Write what is pending, then stop the thread; raise if a write failed."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error
