"""``verify``: what a job sent against what PostHog's query API holds, end to end with real processes.

The local server (``serve``) stands in for PostHog: its query endpoint answers over what it accepted, with a
``lose`` fault (a 200 that keeps only part of a batch) and an ingestion lag to rehearse with. The query API's
refusals (401/403/404/429) come from a stand-in HTTP server on 127.0.0.1 scripted with PostHog's answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from posthog_migrate.checkpoint import CRASH_EXIT_CODE, CRASH_POINT_VARIABLE, read_json

from .conftest import TEST_API_KEY, cli_environment, make_rows, run_cli, write_jsonl

PERSONAL_KEY = "phx_personal_key_that_must_never_be_written_0123456789"


def _environment(**extra: str) -> dict[str, str]:
    return cli_environment(POSTHOG_API_KEY=TEST_API_KEY, POSTHOG_PERSONAL_API_KEY=PERSONAL_KEY, **extra)


class _Serve:
    """``posthog-migrate serve`` as a process of its own, on a free port."""

    def __init__(self, folder: Path, *options: str):
        self.out = folder / "received.jsonl"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "posthog_migrate", "serve", "--port", "0", "--out", str(self.out), *options],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        assert "Capture endpoint at" in line, line + self.process.stderr.read()
        self.url = line.split(" at ", 1)[1].split(" ", 1)[0]

    def received(self) -> list[dict]:
        return [orjson.loads(line) for line in self.out.read_bytes().splitlines() if line.strip()]

    def stop(self) -> str:
        self.process.terminate()
        output, errors = self.process.communicate(timeout=30)
        return output + errors


@pytest.fixture
def serve(tmp_path):
    servers: list[_Serve] = []

    def start(*options: str) -> _Serve:
        servers.append(_Serve(tmp_path, *options))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _groups(events: list[dict]) -> Counter:
    """Distinct uuids per (UTC day, event), as PostHog counts them."""
    return Counter((day, name) for day, name, _ in {(e["timestamp"][:10], e["event"], e["uuid"]) for e in events})


def _verify(tmp_path: Path, *options: str, job: str = "lossy") -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / f"report-{time.monotonic_ns()}.json"
    result = run_cli(["verify", job, "--project-id", "5", "--json", str(report), *options], tmp_path, _environment())
    assert report.exists(), result.stderr
    return result, json.loads(report.read_text())


def test_verify_finds_exactly_what_a_lossy_server_lost_and_resend_missing_repairs_it(tmp_path, serve):
    rows = make_rows(1500, days=6)
    write_jsonl(tmp_path / "events.jsonl", rows)
    # Two of the 15 batches (each 100 events of one part of a day) are answered 200 but kept only in part, or not
    # at all: the groups of those days fall short, the other days' groups are whole.
    server = serve(*[arg for number in range(15) for arg in ("--fault", "lose" if number in (2, 11) else "ok")],
                   "--seed", "11")
    run = run_cli(["run", "events.jsonl", "--host", server.url, "--job", "lossy", "--batch-size", "100",
                   "--concurrency", "2", "--rate", "0", "-q"], tmp_path, _environment())
    assert run.returncode == 0, run.stderr
    sent = _groups([{"timestamp": row["timestamp"][:10], "event": row["event"], "uuid": row["insert_id"]}
                    for row in rows])
    found = _groups(server.received())
    lost = {group: sent[group] - found[group] for group in sent if found[group] < sent[group]}
    assert lost and len(lost) < len(sent)  # something to find, and groups that are whole beside it

    first, report = _verify(tmp_path, "--wait", "0")
    assert first.returncode == 4, first.stderr
    short = {(group["day"], group["event"]): group["missing"] for group in report["groups"] if group["missing"]}
    assert short == lost
    assert report["schema"] == 1 and report["job"]["id"] == "lossy" and report["exit_status"] == 4
    assert report["total"] == {"sent": len(rows), "found": len(rows) - sum(lost.values()),
                               "missing": sum(lost.values()), "extra": 0}
    assert {(group["day"], group["event"]): (group["sent"], group["found"], group["extra"])
            for group in report["groups"]} == {group: (count, count - lost.get(group, 0), 0)
                                               for group, count in sent.items()}
    assert all(type(value) is int for group in report["groups"] for key, value in group.items()
               if key not in ("day", "event"))
    assert all(type(report["people"][key]) is int for key in ("pairs_checked", "pairs_not_merged"))
    assert "Not all landed" in first.stdout and "--resend-missing" in first.stdout

    # The resend is killed after its second checkpoint, then the same command finishes it and verifies again.
    before = len(server.received())
    resend = ["--wait", "0", "--resend-missing", "--batch-size", "50", "--concurrency", "1"]
    killed = run_cli(["verify", "lossy", "--project-id", "5", *resend], tmp_path,
                     _environment(**{CRASH_POINT_VARIABLE: "after-checkpoint@2"}))
    assert killed.returncode == CRASH_EXIT_CODE, killed.stdout + killed.stderr
    repair, report = _verify(tmp_path, *resend)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert "Resuming the resend that was stopped" in repair.stderr
    assert report["total"]["missing"] == 0 and report["total"]["extra"] == 0
    # Only the short groups went again, byte-identical.
    resent = server.received()[before:]
    in_lost_groups = sum(sent[group] for group in lost)
    assert {(event["timestamp"][:10], event["event"]) for event in resent} == set(lost)
    assert len({event["uuid"] for event in resent}) == in_lost_groups
    # Each event once: the resumed resend sent only what came after the killed one's checkpoint.
    assert report["resent"]["events"] == len(resent) == in_lost_groups
    assert report["resent"]["requests"] == report["resent"]["batches"] - 2
    first_copies = {event["uuid"]: event for event in server.received()[:before]}
    assert all(first_copies[event["uuid"]] == event for event in resent if event["uuid"] in first_copies)

    again, report = _verify(tmp_path, "--wait", "0")
    assert again.returncode == 0 and "Verified" in again.stdout
    assert report["total"] == {"sent": len(rows), "found": len(rows), "missing": 0, "extra": 0}

    # The personal key went nowhere: not in the work directory, the reports, nor anything printed.
    printed = "".join(result.stdout + result.stderr for result in (run, first, killed, repair, again))
    assert PERSONAL_KEY not in printed + server.stop()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PERSONAL_KEY.encode() not in path.read_bytes(), path


def test_a_lagging_server_makes_verify_wait_then_pass(tmp_path, serve):
    write_jsonl(tmp_path / "events.jsonl", make_rows(400, days=3))
    server = serve("--ingestion-lag", "2")
    run = run_cli(["run", "events.jsonl", "--host", server.url, "--job", "lossy", "--rate", "0", "-q"], tmp_path,
                  _environment())
    assert run.returncode == 0, run.stderr
    result, report = _verify(tmp_path, "--wait", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["total"]["missing"] == 0 and report["gave_up_waiting"] is None
    assert report["waited_seconds"] >= 1
    assert "not found yet" in result.stderr  # the wait is shown as it happens

    # With no time to wait, the same lag is reported as missing events, and when verify gave up.
    server_without_time = serve("--ingestion-lag", "30")
    run = run_cli(["run", "events.jsonl", "--host", server_without_time.url, "--job", "lagging", "--rate", "0",
                   "-q"], tmp_path, _environment())
    result, report = _verify(tmp_path, "--wait", "1", job="lagging")
    assert result.returncode == 4 and report["total"]["missing"] == 400
    assert "ran out" in report["gave_up_waiting"]


def _exported(number: int, event: str, distinct_id: str, anon_distinct_id: str | None = None) -> dict:
    """An event as PostHog exports it (passed through as it is: its merges are the ones it asks for)."""
    properties = {"$anon_distinct_id": anon_distinct_id} if anon_distinct_id else {}
    return {"uuid": f"0190a000-0000-7000-8000-{number:012d}", "event": event, "distinct_id": distinct_id,
            "timestamp": f"2024-05-02T10:{number:02d}:00Z", "properties": properties, "team_id": 1}


def test_person_checks_catch_the_merges_posthog_refuses(tmp_path, serve):
    """A device identified by two users joins the first; PostHog refuses the second merge (both persons are
    identified by then). A merge through an id PostHog calls illegal is not even asked for: the job sends that
    $identify without its $anon_distinct_id, so there is nothing to refuse."""
    rows = [_exported(1, "$pageview", "dev-shared"), _exported(2, "$identify", "alice", "dev-shared"),
            _exported(3, "$pageview", "bob"), _exported(4, "$identify", "bob", "dev-shared"),
            _exported(5, "$identify", "carol", "anonymous"), _exported(6, "$identify", "dave", "dev-dave")]
    write_jsonl(tmp_path / "export.jsonl", rows)
    server = serve()
    run = run_cli(["run", "export.jsonl", "--format", "posthog", "--host", server.url, "--job", "people",
                   "--concurrency", "1", "--rate", "0", "-q"], tmp_path, _environment())
    assert run.returncode == 0, run.stderr
    result, report = _verify(tmp_path, "--wait", "0", job="people")
    assert result.returncode == 4, result.stdout + result.stderr
    assert report["total"]["missing"] == 0
    people = report["people"]
    assert (people["pairs_checked"], people["pairs_not_merged"]) == (3, 1)  # alice, bob and dave's; not carol's
    [refused] = people["not_merged"]
    assert (refused["event"], refused["distinct_id"], refused["other_id"]) == ("$identify", "bob", "dev-shared")
    assert "'alice'" in refused["reason"] and "cannot_merge_already_identified" in refused["reason"]
    assert people["without_person"] == 0 and people["distinct_ids_checked"] == 5  # the events' distinct ids
    assert "$identify 'bob' ← 'dev-shared': not the same person" in result.stdout
    assert "Not all landed: 1 merge not made." in result.stdout


def test_a_merge_through_an_illegal_id_is_named_and_the_local_server_refuses_the_same_ids():
    """A job prepared by an earlier version may have sent a merge through an id PostHog calls illegal: verify says
    so. The local server, which imports nothing of the pipeline, keeps its own copy of PostHog's rule: the same."""
    from posthog_migrate.capture.persons import is_illegal_distinct_id
    from posthog_migrate.distinct_ids import CASE_INSENSITIVE_ILLEGAL_IDS, CASE_SENSITIVE_ILLEGAL_IDS, is_illegal_id
    from posthog_migrate.ledger import MergeClaim
    from posthog_migrate.verification import _likely_reason

    reason = _likely_reason(MergeClaim("$create_alias", "carol", " null"), [])
    assert reason is not None and "' null'" in reason and "cannot_merge_with_illegal_distinct_id" in reason
    assert _likely_reason(MergeClaim("$identify", "carol", "dev-carol"), ["carol"]) is None

    listed = CASE_INSENSITIVE_ILLEGAL_IDS + CASE_SENSITIVE_ILLEGAL_IDS
    spellings = [form for text in listed for form in (text, text.upper(), text.title(), f"'{text}'", f'"{text}"',
                                                      f" {text} ", f"x{text}")]
    for text in [*spellings, "", " ", "nan", "user-1", "00", "'null", "[object object]"]:
        assert is_illegal_distinct_id(text) == is_illegal_id(text.strip()), repr(text)


