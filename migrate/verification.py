"""``verify``: prove that what a job sent landed in PostHog, and send again what did not. (Not named verify.py: a
submodule ``posthog_migrate.verify``, once imported, would hide the function ``pm.verify``.)

A 200 from capture means PostHog *received* a batch, not that its events are in the project: they can still
be dropped downstream (a billing quota, a wrong project token, an ingestion fault, a proxy that answered for
PostHog). The job knows exactly what it sent (``ledger``: distinct events per UTC day and event name, from
its checkpoint), so verify asks PostHog's query API (``query_api``) for the same counts, a month of the job
at a time, and compares; then asks whether a sample of the merges the job asked for (``$identify``,
``$create_alias``) were made and whether sampled distinct ids have a person. Recently sent events may not be
queryable yet: while events are missing, verify asks again, up to ``wait`` seconds, and stops early once
the counts have stopped rising for a while. ``resend_missing`` sends the short groups again (``resend``),
then verifies again.

A job sent to the built-in server (``--host local``) is verified against a local server that verify starts
over what that job's server received (``WORKDIR/local-capture/events.jsonl``); no key or project id is needed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from posthog_migrate.capture.query import counts_query, persons_query
from posthog_migrate.checkpoint import JobState, read_json
from posthog_migrate.config import COMMAND_LINE, LOCAL_API_KEY, LOCAL_HOST, Spelling, resolve_settings
from posthog_migrate.distinct_ids import is_illegal_id
from posthog_migrate.errors import ConfigError, ExitStatus, Interrupted, MigrateError, error_kind
from posthog_migrate.job import JobLock
from posthog_migrate.joblog import JobLog
from posthog_migrate.ledger import Ledger, MergeClaim, job_ledger
from posthog_migrate.query_api import QueryClient, api_host_of, personal_api_key
from posthog_migrate.render import Progress, human_duration
from posthog_migrate.results import GroupCheck, PairCheck, VerifyResult
from posthog_migrate.sender import SendCounters

DEFAULT_SAMPLE = 200
DEFAULT_WAIT_SECONDS = 600.0
# Verify stops waiting early once the counts have not risen for a fifth of the wait, and at least this long.
MIN_STALL_SECONDS = 120.0
FIRST_RECHECK_SECONDS = 2.0
MAX_RECHECK_SECONDS = 30.0
# Rows asked for per counts query (HogQL caps a LIMIT at 50,000), and distinct ids per persons query.
COUNT_ROWS_PER_QUERY = 10_000
IDS_PER_QUERY = 100
# The personal key the local server is asked with when verify starts it (it checks only the phx_ prefix).
LOCAL_PERSONAL_KEY = "phx_local_verify"
LOCAL_PROJECT_ID = "1"


@dataclass
class _Target:
    """Where verify asks (the query API) and where a resend goes (capture)."""

    api_host: str
    project_id: str
    personal_key: str
    capture_url: str
    host_label: str  # what the job's checkpoint calls its target: "local" or the capture URL


def verify_job(root: Path, *, project_id: str | None = None, api_host: str | None = None,
               sample: int = DEFAULT_SAMPLE, wait: float = DEFAULT_WAIT_SECONDS, resend_missing: bool = False,
               send_options: dict[str, Any] | None = None, progress: Progress | None = None,
               stop: threading.Event | None = None, spelling: Spelling = COMMAND_LINE,
               interface: str = "python") -> VerifyResult:
    """Verify the job in ``root`` against PostHog (``resend_missing``: send the missing groups again, then verify
    again). Returns the VerifyResult (exit status 0 or 4); raises ConfigError (a job that sent nothing, a missing
    key or project id), QueryFailed (PostHog refused the questions) or Interrupted. ``send_options`` are run's
    settings for the resend (``api_key``, ``rate``, ``concurrency``...)."""
    progress = progress or Progress()
    stop = stop or threading.Event()
    if sample < 0 or wait < 0:
        raise ConfigError(f"{spelling.name('sample' if sample < 0 else 'wait')} must be 0 or more")
    manifest, host_label = _sent_job(root)
    result = VerifyResult(root, job_id=manifest.get("job_id") or root.name)
    personal_key = LOCAL_PERSONAL_KEY if host_label == LOCAL_HOST else personal_api_key()
    log = JobLog(root, secret=personal_key)
    started = time.monotonic()
    log.write("verify_started", interface=interface, api_host=api_host, project_id=project_id, sample=sample,
              wait_seconds=wait, resend_missing=resend_missing)
    try:
        with JobLock(root), _target(root, host_label, api_host, project_id, personal_key, spelling) as target:
            local = target.host_label == LOCAL_HOST and api_host is None
            result.api_host = f"the local server over {root / 'local-capture'}" if local else target.api_host
            result.project_id = target.project_id
            _Verification(root, result, target, sample, wait, progress, stop).run(
                resend_missing, send_options or {}, spelling, log)
    except KeyboardInterrupt:
        stop.set()
        raise _ended(log, result, started, Interrupted("interrupted; run verify again (a resend resumes)")) from None
    except MigrateError as error:
        raise _ended(log, result, started, error) from None
    result.exit_status = ExitStatus.DONE if result.landed else ExitStatus.NOT_ALL_LANDED
    _ended(log, result, started, None)
    return result


def _ended(log: JobLog, result: VerifyResult, started: float, error: MigrateError | None) -> MigrateError | None:
    if error is not None:
        result.error, result.exit_status = error, ExitStatus(error.exit_code)
        error.result = result
    log.write("verify_ended", exit_status=int(result.exit_status), seconds=round(time.monotonic() - started, 3),
              total={"sent": result.sent, "found": result.found, "missing": result.missing, "extra": result.extra},
              pairs_not_merged=len(result.pairs_not_merged), without_person=len(result.without_person),
              resent=result.resent, error=None if error is None else {"type": error_kind(error), "message": str(error)})
    return error


def _sent_job(root: Path) -> tuple[dict, str]:
    """The job's manifest and where it was sent; ConfigError when it is not a job that sent anything."""
    if not root.is_dir():
        raise ConfigError(f"no job at {root}")
    manifest = read_json(root / "manifest.json")
    sent = JobState(root / "state.json").send
    if manifest is None or not (sent.batches_sent or sent.finished) or not sent.host:
        raise ConfigError(f"job {root} has sent nothing yet: run it first (verify checks what a job sent; a dry run "
                          "sends nothing)")
    return manifest, sent.host


