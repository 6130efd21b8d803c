"""Damaged work directories, unbalanced books, a full disk and moved inputs, with real processes and files.

Each job is a real ``run`` (``--host local``: the built-in capture server writes what it accepts to
``job/local-capture/events.jsonl``) stopped by a crash point, then damaged the way a disk, a hand or a
copy would: the resume must say what is damaged and send nothing from it, never end in a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from posthog_migrate.capture import CaptureServer
from posthog_migrate.checkpoint import CRASH_EXIT_CODE, CRASH_POINT_VARIABLE

from .conftest import TEST_API_KEY, cli_environment, make_rows, run_cli, write_jsonl

EVENTS = 15_000  # with --memory 1MiB: three runs of 5,000 events
BATCH_SIZE = 500
CONCURRENCY = 2


def _run(cwd: Path, *extra: str, crash: str | None = None, host: str = "local") -> subprocess.CompletedProcess:
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY, **({CRASH_POINT_VARIABLE: crash} if crash else {}))
    return run_cli(["run", "events.jsonl", "--host", host, "--workdir", "job", "--memory", "1MiB",
                    "--batch-size", str(BATCH_SIZE), "--concurrency", str(CONCURRENCY), "--rate", "0",
                    "--retry-delay", "0.01", "-q", *extra], cwd, env)


def _status(cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(["status", "--workdir", "job"], cwd)


def _no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def _received(cwd: Path) -> list[dict]:
    """The events the local server wrote; a line a crash cut mid-write (its batch was not acknowledged) is not one."""
    path = cwd / "job" / "local-capture" / "events.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().split(b"\n")[:-1]] if path.exists() else []


def _stopped_while_sending(cwd: Path) -> int:
    """A job prepared and partly sent, stopped by a crash (kill -9 alike); how many events arrived."""
    write_jsonl(cwd / "events.jsonl", make_rows(EVENTS, seed=61))
    crashed = _run(cwd, crash="after-checkpoint@3")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    received = len(_received(cwd))
    assert 0 < received < EVENTS
    return received


def _edit_state(cwd: Path, **changes) -> None:
    path = cwd / "job" / "state.json"
    state = orjson.loads(path.read_bytes())
    state["send"].update(changes)
    path.write_bytes(orjson.dumps(state))


def _assert_every_event_arrived_once_and_balanced(cwd: Path, result: subprocess.CompletedProcess, resends: int):
    assert result.returncode == 0, result.stderr
    assert f"{EVENTS:,} = {EVENTS:,} + 0 + 0  ✓ balanced" in result.stdout
    copies = Counter(event["uuid"] for event in _received(cwd))
    assert len(copies) == EVENTS
    assert sum(copies.values()) - EVENTS <= resends * CONCURRENCY * BATCH_SIZE


# --- item 7: damaged run files and impossible checkpoints --------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1_000])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # in a compressed payload: Arrow reads it back without a word
    path.write_bytes(bytes(data))


DAMAGES = {"truncated": _truncate, "empty": _empty, "deleted": Path.unlink, "bit-flipped": _flip_a_bit}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_run_file_is_named_and_nothing_is_sent_from_it(tmp_path, damage):
    received = _stopped_while_sending(tmp_path)
    run_file = sorted((tmp_path / "job" / "runs").iterdir())[1]
    DAMAGES[damage](run_file)

    resumed = _run(tmp_path)
    _no_traceback(resumed)
    assert resumed.returncode == 2, resumed.stderr
    assert run_file.name in resumed.stderr and "is damaged" in resumed.stderr and "--restart" in resumed.stderr
    assert len(_received(tmp_path)) == received  # not one more event

    status = _status(tmp_path)
    _no_traceback(status)
    assert status.stdout.startswith("Job job: damaged") and run_file.name in status.stdout, status.stdout


def test_restart_rebuilds_a_damaged_job(tmp_path):
    _stopped_while_sending(tmp_path)
    _flip_a_bit(sorted((tmp_path / "job" / "runs").iterdir())[0])
    assert _run(tmp_path).returncode == 2
    restarted = _run(tmp_path, "--restart")
    _no_traceback(restarted)
    assert restarted.returncode == 0, restarted.stderr
    assert f"{EVENTS:,} = {EVENTS:,} + 0 + 0  ✓ balanced" in restarted.stdout
    assert _status(tmp_path).stdout.startswith("Job job: done")


IMPOSSIBLE_STATES = {
    "negative cursor": lambda send: {"cursor": [-5, *send["cursor"][1:]]},
    "cursor too long": lambda send: {"cursor": [*send["cursor"], 0]},
    "cursor too short": lambda send: {"cursor": send["cursor"][:1]},
    "cursor past a run's end": lambda send: {"cursor": [send["cursor"][0] + 10 * EVENTS, *send["cursor"][1:]]},
    "cursor past what was counted": lambda send: {"events_sent": 0, "rows_sent": 0},
    "cursor not a list": lambda send: {"cursor": "12,3"},
    "negative batch number": lambda send: {"next_seq": -1},
    "counter not a number": lambda send: {"events_sent": "many"},
    "more counted than the job has": lambda send: {"events_sent": EVENTS + 1},
}


@pytest.mark.parametrize("edit", list(IMPOSSIBLE_STATES))
def test_impossible_values_in_state_json_are_named_and_nothing_is_sent(tmp_path, edit):
    received = _stopped_while_sending(tmp_path)
    send = orjson.loads((tmp_path / "job" / "state.json").read_bytes())["send"]
    _edit_state(tmp_path, **IMPOSSIBLE_STATES[edit](send))

    resumed = _run(tmp_path)
    _no_traceback(resumed)
    assert resumed.returncode == 2, resumed.stderr
    assert "state.json" in resumed.stderr and "--restart" in resumed.stderr
    assert len(_received(tmp_path)) == received
    status = _status(tmp_path)
    _no_traceback(status)
    assert status.stdout.startswith("Job job: damaged") and "state.json" in status.stdout, status.stdout


def test_the_merge_itself_turns_an_unreadable_run_into_the_damaged_job_message(tmp_path):
    from posthog_migrate.errors import DamagedJob
    from posthog_migrate.spool import RunWriter, merge_slices

    runs = tmp_path / "runs"
    runs.mkdir()
    writer = RunWriter(runs, 1 << 20)
    for number in range(2_000):
        writer.add(number, number, number, 0, b'{"event":"x"}')
    [path] = writer.close()
    _truncate(path)
    with pytest.raises(DamagedJob, match=f"{path.name} cannot be read") as raised:
        list(merge_slices([path]))
    assert raised.value.exit_code == 2 and "--restart" in str(raised.value)


def test_a_damaged_pairs_file_of_an_interrupted_prepare_is_named_not_a_traceback(tmp_path):
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "amplitude" / "export.zip"
    command = ["run", str(sample), "--format", "amplitude", "--dry-run", "--workdir", "job", "-q"]
    crashed = run_cli(command, tmp_path, cli_environment(**{CRASH_POINT_VARIABLE: "after-prepare-file@1"}))
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    [pairs] = (tmp_path / "job" / "identity").iterdir()  # the first file's (user, device) pairs
    _truncate(pairs)
    resumed = run_cli(command, tmp_path)
    _no_traceback(resumed)
    assert resumed.returncode == 2 and pairs.name in resumed.stderr and "--restart" in resumed.stderr


def test_every_run_of_a_resumed_prepare_is_recorded_with_its_size_and_checksum(tmp_path):
    from posthog_migrate.spool import file_checksum

    folder = tmp_path / "export"
    folder.mkdir()
    for part in range(2):  # rows are spilled per chunk of 5,000: 12,000 rows make a resume inside a file
        write_jsonl(folder / f"part-{part}.jsonl", make_rows(12_000, seed=70 + part))
    command = ["run", "export", "--dry-run", "--memory", "1MiB", "--workdir", "job", "-q"]
    crashed = run_cli(command, tmp_path, cli_environment(**{CRASH_POINT_VARIABLE: "after-prepare-checkpoint@1"}))
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    progress = orjson.loads((tmp_path / "job" / "parts" / "progress-00000.json").read_bytes())
    [spilled] = progress["runs"]
    assert spilled["checksum"] == file_checksum(tmp_path / "job" / "runs" / spilled["file"])
    assert run_cli(command, tmp_path).returncode == 0

    runs = orjson.loads((tmp_path / "job" / "manifest.json").read_bytes())["runs"]
    assert spilled in runs  # the run spilled before the crash, with the checksum taken when it was written
    for run in runs:
        path = tmp_path / "job" / "runs" / run["file"]
        assert (run["bytes"], run["checksum"]) == (path.stat().st_size, file_checksum(path))


def test_compacted_and_identity_runs_are_recorded_with_their_checksums(tmp_path):
    from posthog_migrate.spool import RunFile, RunWriter, compact_runs, file_checksum

    writer = RunWriter(tmp_path, 8_000)
    for number in range(3_000):
        writer.add(number * 7 % 3_001, number, number, 0, b'{"event":"x"}')
        if writer.full:
            writer.spill()
    writer.close()
    compacted = compact_runs(tmp_path, writer.runs, fan_in=4)
    assert len(compacted) <= 4 and any(run.file.startswith("merged-") for run in compacted)
    for run in compacted:
        assert run == RunFile(run.file, run.rows, (tmp_path / run.file).stat().st_size,
                              file_checksum(tmp_path / run.file))

    # The identity pass writes its $identify events as a run of their own (Amplitude pairs users and devices).
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "amplitude" / "export.zip"
    result = run_cli(["run", str(sample), "--format", "amplitude", "--dry-run", "--workdir", "job", "-q"], tmp_path)
    assert result.returncode in (0, 3), result.stderr
    runs = orjson.loads((tmp_path / "job" / "manifest.json").read_bytes())["runs"]
    identity = [run for run in runs if run["file"].startswith("run-identify-")]
    assert identity and all(
        run["checksum"] == file_checksum(tmp_path / "job" / "runs" / run["file"]) for run in identity)


# --- item 6: books that do not balance -----------------------------------------------------------------

def test_a_resume_whose_books_do_not_balance_fails_and_status_says_damaged(tmp_path):
    _stopped_while_sending(tmp_path)
    # A cursor moved back to the start (every count kept): each value is possible on its own, so the send
    # runs, and sends again what was counted already.
    _edit_state(tmp_path, cursor=[0, 0, 0], next_seq=0, window_first_seq=0)
    resumed = _run(tmp_path)
    _no_traceback(resumed)
    assert "✗ NOT balanced" in resumed.stdout
    assert resumed.returncode == 1, resumed.stderr
    assert "the books do not balance" in resumed.stderr and "--restart" in resumed.stderr
    status = _status(tmp_path)
    assert status.stdout.startswith("Job job: damaged"), status.stdout


def test_a_finished_job_whose_counts_were_changed_is_damaged_not_done(tmp_path):
    write_jsonl(tmp_path / "events.jsonl", make_rows(2_000, seed=62))
    assert _run(tmp_path).returncode == 0
    manifest_path = tmp_path / "job" / "manifest.json"
    manifest = orjson.loads(manifest_path.read_bytes())
    manifest["stats"]["rows_read"] += 7
    manifest_path.write_bytes(orjson.dumps(manifest))

    again = _run(tmp_path)
    _no_traceback(again)
    assert again.returncode == 1 and "2,007 = 2,000 + 0 + 0" in again.stderr, again.stderr
    status = _status(tmp_path)
    assert status.stdout.startswith("Job job: damaged") and "do not balance" in status.stdout, status.stdout


# --- item 8: a full disk --------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 6 MiB tmpfs mounted for the test (we run as root; skipped where mounting is not allowed)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path, leave: int = 0) -> Path:
    """Take all the free space of ``disk`` but ``leave`` bytes, with a ballast file."""
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free - leave
    with open(ballast, "wb") as handle:
        try:
            while free > 0:
                free -= handle.write(b"\0" * min(free, 1 << 20))
        except OSError:  # full: the last block's rounding
            pass
    return ballast


def _run_on(cwd: Path, disk: Path, server: CaptureServer, crash: str | None = None) -> subprocess.CompletedProcess:
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY, **({CRASH_POINT_VARIABLE: crash} if crash else {}))
    return run_cli(["run", "events.jsonl", "--host", server.url, "--workdir", str(disk / "job"), "--memory", "1MiB",
                    "--batch-size", str(BATCH_SIZE), "--concurrency", str(CONCURRENCY), "--rate", "0",
                    "--retry-delay", "0.01", "-q"], cwd, env)


def _assert_disk_full_message(result: subprocess.CompletedProcess, disk: Path) -> None:
    _no_traceback(result)
    assert result.returncode == 1, result.stderr
    assert f"no space left in {disk / 'job'}; free " in result.stderr, result.stderr
    assert "or use --workdir elsewhere; run again to resume" in result.stderr


def _assert_delivered_once(server: CaptureServer, crashes: int) -> None:
    copies = Counter(event["uuid"] for event in server.events)
    assert len(copies) == EVENTS
    assert sum(copies.values()) - EVENTS <= crashes * CONCURRENCY * BATCH_SIZE


def test_a_disk_full_during_prepare_says_what_to_free_and_the_resume_loses_nothing(tmp_path, small_disk, make_server):
    write_jsonl(tmp_path / "events.jsonl", make_rows(EVENTS, seed=63))
    server = make_server()
    ballast = _fill(small_disk, leave=600_000)  # the job's runs take ~1.3 MB

    full = _run_on(tmp_path, small_disk, server)
    assert "Warning: the job needs about " in full.stderr  # said at the start, before any work
    _assert_disk_full_message(full, small_disk)
    assert not server.events  # prepare never sends

    ballast.unlink()
    resumed = _run_on(tmp_path, small_disk, server)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{EVENTS:,} = {EVENTS:,} + 0 + 0  ✓ balanced" in resumed.stdout
    _assert_delivered_once(server, crashes=0)


def test_a_disk_full_while_sending_keeps_the_checkpoint_and_the_resume_counts_nothing_twice(
        tmp_path, small_disk, make_server):
    write_jsonl(tmp_path / "events.jsonl", make_rows(EVENTS, seed=64))
    server = make_server()
    prepared = _run_on(tmp_path, small_disk, server, crash="after-prepare")
    assert prepared.returncode == CRASH_EXIT_CODE, prepared.stderr
    ballast = _fill(small_disk)  # not a byte left for the send checkpoint

    full = _run_on(tmp_path, small_disk, server)
    _assert_disk_full_message(full, small_disk)

    ballast.unlink()
    resumed = _run_on(tmp_path, small_disk, server)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{EVENTS:,} = {EVENTS:,} + 0 + 0  ✓ balanced" in resumed.stdout  # nothing counted twice
    _assert_delivered_once(server, crashes=1)  # what was sent but not checkpointed went again


def test_inspect_estimates_the_temporary_disk_and_warns_when_there_is_less_free(tmp_path, small_disk):
    write_jsonl(tmp_path / "events.jsonl", make_rows(EVENTS, seed=65))
    enough = run_cli(["inspect", str(tmp_path / "events.jsonl"), "-q"], small_disk)
    assert enough.returncode == 0, enough.stderr
    assert "Temporary disk:    about 1." in enough.stdout and "Warnings:" not in enough.stdout, enough.stdout

    _fill(small_disk, leave=100_000)
    short = run_cli(["inspect", str(tmp_path / "events.jsonl"), "-q"], small_disk)
    assert short.returncode == 0, short.stderr
    assert "Warnings:" in short.stdout and "use --workdir elsewhere" in short.stdout, short.stdout


# --- item 21: a resume without the sources ---------------------------------------------------------------

def test_a_prepared_job_resumes_after_its_input_was_moved_away(tmp_path):
    _stopped_while_sending(tmp_path)
    (tmp_path / "events.jsonl").rename(tmp_path / "elsewhere.jsonl")
    resumed = _run(tmp_path)
    _no_traceback(resumed)
    assert "no longer there" in resumed.stderr and "sent from its work directory" in resumed.stderr
    _assert_every_event_arrived_once_and_balanced(tmp_path, resumed, resends=1)


def test_a_touched_input_is_unchanged_but_new_content_is_still_refused(tmp_path):
    _stopped_while_sending(tmp_path)
    source = tmp_path / "events.jsonl"
    original = source.read_bytes()
    os.utime(source, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))  # a bare touch

    rows = [orjson.loads(line) for line in original.splitlines()]
    rows[-1]["distinct_id"] = str(uuid.uuid4())  # same file, another content
    write_jsonl(source, rows)
    refused = _run(tmp_path)
    assert refused.returncode == 2 and "changed" in refused.stderr and str(source) in refused.stderr, refused.stderr

    source.write_bytes(original)
    os.utime(source, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    resumed = _run(tmp_path)
    _no_traceback(resumed)
    _assert_every_event_arrived_once_and_balanced(tmp_path, resumed, resends=1)


def test_a_touched_input_keeps_the_work_of_an_interrupted_prepare(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for part in range(2):
        write_jsonl(folder / f"part-{part}.jsonl", make_rows(12_000, seed=80 + part))
    command = ["run", "export", "--dry-run", "--memory", "1MiB", "--workdir", "job", "-q"]
    crashed = run_cli(command, tmp_path, cli_environment(**{CRASH_POINT_VARIABLE: "after-prepare-checkpoint@1"}))
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    spilled = tmp_path / "job" / "runs" / "run-00000-0000.arrow"
    written_at = spilled.stat().st_mtime_ns
    for path in folder.iterdir():
        os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))

    resumed = run_cli(command, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "24,000 = 24,000 + 0 + 0  ✓ balanced" in resumed.stdout
    assert spilled.stat().st_mtime_ns == written_at  # the run spilled before the crash was kept, not redone
