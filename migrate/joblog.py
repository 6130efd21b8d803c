"""The job's log: ``WORKDIR/job.log``, one JSON object per line, appended to by every run of the job.

For the person who was not watching the terminal: when each run started (with its settings, never the API
key) and how it ended (exit status and counts), each phase and step, every retry and why, each file
skipped, the warnings, and the message that stopped a run (a damaged work directory, a full disk, a
server that refused). ``posthog-migrate status`` shows the last run's end from it.

Every line has ``time`` (UTC, ISO 8601), ``run`` (which run of the job wrote it: its start and process id)
and ``event``, one of::

    run_started   interface, version, files, format, format_reason, settings, sources (the first 100)
    skipped_file  uri, why
    warning       message, and how many rows, events or files it concerns (count)
    phase         phase (prepare | send), state (started | reused | done), and the phase's counts
    step          step (what its progress bar is called), done, unit, seconds
    retry         problem, retry, max_retries, delay_seconds, gives_up_in_seconds
    error         type, message
    run_ended     exit_status, rows, events, seconds, error

Writing is best-effort: a line that cannot be written (a full disk) is dropped rather than turning a
checkpointed stop into a crash.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from posthog_migrate.answers import scrub_key
from posthog_migrate.render import Bar, Progress
from posthog_migrate.sender import RetryNotice

LOG_NAME = "job.log"
# The sources a run_started line names (the count is always there): a job may have thousands of files.
SOURCES_LOGGED = 100
# ``status`` reads this much of the log's end to find the last run.
TAIL_BYTES = 256 * 1024


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobLog:
    """Appends lines to a job's ``job.log``, from any thread. ``secret`` (the API key) is removed from every
    line, whatever field it hides in: the key is never written to the work directory."""

    def __init__(self, root: Path, secret: str | None = None):
        self.path = root / LOG_NAME
        self._secret = secret
        self.run = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}"
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": _now(), "run": self.run, "event": event, **fields}
        text = orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        if self._secret:
            text = scrub_key(text, self._secret)
        with self._lock:
            try:
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            except OSError:
                pass  # best effort: see the module's docstring

    def retry(self, notice: RetryNotice) -> None:
        """The sender is about to send a request again (its on_retry)."""
        self.write("retry", problem=notice.problem, retry=notice.retry, max_retries=notice.max_retries,
                   delay_seconds=round(notice.delay, 3), gives_up_in_seconds=round(notice.gives_up_in, 1))

    def watching(self, progress: Progress) -> Progress:
        """``progress``, with a ``step`` line logged as each of its bars closes (what it counted, how long)."""
        return _LoggedProgress(progress, self)


class _LoggedProgress(Progress):
    def __init__(self, shown: Progress, log: JobLog):
        self._shown, self._log = shown, log

    def bar(self, total: int | None, unit: str, description: str, *, leave: bool = True, initial: int = 0,
            delay: float = 0.0) -> Bar:
        inner = self._shown.bar(total, unit, description, leave=leave, initial=initial, delay=delay)
        return _LoggedBar(inner, self._log, description, unit)

    def note(self, text: str) -> None:
        self._shown.note(text)

    def info(self, text: str) -> None:
        self._shown.info(text)


class _LoggedBar:
    def __init__(self, inner: Bar, log: JobLog, description: str, unit: str):
        self._inner, self._log, self._description, self._unit = inner, log, description, unit
        self._done = 0
        self._started = time.monotonic()

    def update(self, n: int = 1) -> None:
        self._done += n
        self._inner.update(n)

    @property
    def total(self) -> int | None:
        return self._inner.total

    @total.setter
    def total(self, total: int | None) -> None:
        self._inner.total = total

    def refresh(self) -> None:
        self._inner.refresh()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._inner.set_postfix_str(s, refresh=refresh)

    def close(self) -> None:
        self._inner.close()
        if self._done:
            self._log.write("step", step=self._description, done=self._done, unit=self._unit,
                            seconds=round(time.monotonic() - self._started, 3))


def read_log(root: Path, tail_bytes: int | None = None) -> Iterator[dict]:
    """The lines of a job's log as dicts, oldest first (only those in its last ``tail_bytes``, when given);
    a line that is not JSON (cut short by a crash) is passed over."""
    path = root / LOG_NAME
    try:
        with open(path, "rb") as handle:
            if tail_bytes is not None and path.stat().st_size > tail_bytes:
                handle.seek(-tail_bytes, os.SEEK_END)
                handle.readline()  # the rest of a line cut by the seek
            data = handle.read()
    except FileNotFoundError:
        return
    for line in data.splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield record


def last_run(root: Path) -> dict | None:
    """The last run of the job, from its log: its ``run_started`` line's time, and its ``run_ended`` line's
    fields when it has one (none: the run was killed, or is still going). None when the log names no run."""
    started: dict | None = None
    ended: dict | None = None
    for record in read_log(root, TAIL_BYTES):
        if record.get("event") == "run_started":
            started, ended = record, None
        elif record.get("event") == "run_ended" and started is not None and record.get("run") == started.get("run"):
            ended = record
    if started is None:
        return None
    run = {"run": started.get("run"), "started": started.get("time")}
    if ended is not None:
        run.update(ended=ended.get("time"), exit_status=ended.get("exit_status"), error=ended.get("error"))
    return run
