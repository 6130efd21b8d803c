"""Hosts that are not PostHog, or misbehave: nothing counts as sent unless PostHog's capture said so.

Real `posthog-migrate run` processes against real servers on 127.0.0.1 (the capture server's faults:
web pages, redirects, quota limits, refusing everything, errors echoing the request, a closed port):
the exit code, the message, the checkpoint left behind, the rejects file, and a resume that sends
everything exactly once.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest
from posthog_migrate.answers import KEY_PLACEHOLDER, Verdict, judge_answer, scrub_key
from posthog_migrate.batches import Batch
from posthog_migrate.capture import CaptureServer, FaultPlan
from posthog_migrate.capture.faults import Fault
from posthog_migrate.errors import ConfigError, SendFailed
from posthog_migrate.refusals import MAX_HELD_BATCHES, WHOLESALE_STREAK
from posthog_migrate.sender import SendCounters, Sender, SendSettings
from posthog_migrate.spool import make_tiebreak

from .conftest import TEST_API_KEY, cli_environment, make_rows, run_cli, write_csv

FAST = ["--rate", "0", "--retry-delay", "0.05", "-q"]
EVENTS = 2_000


def _run(tmp_path: Path, host: str, *args: str) -> subprocess.CompletedProcess:
    result = run_cli(["run", "events.csv", "--host", host, "--workdir", "job", *FAST, *args], tmp_path,
                     cli_environment(POSTHOG_API_KEY=TEST_API_KEY), timeout=60)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert TEST_API_KEY not in result.stderr + result.stdout
    return result


def _input(tmp_path: Path, events: int = EVENTS) -> None:
    write_csv(tmp_path / "events.csv", make_rows(events, seed=31))


def _checkpoint(tmp_path: Path) -> dict:
    """The send checkpoint of the job ({} when nothing was ever acknowledged)."""
    state = tmp_path / "job" / "state.json"
    return orjson.loads(state.read_bytes()).get("send", {}) if state.exists() else {}


def _rejects(tmp_path: Path) -> list[dict]:
    path = tmp_path / "job" / "rejects.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def _uuids(server: CaptureServer) -> list[str]:
    return [event["uuid"] for event in server.events]


# --- 1. only PostHog capture's answer acknowledges a batch -----------------------------------------------

@pytest.mark.parametrize(("status", "body"), [
    (200, b'{"status":"Ok"}'), (200, b'{"status": 1}'), (200, b'{"status":"Ok","quota_limited":["recordings"]}'),
    (200, b'{"status": 1, "anything": ["else"]}'), (204, b""),
])
def test_capture_answers_are_accepted(status, body):
    assert judge_answer(status, {}, body, "https://us.i.posthog.com", TEST_API_KEY).verdict is Verdict.ACCEPTED


@pytest.mark.parametrize(("status", "body"), [
    (200, b"<html><body>Welcome</body></html>"), (200, b""), (200, b"Ok"), (200, b'{"status": 0}'),
    (200, b'{"status": true}'), (200, b'{"status": "ok"}'), (200, b'[{"status": "Ok"}]'), (201, b'{"status":"Ok"}'),
    (202, b""), (204, b"<html></html>"), (300, b""), (304, b""),
])
def test_anything_else_stops_the_run_quoting_the_body(status, body):
    answer = judge_answer(status, {}, body, "https://us.posthog.com", TEST_API_KEY)
    assert answer.verdict is Verdict.FATAL
    assert "not PostHog capture's answer" in answer.message
    assert "--host https://us.i.posthog.com" in answer.message  # the app URL was given: the fix is named


def test_the_quote_is_the_first_200_characters_of_the_body():
    page = b"<html>" + b"x" * 1_000 + b"</html>"
    answer = judge_answer(200, {}, page, "http://proxy.test", TEST_API_KEY)
    assert '"<html>' + "x" * 194 + '…"' in answer.message
    assert "proxy" in answer.message


def test_a_web_page_answered_200_is_not_sent_and_the_run_resumes(tmp_path):
    _input(tmp_path)
    with CaptureServer(faults=FaultPlan.parse(["ok", "html"])) as server:
        stopped = _run(tmp_path, server.url, "--batch-size", "500", "--concurrency", "1")
        assert stopped.returncode == 1
        assert '"<!DOCTYPE html> <html><head><title>Sign in</title>' in stopped.stderr
        assert "not PostHog capture's answer" in stopped.stderr and "proxy" in stopped.stderr
        assert "https://us.i.posthog.com" in stopped.stderr
        checkpoint = _checkpoint(tmp_path)
        assert (checkpoint["next_seq"], checkpoint["events_sent"], checkpoint["finished"]) == (1, 500, False)
        resumed = _run(tmp_path, server.url, "--batch-size", "500", "--concurrency", "1")
        assert resumed.returncode == 0, resumed.stderr
        uuids = _uuids(server)
    assert len(uuids) == len(set(uuids)) == EVENTS  # each event accepted exactly once


def test_a_quota_limited_answer_stops_resumably(tmp_path):
    _input(tmp_path)
    with CaptureServer(faults=FaultPlan.parse(["ok", "quota"])) as server:
        stopped = _run(tmp_path, server.url, "--batch-size", "500", "--concurrency", "1")
        assert stopped.returncode == 1
        assert "billing quota" in stopped.stderr and "dropping these events" in stopped.stderr
        assert "run the same command again to resume" in stopped.stderr
        assert _checkpoint(tmp_path)["next_seq"] == 1
        resumed = _run(tmp_path, server.url, "--batch-size", "500", "--concurrency", "1")
        assert resumed.returncode == 0, resumed.stderr
        uuids = _uuids(server)
    assert len(uuids) == len(set(uuids)) == EVENTS


# --- 2. redirects are never followed ------------------------------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_stops_the_run_naming_the_host_to_use_and_that_host_continues_the_job(tmp_path, make_server,
                                                                                         status):
    _input(tmp_path)
    target = make_server()
    redirecting = make_server(rate=1.0, kinds=(f"{status}:location={target.url}",))
    stopped = _run(tmp_path, redirecting.url)
    assert stopped.returncode == 1
    assert f"{redirecting.url} redirects to {target.url}: run with --host {target.url}" in stopped.stderr
    assert target.requests == []  # neither a bodiless GET nor the body and key re-posted
    assert _checkpoint(tmp_path) == {}
    moved = _run(tmp_path, target.url)
    assert moved.returncode == 0, moved.stderr
    uuids = _uuids(target)
    assert len(uuids) == len(set(uuids)) == EVENTS


def test_a_redirect_to_a_page_that_is_not_capture_says_so():
    answer = judge_answer(302, {"Location": "/login?next=/batch/"}, b"", "http://wifi.test", TEST_API_KEY)
    assert answer.verdict is Verdict.FATAL
    assert "http://wifi.test/login" in answer.message and "not a capture endpoint" in answer.message


# --- 3. a server that refuses everything --------------------------------------------------------------

@pytest.mark.parametrize("concurrency", [1, 2, 4])
def test_a_server_refusing_everything_stops_after_a_few_requests_and_rejects_nothing(tmp_path, make_server,
                                                                                       concurrency):
    _input(tmp_path, 5_000)
    refusing = make_server(rate=1.0, kinds=("400",))
    started = time.monotonic()
    stopped = _run(tmp_path, refusing.url, "--concurrency", str(concurrency))
    assert time.monotonic() - started < 10
    assert stopped.returncode == 1
    # K refusals in a row, then a probe per held batch, and what the other threads had in flight.
    assert len(refusing.requests) <= WHOLESALE_STREAK + MAX_HELD_BATCHES * (concurrency + 1)
    assert "400 Bad Request (injected fault, request id " in stopped.stderr  # the server's own words
    assert "without marking anything rejected" in stopped.stderr and "resume" in stopped.stderr
    assert _rejects(tmp_path) == [] and _checkpoint(tmp_path) == {}
    good = make_server()
    resumed = _run(tmp_path, good.url, "--concurrency", str(concurrency))
    assert resumed.returncode == 0, resumed.stderr
    assert "5,000 = 5,000 + 0 + 0" in resumed.stdout
    uuids = _uuids(good)
    assert len(uuids) == len(set(uuids)) == 5_000


def _nameless(number: int) -> bytes:
    # The strict capture server refuses a request whose first nameless event is its event 0 with one message.
    return orjson.dumps({"uuid": f"00000000-0000-4000-8000-{number:012d}", "event": "", "distinct_id": f"p{number}",
                         "timestamp": "2024-03-01T00:00:00.000000Z", "properties": {"n": number}})


def _good(number: int) -> bytes:
    return orjson.dumps({"uuid": f"00000000-0000-4000-9000-{number:012d}", "event": "e", "distinct_id": f"q{number}",
                         "timestamp": "2024-03-01T00:00:00.000000Z", "properties": {"n": number}})


def _batch(payloads: list[bytes], seq: int) -> Batch:
    return Batch.from_payloads(seq, seq, payloads, [make_tiebreak(0, i + 1) for i in range(len(payloads))],
                               [0] * len(payloads))


def test_a_held_batch_is_bisected_to_the_end_once_another_batch_is_accepted(capture_server):
    stop = threading.Event()
    sender = Sender(SendSettings(host=capture_server.url, api_key=TEST_API_KEY, retry_base=0.01), SendCounters(),
                    stop)
    all_bad = _batch([_nameless(n) for n in range(32)], seq=0)
    results = []
    thread = threading.Thread(target=lambda: results.append(sender.send(all_bad)))
    thread.start()
    deadline = time.monotonic() + 10
    while sender.refusals.held == 0:  # every request refused alike: the batch is held back, not rejected
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    held_after = len(capture_server.requests)
    assert held_after <= WHOLESALE_STREAK + 1
    assert sender.send(_batch([_good(n) for n in range(10)], seq=1)).rejected == {}
    thread.join(10)
    [result] = results
    # Released by the acceptance: judged one by one, every event really refused.
    assert sorted(result.rejected) == list(range(32))
    assert all("has no event name" in message for message in result.rejected.values())
    assert len(capture_server.requests) > held_after + 10


def test_three_batches_held_back_stop_the_run(capture_server):
    stop = threading.Event()
    sender = Sender(SendSettings(host=capture_server.url, api_key=TEST_API_KEY, retry_base=0.01), SendCounters(),
                    stop)
    outcomes: list[BaseException | None] = []

    def send(seq: int) -> None:
        try:
            sender.send(_batch([_nameless(100 * seq + n) for n in range(32)], seq))
            outcomes.append(None)
        except BaseException as error:  # noqa: BLE001 - the outcome under test
            outcomes.append(error)
            stop.set()  # what the Dispatcher does when a batch fails: the held ones give up too

    threads = [threading.Thread(target=send, args=(seq,)) for seq in range(MAX_HELD_BATCHES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    failures = [outcome for outcome in outcomes if isinstance(outcome, SendFailed)]
    assert len(outcomes) == MAX_HELD_BATCHES and len(failures) == 1
    assert "has no event name" in str(failures[0]) and "without marking anything rejected" in str(failures[0])
    assert capture_server.events == []


# --- 4. the API key never leaves through what a server echoes ----------------------------------------

def test_an_echoed_key_is_scrubbed_from_the_rejects_file(tmp_path):
    _input(tmp_path, 20)
    # batch 0 (4 events), bisected down to each event: 7 requests, each answered with the request echoed
    with CaptureServer(faults=FaultPlan.parse(["400:echo"] * 7)) as server:
        result = _run(tmp_path, server.url, "--batch-size", "4", "--concurrency", "1")
    assert result.returncode == 3, result.stderr
    rejects = _rejects(tmp_path)
    assert len(rejects) == 4 and all(r["reason"] == "server_rejected" for r in rejects)
    assert all(f'"api_key":"{KEY_PLACEHOLDER}"' in r["detail"] for r in rejects)
    for path in (tmp_path / "job").rglob("*"):
        if path.is_file():
            assert TEST_API_KEY.encode() not in path.read_bytes(), path


def test_an_echoed_key_is_scrubbed_from_the_401_message(tmp_path):
    _input(tmp_path, 20)
    with CaptureServer(faults=FaultPlan.parse(["401:echo"])) as server:
        result = _run(tmp_path, server.url)
    assert result.returncode == 1
    assert "refused the project API key" in result.stderr
    assert f'could not process {{"api_key":"{KEY_PLACEHOLDER}"' in result.stderr


def test_scrubbing_catches_the_key_json_escaped_and_cut_off():
    key = 'phc_with"quote'
    assert KEY_PLACEHOLDER in scrub_key(orjson.dumps({"api_key": key}).decode(), key)
    assert 'with\\"quote' not in scrub_key(orjson.dumps({"api_key": key}).decode(), key)
    assert scrub_key(f'bad body {{"api_key":"{TEST_API_KEY[:12]}', TEST_API_KEY).endswith(KEY_PLACEHOLDER)


# --- 5. --host: no credentials, a valid URL ------------------------------------------------------------

def test_credentials_in_the_host_are_refused_before_anything_is_sent(tmp_path, capture_server):
    _input(tmp_path, 20)
    with_credentials = capture_server.url.replace("http://", "http://migrator:s3cret-pass@")
    result = _run(tmp_path, with_credentials)
    assert result.returncode == 2
    assert "remove the user name and password" in result.stderr and f"--host {capture_server.url}" in result.stderr
    assert "s3cret-pass" not in result.stderr + result.stdout
    assert capture_server.requests == []


@pytest.mark.parametrize("host", ["http://[::1", "http://127.0.0.1:port"])
def test_an_invalid_host_url_is_named_with_the_fix(tmp_path, host):
    _input(tmp_path, 20)
    result = _run(tmp_path, host)
    assert result.returncode == 2
    assert f"--host {host!r} is not a valid URL" in result.stderr and "https://us.i.posthog.com" in result.stderr


# --- 22. retries are visible -----------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def test_retries_are_shown_as_they_happen_with_when_the_run_gives_up(tmp_path):
    _input(tmp_path, 20)
    result = _run(tmp_path, f"http://127.0.0.1:{_closed_port()}", "--max-retries", "3", "--concurrency", "1")
    assert result.returncode == 1
    assert "Retrying: connection refused, retry 1/3 in 0.0" in result.stderr
    assert "gives up in about" in result.stderr
    assert "gave up on a batch after 4 attempts" in result.stderr


# --- the capture server's faults for rehearsing all of this ------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    ("html", Fault("html", "html")),
    ("quota", Fault("quota", "quota")),
    ("400:echo", Fault("400:echo", "status", status=400, echo=True)),
    ("503:retry-after=2:echo", Fault("503:retry-after=2:echo", "status", status=503, retry_after="2", echo=True)),
    ("307:location=http://Other.test:8011/Base", Fault("307:location=http://Other.test:8011/Base", "redirect",
                                                       status=307, location="http://Other.test:8011/Base")),
])
def test_the_hostile_fault_specs_parse(spec, expected):
    assert Fault.parse(spec) == expected


@pytest.mark.parametrize("spec", ["302", "302:location=", "200:location=http://x.test", "html:echo"])
def test_a_redirect_fault_needs_a_location(spec):
    with pytest.raises(ConfigError):
        Fault.parse(spec)
