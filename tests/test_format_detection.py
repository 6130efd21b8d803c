"""Which format the inputs are read in, and why: --format auto by the rows, a wrong --format stopped early.

Issue 10, items 18 and 19: a Mixpanel export called ``export.jsonl.gz`` was read as generic JSON lines and
ended as 731 rejects with exit 3. Now each adapter recognises its own rows (``Adapter.recognises``, plugins
too), ``--format auto`` reads the inputs in the format that recognises their first rows and says so, and a
run whose first rows mostly fail for one reason while looking like another format stops before any work,
naming the format to use. ``run --help`` lists every registered format without importing any adapter.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from posthog_migrate.adapters.base import SourceFile

from .conftest import PROJECT_ROOT, cli_environment, install_plugin, make_rows, run_cli, write_csv, write_jsonl

SAMPLES = PROJECT_ROOT / "sample_data"
FIXTURES = Path("/work/shared/fixtures")
MIXPANEL_EXPORT = SAMPLES / "mixpanel" / "export-2024-03.jsonl.gz"

PLUGIN = '''
from posthog_migrate.adapters.base import Adapter
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.event import Event, parse_timestamp, uuid_from_id


class SnowplowAdapter(Adapter):
    name = "snowplow"
    recognised_shape = "a Snowplow enriched export (domain_userid and derived_tstamp)"

    @classmethod
    def recognises(cls, record):
        return "domain_userid" in record and "derived_tstamp" in record

    def read(self, source):
        return read_json_lines(source)

    def to_events(self, record):
        return [Event(event=record["event_name"], distinct_id=record["domain_userid"],
                      timestamp_us=parse_timestamp(record["derived_tstamp"]), uuid=uuid_from_id(record["event_id"]))]
'''


def with_plugin(folder: Path) -> dict[str, str]:
    """The plugin installed in a folder of its own; the environment of a process that has it installed."""
    folder.mkdir()
    install_plugin(folder, "snowplow_plugin", PLUGIN, {"snowplow": "snowplow_plugin:SnowplowAdapter"})
    return cli_environment(PYTHONPATH=str(folder))


def source(path: Path) -> SourceFile:
    return SourceFile(str(path), 0, path.stat().st_size, 0)


# --- item 18: recognised by the rows ---------------------------------------------------------------------

def test_a_mixpanel_export_named_like_json_lines_is_read_as_mixpanel_and_the_choice_explained(tmp_path):
    shutil.copy(MIXPANEL_EXPORT, tmp_path / "export.jsonl.gz")
    result = run_cli(["run", "export.jsonl.gz", "--host", "local", "--rate", "0"], tmp_path)
    assert result.returncode == 3, result.stderr  # the sample's 4 deliberately bad rows
    assert "732 = 728 + 4 + 0  ✓ balanced" in result.stdout
    assert ("1 file(s), format mixpanel (recognised by their rows, which look like a Mixpanel export "
            "(event and properties.time, or profiles: $distinct_id and $properties))") in result.stderr
    assert "1  files read as mixpanel, recognised by their rows" in result.stdout  # the summary's warnings


@pytest.mark.parametrize(("inputs", "expected"), [
    (["amplitude/export.zip"], "57 (amplitude)"),  # a zip was refused without --format
    (["ga4/events_20240308.jsonl.gz", "ga4/events_20240309.parquet"], "2 (ga4)"),  # two endings, one format
    (["segment/warehouse"], "5 (segment)"),  # CSV and Parquet warehouse tables
    (["segment/archive/segment-logs/acme-web/1709251200000/1709332307735.f16e4b1f.gz"], "1 (segment)"),
    (["posthog/export.jsonl"], "1 (posthog)"),
    ([str(FIXTURES / "segment" / "segment-messages.jsonl")], "1 (segment)"),  # written by others
    ([str(FIXTURES / "ga4" / "ga4-bigquery-rows.jsonl")], "1 (ga4)"),
])
def test_auto_recognises_each_platform_export_by_its_rows(inputs, expected):
    result = run_cli(["inspect", *inputs, "-q"], SAMPLES)  # inspect writes nothing
    assert result.returncode == 0, result.stderr
    assert f"Files read:        {expected}" in result.stdout
    assert "recognised by their rows" in result.stdout


def test_generic_files_are_read_by_their_ending_and_failing_rows_of_no_other_format_are_rejected(tmp_path):
    rows = make_rows(50)
    write_csv(tmp_path / "events.csv", rows)
    by_ending = run_cli(["run", "events.csv", "--host", "local", "--rate", "0"], tmp_path)
    assert by_ending.returncode == 0, by_ending.stderr
    assert "1 file(s), format csv (from the file ending)" in by_ending.stderr
    for row in rows:
        del row["timestamp"]  # every row fails for one reason, but they look like no platform's: the data's fault
    write_jsonl(tmp_path / "undated.jsonl", rows)
    rejected = run_cli(["run", "undated.jsonl", "--format", "jsonl", "--host", "local"], tmp_path)
    assert rejected.returncode == 3, rejected.stderr
    assert "1 file(s), format jsonl (as --format says)" in rejected.stderr
    assert "50 = 0 + 50 + 0  ✓ balanced" in rejected.stdout


def test_a_wrong_format_stops_before_any_work_and_names_the_right_one(tmp_path):
    shutil.copy(MIXPANEL_EXPORT, tmp_path / "export.jsonl.gz")
    as_json_lines = run_cli(["run", "export.jsonl.gz", "--format", "jsonl", "--host", "local", "-q"], tmp_path)
    assert as_json_lines.returncode == 2, as_json_lines.stdout
    assert ("export.jsonl.gz: 99 of its first 100 rows would be rejected as bad_timestamp (no timestamp in "
            "column(s) timestamp, time, event_time, ts, created_at), read as jsonl. These rows look like a "
            "Mixpanel export (event and properties.time, or profiles: $distinct_id and $properties): --format "
            "mixpanel.") in as_json_lines.stderr
    assert not list(tmp_path.glob(".posthog-migrate/*/manifest.json"))  # stopped before preparing
    assert not list(tmp_path.glob(".posthog-migrate/*/local-capture/events.jsonl"))
    as_amplitude = run_cli(["inspect", "export.jsonl.gz", "--format", "amplitude", "-q"], tmp_path)
    assert as_amplitude.returncode == 2
    assert "this is not an Amplitude export" in as_amplitude.stderr
    assert as_amplitude.stderr.rstrip().endswith("These rows look like a Mixpanel export (event and "
                                                 "properties.time, or profiles: $distinct_id and $properties): "
                                                 "--format mixpanel.")


@pytest.mark.parametrize(("path", "expected"), [
    (SAMPLES / "mixpanel" / "export-2024-03.jsonl.gz", "mixpanel"),
    (SAMPLES / "mixpanel" / "legacy-2022-11.jsonl", "mixpanel"),
    (SAMPLES / "ga4" / "events_20240309.parquet", "ga4"),
    (SAMPLES / "segment" / "warehouse" / "identifies.csv", "segment"),
    (SAMPLES / "segment" / "warehouse" / "note_created" / "part-00000.parquet", "segment"),
    (SAMPLES / "posthog" / "export.jsonl", "posthog"),
    (SAMPLES / "csv" / "events.csv", None),  # generic rows: read by the file's ending
    (SAMPLES / "jsonl" / "events-2024-03-01.jsonl", None),
    (SAMPLES / "parquet" / "events.parquet", None),
    (SAMPLES / "heap" / "tables" / "note_created.csv", None),  # Heap's columns are too common to claim
])
def test_each_format_recognises_its_own_rows_and_no_other(path, expected):
    from posthog_migrate.adapters import first_records, recognise_format

    assert recognise_format(first_records(source(path))) == expected


def test_a_generic_row_with_a_time_property_is_not_taken_for_a_mixpanel_row():
    from posthog_migrate.adapters import recognise_format

    assert recognise_format([{"event": "a", "properties": {"time": 1709251200, "distinct_id": "u"}}]) == "mixpanel"
    assert recognise_format([{"event": "a", "distinct_id": "u", "ts": 1709251200, "properties": {"time": 1}}]) is None


# --- plugins take part; item 19: the help lists every format --------------------------------------------

def test_a_plugin_recognises_its_rows_and_the_help_lists_it(tmp_path):
    env = with_plugin(tmp_path / "plugins")
    rows = [{"event_name": "page_view", "domain_userid": f"u{n % 3}", "event_id": f"e{n}",
             "derived_tstamp": "2024-03-01T10:00:00Z"} for n in range(10)]
    write_jsonl(tmp_path / "enriched.jsonl", rows)
    result = run_cli(["run", "enriched.jsonl", "--host", "local", "--rate", "0"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert "format snowplow (recognised by their rows, which look like a Snowplow enriched export" in result.stderr
    assert "10 = 10 + 0 + 0  ✓ balanced" in result.stdout
    for command in ("run", "inspect"):
        shown = run_cli([command, "--help"], tmp_path, env)
        listed = " ".join(shown.stdout.split())  # click wraps the help text
        assert ("one of: amplitude, csv, ga4, heap, jsonl, mixpanel, parquet, posthog, segment, snowplow. "
                "[default: auto]") in listed


def test_listing_the_formats_imports_no_adapter_and_loads_no_plugin(tmp_path):
    env = with_plugin(tmp_path / "plugins")
    probe = ("import sys, posthog_migrate.adapters; names = posthog_migrate.adapters.format_names(); "
             "loaded = sorted(m for m in sys.modules if m.startswith(('posthog_migrate.adapters.', 'pyarrow', "
             "'snowplow'))); "
             "print(names, loaded)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ("['amplitude', 'csv', 'ga4', 'heap', 'jsonl', 'mixpanel', 'parquet', 'posthog', "
                                     "'segment', 'snowplow'] []")