def test_the_ledger_follows_the_checkpoint_through_a_crash_and_a_resume(tmp_path, capture_server):
    """Killed mid-send, the job counts exactly what its checkpoint covers; resumed (what was in flight sent again), it
    counts every event once, and PostHog's distinct counts match it."""
    rows = make_rows(3000, days=4)
    write_jsonl(tmp_path / "events.jsonl", rows)
    # Which batches a checkpoint covers depends on when the acknowledgements arrived (the checkpoint is written
    # for whatever was acknowledged meanwhile): a checkpoint that fell on a window's end is tried again further on.
    for attempt, crash_at in enumerate((5, 7, 9, 11)):
        job = f"crashy-{attempt}"
        command = ["run", "events.jsonl", "--host", capture_server.url, "--job", job, "--batch-size", "50",
                   "--concurrency", "4", "--rate", "0", "-q"]
        crashed = run_cli(command, tmp_path, _environment(**{CRASH_POINT_VARIABLE: f"after-checkpoint@{crash_at}"}))
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
        state = read_json(tmp_path / ".posthog-migrate" / job / "state.json")["send"]
        assert not state["finished"]
        if state["next_seq"] > state["window_first_seq"]:
            break  # stopped inside a window: some of its batches acknowledged, not all
    else:
        pytest.fail("every checkpoint fell on a window's end")

    partial, report = _verify(tmp_path, "--api-host", capture_server.url, "--wait", "0", job=job)
    assert report["total"]["sent"] == state["events_sent"]  # exactly the checkpoint's, window batches included
    assert report["total"]["missing"] == 0  # what the checkpoint counts arrived; the rest is not the job's yet

    resumed = run_cli(command, tmp_path, _environment())
    assert resumed.returncode == 0, resumed.stderr
    job_id = report["job"]["id"]
    received = [event for event in capture_server.events if event["properties"]["$import_job_id"] == job_id]
    # Acknowledged batches are not sent again; batches in flight at the kill may have landed unacknowledged and
    # go again (how many depends on timing): each event at least once, and verify counts each exactly once.
    assert len({event["uuid"] for event in received}) == len(rows) <= len(received)
    final, report = _verify(tmp_path, "--api-host", capture_server.url, "--wait", "0", job=job)
    assert final.returncode == 0, final.stdout
    assert report["total"] == {"sent": len(rows), "found": len(rows), "missing": 0, "extra": 0}


