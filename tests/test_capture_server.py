"""The local capture server answers like PostHog's capture, faults included, over real HTTP on 127.0.0.1.

The sender's tests trust this server to say what PostHog would say, so each rule of
reference/posthog-ingestion-facts.md that it implements is pinned here.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from posthog_migrate.capture import CaptureServer, FaultPlan
from posthog_migrate.capture.faults import Fault
from posthog_migrate.capture.rules import (
    MAX_DECODED_BODY_BYTES,
    MAX_EVENT_BYTES,
    MAX_RAW_BODY_BYTES,
    MAX_SINGLE_EVENT_RAW_BYTES,
)
from posthog_migrate.errors import ConfigError

try:
    from isal.igzip import compress as gzip_compress
except ImportError:  # pragma: no cover
    from gzip import compress as gzip_compress

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "phc_TestProjectKey0123456789abcdefghijklmnop"
TIMEOUT = 10


def make_event(i: int = 0, **overrides: Any) -> dict[str, Any]:
    event = {
        "event": "signed up",
        "distinct_id": f"user-{i}",
        "properties": {"plan": "pro", "n": i},
        "timestamp": "2024-04-03T12:00:00.123456Z",
        "uuid": str(uuid.UUID(int=i + 1)),
    }
    event.update(overrides)
    return event


def without(event: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != key}


def batch_body(events: list[Any], **fields: Any) -> bytes:
    return orjson.dumps({"api_key": TOKEN, "historical_migration": True, "batch": events, **fields})


def post(
    server: CaptureServer,
    body: bytes,
    path: str = "/batch/",
    headers: dict[str, str] | None = None,
    session: requests.Session | None = None,
) -> requests.Response:
    client: Any = session or requests
    return client.post(server.url + path, data=body, headers=headers or {}, timeout=TIMEOUT)


@pytest.fixture
def server(make_server: Callable[..., CaptureServer]) -> CaptureServer:
    return make_server()


# --- accepted requests --------------------------------------------------------------------------------


def test_valid_batch_is_accepted_with_status_ok_and_kept_in_order(server: CaptureServer) -> None:
    events = [make_event(i) for i in range(3)]
    response = post(server, batch_body(events))
    assert response.status_code == 200
    assert response.json() == {"status": "Ok"}
    assert response.headers["Content-Type"] == "application/json"
    assert response.raw.version == 11  # HTTP/1.1 keep-alive, so a Session reuses the connection
    assert server.events == events
    [record] = server.requests
    assert (record.path, record.status, record.n_events, record.n_accepted) == ("/batch/", 200, 3, 3)
    assert (record.gzip, record.fault, record.error, record.has_sent_at) == (False, None, None, False)
    assert record.raw_bytes == record.decoded_bytes == len(batch_body(events))


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/batch/", {"Content-Encoding": "gzip"}),
        ("/batch/?compression=gzip", {}),
        ("/batch/?compression=gzip-js&ver=1.0", {}),
        ("/batch/", {}),  # recognised by its magic bytes alone
    ],
    ids=["header", "query-gzip", "query-gzip-js", "magic-bytes"],
)
def test_gzip_body_is_decoded_however_it_is_announced(
    server: CaptureServer, path: str, headers: dict[str, str]
) -> None:
    plain = batch_body([make_event(1), make_event(2)])
    packed = gzip_compress(plain)
    assert post(server, packed, path, headers).status_code == 200
    assert [e["uuid"] for e in server.events] == [make_event(1)["uuid"], make_event(2)["uuid"]]
    [record] = server.requests
    assert (record.gzip, record.raw_bytes, record.decoded_bytes) == (True, len(packed), len(plain))


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (batch_body([make_event()]), {"Content-Encoding": "gzip"}),
        (b"\x1f\x8b\x08\x00not really gzip at all", {}),
        (gzip_compress(batch_body([make_event()]))[:-12], {}),
    ],
    ids=["plain-json-announced-as-gzip", "corrupt-stream", "truncated-stream"],
)
def test_invalid_gzip_is_400(server: CaptureServer, body: bytes, headers: dict[str, str]) -> None:
    response = post(server, body, headers=headers)
    assert response.status_code == 400
    assert "gzip" in response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert server.events == []


def test_events_file_holds_each_accepted_event_as_one_json_line(
    make_server: Callable[..., CaptureServer], tmp_path: Path
) -> None:
    out = tmp_path / "not" / "yet" / "there" / "events.jsonl"
    server = make_server(out_path=out)
    first, second = [make_event(0), make_event(1)], [make_event(2, properties={"emoji": "ü🚀"})]
    assert post(server, batch_body(first)).status_code == 200
    assert post(server, batch_body([without(make_event(9), "event")])).status_code == 400
    assert post(server, gzip_compress(batch_body(second))).status_code == 200
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [orjson.loads(line) for line in lines[:-1]] == first + second


def test_events_file_is_appended_to_by_a_restarted_server(
    make_server: Callable[..., CaptureServer], tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    first = make_server(out_path=out)
    post(first, batch_body([make_event(0)]))
    first.stop()
    post(make_server(out_path=out), batch_body([make_event(1)]))
    assert [orjson.loads(line)["uuid"] for line in out.read_bytes().splitlines()] == [
        make_event(0)["uuid"],
        make_event(1)["uuid"],
    ]


def test_a_line_a_killed_server_left_half_written_is_cut_before_appending(
    make_server: Callable[..., CaptureServer], tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    whole = orjson.dumps(make_event(0)) + b"\n"
    out.write_bytes(whole + orjson.dumps(make_event(1))[:40])  # killed in the middle of writing the second
    post(make_server(out_path=out), batch_body([make_event(2)]))
    assert [orjson.loads(line)["uuid"] for line in out.read_bytes().splitlines()] == [
        make_event(0)["uuid"],
        make_event(2)["uuid"],
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (batch_body([make_event()], historical_migration=True), True),
        (batch_body([make_event()], historical_migration=False), False),
        (orjson.dumps({"api_key": TOKEN, "batch": [make_event()]}), None),
        (orjson.dumps([make_event(api_key=TOKEN)]), None),
    ],
    ids=["true", "false", "absent", "bare-array"],
)
def test_historical_migration_flag_is_recorded(server: CaptureServer, body: bytes, expected: bool | None) -> None:
    assert post(server, body).status_code == 200
    assert server.requests[0].historical_migration is expected


@pytest.mark.parametrize("flag", ["true", 1, {}])
def test_historical_migration_flag_that_is_not_a_json_boolean_is_400(server: CaptureServer, flag: Any) -> None:
    response = post(server, batch_body([make_event()], historical_migration=flag))
    assert response.status_code == 400
    assert "historical_migration" in response.text
    assert server.events == []


def test_sent_at_in_the_body_is_recorded_so_tests_can_catch_a_client_sending_it(
    server: CaptureServer,
) -> None:
    post(server, batch_body([make_event()]))
    post(server, batch_body([make_event()], sent_at="2024-04-05T00:00:00Z"))
    assert [r.has_sent_at for r in server.requests] == [False, True]


# --- refused bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"api_key": "phc_x", "batch": [', b"", b"\xff\xfe", b"42", b'"a string"', b"null"],
    ids=["truncated", "empty", "not-utf8", "number", "string", "null"],
)
def test_body_that_is_not_a_json_object_or_array_is_400(server: CaptureServer, body: bytes) -> None:
    response = post(server, body)
    assert response.status_code == 400
    assert server.requests[0].n_events == 0


@pytest.mark.parametrize(
    "body",
    [batch_body([]), orjson.dumps([])],
    ids=["batch-shape", "bare-array"],
)
def test_empty_batch_is_400(server: CaptureServer, body: bytes) -> None:
    response = post(server, body)
    assert response.status_code == 400
    assert "no event" in response.text


def test_batch_that_is_not_an_array_is_400(server: CaptureServer) -> None:
    assert post(server, batch_body(make_event())).status_code == 400  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "envelope",
    [
        {"batch": [make_event()]},
        {"api_key": "", "batch": [make_event()]},
        {"api_key": None, "batch": [make_event()]},
        {"api_key": 1234, "batch": [make_event()]},
        {"api_key": "x" * 65, "batch": [make_event()]},
        {"api_key": "phc_naïve", "batch": [make_event()]},
        {"api_key": "phx_personalApiKey", "batch": [make_event()]},
        {"token": "phx_personalApiKey", "batch": [make_event()]},
    ],
    ids=[
        "missing",
        "empty",
        "null",
        "number",
        "65-chars",
        "non-ascii",
        "personal-key",
        "personal-key-as-token",
    ],
)
def test_unusable_token_is_401_and_not_echoed(server: CaptureServer, envelope: dict[str, Any]) -> None:
    response = post(server, orjson.dumps(envelope))
    assert response.status_code == 401
    assert response.headers["Content-Type"].startswith("text/plain")
    token = envelope.get("api_key", envelope.get("token"))
    if isinstance(token, str) and token:
        assert token not in response.text
    assert server.events == []


@pytest.mark.parametrize("envelope_key", ["api_key", "token"])
def test_token_may_be_named_api_key_or_token_and_be_64_characters(server: CaptureServer, envelope_key: str) -> None:
    body = orjson.dumps({envelope_key: "p" * 64, "batch": [make_event()]})
    assert post(server, body).status_code == 200


@pytest.mark.parametrize("path", ["/batch", "/capture", "/capture/", "/e", "/e/", "/i/v0/e", "/i/v0/e/"])
def test_single_event_with_its_own_token_is_accepted_and_stored_without_it(server: CaptureServer, path: str) -> None:
    response = post(server, orjson.dumps(make_event(api_key=TOKEN)), path)
    assert response.status_code == 200
    assert server.events == [make_event()]


def test_single_event_token_may_sit_in_its_properties(server: CaptureServer) -> None:
    event = make_event(properties={"token": TOKEN, "plan": "pro"})
    assert post(server, orjson.dumps(event), "/capture/").status_code == 200
    assert server.events == [make_event(properties={"plan": "pro"})]


def test_batch_shape_is_accepted_on_single_event_paths(server: CaptureServer) -> None:
    assert post(server, batch_body([make_event(0), make_event(1)]), "/i/v0/e/").status_code == 200
    assert len(server.events) == 2


def test_bare_array_takes_its_token_from_the_events(server: CaptureServer) -> None:
    events = [make_event(0, token=TOKEN), make_event(1, **{"$token": TOKEN}), make_event(2)]
    assert post(server, orjson.dumps(events)).status_code == 200
    assert server.events == [make_event(0), make_event(1), make_event(2)]


def test_bare_array_without_any_token_is_401(server: CaptureServer) -> None:
    assert post(server, orjson.dumps([make_event()])).status_code == 401


def test_bare_array_whose_events_carry_different_tokens_is_400(server: CaptureServer) -> None:
    events = [make_event(0, api_key=TOKEN), make_event(1, api_key="phc_another")]
    assert post(server, orjson.dumps(events)).status_code == 400


INVALID_EVENTS = {
    "nameless": without(make_event(1), "event"),
    "empty-name": make_event(1, event=""),
    "null-name": make_event(1, event=None),
    "no-distinct-id": without(make_event(1), "distinct_id"),
    "null-distinct-id": make_event(1, distinct_id=None),
    "empty-distinct-id": make_event(1, distinct_id=""),
    "numeric-name": make_event(1, event=7),
    "null-properties": make_event(1, properties=None),
    "list-properties": make_event(1, properties=["a"]),
    "numeric-timestamp": make_event(1, timestamp=1712145600),
    "not-a-uuid": make_event(1, uuid="row-17"),
    "numeric-uuid": make_event(1, uuid=17),
    "string-set": make_event(1, **{"$set": "plan=pro"}),
    "not-an-object": "signed up",
}


@pytest.mark.parametrize("bad", INVALID_EVENTS.values(), ids=INVALID_EVENTS.keys())
def test_strict_mode_rejects_whole_batch_with_one_invalid_event(server: CaptureServer, bad: Any) -> None:
    response = post(server, batch_body([make_event(0), bad, make_event(2)]))
    assert response.status_code == 400
    assert response.text.startswith("event 1:")
    assert server.events == []
    assert (server.requests[0].n_events, server.requests[0].n_accepted) == (3, 0)


def test_strict_mode_rejects_whole_batch_with_one_nameless_event(server: CaptureServer) -> None:
    response = post(server, batch_body([make_event(0), without(make_event(1), "event")]))
    assert (response.status_code, response.text) == (400, "event 1: has no event name")
    assert server.events == []


def test_lenient_mode_drops_nameless_and_idless_events_and_answers_200(
    make_server: Callable[..., CaptureServer],
) -> None:
    server = make_server(strict=False)
    good = [make_event(0), make_event(3)]
    events = [good[0], without(make_event(1), "event"), make_event(2, distinct_id=""), good[1]]
    assert post(server, batch_body(events)).status_code == 200
    assert server.events == good
    assert (server.requests[0].n_events, server.requests[0].n_accepted) == (4, 2)


@pytest.mark.parametrize("bad_key", ["not-a-uuid", "numeric-timestamp", "null-properties", "numeric-name"])
def test_lenient_mode_still_rejects_whole_batch_with_a_malformed_event(
    make_server: Callable[..., CaptureServer], bad_key: str
) -> None:
    server = make_server(strict=False)
    assert post(server, batch_body([make_event(0), INVALID_EVENTS[bad_key]])).status_code == 400
    assert server.events == []


def test_malformed_event_outranks_a_bad_token_as_capture_fails_to_parse_first(server: CaptureServer) -> None:
    body = orjson.dumps({"api_key": "phx_personal", "batch": [make_event(timestamp=1712145600)]})
    assert post(server, body).status_code == 400


def test_bad_token_outranks_a_nameless_event(server: CaptureServer) -> None:
    body = orjson.dumps({"api_key": "phx_personal", "batch": [without(make_event(), "event")]})
    assert post(server, body).status_code == 401


@pytest.mark.parametrize(
    "event",
    [
        make_event(distinct_id=None, properties={"distinct_id": "user-in-props"}),
        without(make_event(**{"$distinct_id": "user-dollar"}), "distinct_id"),
        make_event(distinct_id=12345),
        make_event(timestamp=None, uuid=None),
        make_event(uuid=""),
        make_event(uuid=uuid.UUID(int=5).hex),
        make_event(uuid="{" + str(uuid.UUID(int=5)) + "}"),
        make_event(uuid=uuid.UUID(int=5).urn),
        make_event(uuid=str(uuid.UUID(int=5)).upper()),
        without(without(make_event(), "properties"), "timestamp"),
        make_event(**{"$set": {"plan": "pro"}, "$set_once": None}),
    ],
    ids=[
        "distinct-id-in-properties",
        "dollar-distinct-id",
        "numeric-distinct-id",
        "null-timestamp-and-uuid",
        "empty-uuid",
        "simple-uuid",
        "braced-uuid",
        "urn-uuid",
        "uppercase-uuid",
        "no-properties-no-timestamp",
        "set-and-null-set-once",
    ],
)
def test_event_shapes_capture_accepts(server: CaptureServer, event: dict[str, Any]) -> None:
    assert post(server, batch_body([event])).status_code == 200
    assert server.events == [event]


def event_of_size(size: int) -> dict[str, Any]:
    event = make_event(properties={"pad": ""})
    event["properties"]["pad"] = "x" * (size - len(orjson.dumps(event)))
    assert len(orjson.dumps(event)) == size
    return event


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_event_of_max_event_bytes_makes_the_request_413(
    make_server: Callable[..., CaptureServer], strict: bool
) -> None:
    server = make_server(strict=strict)
    response = post(server, batch_body([make_event(0), event_of_size(MAX_EVENT_BYTES)]))
    assert response.status_code == 413
    assert server.events == []
    assert post(server, batch_body([event_of_size(MAX_EVENT_BYTES - 1)])).status_code == 200


def test_raw_body_over_the_batch_limit_is_413_and_the_connection_stays_usable(server: CaptureServer) -> None:
    session = requests.Session()
    at_limit = batch_body([make_event()]).ljust(MAX_RAW_BODY_BYTES, b" ")
    assert post(server, at_limit, session=session).status_code == 200
    response = post(server, at_limit + b" ", session=session)
    assert response.status_code == 413
    assert post(server, batch_body([make_event(1)]), session=session).status_code == 200
    assert [r.status for r in server.requests] == [200, 413, 200]
    assert server.requests[1].raw_bytes == MAX_RAW_BODY_BYTES + 1


def test_single_event_paths_refuse_bodies_over_2_mib_that_batch_takes(server: CaptureServer) -> None:
    body = orjson.dumps(make_event(api_key=TOKEN)).ljust(MAX_SINGLE_EVENT_RAW_BYTES + 1, b" ")
    assert post(server, body, "/capture/").status_code == 413
    assert post(server, body, "/batch/").status_code == 200


def test_body_over_100_mib_once_decompressed_is_413(server: CaptureServer) -> None:
    bomb = gzip_compress(b" " * (MAX_DECODED_BODY_BYTES + 1))
    response = post(server, bomb)
    assert response.status_code == 413
    assert server.requests[0].decoded_bytes == 0


def test_unknown_path_is_404_and_other_methods_are_405(server: CaptureServer) -> None:
    assert post(server, batch_body([make_event()]), "/track/").status_code == 404
    response = requests.get(server.url + "/batch/", timeout=TIMEOUT)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert [r.status for r in server.requests] == [404, 405]
    assert server.events == []


def test_chunked_body_is_refused_with_411(server: CaptureServer) -> None:
    response = requests.post(server.url + "/batch/", data=iter([batch_body([make_event()])]), timeout=TIMEOUT)
    assert response.status_code == 411


# --- faults -------------------------------------------------------------------------------------------


def faulty(make_server: Callable[..., CaptureServer], *scripted: str, **kwargs: Any) -> CaptureServer:
    return make_server(faults=FaultPlan.parse(scripted), **kwargs)


def test_scripted_429_sends_retry_after_and_accepts_nothing(
    make_server: Callable[..., CaptureServer],
) -> None:
    server = faulty(make_server, "429:retry-after=7", "429")
    first = post(server, batch_body([make_event()]))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "7")
    assert first.headers["Content-Type"].startswith("text/plain")
    second = post(server, batch_body([make_event()]))
    assert second.status_code == 429
    assert "Retry-After" not in second.headers
    assert server.events == []
    assert post(server, batch_body([make_event()])).status_code == 200  # the script has run out
    assert [r.fault for r in server.requests] == ["429:retry-after=7", "429", None]
    assert server.requests[0].n_events == 1


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_scripted_status_fault_answers_that_status_and_accepts_nothing(
    make_server: Callable[..., CaptureServer], status: int
) -> None:
    server = faulty(make_server, str(status))
    response = post(server, batch_body([make_event()]))
    assert response.status_code == status
    assert "injected" in response.text
    assert server.events == []


def test_ok_in_a_script_lets_that_request_through(make_server: Callable[..., CaptureServer]) -> None:
    server = faulty(make_server, "ok", "503", "ok")
    statuses = [post(server, batch_body([make_event(i)])).status_code for i in range(4)]
    assert statuses == [200, 503, 200, 200]
    assert len(server.events) == 3


def test_slow_fault_waits_then_handles_the_request(make_server: Callable[..., CaptureServer]) -> None:
    server = faulty(make_server, "slow:0.3")
    started = time.monotonic()
    assert post(server, batch_body([make_event()])).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert len(server.events) == 1
    assert server.requests[0].fault == "slow:0.3"


def test_drop_fault_closes_the_connection_and_accepts_nothing(
    make_server: Callable[..., CaptureServer],
) -> None:
    server = faulty(make_server, "drop")
    session = requests.Session()
    with pytest.raises(requests.ConnectionError):
        post(server, batch_body([make_event()]), session=session)
    assert server.events == []
    [record] = server.requests
    assert (record.status, record.n_events, record.n_accepted, record.fault) == (0, 1, 0, "drop")
    assert post(server, batch_body([make_event()]), session=session).status_code == 200


def test_drop_after_accept_keeps_the_events_the_client_never_hears_about(
    make_server: Callable[..., CaptureServer], tmp_path: Path
) -> None:
    server = faulty(make_server, "drop-after-accept", out_path=tmp_path / "events.jsonl")
    with pytest.raises(requests.ConnectionError):
        post(server, batch_body([make_event(0), make_event(1)]))
    assert server.events == [make_event(0), make_event(1)]
    assert len((tmp_path / "events.jsonl").read_bytes().splitlines()) == 2
    assert (server.requests[0].status, server.requests[0].n_accepted) == (0, 2)


def test_413_partial_accepts_the_first_half_then_answers_413(
    make_server: Callable[..., CaptureServer],
) -> None:
    server = faulty(make_server, "413-partial")
    events = [make_event(i) for i in range(5)]
    response = post(server, batch_body(events))
    assert response.status_code == 413
    assert server.events == events[:2]
    assert server.requests[0].n_accepted == 2


def test_fault_script_is_consumed_only_by_capture_requests(make_server: Callable[..., CaptureServer]) -> None:
    server = faulty(make_server, "503")
    assert post(server, b"{}", "/not-capture/").status_code == 404
    assert post(server, batch_body([make_event()])).status_code == 503


def test_random_faults_follow_the_script(make_server: Callable[..., CaptureServer]) -> None:
    server = make_server(faults=FaultPlan.parse(["502"], rate=1.0, kinds=["429"]))
    statuses = [post(server, batch_body([make_event()])).status_code for _ in range(3)]
    assert statuses == [502, 429, 429]


def test_random_fault_plan_is_reproducible_with_a_seed() -> None:
    def draw(seed: int) -> list[str | None]:
        plan = FaultPlan.parse(rate=0.3, kinds=["429", "503", "drop", "slow:0.1"], seed=seed)
        return [fault.spec if (fault := plan.next_fault()) else None for _ in range(400)]

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)
    drawn = draw(11)
    assert 80 <= sum(spec is not None for spec in drawn) <= 160
    assert {spec for spec in drawn if spec} == {"429", "503", "drop", "slow:0.1"}
    assert all(FaultPlan.parse(rate=0.0).next_fault() is None for _ in range(50))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ok", None),
        ("429", Fault("429", "status", status=429)),
        ("429:retry-after=30", Fault("429:retry-after=30", "status", status=429, retry_after="30")),
        ("503:retry-after=1.5", Fault("503:retry-after=1.5", "status", status=503, retry_after="1.5")),
        ("408", Fault("408", "status", status=408)),
        ("599", Fault("599", "status", status=599)),
        ("slow:2.5", Fault("slow:2.5", "slow", delay=2.5)),
        ("DROP", Fault("drop", "drop")),
        ("drop-after-accept", Fault("drop-after-accept", "drop-after-accept")),
        ("413-partial", Fault("413-partial", "413-partial")),
    ],
)
def test_fault_specs_parse(spec: str, expected: Fault | None) -> None:
    assert Fault.parse(spec) == expected


@pytest.mark.parametrize("spec", ["", "200", "302", "429:retry-after=soon", "slow", "slow:-1", "slow:nan", "teapot"])
def test_unknown_fault_spec_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError):
        FaultPlan.parse([spec])


def test_fault_rate_outside_0_to_1_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        FaultPlan.parse(rate=1.5)


# --- the token never lands anywhere -------------------------------------------------------------------


def test_token_never_reaches_the_out_file_records_or_log(
    make_server: Callable[..., CaptureServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "events.jsonl"
    server = make_server(out_path=out, quiet=False)
    event_with_tokens = make_event(1, api_key=TOKEN, token=TOKEN, properties={"token": TOKEN})
    assert post(server, batch_body([make_event(0), event_with_tokens])).status_code == 200
    assert post(server, orjson.dumps(make_event(2, api_key=TOKEN)), f"/capture/?api_key={TOKEN}").status_code == 200
    assert post(server, orjson.dumps([make_event(3, **{"$token": TOKEN})]), "/e/").status_code == 200
    assert post(server, orjson.dumps({"api_key": "phx_" + TOKEN[4:], "batch": [make_event()]})).status_code == 401
    assert len(server.events) == 4
    assert TOKEN.encode() not in out.read_bytes()
    assert TOKEN not in repr(server.requests) + repr(server.events)
    assert TOKEN[4:] not in repr(server.requests)
    captured = capsys.readouterr()
    assert "POST /capture/ 200" in captured.err  # the access log is on, and shows the path alone
    assert TOKEN[4:] not in captured.out + captured.err


# --- concurrency and lifecycle ------------------------------------------------------------------------


def test_concurrent_requests_write_whole_lines_and_whole_batches(
    make_server: Callable[..., CaptureServer], tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    server = make_server(out_path=out)
    n_threads, n_requests, n_events = 8, 10, 100

    def send(thread: int) -> None:
        with requests.Session() as session:
            for request in range(n_requests):
                events = [
                    make_event(i, properties={"thread": thread, "request": request, "pad": "x" * 300})
                    for i in range(n_events)
                ]
                body = gzip_compress(batch_body(events)) if request % 2 else batch_body(events)
                assert post(server, body, session=session).status_code == 200

    threads = [threading.Thread(target=send, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(rows) == len(server.events) == n_threads * n_requests * n_events
    assert rows == server.events
    keys = [(row["properties"]["thread"], row["properties"]["request"]) for row in rows]
    runs = [key for index, key in enumerate(keys) if index == 0 or keys[index - 1] != key]
    assert len(runs) == len(set(runs)) == n_threads * n_requests  # each batch's lines are contiguous


def test_url_names_the_port_actually_bound(server: CaptureServer) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
    assert not server.url.endswith(":0")


def test_stop_closes_kept_alive_connections_so_nothing_is_accepted_after_it(
    make_server: Callable[..., CaptureServer],
) -> None:
    server = make_server()
    session = requests.Session()
    assert post(server, batch_body([make_event(0)]), session=session).status_code == 200
    server.stop()
    with pytest.raises(requests.ConnectionError):
        post(server, batch_body([make_event(1)]), session=session)
    assert server.events == [make_event(0)]
    server.stop()  # stopping twice is harmless


def test_a_request_still_in_hand_when_stop_begins_is_neither_kept_nor_answered_200(
    make_server: Callable[..., CaptureServer], tmp_path: Path
) -> None:
    server = make_server(out_path=tmp_path / "out.jsonl", faults=FaultPlan.parse(["slow:1"]))
    outcome: dict[str, Any] = {}

    def post() -> None:
        try:
            outcome["status"] = requests.post(server.url + "/batch/", data=batch_body([make_event()]),
                                              timeout=TIMEOUT).status_code
        except requests.RequestException as error:
            outcome["error"] = error

    client = threading.Thread(target=post)
    client.start()
    time.sleep(0.3)  # the request is in its slow fault: read and judged, not yet committed
    server.stop()
    client.join(TIMEOUT)
    time.sleep(1.2)  # the handler wakes from its fault and reaches the point where it would keep the events
    assert "status" not in outcome, "the client got an answer for events the server did not keep"
    assert server.stats.events_accepted == 0 and server.stats.requests == 0
    assert (tmp_path / "out.jsonl").read_bytes() == b""


def test_keep_in_memory_false_keeps_counts_only(make_server: Callable[..., CaptureServer]) -> None:
    server = make_server(keep_in_memory=False, faults=FaultPlan.parse(["503"]))
    post(server, batch_body([make_event(0)]))
    post(server, batch_body([make_event(0), make_event(1)]))
    post(server, b"nope")
    assert server.events == [] and server.requests == []
    stats = server.stats
    assert (stats.requests, stats.events_accepted, stats.requests_rejected, stats.faults_injected) == (
        3,
        2,
        2,
        1,
    )


def test_serve_prints_its_url_and_a_summary_on_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "served.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "posthog_migrate", "serve", "--port", "0", "--out", str(out), "--fault", "503"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline() if process.stdout else ""
        match = re.search(r"http://127\.0\.0\.1:\d+", banner)
        assert match, banner
        assert str(out) in banner and "faults: 1 scripted, rate 0.0" in banner
        url = match.group(0)
        assert requests.post(url + "/batch/", data=batch_body([make_event()]), timeout=TIMEOUT).status_code == 503
        assert requests.post(url + "/batch/", data=batch_body([make_event()]), timeout=TIMEOUT).status_code == 200
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Stopped: 2 requests, 1 events accepted, 1 requests rejected." in stdout
    assert TOKEN not in banner + stdout + stderr
    assert len(out.read_bytes().splitlines()) == 1


def test_serve_as_a_library_prints_nothing_and_returns_what_it_took(tmp_path: Path) -> None:
    """serve() tells its caller when it is ready and what it took; the command line does the printing."""
    out = tmp_path / "served.jsonl"
    code = (
        "import sys\n"
        "from posthog_migrate.capture import FaultPlan, serve\n"
        "def ready(url):\n"
        "    sys.stdout.write(f'ready at {url}\\n'); sys.stdout.flush()\n"
        f"summary = serve(port=0, out_path={str(out)!r}, faults=FaultPlan.parse(['503']), on_ready=ready)\n"
        "print('returned', summary.stats)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline() if process.stdout else ""
        assert ready.startswith("ready at http://127.0.0.1:"), ready
        url = ready.split()[-1]
        assert requests.post(url + "/batch/", data=batch_body([make_event()]), timeout=TIMEOUT).status_code == 503
        assert requests.post(url + "/batch/", data=batch_body([make_event()]), timeout=TIMEOUT).status_code == 200
        process.send_signal(signal.SIGINT)  # KeyboardInterrupt: how serve() is stopped
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert (stdout, stderr) == (
        "returned CaptureStats(requests=2, events_accepted=1, requests_rejected=1, faults_injected=1)\n", "")
    assert len(out.read_bytes().splitlines()) == 1
