"""``posthog-migrate serve --processes N``: several server processes behind one port, as real processes
on 127.0.0.1, stopped the ways people and supervisors stop them (SIGTERM, Ctrl-C to the group, SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from .conftest import TEST_API_KEY, cli_environment, run_cli

# The tests find the worker processes through /proc.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30


@contextlib.contextmanager
def _serving(tmp_path: Path, *options: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`serve --port 0` in its own process group, once it says it is ready: (process, url). Killed at exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "posthog_migrate", "serve", "--port", "0", "--out", str(tmp_path / "received.jsonl"),
         *options],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        banner = process.stdout.readline() if process.stdout else ""
        match = re.search(r"http://127\.0\.0\.1:\d+", banner)
        if not match:
            process.kill()
            pytest.fail(f"serve did not start: {banner!r} {process.communicate()[1]}")
        yield process, match.group(0)
    finally:
        process.kill()


def _stop(process: subprocess.Popen, signum: int = signal.SIGTERM, whole_group: bool = False) -> tuple[str, str]:
    """Stop serve with a signal (to the whole process group, as a terminal's Ctrl-C does, if asked);
    it must exit cleanly. Returns its stdout and stderr."""
    if whole_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, stderr
    return stdout, stderr


def _body(first: int, count: int) -> bytes:
    events = [{"event": "viewed", "distinct_id": f"user-{n % 7}", "properties": {"n": n},
               "timestamp": "2024-05-01T10:00:00Z", "uuid": str(uuid.UUID(int=n + 1))}
              for n in range(first, first + count)]
    return orjson.dumps({"api_key": TEST_API_KEY, "historical_migration": True, "batch": events})


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has stopped running
    except FileNotFoundError:
        return True


def _received(tmp_path: Path) -> list[dict]:
    return [orjson.loads(line) for line in (tmp_path / "received.jsonl").read_bytes().splitlines()]


def test_connections_take_turns_over_the_processes_and_every_event_is_kept_once(tmp_path):
    with _serving(tmp_path, "--processes", "2") as (process, url):
        workers = _children(process.pid)
        assert len(workers) == 2
        sessions = [requests.Session(), requests.Session()]  # one kept-alive connection each
        for round_number in range(5):
            for index, session in enumerate(sessions):
                first = (round_number * 2 + index) * 100
                answer = session.post(url + "/batch/", data=_body(first, 100), timeout=TIMEOUT)
                assert answer.status_code == 200, answer.text
        stdout, _ = _stop(process)
    # The two connections went to different processes, and the totals are the sum of both.
    assert "Stopped: 10 requests, 1000 events accepted, 0 requests rejected (2 processes: 5 + 5 requests)." in stdout
    received = _received(tmp_path)
    assert sorted(event["properties"]["n"] for event in received) == list(range(1000))
    assert all(_gone(pid) for pid in workers)


def test_the_tool_migrates_the_sample_into_a_server_of_two_processes(tmp_path):
    with _serving(tmp_path, "--processes", "2") as (process, url):
        result = run_cli(["run", str(ROOT / "sample_data" / "csv" / "events.csv"), "--host", url, "--rate", "0",
                          "--batch-size", "50", "--concurrency", "4", "--workdir", str(tmp_path / "job"), "-q"],
                         cwd=tmp_path, env=cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
        stdout, _ = _stop(process)
    assert result.returncode == 3, result.stderr  # the sample's deliberately bad rows are rejected
    sent = int(re.search(r"Events sent:\s+([\d,]+)", result.stdout).group(1).replace(",", ""))
    received = _received(tmp_path)
    assert len(received) == len({event["uuid"] for event in received}) == sent
    shares = re.search(r"\(2 processes: (\d+) \+ (\d+) requests\)", stdout)
    assert shares and int(shares.group(1)) > 0 and int(shares.group(2)) > 0, stdout


def test_ctrl_c_to_the_whole_group_still_collects_every_processs_counts(tmp_path):
    with _serving(tmp_path, "--processes", "2") as (process, url):
        for first in (0, 10):
            with requests.Session() as session:
                assert session.post(url + "/batch/", data=_body(first, 10), timeout=TIMEOUT).status_code == 200
        stdout, stderr = _stop(process, signal.SIGINT, whole_group=True)
    assert "Stopped: 2 requests, 20 events accepted" in stdout and "?" not in stdout
    assert "Traceback" not in stderr


def test_workers_stop_when_their_parent_is_killed(tmp_path):
    with _serving(tmp_path, "--processes", "3") as (process, _):
        workers = _children(process.pid)
        assert len(workers) == 3
        process.kill()  # SIGKILL: the parent cannot tell anyone
        process.communicate(timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in workers), "a worker outlived its parent"


def test_an_out_file_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "a-file").write_text("")
    for processes in ("1", "2"):
        result = run_cli(["serve", "--port", "0", "--processes", processes, "--out", str(tmp_path / "a-file" / "x")],
                         cwd=ROOT)
        assert result.returncode == 2
        assert f"cannot write --out {tmp_path / 'a-file' / 'x'}" in result.stderr and "listen" not in result.stderr


def test_faults_need_a_single_process():
    result = run_cli(["serve", "--port", "0", "--processes", "2", "--fault", "503"], cwd=ROOT)
    assert result.returncode != 0
    assert "--processes 1" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_stops_a_single_process_server_with_its_summary(tmp_path):
    with _serving(tmp_path) as (process, url):
        assert requests.post(url + "/batch/", data=_body(0, 3), timeout=TIMEOUT).status_code == 200
        stdout, _ = _stop(process)
    assert "Stopped: 1 requests, 3 events accepted, 0 requests rejected." in stdout
    assert len(_received(tmp_path)) == 3


def test_once_every_worker_has_died_serve_reports_what_they_took_and_fails(tmp_path):
    with _serving(tmp_path, "--processes", "2") as (process, url):
        workers = _children(process.pid)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + TIMEOUT
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(requests.ConnectionError):  # the parent finds no worker to hand it to
            requests.post(url + "/batch/", data=_body(0, 1), timeout=TIMEOUT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 2, stderr
    assert "Stopped: 0 requests, 0 events accepted, 0 requests rejected (2 processes: ? + ? requests)." in stdout
    assert "capture worker 2 stopped; serving with 0 process(es)" in stderr
    assert "2 worker(s) did not report their counts" in stderr
    assert "Error: every capture worker process stopped" in stderr and "Traceback" not in stderr