@contextlib.contextmanager
def _target(root: Path, host_label: str, api_host: str | None, project_id: str | None, personal_key: str,
            spelling: Spelling) -> Iterator[_Target]:
    """Where to ask: the job's PostHog (its API host derived from its capture host), or, for a job sent to the
    built-in server, a local server started over what that server received."""
    if host_label == LOCAL_HOST and api_host is None:
        from posthog_migrate.capture import CaptureServer

        received = root / "local-capture" / "events.jsonl"
        with CaptureServer(out_path=received, keep_in_memory=False) as server:
            yield _Target(server.url, project_id or LOCAL_PROJECT_ID, personal_key, server.url, LOCAL_HOST)
        return
    if not project_id:
        raise ConfigError(f"say which project to ask: {spelling.name('project_id')} N, the number after /project/ in "
                          "the PostHog app's URLs (also under Settings → Project → Project ID)")
    if host_label == LOCAL_HOST:
        raise ConfigError(f"job {root} was sent to the built-in server: verify it without "
                          f"{spelling.name('api_host')} (a local server is started over what it received)")
    yield _Target((api_host or api_host_of(host_label)).rstrip("/"), str(project_id), personal_key, host_label,
                  host_label)


class _Verification:
    """One verify of one job: the ledger, the counts (waiting for ingestion), the resend, the person checks."""

    def __init__(self, root: Path, result: VerifyResult, target: _Target, sample: int, wait: float,
                 progress: Progress, stop: threading.Event):
        self.root, self.result, self.target = root, result, target
        self.sample, self.wait, self.progress, self.stop = sample, wait, progress, stop
        self.client = QueryClient(target.api_host, target.project_id, target.personal_key, progress, stop)
        self.ledger = Ledger()
        self.found: dict[tuple[str, str], int] = {}

    def run(self, resend_missing: bool, send_options: dict[str, Any], spelling: Spelling, log: JobLog) -> None:
        from posthog_migrate.resend import unfinished_resends

        if resend_missing and unfinished_resends(self.root):
            self.progress.info("Resuming the resend that was stopped")
            self._resend([], send_options, spelling, log)
        self.ledger = job_ledger(self.root, self.sample)
        self.progress.info(f"Job {self.root}: {self.ledger.total:,} events sent; asking {self.target.api_host}, "
                           f"project {self.target.project_id}")
        self._count_until_settled()
        short = [(group.day, group.event) for group in self.result.short_groups]
        if resend_missing and short:
            self._resend(short, send_options, spelling, log)
            self.result.gave_up_waiting = None
            self._count_until_settled()
        self._check_people()
        self.result.queries = self.client.requests

    # --- counts ----------------------------------------------------------------------------------------

    def _count_until_settled(self) -> None:
        """Ask for the counts; while events are missing, ask again (the months that are short) until they are
        all there, ``wait`` runs out, or the counts stop rising for a while."""
        ledger = self.ledger
        self.found = {}
        self._count_months(_months(ledger))
        started = last_rise = time.monotonic()
        best = self._found_so_far()
        stall = max(MIN_STALL_SECONDS, self.wait / 5)
        pause = FIRST_RECHECK_SECONDS
        bar = self.progress.bar(ledger.total, "events", "found in PostHog", initial=best, leave=False)
        if self._missing() and self.wait:
            self.progress.note(f"{self._missing():,} of {ledger.total:,} events not found yet: PostHog may still be "
                               f"ingesting them; asking again while they arrive, for up to {human_duration(self.wait)}")
        try:
            while self._missing():
                now = time.monotonic()
                left = started + self.wait - now
                if left <= 0:
                    if self.wait:
                        self.result.gave_up_waiting = (f"--wait ({human_duration(self.wait)}) ran out with "
                                                       f"{self._missing():,} events still missing")
                    break
                if now - last_rise >= stall:
                    self.result.gave_up_waiting = (f"the counts have not risen for {human_duration(now - last_rise)}, "
                                                   f"{self._missing():,} events still missing")
                    break
                step = min(pause, left)
                bar.set_postfix_str(f"{self._missing():,} missing; asking again in {step:.0f} s, gives up waiting in "
                                    f"{human_duration(left)}")
                if self.stop.wait(step):
                    raise Interrupted
                self.result.waited_seconds += step
                pause = min(pause * 2, MAX_RECHECK_SECONDS)
                self._count_months(_months(ledger, only_days={group[0] for group in self._short_groups()}))
                found = self._found_so_far()
                if found > best:
                    bar.update(found - best)
                    best, last_rise = found, time.monotonic()
        finally:
            bar.close()
        self._record_groups()

    def _count_months(self, months: list[tuple[str, str]]) -> None:
        """Ask PostHog for the counts of each month [start, end), a page of rows at a time."""
        for start, end in months:
            for key in [key for key in self.found if start <= key[0] < end]:
                del self.found[key]
            offset = 0
            while True:
                rows = self.client.rows(counts_query(self.result.job_id, start, end, COUNT_ROWS_PER_QUERY, offset))
                for day, event, found in rows:
                    self.found[(str(day)[:10], str(event))] = int(found)
                if len(rows) < COUNT_ROWS_PER_QUERY:
                    break
                offset += COUNT_ROWS_PER_QUERY

    def _short_groups(self) -> list[tuple[str, str]]:
        return [key for key, sent in self.ledger.groups.items() if self.found.get(key, 0) < sent]

    def _missing(self) -> int:
        return sum(max(sent - self.found.get(key, 0), 0) for key, sent in self.ledger.groups.items())

    def _found_so_far(self) -> int:
        return self.ledger.total - self._missing()

    def _record_groups(self) -> None:
        keys = sorted(set(self.ledger.groups) | set(self.found))
        self.result.groups = [GroupCheck(day, event, self.ledger.groups.get((day, event), 0),
                                         self.found.get((day, event), 0)) for day, event in keys]

    # --- resend ----------------------------------------------------------------------------------------

    def _resend(self, groups: list[tuple[str, str]], send_options: dict[str, Any], spelling: Spelling,
                log: JobLog) -> None:
        from posthog_migrate.resend import resend
        from posthog_migrate.runner import target_api_key

        target = self.target
        settings = resolve_settings({**send_options, "host": target.host_label}, spelling)
        api_key = LOCAL_API_KEY if target.host_label == LOCAL_HOST else target_api_key(settings, spelling)
        log.write("phase", phase="resend", state="started", groups=len(groups))
        outcomes = resend(self.root, groups, settings, api_key, target.capture_url, target.host_label,
                          self.progress, self.stop, SendCounters())
        resent = {"events": 0, "batches": 0, "requests": 0}
        for outcome in outcomes:
            resent["events"] += outcome.progress.events_sent
            resent["batches"] += outcome.progress.batches_sent
            resent["requests"] += outcome.counters.requests
        previous = self.result.resent or {}
        self.result.resent = {key: value + previous.get(key, 0) for key, value in resent.items()}
        log.write("phase", phase="resend", state="done", **resent)

    # --- people ----------------------------------------------------------------------------------------

    def _check_people(self) -> None:
        """Whether the sampled merges were made (both ids, one person) and the sampled distinct ids have a person."""
        claims, sampled = self.ledger.claims, self.ledger.distinct_ids
        ids = sorted({claim.distinct_id for claim in claims} | {claim.other_id for claim in claims} | set(sampled))
        person_of: dict[str, str] = {}
        for start in range(0, len(ids), IDS_PER_QUERY):
            chunk = ids[start:start + IDS_PER_QUERY]
            for distinct_id, person_id in self.client.rows(persons_query(chunk, len(chunk))):
                person_of[str(distinct_id)] = str(person_id)
        claimers: defaultdict[str, list[str]] = defaultdict(list)
        for claim in claims:
            claimers[claim.other_id].append(claim.distinct_id)
        self.result.pairs = []
        for claim in claims:
            person = person_of.get(claim.distinct_id)
            merged = person is not None and person == person_of.get(claim.other_id)
            self.result.pairs.append(PairCheck(claim.event, claim.distinct_id, claim.other_id, merged,
                                               None if merged else _likely_reason(claim, claimers[claim.other_id])))
        self.result.distinct_ids_checked = len(sampled)
        self.result.without_person = [distinct_id for distinct_id in sampled if distinct_id not in person_of]