class _QueryStandIn(ThreadingHTTPServer):
    """PostHog's query API as far as its refusals go: answers ``script`` in order, then forwards to ``upstream``."""

    def __init__(self, script: list[tuple[int, dict, dict]], upstream: str):
        self.script, self.upstream, self.authorizations = list(script), upstream, []
        super().__init__(("127.0.0.1", 0), _StandInHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _StandInHandler(BaseHTTPRequestHandler):
    server: _QueryStandIn

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.authorizations.append(self.headers.get("Authorization"))
        if self.server.script:
            status, document, headers = self.server.script.pop(0)
            payload = json.dumps(document).encode()
        else:
            forwarded = urllib.request.Request(self.server.upstream + self.path, data=body,
                                               headers={"Authorization": self.headers["Authorization"]})
            with urllib.request.urlopen(forwarded, timeout=10) as answer:
                status, payload, headers = answer.status, answer.read(), {}
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


REFUSALS = {
    401: ({"type": "authentication_error", "code": "authentication_failed",
           "detail": "Personal API key found in request Authorization header is invalid."},
          ["personal API key", "phx_", "query:read", "POSTHOG_PERSONAL_API_KEY"]),
    403: ({"type": "authentication_error", "code": "permission_denied",
           "detail": "API key missing required scope 'query:read'"}, ["project 5", "query:read scope"]),
    404: ({"type": "invalid_request", "code": "not_found", "detail": "Not found."},
          ["no project 5", "/project/", "Project ID", "--api-host"]),
}


def test_each_refusal_says_what_to_fix_and_a_rate_limit_is_waited_out(tmp_path, capture_server):
    write_jsonl(tmp_path / "events.jsonl", make_rows(20))
    assert run_cli(["run", "events.jsonl", "--host", capture_server.url, "--job", "asked", "-q"], tmp_path,
                   _environment()).returncode == 0
    for status, (document, wanted) in REFUSALS.items():
        stand_in = _QueryStandIn([(status, document, {})], capture_server.url)
        result = run_cli(["verify", "asked", "--project-id", "5", "--api-host", stand_in.url], tmp_path,
                         _environment())
        stand_in.shutdown()
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"({status}: {document['detail']}" in result.stderr
        for words in wanted:
            assert words in result.stderr, (status, words)
        assert "Traceback" not in result.stderr and PERSONAL_KEY not in result.stdout + result.stderr
        assert stand_in.authorizations == [f"Bearer {PERSONAL_KEY}"]

    throttled = {"type": "throttled_error", "code": "throttled", "detail": "Request was throttled."}
    stand_in = _QueryStandIn([(429, throttled, {"Retry-After": "1"})], capture_server.url)
    started = time.monotonic()
    result = run_cli(["verify", "asked", "--project-id", "5", "--api-host", stand_in.url, "-q"], tmp_path,
                     _environment())
    stand_in.shutdown()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PostHog's query API is rate limiting: waiting 1s before asking again" in result.stderr
    assert time.monotonic() - started >= 1

    no_key = run_cli(["verify", "asked", "--project-id", "5"], tmp_path, cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
    assert no_key.returncode == 2 and "POSTHOG_PERSONAL_API_KEY" in no_key.stderr and "query:read" in no_key.stderr
    no_project = run_cli(["verify", "asked"], tmp_path, _environment())
    assert no_project.returncode == 2 and "--project-id" in no_project.stderr and "/project/" in no_project.stderr
    unsent = run_cli(["verify", "nothing-here"], tmp_path, _environment())
    assert unsent.returncode == 2 and "no job at" in unsent.stderr


def test_a_local_job_is_verified_with_no_key_and_from_python(tmp_path, monkeypatch):
    import posthog_migrate as pm

    write_jsonl(tmp_path / "events.jsonl", make_rows(300))
    monkeypatch.chdir(tmp_path)
    pm.run(str(tmp_path / "events.jsonl"), host="local", job="here", rate=0)
    result = run_cli(["verify", "here", "--json"], tmp_path, cli_environment())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == {"sent": 300, "found": 300, "missing": 0, "extra": 0}
    for _ in range(2):  # the second call after verify's own modules were imported: pm.verify is still the function
        report = pm.verify("here")
        assert (report.exit_status, report.sent, report.missing) == (0, 300, 0)
    assert "Verified" in str(report)
