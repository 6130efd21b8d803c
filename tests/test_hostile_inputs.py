"""Inputs that used to be skipped, doubled or swallowed without a word (issue 10, items 9-13, 15, 17, 23).

Real files in every format and compression, real symlinks and loops, real zips, and the real command as a
process: every file the arguments hold is read once or listed as skipped with the reason; one huge line
costs its own row, not the machine's memory; odd names and work directories end in a clear message.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from posthog_migrate.adapters import detect_format
from posthog_migrate.adapters.amplitude import AmplitudeAdapter
from posthog_migrate.adapters.base import MAX_RAW_CHARS_IN_REJECT, MAX_ROW_BYTES, BadRow, SourceFile, open_binary
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.errors import ConfigError
from posthog_migrate.mapping import ColumnMapping
from posthog_migrate.sources import list_inputs

from .conftest import cli_environment, make_rows, run_cli, write_csv, write_jsonl

MIB = 1024 * 1024


def _no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def _inspect(cwd: Path, *args: str) -> str:
    """The report of a successful inspect."""
    result = run_cli(["inspect", *args, "-q"], cwd)
    _no_traceback(result)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _dry_run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """A successful dry run."""
    result = run_cli(["run", *args, "--dry-run", "-q"], cwd)
    _no_traceback(result)
    assert result.returncode == 0, result.stderr
    return result


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def _rows_read(report: str) -> int:
    line = next(line for line in report.splitlines() if line.startswith("Rows read:"))
    return int(line.split(":", 1)[1].replace(",", ""))


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def _rejects(workdir: Path) -> list[dict]:
    return [orjson.loads(line) for line in (workdir / "rejects.jsonl").read_bytes().splitlines()]


def _dry_run_events(bodies: Path) -> list[dict]:
    """The events of the request bodies a dry run wrote."""
    return [event for body in sorted(bodies.glob("batch-*.json")) for event in orjson.loads(body.read_bytes())["batch"]]


# --- 9. skipped files are listed; bzip2, xz and zstd are read ----------------------------------------

COMPRESSIONS = {
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda data: pa.Codec("zstd").compress(data, asbytes=True),
}


def test_inspect_names_every_skipped_file_and_reads_every_compression(tmp_path):
    folder = _made(tmp_path / "export")
    write_csv(folder / "a.csv", make_rows(10, seed=1))
    write_csv(folder / "b.CSV", make_rows(10, seed=2))
    plain = (folder / "a.csv").read_bytes()
    for ending, compress in COMPRESSIONS.items():
        (folder / f"c.csv.{ending}").write_bytes(compress(plain))
    (folder / "notes.txt").write_text("not data\n")
    (folder / "_SUCCESS").write_text("")
    report = _inspect(tmp_path, "export")
    assert _rows_read(report) == 50  # a.csv, b.CSV and the three compressed copies
    assert "Files skipped:     2 (not read):" in report
    assert f"{folder / 'notes.txt'}: its ending names no format" in report
    assert f"{folder / '_SUCCESS'}: a marker or checksum file" in report


def test_run_names_the_skipped_files_at_its_start_and_counts_them_in_the_summary(tmp_path):
    folder = _made(tmp_path / "export")
    write_jsonl(folder / "events.jsonl", make_rows(20))
    (folder / "events.jsonl.lz4").write_bytes(b"\x04\x22\x4d\x18 not a format we read")
    result = _dry_run(tmp_path, "export", "--workdir", "work")
    assert f"Skipped 1 file(s), not read: {folder / 'events.jsonl.lz4'} (its ending names no format" in result.stderr
    assert "Files skipped:     1 (not read; `posthog-migrate inspect` lists them)" in result.stdout


@pytest.mark.parametrize("ending", list(COMPRESSIONS))
def test_compressed_files_are_recognised_by_their_bytes_and_their_ending(tmp_path, ending):
    rows = make_rows(30)
    data = COMPRESSIONS[ending](_jsonl_bytes(rows))
    named = tmp_path / f"events.jsonl.{ending}"
    named.write_bytes(data)
    renamed = tmp_path / "renamed.jsonl"  # an export renamed without its compression ending
    renamed.write_bytes(data)
    assert detect_format(str(named)) == "jsonl"
    for path in (named, renamed):
        read = [record for chunk in read_json_lines(SourceFile(str(path), 0, 0, 0)) for _, record in chunk]
        assert read == rows


@pytest.mark.parametrize("ending", list(COMPRESSIONS))
def test_a_truncated_compressed_file_is_an_error_naming_the_file_and_the_compression(tmp_path, ending):
    data = COMPRESSIONS[ending](_jsonl_bytes(make_rows(2_000)))
    path = tmp_path / f"events.jsonl.{ending}"
    path.write_bytes(data[: len(data) // 2])
    kind = {"bz2": "bzip2", "xz": "xz", "zst": "zstd"}[ending]
    with pytest.raises(ConfigError, match=rf"{path.name}: the {kind} data is corrupt or truncated"):
        open_binary(str(path)).read()


# --- 10. symlinks: each real file once, loops never followed ------------------------------------------

def test_a_symlink_loop_is_not_followed_and_is_named(tmp_path):
    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "events.jsonl", make_rows(50))
    (folder / "sub" / "up").symlink_to("..")
    report = _inspect(tmp_path, "export")
    assert _rows_read(report) == 50
    assert f"{folder / 'sub' / 'up'}/: a symlink loop: it leads back to {folder}, read once" in report


def test_a_second_name_for_a_folder_or_a_file_does_not_double_the_counts(tmp_path):
    folder = tmp_path / "export"
    (folder / "2024").mkdir(parents=True)
    write_jsonl(folder / "2024" / "events.jsonl", make_rows(40, seed=1))
    (folder / "latest").symlink_to("2024")
    (folder / "today.jsonl").symlink_to(folder / "2024" / "events.jsonl")
    os.link(folder / "2024" / "events.jsonl", folder / "hardlinked.jsonl")
    outside = _made(tmp_path / "elsewhere")
    write_jsonl(outside / "more.jsonl", make_rows(7, seed=2))
    (folder / "linked-in").symlink_to(outside)  # a link out of the tree is followed
    report = _inspect(tmp_path, "export")
    assert _rows_read(report) == 47
    assert f"{folder / 'latest'}/: a symlink to {folder / '2024'}, read once" in report
    same = f"the same file as {folder / '2024' / 'events.jsonl'} (a link), read once"
    assert f"{folder / 'today.jsonl'}: {same}" in report
    assert f"{folder / 'hardlinked.jsonl'}: {same}" in report


def test_the_same_folder_named_twice_through_a_link_is_read_once(tmp_path):
    folder = _made(tmp_path / "export")
    write_jsonl(folder / "events.jsonl", make_rows(25))
    (tmp_path / "alias").symlink_to(folder)
    listing = list_inputs([str(folder), str(tmp_path / "alias")], explicit_format=False)
    assert [source.uri for source in listing.sources] == [str(folder / "events.jsonl")]
    assert [skipped.uri for skipped in listing.skipped] == [f"{tmp_path / 'alias'}/"]


# --- 11. the job's work directory is never an input ---------------------------------------------------

def test_a_work_directory_inside_the_input_folder_is_never_read(tmp_path):
    folder = _made(tmp_path / "export")
    write_jsonl(folder / "events.jsonl", make_rows(60))
    args = ["run", "export", "--host", "local", "--workdir", "export/work", "-q"]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert (folder / "work" / "local-capture" / "events.jsonl").exists()
    again = run_cli(args, tmp_path)  # the work directory, its manifest and the server's output are not inputs
    _no_traceback(again)
    assert again.returncode == 0, again.stderr
    assert "changed" not in again.stderr and "added" not in again.stderr
    restarted = run_cli([*args, "--restart"], tmp_path)
    _no_traceback(restarted)
    assert restarted.returncode == 0, restarted.stderr
    assert _rows_read(restarted.stdout) == 60
    # another job's work directory in the folder is not an input either
    other = run_cli(["run", "export", "--host", "local", "--job", "other", "-q"], tmp_path)
    assert other.returncode == 0, other.stderr
    assert _rows_read(other.stdout) == 60
    assert f"{folder / 'work'}/ (a posthog-migrate work directory)" in other.stderr


# --- 12. zip members: `..` in a name is read; a zip in a zip is reported ------------------------------

def test_zip_members_with_dotdot_in_their_names_are_read(tmp_path):
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        archive.writestr("a.jsonl", _jsonl_bytes(make_rows(100, seed=1)))
        archive.writestr("../b.jsonl", _jsonl_bytes(make_rows(100, seed=2)))
        archive.writestr("x/../../c.jsonl", _jsonl_bytes(make_rows(100, seed=3)))
    report = _inspect(tmp_path, "export.zip", "--format", "jsonl")
    assert _rows_read(report) == 300


def test_a_zip_inside_a_zip_is_reported_not_printed(tmp_path):
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("events.jsonl", _jsonl_bytes(make_rows(30, seed=1)))
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        archive.writestr("events.jsonl", _jsonl_bytes(make_rows(20, seed=2)))
        archive.write(inner, "nested/inner.zip")
    result = _dry_run(tmp_path, "export.zip", "--format", "jsonl", "--workdir", "work")
    assert "PK\x03\x04" not in result.stdout + result.stderr and "\x00" not in result.stdout + result.stderr
    assert (f"{tmp_path / 'export.zip'}!/nested/inner.zip (a zip inside the zip: extract it, and give it as an "
            "input of its own)") in result.stderr
    assert _rows_read(result.stdout) == 20


def test_amplitudes_own_zip_reader_reads_dotdot_members_and_names_what_it_does_not_read(tmp_path):
    def line(number: int) -> bytes:
        return orjson.dumps({"event_type": "Viewed", "user_id": f"u{number}", "event_time": "2024-03-01 10:00:00",
                             "uuid": f"00000000-0000-4000-8000-{number:012d}"}) + b"\n"

    # Named without .zip, the archive is one source that the Amplitude adapter opens itself.
    path = tmp_path / "amplitude-export"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("1/1_2024-03-01_10#0.json.gz", gzip.compress(b"".join(line(n) for n in range(10))))
        archive.writestr("../1_2024-03-01_11#0.json.gz", gzip.compress(b"".join(line(n) for n in range(10, 25))))
        archive.writestr("1/readme.txt", b"hello")
    report = _inspect(tmp_path, str(path), "--format", "amplitude")
    assert _rows_read(report) == 25
    assert f"{path}: 1 member(s) of the zip not read (not .json or .json.gz): 1/readme.txt" in report


# --- 13. repeated column names keep both values -------------------------------------------------------

def test_a_csv_with_a_repeated_column_keeps_both_values_and_warns(tmp_path):
    (tmp_path / "events.csv").write_text(
        "event,distinct_id,timestamp,plan,plan\n"
        "signed_up,u1,2024-03-01T00:00:00Z,free,pro\n"
    )
    result = _dry_run(tmp_path, "events.csv", "--workdir", "work", "--out", "bodies")
    [event] = _dry_run_events(tmp_path / "bodies")
    assert (event["properties"]["plan"], event["properties"]["plan_2"]) == ("free", "pro")
    assert f"{tmp_path / 'events.csv'}: repeated column names, both kept: plan → plan_2" in result.stdout


def test_a_parquet_file_with_a_repeated_field_keeps_both_values_and_warns(tmp_path):
    table = pa.Table.from_arrays(
        [pa.array(["signed_up"]), pa.array(["u1"]), pa.array(["2024-03-01T00:00:00Z"]), pa.array(["free"]),
         pa.array(["pro"]), pa.array(["team"])],
        names=["event", "distinct_id", "timestamp", "plan", "plan", "plan"],
    )
    pq.write_table(table, tmp_path / "events.parquet")
    result = _dry_run(tmp_path, "events.parquet", "--workdir", "work", "--out", "bodies")
    [event] = _dry_run_events(tmp_path / "bodies")
    properties = event["properties"]
    assert (properties["plan"], properties["plan_2"], properties["plan_3"]) == ("free", "pro", "team")
    assert "repeated column names, both kept: plan → plan_2, plan → plan_3" in result.stdout


# --- 15. one huge line costs its own row, not the memory ----------------------------------------------

# Runs a command and writes its peak resident memory (KiB) to a file. A process forked from pytest would
# start its high-water mark at pytest's own size (Linux carries it through fork and exec); one forked from
# this small process starts from this one's.
_MEASURE = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _peak_rss_mib(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """Run posthog-migrate; return its peak resident memory (MiB) and its result."""
    peak_file = cwd / "peak-rss-kib.txt"
    command = [sys.executable, "-c", _MEASURE, str(peak_file), sys.executable, "-m", "posthog_migrate", *args]
    result = subprocess.run(command, cwd=cwd, env=cli_environment(), capture_output=True, text=True, timeout=300)
    _no_traceback(result)
    return int(peak_file.read_text()) / 1024, result


HUGE = 128 * MIB


def test_a_huge_json_line_is_rejected_without_being_held(tmp_path):
    rows = make_rows(3)
    small = tmp_path / "small.jsonl"
    write_jsonl(small, rows)
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as out:
        out.write(orjson.dumps(rows[0]) + b"\n")
        out.write(b'{"event": "big", "blob": "')
        for _ in range(HUGE // MIB):
            out.write(b"x" * MIB)
        out.write(b'"}\n')
        out.write(orjson.dumps(rows[1]) + b"\n")
    baseline, _ = _peak_rss_mib(["run", "small.jsonl", "--dry-run", "-q", "--workdir", "w0"], tmp_path)
    peak, result = _peak_rss_mib(["run", "huge.jsonl", "--dry-run", "-q", "--workdir", "w1"], tmp_path)
    assert result.returncode == 3, result.stderr
    assert _rows_read(result.stdout) == 3
    [reject] = _rejects(tmp_path / "w1")
    assert (reject["reason"], reject["row"]) == ("row_too_large", 2)
    assert f"a row of {HUGE + 29:,} bytes" in reject["detail"]  # the line, its newline included
    assert reject["original"].startswith('{"event": "big", "blob": "xxx') and len(reject["original"]) <= 10_000
    assert peak < baseline + 2 * MAX_ROW_BYTES / MIB + 16, (peak, baseline)


def test_a_huge_csv_line_is_rejected_without_being_held(tmp_path):
    write_csv(tmp_path / "small.csv", make_rows(3))
    with open(tmp_path / "huge.csv", "w") as out:
        out.write("event,distinct_id,timestamp,blob\n")
        out.write("a,u1,2024-03-01T00:00:00Z,x\n")
        out.write("b,u1,2024-03-01T00:00:00Z,")
        for _ in range(HUGE // MIB):
            out.write("y" * MIB)
        out.write("\n")
        out.write("c,u1,2024-03-01T00:00:01Z,z\n")
    baseline, _ = _peak_rss_mib(["inspect", "small.csv", "-q"], tmp_path)
    peak, result = _peak_rss_mib(["inspect", "huge.csv", "-q"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert _rows_read(result.stdout) == 3
    assert "huge.csv row 2: row_too_large: a row of" in result.stdout
    # Text mode: the line is decoded, and Python's str of it may take as much again.
    assert peak < baseline + 4 * MAX_ROW_BYTES / MIB + 16, (peak, baseline)


def test_a_json_array_file_is_read_element_by_element(tmp_path):
    base = {"event": "e", "distinct_id": "u1", "timestamp": "2024-03-01T00:00:00Z"}
    (tmp_path / "small.json").write_bytes(orjson.dumps([base]))
    with open(tmp_path / "array.json", "wb") as out:
        out.write(b"[\n")
        for number in range(96):  # 96 elements of 1 MiB: the file is never held whole
            out.write(orjson.dumps({**base, "n": number, "pad": "p" * MIB}) + (b",\n" if number < 95 else b"\n"))
        out.write(b"]\n")
    baseline, _ = _peak_rss_mib(["inspect", "small.json", "-q"], tmp_path)
    peak, result = _peak_rss_mib(["inspect", "array.json", "-q"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert _rows_read(result.stdout) == 96
    assert peak < baseline + 40, (peak, baseline)


def test_an_element_of_a_json_array_over_the_limit_is_rejected_and_the_next_ones_read(tmp_path):
    first, last = {"event": "a", "n": 1}, {"event": "c", "n": 3}
    big = b'{"event": "b", "s": "' + b'\\"{[,' * (MAX_ROW_BYTES // 4 + 10) + b'"}'
    path = tmp_path / "array.json"
    path.write_bytes(b"[" + orjson.dumps(first) + b", " + big + b",\n" + orjson.dumps(last) + b"]")
    rows = [row for chunk in read_json_lines(SourceFile(str(path), 0, 0, 0)) for row in chunk]
    assert [number for number, _ in rows] == [1, 2, 3]
    assert rows[0][1] == first and rows[2][1] == last
    bad = rows[1][1]
    assert isinstance(bad, BadRow) and bad.reason == "row_too_large"
    assert f"a row of {len(big):,} bytes" in bad.detail and len(bad.raw) == MAX_RAW_CHARS_IN_REJECT


def test_a_huge_line_in_an_amplitude_zip_member_is_rejected(tmp_path):
    good = orjson.dumps({"event_type": "Viewed", "user_id": "u1", "event_time": "2024-03-01 10:00:00"})
    huge = orjson.dumps({"event_type": "Viewed", "user_id": "u2", "event_time": "2024-03-01 10:00:00",
                         "event_properties": {"blob": "x" * (MAX_ROW_BYTES + 1)}})
    path = tmp_path / "amplitude-export"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("1/1_2024-03-01_10#0.json", good + b"\n" + huge + b"\n" + good + b"\n")
    adapter = AmplitudeAdapter(ColumnMapping())
    rows = [row for chunk in adapter.read(SourceFile(str(path), 0, 0, 0)) for row in chunk]
    assert [type(record).__name__ for _, record in rows] == ["dict", "BadRow", "dict"]
    assert rows[1][1].reason == "row_too_large" and "1/1_2024-03-01_10#0.json, line 2" in rows[1][1].detail


# --- 17. odd names and unwritable work directories ----------------------------------------------------

def test_a_file_name_that_is_not_utf8_is_a_clear_error(tmp_path):
    folder = _made(tmp_path / "export")
    write_jsonl(Path(os.fsdecode(bytes(folder) + b"/caf\xe9.jsonl")), make_rows(5))
    for command in (["inspect", "export"], ["run", "export", "--dry-run"]):
        result = run_cli(command, tmp_path)
        _no_traceback(result)
        assert result.returncode == 2
        assert f"{folder}/caf\\xe9.jsonl: the file name is not valid UTF-8" in result.stderr
        assert "rename it" in result.stderr


def test_a_folder_whose_name_holds_a_bang_is_a_folder_not_a_zip(tmp_path):
    folder = _made(tmp_path / "exports!" / "2024")
    write_jsonl(folder / "events.jsonl", make_rows(15))
    report = _inspect(tmp_path, "exports!")
    assert _rows_read(report) == 15


def _unwritable_places(tmp_path: Path) -> list[str]:
    (tmp_path / "a-file").write_text("")
    places = [str(tmp_path / "a-file" / "work")]  # below a file: no folder can be made there
    if Path("/sys/kernel").is_dir():
        places += ["/sys/posthog-migrate-work", "/sys/kernel"]  # not writable, even for root
    return places


def test_an_unwritable_workdir_is_a_clear_error(tmp_path):
    write_jsonl(tmp_path / "events.jsonl", make_rows(5))
    for place in _unwritable_places(tmp_path):
        result = run_cli(["run", "events.jsonl", "--dry-run", "--workdir", place], tmp_path)
        _no_traceback(result)
        assert result.returncode == 2, result.stderr
        assert f"cannot write the job's work directory {place} (" in result.stderr
        assert "--workdir" in result.stderr


# --- 23. listing many files -----------------------------------------------------------------------------

def test_listing_a_folder_scans_the_adapter_registry_once_not_per_file(tmp_path, monkeypatch):
    for number in range(200):
        (tmp_path / f"part-{number:04d}.jsonl").write_text("{}\n")
    scans = []
    real_entry_points = metadata.entry_points

    def counting_entry_points(**kwargs):
        scans.append(kwargs)
        return real_entry_points(**kwargs)

    from posthog_migrate import adapters

    monkeypatch.setattr(metadata, "entry_points", counting_entry_points)
    adapters._plugin_entry_points.cache_clear()  # scanned afresh, through the counting stand-in
    adapters._formats_by_ending.cache_clear()
    listing = list_inputs([str(tmp_path)], explicit_format=False)
    assert len(listing.sources) == 200
    assert len(scans) <= 1
