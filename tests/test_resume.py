"""Crash safety with real processes: crash points, SIGKILL at random moments, then resume.

Every test asserts the promises of a resumed job: every valid event received at least once, every
duplicate byte-identical to its first copy, re-sends within (requests in flight × batch size) per crash
(plus what the server's own faults made us re-send), and a final summary that balances.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from posthog_migrate.capture import CaptureServer, FaultPlan
from posthog_migrate.checkpoint import CRASH_EXIT_CODE, CRASH_POINT_VARIABLE

from .conftest import TEST_API_KEY, cli_environment, make_rows, write_jsonl

BATCH_SIZE = 100
CONCURRENCY = 3
EVENTS = 2_000
RESENDING_FAULTS = ("drop-after-accept", "413-partial")


def _command(server: CaptureServer, rate: int = 0) -> list[str]:
    return [sys.executable, "-m", "posthog_migrate", "run", "events.jsonl", "--host", server.url, "--workdir", "job",
            "--batch-size", str(BATCH_SIZE), "--concurrency", str(CONCURRENCY), "--rate", str(rate),
            "--retry-delay", "0.01", "--max-retries", "30", "-q"]


def _input(tmp_path: Path) -> None:
    rows = make_rows(EVENTS, seed=21)
    rows[5]["event"] = ""  # one reject, so the accounting has all three terms
    write_jsonl(tmp_path / "events.jsonl", rows)


def _finish(tmp_path: Path, server: CaptureServer) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(server), cwd=tmp_path, env=cli_environment(POSTHOG_API_KEY=TEST_API_KEY),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr  # done, with the one rejected row
    assert f"{EVENTS:,} = {EVENTS - 1:,} + 1 + 0  ✓ balanced" in result.stdout
    return result


def _assert_delivered(server: CaptureServer, crashes: int) -> None:
    lines_by_uuid: dict[str, bytes] = {}
    copies = Counter()
    for event in server.events:
        line = orjson.dumps(event)
        first = lines_by_uuid.setdefault(event["uuid"], line)
        assert line == first, "a re-sent event differs from its first copy"
        copies[event["uuid"]] += 1
    assert len(lines_by_uuid) == EVENTS - 1  # every valid event arrived
    resent = sum(copies.values()) - len(copies)
    caused_by_faults = sum(r.n_accepted for r in server.requests if r.fault in RESENDING_FAULTS)
    assert resent <= crashes * CONCURRENCY * BATCH_SIZE + caused_by_faults


@pytest.mark.parametrize("point", [
    "before-manifest", "after-prepare", "after-send-before-checkpoint@3", "after-checkpoint@4",
    "mid-state-write@5",
])
def test_crash_at_a_named_point_then_resume_loses_and_doubles_nothing(tmp_path, point):
    _input(tmp_path)
    with CaptureServer() as server:
        crashed = subprocess.run(_command(server), cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                 env=cli_environment(POSTHOG_API_KEY=TEST_API_KEY, **{CRASH_POINT_VARIABLE: point}))
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
        state = tmp_path / "job" / "state.json"
        if state.exists():  # a crash mid-write leaves the previous state whole
            orjson.loads(state.read_bytes())
        _finish(tmp_path, server)
        _assert_delivered(server, crashes=1)


def test_sigkill_at_random_moments_under_server_faults_loses_and_doubles_nothing(tmp_path):
    _input(tmp_path)
    rng = random.Random(2024)
    plan = FaultPlan.parse([], rate=0.25, kinds=["429", "503", "drop", "drop-after-accept", "slow:0.05"], seed=5)
    kills = 0
    with CaptureServer(faults=plan) as server:
        for attempt in range(7):
            # paced at 1,000 events/s so that each process is killed mid-send
            process = subprocess.Popen(_command(server, rate=1_000), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, env=cli_environment(POSTHOG_API_KEY=TEST_API_KEY))
            if attempt == 6:  # on a slow machine every kill may have come before the first checkpoint: one after it
                _wait_for_a_checkpoint(tmp_path / "job" / "state.json", process)
            time.sleep(rng.uniform(0.3, 1.2))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait()
        result = _finish(tmp_path, server)
        _assert_delivered(server, crashes=kills)
    assert kills >= 3, "the run finished before it could be killed: make the job bigger"
    assert "already sent by an earlier run" in result.stdout or kills == 0


def _wait_for_a_checkpoint(state_path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the send checkpoint of the job counts events (or the process ended)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if orjson.loads(state_path.read_bytes()).get("send", {}).get("events_sent"):
                return
        except (FileNotFoundError, orjson.JSONDecodeError):
            pass
        time.sleep(0.05)


def test_a_prepare_killed_after_some_spills_resumes_from_its_last_spill(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for part in range(2):  # rows are spilled per chunk of 5,000: 12,000 rows make a resume inside a file
        rows = make_rows(12_000, seed=30 + part)
        for row in (100, 7_000):
            rows[row + part]["timestamp"] = "garbage"  # rejects before and after the spill: none written twice
        write_jsonl(folder / f"part-{part}.jsonl", rows)
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    base = [sys.executable, "-m", "posthog_migrate", "run", "export", "--dry-run", "--memory", "1MiB", "--job", "same",
            "-q"]
    reference = subprocess.run([*base, "--workdir", "clean"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert reference.returncode == 3, reference.stderr
    crashed = subprocess.run([*base, "--workdir", "job"], cwd=tmp_path, capture_output=True, text=True,
                             env={**env, CRASH_POINT_VARIABLE: "after-prepare-checkpoint@1"})
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    progress = orjson.loads((tmp_path / "job" / "parts" / "progress-00000.json").read_bytes())
    assert progress["row"] == 5_000 and len(progress["runs"]) == 1
    resumed = subprocess.run([*base, "--workdir", "job"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert resumed.returncode == 3, resumed.stderr
    assert "24,000 = 23,996 + 4 + 0  ✓ balanced" in resumed.stdout
    assert not (tmp_path / "job" / "prepare.json").exists() and not (tmp_path / "job" / "parts").exists()

    def bodies(job: str) -> list[bytes]:
        return [e for path in sorted((tmp_path / job / "dry-run").glob("batch-*.json"))
                for e in orjson.loads(path.read_bytes())["batch"]]

    assert bodies("job") == bodies("clean")  # same events, same order, same bytes
    assert (tmp_path / "job" / "rejects.jsonl").read_bytes() == (tmp_path / "clean" / "rejects.jsonl").read_bytes()
    clean_stats = orjson.loads((tmp_path / "clean" / "manifest.json").read_bytes())["stats"]
    resumed_stats = orjson.loads((tmp_path / "job" / "manifest.json").read_bytes())["stats"]
    assert resumed_stats == clean_stats


def _dry_run_output(tmp_path: Path, job: str) -> tuple[list, bytes, dict]:
    bodies = [e for path in sorted((tmp_path / job / "dry-run").glob("batch-*.json"))
              for e in orjson.loads(path.read_bytes())["batch"]]
    stats = orjson.loads((tmp_path / job / "manifest.json").read_bytes())["stats"]
    return bodies, (tmp_path / job / "rejects.jsonl").read_bytes(), stats


def test_worker_processes_prepare_exactly_what_one_process_does_and_resume_after_a_kill(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for part in range(5):
        rows = make_rows(3_000, seed=50 + part)
        rows[7]["distinct_id"] = ""  # a reject in every file: the joined rejects keep file order
        write_jsonl(folder / f"part-{part}.jsonl", rows)
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY)
    base = [sys.executable, "-m", "posthog_migrate", "run", "export", "--dry-run", "--job", "same", "-q"]
    single = subprocess.run([*base, "--workdir", "one", "--workers", "1"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert single.returncode == 3, single.stderr
    crashed = subprocess.run([*base, "--workdir", "two", "--workers", "2"], cwd=tmp_path, capture_output=True,
                             text=True, env={**env, CRASH_POINT_VARIABLE: "after-prepare-file@2"}, timeout=120)
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    assert len(list((tmp_path / "two" / "parts").glob("result-*.json"))) == 2
    status = subprocess.run([sys.executable, "-m", "posthog_migrate", "status", "--workdir", "two"], cwd=tmp_path,
                            env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "preparing: 2 of 5 input files done" in status.stdout, status.stderr
    time.sleep(1)  # the orphaned workers notice their coordinator is gone and exit
    resumed = subprocess.run([*base, "--workdir", "two", "--workers", "2"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 3, resumed.stderr
    assert "15,000 = 14,995 + 5 + 0  ✓ balanced" in resumed.stdout
    assert _dry_run_output(tmp_path, "two") == _dry_run_output(tmp_path, "one")


def test_a_worker_that_starts_after_its_coordinator_died_exits_at_once():
    # The pool may start a worker just as the coordinator is killed. Such a worker's parent is already
    # init: it must still see that its coordinator is gone (before, it waited forever, and held the
    # killed run's output pipes open, so whoever ran it never saw it end).
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    started = time.monotonic()
    code = (f"import time; from posthog_migrate.prepare import _worker_init; _worker_init(None, {gone.pid}); "
            "time.sleep(60)")
    worker = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=30,
    )
    assert worker.returncode == 1 and not worker.stderr, worker.stderr  # its own exit, not a failure
    assert time.monotonic() - started < 15


def test_a_resume_with_another_batch_layout_resends_the_window_and_still_balances(tmp_path):
    _input(tmp_path)
    with CaptureServer(faults=FaultPlan.parse(["ok", "ok", "422"])) as server:  # one batch refused by the server
        crashed = subprocess.run(_command(server), cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                 env=cli_environment(POSTHOG_API_KEY=TEST_API_KEY, **{CRASH_POINT_VARIABLE:
                                                                                      "after-checkpoint@3"}))
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
        command = _command(server)
        command[command.index("--concurrency") + 1] = "2"
        command[command.index("--batch-size") + 1] = "70"
        result = subprocess.run(command, cwd=tmp_path, env=cli_environment(POSTHOG_API_KEY=TEST_API_KEY),
                                capture_output=True, text=True, timeout=120)
        assert any(r.status == 422 for r in server.requests)
        accepted = {e["uuid"] for e in server.events}
    assert result.returncode == 3, result.stderr
    assert "✓ balanced" in result.stdout
    # Whether the refused batch was checkpointed before the crash (then it stays rejected) or sat in the window
    # that the new layout sends again (then it is accepted this time) depends on timing; either way every valid
    # event ends exactly once as sent or rejected, and no reject is written twice.
    rejects = [orjson.loads(line) for line in (tmp_path / "job" / "rejects.jsonl").read_bytes().splitlines()]
    keys = [(r["file"], r["row"]) for r in rejects]
    assert len(keys) == len(set(keys))
    refused = {r["original"]["uuid"] for r in rejects if r["reason"] == "server_rejected"}
    assert not refused & accepted and len(refused | accepted) == EVENTS - 1
    assert f"{EVENTS:,} = {EVENTS - 1 - len(refused):,} + {1 + len(refused):,} + 0" in result.stdout
