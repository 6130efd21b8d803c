"""Start-up and progress, as a user meets them: a quick --help, Ctrl-C at any moment without a traceback,
and a progress bar for every step of a run (with a total where one is known), none under --quiet."""

from __future__ import annotations

import gzip
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from posthog_migrate.spool import RunWriter, compact_runs, rows_to_compact
from tqdm import tqdm

from .conftest import TEST_API_KEY, cli_environment, make_rows, run_cli, write_csv, write_jsonl

HEAVY_MODULES = {"numpy", "pyarrow", "requests", "tqdm"}
CONSOLE_SCRIPT = Path(sys.executable).with_name("posthog-migrate")


def _imported_modules(import_times: str) -> list[str]:
    """The modules named by ``-X importtime`` output, in the order their imports finished."""
    return [line.rsplit("|", 1)[1].strip() for line in import_times.splitlines() if line.startswith("import time:")
            and not line.endswith("| package")]


# --- a quick start ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arguments", [["--help"], ["run", "--help"], ["inspect", "--help"], ["status", "--help"],
                                       ["--version"]])
def test_help_and_version_import_neither_numpy_nor_pyarrow(tmp_path, arguments):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "posthog_migrate", *arguments], cwd=tmp_path,
                            env=cli_environment(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(("Usage:", "posthog-migrate, version"))
    modules = _imported_modules(result.stderr)
    imported = {name.split(".")[0] for name in modules}
    assert "click" in imported  # the import times were read
    assert not imported & HEAVY_MODULES
    # The registry may list the formats (run --help does), but no adapter is loaded to do it.
    assert not [name for name in modules if name.startswith("posthog_migrate.adapters.")]


def test_the_console_script_handles_ctrl_c_before_it_imports_the_command_line(tmp_path):
    if not CONSOLE_SCRIPT.exists():
        pytest.skip("the posthog-migrate script is not installed beside this Python (pip install -e .)")
    result = subprocess.run([str(CONSOLE_SCRIPT), "--help"], cwd=tmp_path, capture_output=True, text=True,
                            env=cli_environment(PYTHONPROFILEIMPORTTIME="1"), timeout=60)
    assert result.returncode == 0, result.stderr
    imported = _imported_modules(result.stderr)
    assert imported.index("posthog_migrate.entry") < imported.index("click") < imported.index("posthog_migrate.cli")
    assert not {name.split(".")[0] for name in imported} & HEAVY_MODULES


# --- Ctrl-C at any moment ---------------------------------------------------------------------------

def _start(arguments: list[str], cwd: Path, *python_options: str) -> subprocess.Popen:
    """A real run in a process group of its own, like a command a user started in a terminal."""
    return subprocess.Popen([sys.executable, *python_options, "-m", "posthog_migrate", *arguments], cwd=cwd,
                            env=cli_environment(POSTHOG_API_KEY=TEST_API_KEY), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _stderr_until(process: subprocess.Popen, pattern: bytes, timeout: float = 60) -> bytes:
    """What the process wrote to stderr up to ``pattern`` (read as it comes: bars end in \\r, not \\n)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, seen):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"no {pattern!r} in what the process wrote:\n{seen.decode(errors='replace')}")
        if select.select([process.stderr], [], [], 0.5)[0]:
            seen += os.read(process.stderr.fileno(), 65536)
    return seen


def _interrupted(process: subprocess.Popen, seen: bytes, delay: float, whole_group: bool) -> str:
    time.sleep(delay)
    if whole_group:  # a terminal's Ctrl-C reaches every process of the foreground group
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    output = (stdout + seen + stderr).decode(errors="replace")
    assert "Traceback" not in output, output
    assert process.returncode == 130, output
    return output


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.2])
def test_ctrl_c_while_the_command_starts_exits_130_without_a_traceback(tmp_path, delay):
    write_csv(tmp_path / "events.csv", make_rows(20_000, seed=21))
    process = _start(["run", "events.csv", "--host", "local", "--rate", "100", "--workdir", "job"], tmp_path,
                     "-X", "importtime")
    # The clock starts once click is imported, the first thing the command line imports: the interpreter's own
    # start-up is Python's business, and what comes after click (the pipeline: numpy, pyarrow...) is ours.
    seen = _stderr_until(process, rb"\| +click\n")
    output = _interrupted(process, seen, delay, whole_group=False)
    assert "Interrupted" in output


@pytest.mark.parametrize("delay", [0.05, 0.1, 0.2])
def test_ctrl_c_to_the_process_group_while_reading_workers_start_exits_130_without_a_traceback(tmp_path, delay):
    for number in range(2):
        write_csv(tmp_path / f"events-{number}.csv", make_rows(20_000, seed=number))
    process = _start(["run", "events-0.csv", "events-1.csv", "--host", "local", "--workers", "2", "--workdir",
                      "job"], tmp_path)
    seen = _stderr_until(process, rb"reading \(2 workers\)")  # drawn just before the workers are started
    output = _interrupted(process, seen, delay, whole_group=True)
    assert "run the same command again to resume" in output


# --- progress ----------------------------------------------------------------------------------------

def _bytes_shown(size: int) -> str:
    """A size as the reading bar shows it (binary multiples, as tqdm writes them)."""
    return tqdm.format_sizeof(size, divisor=1024)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_reading_bar_counts_bytes_read_of_the_inputs_total_with_the_rows_beside(tmp_path, workers):
    write_jsonl(tmp_path / "events.jsonl", make_rows(3_000, seed=31))
    write_jsonl(tmp_path / "more.jsonl.gz", make_rows(2_000, seed=32), gz=True)  # counted as stored: gzip'd
    total = _bytes_shown(sum(path.stat().st_size for path in tmp_path.iterdir()))
    result = run_cli(["run", "events.jsonl", "more.jsonl.gz", "--workers", str(workers), "--dry-run",
                      "--workdir", "job"], tmp_path, cli_environment())
    assert result.returncode == 0, result.stderr
    assert f"reading ({workers} worker" in result.stderr
    assert re.search(rf"100%\|[^\r\n]*\| {re.escape(total)}/{re.escape(total)} \[[^]]*, 5,000 rows\]", result.stderr)
    inspected = run_cli(["inspect", "events.jsonl", "more.jsonl.gz"], tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert re.search(rf"reading: 100%\|[^\r\n]*\| {re.escape(total)}/{re.escape(total)} \[[^]]*, 5,000 rows\]",
                     inspected.stderr)


def _amplitude_rows(file_number: int, count: int) -> list[dict]:
    """Amplitude export rows in which devices meet their users (what the identity pass links)."""
    return [{"event_type": "note_created", "event_time": f"2024-03-{1 + n % 28:02d} 10:00:{n % 60:02d}.000000",
             "user_id": f"user-{file_number}-{n % 5}", "device_id": f"device-{file_number}-{n % 7}",
             "$insert_id": f"{file_number}-{n}", "event_properties": {"n": n}} for n in range(count)]


def test_every_step_after_reading_shows_its_progress_and_quiet_shows_none(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for number in range(70):  # more files than the merge reads at once: their runs are merged first
        rows = _amplitude_rows(number, 20)
        rows[0]["event_time"] = "not a time"  # rejected: the rejects parts are joined
        data = b"".join(orjson.dumps(row) + b"\n" for row in rows)
        (folder / f"{number:03d}_2024-03-01_0#0.json.gz").write_bytes(gzip.compress(data))
    arguments = ["run", "export", "--format", "amplitude", "--dry-run", "--workdir", "job"]
    result = run_cli(arguments, tmp_path)
    assert result.returncode == 3, result.stderr
    assert "✓ balanced" in result.stdout
    events = tqdm.format_sizeof(orjson.loads((tmp_path / "job" / "manifest.json").read_bytes())["stats"]["events"])
    step_bars = [  # each with its count, and its total where one is known
        r"reading \(1 worker\): 100%\|",
        r"adding up the files' counts: +\d+%\|[^\r\n]*\| [\d.]+/70\.0 ",
        r"identity pass \(linking devices to users\): [\d.]+k? pairs",
        rf"merging 71 sorted runs: +\d+%\|[^\r\n]*\| [\d.]+k?/{events} ",
        r"joining the rejected rows: +\d+%\|",
        rf"writing request bodies: 100%\|[^\r\n]*\| {events}/{events} ",
    ]
    for bar in step_bars:
        assert re.search(bar, result.stderr), bar

    quiet = run_cli([*arguments, "--restart", "--quiet"], tmp_path)
    assert quiet.returncode == 3, quiet.stderr
    assert quiet.stderr == "", quiet.stderr


def test_the_merging_bar_total_is_what_the_compaction_writes_over_all_its_levels(tmp_path):
    writer = RunWriter(tmp_path, run_bytes=4_000)
    for number in range(3_000):
        writer.add(number * 7 % 1_000, number, 0, 0, b'{"n":%d}' % number)
        if writer.full:
            writer.spill()
    writer.close()
    runs = writer.runs
    assert len(runs) > 4 * 4  # a fan-in of 4 takes two levels
    written: list[int] = []
    compact_runs(tmp_path, runs, fan_in=4, on_rows=written.append)
    assert sum(written) == rows_to_compact(runs, fan_in=4) > 3_000
