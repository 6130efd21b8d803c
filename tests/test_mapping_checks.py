"""Nothing odd passes silently: misspelt mapping keys, NaN ids, decimals, implausible times, and inspect's count.

Issue 10, items 14, 16 and 20: a typo in the mapping file is an error naming the closest known key; a NaN
or infinite distinct_id is rejected (never sent as "nan"); a Parquet decimal is sent exactly; events before
2000 (or the floor set in [run] suspicious_before) are flagged by inspect and the run summary; and inspect's
"Events to send" counts the $identify events a run adds.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from posthog_migrate.adapters import adapter_class
from posthog_migrate.adapters.base import Adapter
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import Rejection, uuid_from_content
from posthog_migrate.mapping import ColumnMapping, RowMapper

from .conftest import PROJECT_ROOT, make_rows, read_received, run_cli, write_jsonl

SAMPLES = PROJECT_ROOT / "sample_data"


def write_toml(folder: Path, text: str) -> Path:
    path = folder / "mapping.toml"
    path.write_text(text, encoding="utf-8")
    return path


def received_events(folder: Path) -> list[dict]:
    [path] = folder.glob(".posthog-migrate/*/local-capture/events.jsonl")
    return read_received(path)


# --- item 14: every key of the mapping file is known, or an error ------------------------------------

@pytest.mark.parametrize(("table", "typo", "meant"), [
    ("columns", 'evnt = "action"', "event"),
    ("columns", 'timestamp_units = "ms"', "timestamp_unit"),
    ("properties", 'json_colum = "props"', "json_column"),
    ("person", 'set_onse = ["signup_date"]', "set_once"),
    ("filter", 'untill = "2024-01-01"', "until"),
    ("filter", 'drop_event = ["session_start"]', "drop_events"),
    ("transform", 'rename_event = { "a" = "b" }', "rename_events"),
])
def test_a_misspelt_key_in_a_mapping_table_is_an_error_naming_the_closest_key(tmp_path, table, typo, meant):
    path = write_toml(tmp_path, f"[{table}]\n{typo}\n")
    with pytest.raises(ConfigError) as caught:
        ColumnMapping.from_toml(path)
    message = str(caught.value)
    assert str(path) in message and f"[{table}]" in message
    assert f"(did you mean {meant!r}?)" in message
    assert meant in message.split("known keys are:")[1]  # the known keys are listed


def test_a_misspelt_section_and_run_key_suggest_the_closest_and_group_types_stay_free(tmp_path):
    with pytest.raises(ConfigError, match=r"'colums' \(did you mean 'columns'\?\)"):
        ColumnMapping.from_toml(write_toml(tmp_path, '[colums]\nevent = "a"\n'))
    # [groups] keys are group types, whatever they are called.
    mapping = ColumnMapping.from_toml(write_toml(tmp_path, '[groups]\ncompany = "company_id"\nteam = "team_id"\n'))
    assert mapping.groups == (("company", "company_id"), ("team", "team_id"))
    write_jsonl(tmp_path / "events.jsonl", make_rows(5))
    write_toml(tmp_path, "[run]\nbatchsize = 10\n")
    result = run_cli(["inspect", "events.jsonl", "--mapping", "mapping.toml", "-q"], tmp_path)
    assert result.returncode == 2 and "'batchsize' (did you mean 'batch_size'?)" in result.stderr


def test_the_until_typo_stops_the_run_before_anything_is_sent(tmp_path):
    rows = make_rows(200)  # 2024-03-01 .. 03-10; `until` would have kept the first day only
    write_jsonl(tmp_path / "events.jsonl", rows)
    write_toml(tmp_path, '[filter]\nuntill = "2024-03-02"\n')
    result = run_cli(["run", "events.jsonl", "--mapping", "mapping.toml", "--host", "local", "-q"], tmp_path)
    assert result.returncode == 2, result.stdout
    assert "[filter]: unknown key(s) 'untill' (did you mean 'until'?)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob(".posthog-migrate/*/local-capture/events.jsonl"))  # nothing sent


@pytest.mark.parametrize("format_name", ["csv", "jsonl", "parquet", "posthog", "amplitude"])
def test_formats_without_source_settings_refuse_any(format_name):
    mapping = ColumnMapping(source_options=(("group_type", "company"),))
    with pytest.raises(ConfigError, match=f"'group_type', which the {format_name} format does not know; "
                                          "it takes no settings"):
        adapter_class(format_name)(mapping)


def test_a_plugin_declares_the_source_settings_it_reads():
    class WarehouseAdapter(Adapter):
        name: ClassVar[str] = "warehouse"
        known_source_options: ClassVar[tuple[str, ...]] = ("table", "schema")

    accepted = WarehouseAdapter(ColumnMapping(source_options=(("schema", "raw"), ("table", "events"))))
    assert accepted.mapping.source_option("table") == "events"
    with pytest.raises(ConfigError, match=r"'tabel' \(did you mean 'table'\?\).*it knows: table, schema"):
        WarehouseAdapter(ColumnMapping(source_options=(("tabel", "events"),)))


def test_a_misspelt_source_setting_names_the_mapping_file_and_stops_the_run(tmp_path):
    shutil.copytree(SAMPLES / "segment" / "archive", tmp_path / "archive")
    write_toml(tmp_path, '[source]\ngroup_tipe = "company"\n')
    result = run_cli(["run", "archive", "--format", "segment", "--mapping", "mapping.toml", "--host", "local", "-q"],
                     tmp_path)
    assert result.returncode == 2
    assert "mapping file mapping.toml: the mapping's [source] table has 'group_tipe' (did you mean 'group_type'?)" \
        in result.stderr
    assert "it knows: group_type, tracks_table" in result.stderr


# --- item 16: NaN ids, decimals, implausible times --------------------------------------------------

def test_nan_and_infinite_distinct_ids_in_parquet_are_rejected_not_sent_as_nan(tmp_path):
    table = pa.table({
        "event": ["a", "b", "c", "d", "e"],
        "distinct_id": pa.array([12.0, math.nan, math.inf, -math.inf, math.nan], pa.float64()),
        "device_id": ["d1", "d2", "d3", "d4", None],
        "timestamp": ["2024-03-01T00:00:00Z"] * 5,
    })
    pq.write_table(table, tmp_path / "events.parquet")
    write_toml(tmp_path, '[columns]\ndistinct_id = "distinct_id"\n')
    result = run_cli(["run", "events.parquet", "--mapping", "mapping.toml", "--host", "local", "-q"], tmp_path)
    assert result.returncode == 3, result.stderr
    assert "5 = 1 + 4 + 0  ✓ balanced" in result.stdout
    assert [event["distinct_id"] for event in received_events(tmp_path)] == ["12"]
    [rejects] = tmp_path.glob(".posthog-migrate/*/rejects.jsonl")
    details = [json.loads(line)["detail"] for line in rejects.read_text().splitlines()]
    assert details[0] == "distinct_id is nan, a number that is no id (a missing value in the export?)"
    assert {json.loads(line)["reason"] for line in rejects.read_text().splitlines()} == {"missing_distinct_id"}


@pytest.mark.parametrize(("format_name", "record"), [
    ("jsonl", {"event": "a", "distinct_id": Decimal("NaN"), "timestamp": "2024-03-01T00:00:00Z"}),
    ("amplitude", {"event_type": "a", "user_id": math.nan, "device_id": "d1",
                   "event_time": "2024-03-01 00:00:00.000000"}),
    ("mixpanel", {"event": "a", "properties": {"distinct_id": math.inf, "time": 1709251200}}),
    ("posthog", {"event": "a", "distinct_id": math.nan, "timestamp": "2024-03-01T00:00:00Z"}),
])
def test_the_generic_mapper_and_the_platform_id_helpers_reject_nan_and_infinite_ids(format_name, record):
    with pytest.raises(Rejection) as caught:
        adapter_class(format_name)(ColumnMapping()).to_events(record)
    assert caught.value.reason == "missing_distinct_id"
    assert re.search(r"\b(nan|inf|NaN)\b", caught.value.detail)


def test_a_nan_user_id_beside_a_distinct_id_is_no_id_to_merge():
    mixpanel = adapter_class("mixpanel")(ColumnMapping())
    [event] = mixpanel.to_events({"event": "a", "properties": {"distinct_id": "u1", "$user_id": math.nan,
                                                               "$device_id": "d1", "time": 1709251200}})
    assert (event.distinct_id, event.link) == ("u1", None)  # never a ("nan", "d1") pair to $identify


def test_parquet_decimals_are_sent_as_exact_numbers_and_decimal_epochs_keep_their_digits(tmp_path):
    table = pa.table({
        "event": ["paid", "paid", "paid"],
        "distinct_id": ["u1", "u2", "u3"],
        # ns epochs: 19 digits, more than a float holds
        "timestamp": pa.array([Decimal("1709251200123456789"), Decimal("1709251200000000001"),
                               Decimal("1709251260999999999")], pa.decimal128(38, 0)),
        "amount": pa.array([Decimal("12345678901234567890.123456789"), Decimal("0.000000001"),
                            Decimal("9.500000000")], pa.decimal128(38, 9)),
    })
    pq.write_table(table, tmp_path / "payments.parquet")
    result = run_cli(["run", "payments.parquet", "--timestamp-unit", "ns", "--dry-run", "--out", "bodies",
                      "--concurrency", "1", "-q"], tmp_path)
    assert result.returncode == 0, result.stderr
    [body] = (tmp_path / "bodies").glob("batch-*.json")
    text = body.read_text()
    assert '"amount":12345678901234567890.123456789' in text and '"amount":0.000000001' in text
    assert '"amount":9.5,' in text  # the column's scale is not part of the value
    events = {e["distinct_id"]: e for e in json.loads(text, parse_float=Decimal)["batch"]}
    assert events["u1"]["properties"]["amount"] == Decimal("12345678901234567890.123456789")
    assert [events[user]["timestamp"] for user in ("u1", "u2", "u3")] == [
        "2024-03-01T00:00:00.123456Z", "2024-03-01T00:00:00.000000Z", "2024-03-01T00:01:00.999999Z"]
    # A decimal a float holds exactly keeps the content-derived uuid it had when decimals became floats.
    assert (uuid_from_content("generic", "u", 0, "paid", {"amount": Decimal("9.500000000")})
            == uuid_from_content("generic", "u", 0, "paid", {"amount": 9.5}))


def _suspicious_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if "events dated before" in line]


def test_events_before_2000_are_flagged_by_inspect_and_the_run_summary_with_a_floor_to_move(tmp_path):
    rows = make_rows(20)
    for row, epoch in zip(rows, (0, 1, -1_700_000_000), strict=False):  # 1970, 1970, 1916
        row["timestamp"] = epoch
    write_jsonl(tmp_path / "events.jsonl", rows)
    inspected = run_cli(["inspect", "events.jsonl", "-q"], tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    [line] = _suspicious_lines(inspected.stdout)
    assert line.startswith("3  events dated before 2000-01-01: suspicious")
    assert "[filter] since" in line and "[run] suspicious_before" in line
    assert "Warnings:" in inspected.stdout
    ran = run_cli(["run", "events.jsonl", "--host", "local", "--workdir", "job", "-q"], tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert _suspicious_lines(ran.stdout) == [line]
    assert len(read_received(tmp_path / "job" / "local-capture" / "events.jsonl")) == 20  # flagged, not dropped
    manifest = orjson.loads((tmp_path / "job" / "manifest.json").read_bytes())
    assert list(manifest["stats"]["warnings"].values()) == [3]
    write_toml(tmp_path, '[run]\nsuspicious_before = "1960-01-01"\n')
    moved = run_cli(["inspect", "events.jsonl", "--mapping", "mapping.toml", "-q"], tmp_path)
    assert [line[:33] for line in _suspicious_lines(moved.stdout)] == ["1  events dated before 1960-01-01"]
    write_toml(tmp_path, '[run]\nsuspicious_before = "a while ago"\n')
    refused = run_cli(["inspect", "events.jsonl", "--mapping", "mapping.toml", "-q"], tmp_path)
    assert refused.returncode == 2 and "suspicious_before = 'a while ago' is not a date" in refused.stderr


# --- item 20: inspect counts what run sends -------------------------------------------------------------

def _events_to_send(output: str) -> int:
    return int(re.search(r"Events to send:\s+([\d,]+)", output).group(1).replace(",", ""))


def test_inspect_counts_the_identify_events_run_adds(tmp_path):
    shutil.copytree(SAMPLES / "amplitude", tmp_path / "amplitude")
    inspected = run_cli(["inspect", "amplitude/export.zip", "--format", "amplitude", "-q"], tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert "Events to send:    1,670 (including 667 added" in inspected.stdout  # 643 $groupidentify + 24 $identify
    ran = run_cli(["run", "amplitude/export.zip", "--format", "amplitude", "--host", "local", "--rate", "0", "-q"],
                  tmp_path)
    assert "Events sent:       1,670 in" in ran.stdout
    assert len(received_events(tmp_path)) == 1_670


def test_inspect_counts_identify_events_beyond_its_memory_for_pairs(tmp_path):
    # 2,500 (userId, anonymousId) pairs, more than the 1,000 the smallest memory budget keeps before spilling.
    messages = [{"type": "track", "event": "note_created", "messageId": f"m{n}", "userId": f"user-{n}",
                 "anonymousId": f"anon-{n}", "timestamp": f"2024-03-01T00:{n % 60:02d}:00Z"} for n in range(2_500)]
    messages += messages[:100]  # pairs seen twice are identified once
    write_jsonl(tmp_path / "messages.jsonl", messages)
    write_toml(tmp_path, '[run]\nmemory = "1MiB"\n')
    args = ["messages.jsonl", "--format", "segment", "--mapping", "mapping.toml", "-q"]
    inspected = run_cli(["inspect", *args], tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert _events_to_send(inspected.stdout) == 2_600 + 2_500
    ran = run_cli(["run", *args, "--dry-run"], tmp_path)
    assert "Events written:    5,100 in" in ran.stdout


@pytest.mark.parametrize(("readme", "args"), [
    ("amplitude/README.md", ["amplitude/export.zip", "--format", "amplitude"]),
    ("mixpanel/README.md", ["mixpanel/export-2024-03.jsonl.gz", "--format", "mixpanel"]),
    ("mixpanel/README.md", ["mixpanel/legacy-2022-11.jsonl", "--format", "mixpanel",
                            "--source-timezone", "America/Los_Angeles"]),
    ("mixpanel/README.md", ["mixpanel/export-2024-03.jsonl.gz", "mixpanel/people-2024-03.json", "--format",
                            "mixpanel"]),
    ("segment/README.md", ["segment/archive", "--format", "segment"]),
    ("segment/README.md", ["segment/warehouse", "--format", "segment"]),
    ("ga4/README.md", ["ga4/events_20240308.jsonl.gz", "ga4/events_20240309.parquet", "--format", "ga4"]),
    ("heap/README.md", ["heap/tables", "--format", "heap", "--mapping", "heap/mapping.toml"]),
])
def test_the_sample_readmes_state_the_events_inspect_counts(readme, args):
    inspected = run_cli(["inspect", *args, "-q"], SAMPLES)  # inspect writes nothing
    assert inspected.returncode == 0, inspected.stderr
    text = " ".join((SAMPLES / readme).read_text().split())  # the README wraps its lines anywhere
    assert f"{_events_to_send(inspected.stdout):,} events to send" in text


def test_the_generic_mapper_reads_a_decimal_id_as_the_number_it_is():
    event = RowMapper(ColumnMapping()).map({"event": "a", "distinct_id": Decimal("42.000000000"),
                                            "timestamp": "2024-03-01T00:00:00Z"})
    assert event.distinct_id == "42"  # as the platform adapters read it; before, "42.000000000"