def _likely_reason(claim: MergeClaim, claimers: list[str]) -> str | None:
    """Why PostHog would have refused this merge, when the job knows. (A job prepared by this version sends no merge
    through an illegal id, but one prepared by an earlier version may have.)"""
    for distinct_id in (claim.distinct_id, claim.other_id):
        if is_illegal_id(distinct_id.strip()):
            return (f"PostHog never merges the id {distinct_id!r}: it is one of the ids it treats as illegal "
                    "(cannot_merge_with_illegal_distinct_id)")
    others = [claimer for claimer in claimers if claimer != claim.distinct_id]
    if others:
        named = ", ".join(repr(other) for other in others[:3])
        return (f"the job also merged {claim.other_id!r} into {named}: an id claimed by two users joins the first, "
                "and PostHog refuses the next merge (cannot_merge_already_identified)")
    return None


def _months(ledger: Ledger, only_days: set[str] | None = None) -> list[tuple[str, str]]:
    """The calendar months of the job's days (of ``only_days`` among them, when given), as [first day, first day
    of the next month): each one query, so that no query scans more than a month."""
    days = sorted({day for day, _ in ledger.groups} if only_days is None else only_days)
    months = sorted({day[:7] for day in days})
    bounds = []
    for month in months:
        first = date.fromisoformat(f"{month}-01")
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        bounds.append((first.isoformat(), following.isoformat()))
    return bounds
