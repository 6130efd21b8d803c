"""The sender against the real capture server on 127.0.0.1, through every fault it can inject."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from posthog_migrate.answers import MAX_RETRY_AFTER_SECONDS, parse_retry_after
from posthog_migrate.batches import Batch, BatchLayout, cut_windows
from posthog_migrate.errors import SendFailed
from posthog_migrate.job import person_hash
from posthog_migrate.sender import (
    Dispatcher,
    FatalResponse,
    Interrupted,
    RateLimiter,
    SendCounters,
    Sender,
    SendSettings,
)
from posthog_migrate.spool import MergeCursor, RunWriter, make_tiebreak, merge_slices

from .conftest import TEST_API_KEY


def _event(n: int, person: str = "p1", **extra) -> bytes:
    return orjson.dumps({
        "uuid": f"00000000-0000-4000-8000-{n:012d}", "event": "e", "distinct_id": person,
        "timestamp": f"2024-03-01T00:00:{n % 60:02d}.000000Z", "properties": {"n": n, **extra},
    })


def _batch(payloads: list[bytes], seq: int = 0, lane: int = 0) -> Batch:
    tiebreaks = [make_tiebreak(0, i + 1) for i in range(len(payloads))]
    return Batch.from_payloads(seq, lane, payloads, tiebreaks, [0] * len(payloads))


def _sender(url: str, **options) -> tuple[Sender, SendCounters, threading.Event]:
    stop = threading.Event()
    counters = SendCounters()
    settings = SendSettings(host=url, api_key=options.pop("api_key", TEST_API_KEY), retry_base=0.01, **options)
    return Sender(settings, counters, stop), counters, stop


def test_accepted_batch_is_gzipped_historical_and_complete(capture_server):
    sender, counters, _ = _sender(capture_server.url)
    result = sender.send(_batch([_event(i) for i in range(10)]))
    assert result.rejected == {} and result.retries == 0
    record = capture_server.requests[0]
    assert record.gzip and record.historical_migration is True and not record.has_sent_at
    assert [e["properties"]["n"] for e in capture_server.events] == list(range(10))
    assert counters.bytes_compressed < counters.bytes_raw


@pytest.mark.parametrize("fault", ["429", "429:retry-after=0", "500", "502", "503", "504", "408", "drop"])
def test_retryable_answers_are_retried_until_accepted(make_server, fault):
    server = make_server([fault, fault])
    sender, counters, _ = _sender(server.url)
    result = sender.send(_batch([_event(1), _event(2)]))
    assert result.retries == 2 and result.rejected == {}
    assert len(server.events) == 2
    assert counters.retries == 2


def test_retry_after_pauses_every_thread_then_proceeds(make_server):
    server = make_server(["429:retry-after=1"])
    sender, _, _ = _sender(server.url)
    started = time.monotonic()
    sender.send(_batch([_event(1)]))
    assert time.monotonic() - started >= 0.9  # the server's Retry-After was honoured
    assert len(server.events) == 1


def test_retry_after_is_capped():
    assert parse_retry_after("5") == 5
    assert parse_retry_after(str(6 * 3600)) == MAX_RETRY_AFTER_SECONDS
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: go now
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_slow_answer_beyond_timeout_is_retried(make_server):
    server = make_server(["slow:1.5"])
    sender, counters, _ = _sender(server.url, timeout=0.5)
    sender.send(_batch([_event(1)]))
    assert counters.statuses.get("network error") == 1
    assert counters.retries == 1
    # the slow request may also have been accepted: the re-send carries the same uuid (PostHog collapses it)
    assert {e["uuid"] for e in server.events} == {orjson.loads(_event(1))["uuid"]}


def test_ack_lost_after_accept_is_resent_byte_identical(make_server, tmp_path):
    server = make_server(["drop-after-accept"], out_path=tmp_path / "events.jsonl")
    sender, _, _ = _sender(server.url)
    sender.send(_batch([_event(1), _event(2)]))
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert len(lines) == 4 and lines[:2] == lines[2:]


def test_413_splits_the_batch_and_keeps_order(make_server):
    server = make_server(["413-partial"])
    sender, counters, _ = _sender(server.url)
    result = sender.send(_batch([_event(i) for i in range(8)]))
    assert result.rejected == {} and counters.splits == 1
    numbers = [e["properties"]["n"] for e in server.events]
    assert numbers == [0, 1, 2, 3] + [0, 1, 2, 3] + [4, 5, 6, 7]  # the partial half, then both halves in order


def test_strict_400_is_bisected_down_to_the_one_bad_event(make_server):
    server = make_server(strict=True)
    sender, _, _ = _sender(server.url)
    bad = orjson.dumps({"event": "", "distinct_id": "p", "properties": {}})  # the server refuses a nameless event
    payloads = [_event(i) for i in range(7)] + [bad] + [_event(i) for i in range(8, 12)]
    result = sender.send(_batch(payloads))
    assert list(result.rejected) == [7]
    assert "400" in result.rejected[7]
    assert sorted(e["properties"]["n"] for e in server.events) == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11]


@pytest.mark.parametrize(("bad", "people", "accepted_before"), [
    ([0], 500, False), ([1_999], 500, False), (list(range(60)), 500, False), (list(range(60)), 50, True),
    (list(range(100, 160)), 50, False),
], ids=["first", "last", "a long run first", "a long run first, after an accepted batch", "a long run inside"])
def test_bad_events_in_a_big_batch_are_isolated_without_reordering_anyone(make_server, bad, people,
                                                                          accepted_before):
    # A bad event first makes the longest run of refusals a single bad event can (its halves, quarters...).
    # A long run of them first makes more refusals in a row than the streak that suspects a server of
    # refusing everything. Then an event is tried alone: an event accepted earlier in the run if any (sent
    # again: harmless), else the batch's latest untried event that overtakes none of its person's; it is
    # accepted, so nothing is held back and the bisection goes on to the end.
    server = make_server(strict=True)
    sender, _, stop = _sender(server.url)
    watchdog = threading.Timer(20, stop.set)  # a batch wrongly held back fails the test instead of hanging it
    watchdog.start()
    nameless = set(bad)
    payloads = [_event(i, f"p{i % people}") if i not in nameless
                else orjson.dumps({"event": "", "distinct_id": f"p{i % people}", "properties": {"n": i}})
                for i in range(2_000)]
    try:
        if accepted_before:
            assert sender.send(_batch([_event(10_000 + i, "earlier") for i in range(10)])).rejected == {}
        result = sender.send(_batch(payloads, seq=1))
    finally:
        watchdog.cancel()
    assert sorted(result.rejected) == bad
    received = [e for e in server.events if e["distinct_id"] != "earlier"]
    assert sorted(e["properties"]["n"] for e in received) == sorted(set(range(2_000)) - nameless)
    last_seen: dict[str, int] = {}
    for event in received:  # the server's acceptance order
        n, person = event["properties"]["n"], event["distinct_id"]
        assert n > last_seen.get(person, -1), f"{person} went back in time"
        last_seen[person] = n


def test_other_4xx_rejects_the_batch_with_the_servers_message(make_server):
    server = make_server(["422"])
    sender, _, _ = _sender(server.url)
    result = sender.send(_batch([_event(1), _event(2)]))
    assert sorted(result.rejected) == [0, 1]
    assert all("422" in message for message in result.rejected.values())
    assert server.events == []


def test_bad_key_stops_the_run_with_a_clear_message(capture_server):
    sender, _, _ = _sender(capture_server.url, api_key="phx_personal_key")
    with pytest.raises(FatalResponse, match="project API key"):
        sender.send(_batch([_event(1)]))


def test_wrong_path_stops_the_run_saying_check_host(capture_server):
    sender, _, _ = _sender(capture_server.url + "/not-posthog")
    with pytest.raises(FatalResponse, match="--host"):
        sender.send(_batch([_event(1)]))


def test_retries_exhausted_raises_send_failed_naming_the_last_problem(make_server):
    server = make_server(["503"] * 5)
    sender, _, _ = _sender(server.url, max_retries=2)
    with pytest.raises(SendFailed, match="503"):
        sender.send(_batch([_event(1)]))
    assert len(server.requests) == 3


def test_unreachable_host_gives_up_with_network_error():
    sender, _, _ = _sender("http://127.0.0.1:9", max_retries=1)
    with pytest.raises(SendFailed, match="network error"):
        sender.send(_batch([_event(1)]))


def test_stop_during_backoff_interrupts_without_acknowledging(make_server):
    server = make_server(["503"] * 50)
    sender, _, stop = _sender(server.url, max_retries=50)
    sender.settings.retry_base = 5.0
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(Interrupted):
        sender.send(_batch([_event(1)]))


def test_rate_limiter_paces_events_over_time():
    limiter = RateLimiter(1_000, threading.Event())
    started = time.monotonic()
    for _ in range(5):
        limiter.acquire(100)
    # 500 events at 1,000/s: the first slot is free, the last starts 0.4 s in
    assert time.monotonic() - started >= 0.39


# --- the dispatcher: several requests in flight --------------------------------------------------------

def _windows(tmp_path, people: int, events: int, lanes: int, max_events: int):
    writer = RunWriter(tmp_path, 1 << 20)
    for n in range(events):
        person = f"p{n % people}"
        writer.add(n, make_tiebreak(0, n + 1), person_hash(person), 0, _event(n, person))
    runs = writer.close()
    cursor = MergeCursor.start(len(runs))
    return cut_windows(merge_slices(runs, cursor), cursor, 0, BatchLayout(lanes, max_events, 1 << 20))


def test_concurrent_sending_never_reorders_a_persons_events(make_server, tmp_path):
    server = make_server(rate=0.3, kinds=("503", "slow:0.05", "drop", "429"), seed=11)
    sender, _, stop = _sender(server.url)
    acknowledged: list[int] = []
    Dispatcher(sender, 4, stop).run(_windows(tmp_path, 9, 3_000, 4, 50), 0,
                                    lambda window, result: acknowledged.append(result.batch.seq))
    assert acknowledged == list(range(len(acknowledged)))  # reported in order: a contiguous watermark
    last_seen: dict[str, int] = {}
    for event in server.events:  # the server's acceptance order
        n, person = event["properties"]["n"], event["distinct_id"]
        assert n >= last_seen.get(person, -1), f"{person} went back in time"
        last_seen[person] = n
    assert {e["properties"]["n"] for e in server.events} == set(range(3_000))


def test_dispatcher_reports_what_finished_before_a_failure(make_server, tmp_path):
    server = make_server(["ok", "ok", "401"])
    sender, _, stop = _sender(server.url)
    acknowledged: list[int] = []
    with pytest.raises(FatalResponse):
        Dispatcher(sender, 1, stop).run(_windows(tmp_path, 3, 500, 1, 100), 0,
                                        lambda window, result: acknowledged.append(result.batch.seq))
    assert acknowledged == [0, 1]


def test_dispatcher_skips_batches_before_the_watermark(capture_server, tmp_path):
    sender, _, stop = _sender(capture_server.url)
    acknowledged: list[int] = []
    Dispatcher(sender, 2, stop).run(_windows(tmp_path, 5, 1_000, 2, 100), 3,
                                    lambda window, result: acknowledged.append(result.batch.seq))
    assert acknowledged[0] == 3 and acknowledged == list(range(3, 3 + len(acknowledged)))


def test_dispatcher_keeps_one_connection_per_sending_thread(capture_server, tmp_path, monkeypatch):
    import posthog_migrate.sender as sender_module

    made = []
    pinned = sender_module._pinned_session
    monkeypatch.setattr(sender_module, "_pinned_session", lambda url: made.append(url) or pinned(url))
    sender, _, stop = _sender(capture_server.url)
    acknowledged: list[int] = []
    Dispatcher(sender, 3, stop).run(_windows(tmp_path, 9, 2_000, 3, 50), 0,
                                    lambda window, result: acknowledged.append(result.batch.seq))
    assert len(acknowledged) >= 30
    assert 1 <= len(made) <= 3  # sessions (and their kept-alive connections) are per thread, not per batch


def test_poll_reports_acknowledgements_while_the_next_window_is_being_cut(capture_server, tmp_path):
    sender, _, stop = _sender(capture_server.url)
    dispatcher = Dispatcher(sender, 1, stop)
    acknowledged: list[int] = []
    seen_while_cutting: list[int] = []

    def windows():
        produced = _windows(tmp_path, 3, 300, 1, 100)
        yield next(produced)
        deadline = time.monotonic() + 10
        while not acknowledged and time.monotonic() < deadline:  # "cutting" the next window
            dispatcher.poll()
            time.sleep(0.01)
        seen_while_cutting.extend(acknowledged)
        yield from produced

    dispatcher.poll()  # before run: nothing to report, no error
    dispatcher.run(windows(), 0, lambda window, result: acknowledged.append(result.batch.seq))
    assert seen_while_cutting == [0]
    assert acknowledged == [0, 1, 2]
