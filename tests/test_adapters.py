"""The adapters read real files written in tmp_path: CSV, JSON lines, Parquet and PostHog exports.

Rules: row numbers count records (not lines; a CSV header is not a record, blank lines are nothing),
a row that cannot be read is a BadRow with its number, a file that is not in the format at all is a
ConfigError that points at --format, and values are never corrupted on the way (zip codes stay text).
"""

from __future__ import annotations

import gzip
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import posthog_migrate.adapters.csv as csv_module
import posthog_migrate.adapters.parquet as parquet_module
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from posthog_migrate.adapters import (
    BUILTIN_ADAPTERS,
    BadRow,
    SourceFile,
    adapter_class,
    available_adapters,
    detect_format,
)
from posthog_migrate.adapters.base import open_binary
from posthog_migrate.adapters.csv import CsvAdapter, infer_scalar, read_csv
from posthog_migrate.adapters.jsonl import JsonLinesAdapter, read_json_lines
from posthog_migrate.adapters.parquet import ParquetAdapter, read_parquet
from posthog_migrate.adapters.posthog import PostHogAdapter
from posthog_migrate.errors import ConfigError
from posthog_migrate.event import Event, Rejection, parse_timestamp, uuid_from_content, validate
from posthog_migrate.mapping import ColumnMapping, Filtered

TS = "2024-04-03T12:00:00.123456Z"
T = parse_timestamp(TS)
NOW = parse_timestamp("2024-06-01T00:00:00Z")
SOURCE_UUID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def source(path: Path, index: int = 0) -> SourceFile:
    return SourceFile(str(path), index, path.stat().st_size, path.stat().st_mtime_ns)


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def rows_of(chunks) -> list[tuple[int, dict | BadRow]]:
    return [item for chunk in chunks for item in chunk]


def jsonl(*objects) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objects)


# --- base: open_binary ------------------------------------------------------------------------------

def test_open_binary_reads_plain_and_gzip_files(tmp_path):
    data = b"hello\nworld\n"
    assert open_binary(str(write(tmp_path / "a.txt", data))).read() == data
    assert open_binary(str(write(tmp_path / "a.txt.gz", gzip.compress(data)))).read() == data


def test_open_binary_detects_gzip_by_magic_bytes_not_the_name(tmp_path):
    data = b"hello\n"
    assert open_binary(str(write(tmp_path / "renamed.jsonl", gzip.compress(data)))).read() == data
    # and a plain file that only carries a .gz name is read as it is
    assert open_binary(str(write(tmp_path / "plain.jsonl.gz", data))).read() == data


def test_open_binary_reads_concatenated_gzip_members(tmp_path):
    path = write(tmp_path / "multi.gz", gzip.compress(b"one\n") + gzip.compress(b"two\n"))
    assert open_binary(str(path)).read() == b"one\ntwo\n"


def test_open_binary_accepts_a_relative_path(tmp_path, monkeypatch):
    write(tmp_path / "rel.txt", b"x")
    monkeypatch.chdir(tmp_path)
    assert open_binary("rel.txt").read() == b"x"


def test_open_binary_empty_file(tmp_path):
    assert open_binary(str(write(tmp_path / "empty", b""))).read() == b""


@pytest.mark.parametrize("without_isal", [False, True])
def test_corrupt_or_truncated_gzip_is_a_config_error_naming_the_file(tmp_path, monkeypatch, without_isal):
    if without_isal:
        monkeypatch.setitem(sys.modules, "isal", None)  # the stdlib fallback must behave the same
    data = gzip.compress(b"".join(b'{"event":"e","n":%d}\n' % i for i in range(20_000)))
    truncated = write(tmp_path / "truncated.jsonl.gz", data[: len(data) // 2])
    with pytest.raises(ConfigError, match="truncated.jsonl.gz.*corrupt or truncated"):
        rows_of(read_json_lines(source(truncated)))
    junk = write(tmp_path / "junk.csv", b"\x1f\x8bnot gzip at all\n")
    with pytest.raises(ConfigError, match="junk.csv"):
        rows_of(read_csv(source(junk)))
    good = write(tmp_path / "good.jsonl.gz", gzip.compress(jsonl({"a": 1})))
    assert rows_of(read_json_lines(source(good))) == [(1, {"a": 1})]


# --- registry and detect_format ---------------------------------------------------------------------

@pytest.mark.parametrize(("uri", "expected"), [
    ("x.csv", "csv"), ("x.csv.gz", "csv"), ("X.CSV.GZ", "csv"), ("x.tsv", "csv"), ("x.csv.gzip", "csv"),
    ("x.jsonl", "jsonl"), ("x.ndjson", "jsonl"), ("x.json", "jsonl"), ("x.jsonl.gz", "jsonl"),
    ("/data/2024/part-1.ndjson.gz", "jsonl"), ("s3://bucket/a/b.parquet", "parquet"),
    ("x.parquet", "parquet"), ("x.pq", "parquet"),
    ("x.txt", None), ("x.gz", None), ("x", None), ("x.csv.zip", None), ("csv", None), ("x.avro", None),
])
def test_detect_format_by_file_ending(uri, expected):
    assert detect_format(uri) == expected


def test_registry_lists_the_builtin_adapters_and_refuses_unknown_formats():
    assert set(BUILTIN_ADAPTERS) == {"csv", "jsonl", "parquet", "posthog"}
    assert available_adapters()["posthog"] is PostHogAdapter
    assert adapter_class("csv") is CsvAdapter
    with pytest.raises(ConfigError, match="unknown format 'xml'.*csv.*jsonl.*parquet.*posthog"):
        adapter_class("xml")


def test_posthog_format_is_never_guessed_from_a_name():
    assert PostHogAdapter.extensions == ()
    assert detect_format("posthog-export.jsonl") == "jsonl"


# --- CSV --------------------------------------------------------------------------------------------

CSV_TEXT = f"event,distinct_id,timestamp,plan,zip,count\nsigned up,user-1,{TS},pro,02134,42\n"


def test_csv_plain_file(tmp_path):
    rows = rows_of(read_csv(source(write(tmp_path / "e.csv", CSV_TEXT))))
    assert rows == [(1, {"event": "signed up", "distinct_id": "user-1", "timestamp": TS, "plan": "pro",
                         "zip": "02134", "count": 42})]


def test_csv_gzip_file(tmp_path):
    rows = rows_of(read_csv(source(write(tmp_path / "e.csv.gz", gzip.compress(CSV_TEXT.encode())))))
    assert rows[0][1]["count"] == 42


def test_csv_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = write(tmp_path / "bom.csv", b"\xef\xbb\xbf" + CSV_TEXT.encode())
    rows = rows_of(read_csv(source(path)))
    assert "event" in rows[0][1]
    assert CsvAdapter(ColumnMapping()).columns(source(path))[0] == "event"


def test_csv_quoted_newlines_are_one_record_and_row_numbers_count_records(tmp_path):
    text = 'event,note\na,"line one\nline two"\nb,"x, ""quoted"""\n\nc,plain\n'
    rows = rows_of(read_csv(source(write(tmp_path / "q.csv", text))))
    assert rows == [
        (1, {"event": "a", "note": "line one\nline two"}),
        (2, {"event": "b", "note": 'x, "quoted"'}),
        (3, {"event": "c", "note": "plain"}),
    ]


def test_csv_crlf_line_endings(tmp_path):
    rows = rows_of(read_csv(source(write(tmp_path / "w.csv", "event,n\r\na,1\r\nb,2\r\n"))))
    assert rows == [(1, {"event": "a", "n": 1}), (2, {"event": "b", "n": 2})]


def test_csv_wrong_field_count_is_a_bad_row_with_the_right_row_number(tmp_path):
    text = "event,distinct_id\na,u1\nb,u2,extra\n\nc\nd,u4\n"
    rows = rows_of(read_csv(source(write(tmp_path / "w.csv", text))))
    assert [number for number, _ in rows] == [1, 2, 3, 4]
    assert rows[0] == (1, {"event": "a", "distinct_id": "u1"})
    for number in (2, 3):
        bad = rows[number - 1][1]
        assert isinstance(bad, BadRow)
        assert bad.reason == "wrong_field_count"
    assert rows[1][1].detail == "3 fields, the header has 2"
    assert rows[1][1].raw == "b,u2,extra"
    assert rows[3] == (4, {"event": "d", "distinct_id": "u4"})


def test_csv_invalid_utf8_is_a_bad_row_and_its_raw_text_can_be_written_as_json(tmp_path):
    data = b"event,name\na,Jos\xe9\nb,ok\nc,\xff\xfe,extra\n"
    rows = rows_of(read_csv(source(write(tmp_path / "latin1.csv", data))))
    assert rows[1] == (2, {"event": "b", "name": "ok"})
    bad = rows[0][1]
    assert (rows[0][0], bad.reason) == (1, "bad_encoding")
    assert bad.raw == "a,Jos\ufffd"
    wrong = rows[2][1]
    assert (rows[2][0], wrong.reason) == (3, "wrong_field_count")
    for row in (bad, wrong):
        orjson.dumps(row.raw)  # no lone surrogates: the rejects file can hold it


@pytest.mark.parametrize("rows", [1, 100])
def test_parquet_file_read_as_csv_is_a_config_error(tmp_path, rows):
    # a small Parquet file's first "line" is valid UTF-8: b"PAR1\x15\x04\x15" then a newline byte
    parquet = tmp_path / "really.parquet"
    pq.write_table(pa.table({"event": [f"e{i}" for i in range(rows)]}), parquet)
    with pytest.raises(ConfigError, match="--format"):
        rows_of(read_csv(SourceFile(str(parquet), 0, 0, 0)))


def test_csv_header_with_invalid_utf8_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a UTF-8 CSV header"):
        rows_of(read_csv(source(write(tmp_path / "e.csv", b"ev\xffent,b\na,b\n"))))


@pytest.mark.parametrize(("text", "expected"), [
    ("42", 42), ("0", 0), ("-7", -7), ("123456789012345678", 123456789012345678),
    ("1.5", 1.5), ("-0.25", -0.25), ("0.000001", 0.000001), ("true", True), ("false", False),
    ("02134", "02134"), ("1e5", "1e5"), ("1.50", "1.50"), ("1.", "1."), (".5", ".5"), ("+1", "+1"),
    ("-0", "-0"), ("00", "00"), ("1234567890123456789", "1234567890123456789"),
    ("12345678901234567.5", "12345678901234567.5"),  # a float would silently round it
    ("True", "True"), ("TRUE", "TRUE"), ("null", "null"), ("NaN", "NaN"), ("inf", "inf"), (" 42", " 42"),
    ("1,000", "1,000"), ("0x1F", "0x1F"), ("", ""),
])
def test_csv_canonical_number_inference(text, expected):
    value = infer_scalar(text)
    assert value == expected
    assert type(value) is type(expected)


def test_csv_empty_cells_are_absent(tmp_path):
    rows = rows_of(read_csv(source(write(tmp_path / "e.csv", 'event,a,b,c\nx,,"",0\n'))))
    assert rows == [(1, {"event": "x", "c": 0})]


def test_csv_without_type_inference_keeps_text(tmp_path):
    rows = rows_of(read_csv(source(write(tmp_path / "e.csv", CSV_TEXT)), infer_types=False))
    assert rows[0][1]["count"] == "42"


def test_csv_empty_file_and_header_only_file_have_no_rows(tmp_path):
    assert rows_of(read_csv(source(write(tmp_path / "empty.csv", "")))) == []
    assert rows_of(read_csv(source(write(tmp_path / "header.csv", "event,distinct_id\n")))) == []


def test_tsv_file_is_split_on_tabs(tmp_path):
    path = write(tmp_path / "e.tsv", "event\tdistinct_id\tnote\na\tu1\thas, comma\n")
    assert rows_of(read_csv(source(path))) == [(1, {"event": "a", "distinct_id": "u1", "note": "has, comma"})]
    assert CsvAdapter(ColumnMapping()).columns(source(path)) == ["event", "distinct_id", "note"]
    gz = write(tmp_path / "e.tsv.gz", gzip.compress(b"event\tn\nb\t2\n"))
    assert rows_of(read_csv(source(gz))) == [(1, {"event": "b", "n": 2})]


def test_csv_rows_are_numbered_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_module, "ROWS_PER_CHUNK", 3)
    path = write(tmp_path / "many.csv", "event,n\n" + "".join(f"e,{i}\n" for i in range(1, 11)))
    chunks = list(read_csv(source(path)))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [(number, row["n"]) for chunk in chunks for number, row in chunk] == [(i, i) for i in range(1, 11)]


def test_csv_adapter_columns_and_to_events(tmp_path):
    path = write(tmp_path / "e.csv", CSV_TEXT)
    adapter = CsvAdapter(ColumnMapping())
    assert adapter.columns(source(path)) == ["event", "distinct_id", "timestamp", "plan", "zip", "count"]
    [(_, record)] = rows_of(adapter.read(source(path)))
    [event] = adapter.to_events(record)
    assert (event.event, event.distinct_id, event.timestamp_us) == ("signed up", "user-1", T)
    assert event.properties == {"plan": "pro", "zip": "02134", "count": 42}
    validate(event, NOW)


def test_same_rows_as_csv_and_json_lines_give_the_same_uuids(tmp_path):
    csv_path = write(tmp_path / "e.csv", CSV_TEXT)
    json_path = write(tmp_path / "e.jsonl", jsonl({"event": "signed up", "distinct_id": "user-1", "timestamp": TS,
                                                   "plan": "pro", "zip": "02134", "count": 42}))
    [(_, from_csv)] = rows_of(read_csv(source(csv_path)))
    [(_, from_json)] = rows_of(read_json_lines(source(json_path)))
    mapping = ColumnMapping()
    assert CsvAdapter(mapping).to_events(from_csv)[0].uuid == JsonLinesAdapter(mapping).to_events(from_json)[0].uuid


# --- JSON lines ---------------------------------------------------------------------------------------

ROW_A = {"event": "a", "distinct_id": "u1", "timestamp": TS}
ROW_B = {"event": "b", "distinct_id": "u2", "timestamp": TS, "properties": {"x": [1, {"y": None}]}}


def test_jsonl_plain_file(tmp_path):
    rows = rows_of(read_json_lines(source(write(tmp_path / "e.jsonl", jsonl(ROW_A, ROW_B)))))
    assert rows == [(1, ROW_A), (2, ROW_B)]


def test_jsonl_gzip_file(tmp_path):
    path = write(tmp_path / "e.jsonl.gz", gzip.compress(jsonl(ROW_A, ROW_B)))
    assert rows_of(read_json_lines(source(path))) == [(1, ROW_A), (2, ROW_B)]


def test_jsonl_gzip_detected_by_magic_bytes_without_gz_name(tmp_path):
    path = write(tmp_path / "export_2024_01_01", gzip.compress(jsonl(ROW_A, ROW_B)))
    assert rows_of(read_json_lines(source(path))) == [(1, ROW_A), (2, ROW_B)]


def test_jsonl_blank_lines_are_skipped_and_not_counted(tmp_path):
    data = b"\n" + orjson.dumps(ROW_A) + b"\n\n   \n\t\r\n" + orjson.dumps(ROW_B) + b"\n\n"
    assert rows_of(read_json_lines(source(write(tmp_path / "e.jsonl", data)))) == [(1, ROW_A), (2, ROW_B)]


def test_jsonl_crlf_and_missing_final_newline(tmp_path):
    data = orjson.dumps(ROW_A) + b"\r\n" + orjson.dumps(ROW_B)
    assert rows_of(read_json_lines(source(write(tmp_path / "e.jsonl", data)))) == [(1, ROW_A), (2, ROW_B)]


def test_jsonl_byte_order_mark_does_not_spoil_the_first_row(tmp_path):
    path = write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + jsonl(ROW_A, ROW_B))
    assert rows_of(read_json_lines(source(path))) == [(1, ROW_A), (2, ROW_B)]


def test_jsonl_truncated_line_is_a_bad_row_invalid_json(tmp_path):
    data = jsonl(ROW_A, ROW_B) + b'{"event": "c", "distinct_id": "u'
    rows = rows_of(read_json_lines(source(write(tmp_path / "e.jsonl", data))))
    number, bad = rows[2]
    assert number == 3
    assert isinstance(bad, BadRow)
    assert bad.reason == "invalid_json"
    assert bad.raw == '{"event": "c", "distinct_id": "u'


def test_jsonl_invalid_utf8_line_is_a_bad_row(tmp_path):
    data = jsonl(ROW_A) + b'{"event": "\xff"}\n' + jsonl(ROW_B)
    rows = rows_of(read_json_lines(source(write(tmp_path / "e.jsonl", data))))
    assert rows[1][1].reason == "invalid_json"
    orjson.dumps(rows[1][1].raw)
    assert rows[2] == (3, ROW_B)


@pytest.mark.parametrize(("line", "kind"), [(b"[1, 2]", "list"), (b"42", "int"), (b'"text"', "str"),
                                            (b"null", "NoneType"), (b"true", "bool")])
def test_jsonl_line_that_is_not_an_object_is_a_bad_row(tmp_path, line, kind):
    data = jsonl(ROW_A) + line + b"\n" + jsonl(ROW_B)
    rows = rows_of(read_json_lines(source(write(tmp_path / "e.jsonl", data))))
    assert [n for n, _ in rows] == [1, 2, 3]
    bad = rows[1][1]
    assert isinstance(bad, BadRow)
    assert bad.reason == "not_an_object"
    assert kind in bad.detail
    assert bad.raw == orjson.loads(line)


def test_jsonl_file_that_is_one_json_array(tmp_path):
    indented = orjson.dumps(ROW_A, option=orjson.OPT_INDENT_2)
    pretty = b"  \n[\n  " + indented + b",\n  7,\n" + orjson.dumps(ROW_B) + b"\n]\n"
    rows = rows_of(read_json_lines(source(write(tmp_path / "e.json", pretty))))
    assert rows[0] == (1, ROW_A)
    assert rows[1][0] == 2 and isinstance(rows[1][1], BadRow) and rows[1][1].reason == "not_an_object"
    assert rows[2] == (3, ROW_B)
    gz = write(tmp_path / "e.json.gz", gzip.compress(pretty))
    assert rows_of(read_json_lines(source(gz))) == rows


def test_jsonl_broken_json_array_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid JSON"):
        rows_of(read_json_lines(source(write(tmp_path / "e.json", b'[{"event": "a"}, {"ev'))))


def test_non_json_file_is_a_config_error_from_the_first_rows(tmp_path):
    csv_text = "event,distinct_id,timestamp\n" + "".join(f"e,u{i},{TS}\n" for i in range(30))
    with pytest.raises(ConfigError, match="--format"):
        rows_of(read_json_lines(source(write(tmp_path / "e.jsonl", csv_text))))
    with pytest.raises(ConfigError, match="not JSON objects"):
        rows_of(read_json_lines(source(write(tmp_path / "short.jsonl", "a,b\nc,d\ne,f\n"))))
    with pytest.raises(ConfigError):
        JsonLinesAdapter(ColumnMapping()).columns(source(tmp_path / "e.jsonl"))


def test_parquet_file_read_as_json_lines_is_a_config_error(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"event": [f"e{i}" for i in range(100)], "n": list(range(100))}), path)
    with pytest.raises(ConfigError):
        rows_of(read_json_lines(source(path)))


def test_a_few_bad_lines_among_good_ones_are_bad_rows_not_a_config_error(tmp_path):
    data = b"garbage\n" * 5 + jsonl(ROW_A) + b"garbage\n" * 30
    rows = rows_of(read_json_lines(source(write(tmp_path / "e.jsonl", data))))
    assert len(rows) == 36
    assert rows[5] == (6, ROW_A)


def test_jsonl_empty_file(tmp_path):
    path = write(tmp_path / "empty.jsonl", b"")
    assert rows_of(read_json_lines(source(path))) == []
    assert JsonLinesAdapter(ColumnMapping()).columns(source(path)) is None


def test_jsonl_columns_are_the_keys_of_the_first_rows(tmp_path):
    path = write(tmp_path / "e.jsonl", jsonl(ROW_A, ROW_B, {"other": 1}))
    assert JsonLinesAdapter(ColumnMapping()).columns(source(path)) == [
        "distinct_id", "event", "other", "properties", "timestamp"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.lists(st.binary(max_size=60) | st.text(max_size=60).map(str.encode), min_size=1, max_size=6))
def test_read_json_lines_yields_only_dicts_or_bad_rows_for_junk_lines(tmp_path, junk):
    lines = [orjson.dumps(ROW_A)] + [j.replace(b"\n", b" ") for j in junk] + [orjson.dumps(ROW_B)]
    path = write(tmp_path / "junk.jsonl", b"\n".join(lines) + b"\n")
    rows = rows_of(read_json_lines(source(path)))
    expected = [line for line in lines if line.strip()]
    assert [n for n, _ in rows] == list(range(1, len(expected) + 1))
    for _, record in rows:
        assert isinstance(record, dict | BadRow)
    assert rows[0] == (1, ROW_A)
    assert rows[-1][1] == ROW_B


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_read_json_lines_on_any_bytes_yields_dicts_or_bad_rows_or_refuses_the_file(tmp_path, data):
    path = write(tmp_path / "any.jsonl", data)
    try:
        rows = rows_of(read_json_lines(source(path)))
    except ConfigError:
        return  # the whole file refused with a message: not JSON lines, a broken array, or broken gzip
    for _, record in rows:
        assert isinstance(record, dict | BadRow)


# --- Parquet ---------------------------------------------------------------------------------------

def write_parquet(path: Path, table: pa.Table, **options) -> Path:
    pq.write_table(table, path, **options)
    return path


def test_parquet_types_nulls_and_nested_structs(tmp_path):
    table = pa.table({
        "event": pa.array(["a", "b"]),
        "distinct_id": pa.array([1, None], pa.int64()),
        "ts_utc": pa.array([datetime(2024, 4, 3, 12, 0, 0, 123456), None], pa.timestamp("us", tz="UTC")),
        "ts_ny": pa.array([datetime(2024, 7, 1, 12, 0), datetime(2024, 1, 1, 12)],
                          pa.timestamp("ms", tz="America/New_York")),
        "ts_naive": pa.array([datetime(2024, 4, 3, 12), None], pa.timestamp("us")),
        "day": pa.array([date(2024, 4, 3), None], pa.date32()),
        "price": pa.array([Decimal("9.50"), None], pa.decimal128(10, 2)),
        "ratio": pa.array([0.5, float("nan")], pa.float64()),
        "flag": pa.array([True, None], pa.bool_()),
        "blob": pa.array([b"\x00\x01", None], pa.binary()),
        "tags": pa.array([["x", "y"], []], pa.list_(pa.string())),
        "ctx": pa.array([{"page": {"url": "https://e.com", "n": 1}}, None],
                        pa.struct([("page", pa.struct([("url", pa.string()), ("n", pa.int32())]))])),
    })
    path = write_parquet(tmp_path / "t.parquet", table)
    rows = rows_of(read_parquet(source(path)))
    assert [n for n, _ in rows] == [1, 2]
    first, second = rows[0][1], rows[1][1]
    assert first["event"] == "a" and first["distinct_id"] == 1 and second["distinct_id"] is None
    assert first["ts_utc"] == datetime(2024, 4, 3, 12, 0, 0, 123456, tzinfo=UTC)
    assert first["ts_ny"] == datetime(2024, 7, 1, 12, 0, tzinfo=UTC)  # the same instant
    assert first["day"] == date(2024, 4, 3)
    assert first["price"] == Decimal("9.50")
    assert first["ctx"] == {"page": {"url": "https://e.com", "n": 1}}
    assert second["ctx"] is None and second["ts_utc"] is None
    assert ParquetAdapter(ColumnMapping()).columns(source(path)) == table.column_names


def test_parquet_timestamps_with_timezone_map_to_the_right_instant(tmp_path):
    new_york = ZoneInfo("America/New_York")
    table = pa.table({
        "event": ["a", "b"], "distinct_id": ["u", "u"],
        "timestamp": pa.array(
            [datetime(2024, 3, 10, 3, 30, tzinfo=new_york), datetime(2024, 11, 3, 12, tzinfo=new_york)],
            pa.timestamp("us", tz="America/New_York"),
        ),
        "props": pa.array([{"k": 1}, {"k": 2}], pa.struct([("k", pa.int8())])),
        "price": pa.array([Decimal("1.25"), Decimal("3")], pa.decimal128(5, 2)),
        "when": pa.array([date(2024, 1, 1)] * 2, pa.date32()),
        "raw": pa.array([b"ab", b"cd"], pa.binary()),
    })
    path = write_parquet(tmp_path / "t.parquet", table)
    adapter = ParquetAdapter(ColumnMapping(timezone="Asia/Tokyo"))  # ignored: the values carry their zone
    events = [adapter.to_events(record)[0] for _, record in rows_of(adapter.read(source(path)))]
    assert [e.timestamp_us for e in events] == [parse_timestamp("2024-03-10T07:30:00Z"),
                                                parse_timestamp("2024-11-03T17:00:00Z")]
    decoded = orjson.loads(validate(events[0], NOW))
    assert decoded["properties"] == {"props": {"k": 1}, "price": 1.25, "when": "2024-01-01", "raw": "ab"}


def test_parquet_naive_timestamps_are_read_in_the_mapping_timezone(tmp_path):
    table = pa.table({"event": ["a"], "distinct_id": ["u"],
                      "timestamp": pa.array([datetime(2024, 7, 1, 8)], pa.timestamp("us"))})
    path = write_parquet(tmp_path / "t.parquet", table)
    adapter = ParquetAdapter(ColumnMapping(timezone="America/New_York"))
    [(_, record)] = rows_of(adapter.read(source(path)))
    assert adapter.to_events(record)[0].timestamp_us == parse_timestamp("2024-07-01T12:00:00Z")


def test_parquet_nanosecond_timestamps_are_read_not_a_crash(tmp_path):
    ns = 1_700_000_000_123_456_789
    table = pa.table({
        "event": ["a", "b"], "distinct_id": ["u", "u"],
        "timestamp": pa.array([ns, None], pa.timestamp("ns", tz="UTC")),
        "local": pa.array([ns, ns], pa.timestamp("ns")),
    })
    path = write_parquet(tmp_path / "ns.parquet", table, coerce_timestamps=None, version="2.6")
    assert pq.read_schema(path).field("timestamp").type.unit == "ns"
    rows = rows_of(read_parquet(source(path)))
    assert rows[0][1]["timestamp"] == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert rows[0][1]["local"] == datetime(2023, 11, 14, 22, 13, 20, 123456)
    assert rows[1][1]["timestamp"] is None
    assert ParquetAdapter(ColumnMapping()).to_events(rows[0][1])[0].timestamp_us == ns // 1000


def test_parquet_row_numbers_continue_across_record_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_module, "ROWS_PER_CHUNK", 4)
    table = pa.table({"event": [f"e{i}" for i in range(1, 12)], "n": list(range(1, 12))})
    path = write_parquet(tmp_path / "many.parquet", table, row_group_size=3)
    chunks = list(read_parquet(source(path)))
    assert len(chunks) > 1
    assert [(number, row["n"]) for chunk in chunks for number, row in chunk] == [(i, i) for i in range(1, 12)]


def test_csv_file_read_as_parquet_is_a_config_error(tmp_path):
    path = write(tmp_path / "e.parquet", CSV_TEXT)
    with pytest.raises(ConfigError, match="not a readable Parquet file.*--format"):
        rows_of(read_parquet(source(path)))
    with pytest.raises(ConfigError):
        ParquetAdapter(ColumnMapping()).columns(source(path))


def test_missing_parquet_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        rows_of(read_parquet(SourceFile(str(tmp_path / "nope.parquet"), 0, 0, 0)))


def test_empty_parquet_file_has_no_rows(tmp_path):
    path = write_parquet(tmp_path / "empty.parquet", pa.table({"event": pa.array([], pa.string())}))
    assert rows_of(read_parquet(source(path))) == []


# --- PostHog exports ------------------------------------------------------------------------------

POSTHOG_EVENT = {
    "uuid": SOURCE_UUID.upper(),
    "event": "$autocapture",
    "distinct_id": "user-1",
    "timestamp": TS,
    "properties": {"$current_url": "https://e.com", "token": "phc_oldproject", "distinct_id": "user-1"},
    "elements_chain": "a:href=\"/x\"nth-child=\"1\"",
    "team_id": 2,
    "person_id": "018f0000-0000-0000-0000-000000000000",
    "sent_at": "2024-04-03T12:00:05Z",
    "offset": 100,
    "ip": "203.0.113.7",
    "$set": {"email": "a@b.c"},
}


def posthog_events(path: Path, mapping: ColumnMapping | None = None) -> list:
    adapter = PostHogAdapter(mapping or ColumnMapping())
    results = []
    for _, record in rows_of(adapter.read(source(path))):
        try:
            results.extend(adapter.to_events(record))
        except (Rejection, Filtered) as outcome:
            results.append(outcome)
    return results


def test_posthog_jsonl_export_keeps_uuid_and_drops_the_old_projects_fields(tmp_path):
    [event] = posthog_events(write(tmp_path / "export.jsonl", jsonl(POSTHOG_EVENT)))
    assert event.uuid == SOURCE_UUID
    assert (event.event, event.distinct_id, event.timestamp_us) == ("$autocapture", "user-1", T)
    assert event.properties == {
        "$current_url": "https://e.com",
        "$set": {"email": "a@b.c"},
        "$elements_chain": POSTHOG_EVENT["elements_chain"],
        "$ip": "203.0.113.7",
    }
    payload = validate(event, NOW)
    for dropped in (b"phc_oldproject", b"team_id", b"person_id", b"sent_at", b"offset", b"018f0000"):
        assert dropped not in payload


def test_posthog_csv_export_parses_properties_and_keeps_ids_as_text(tmp_path):
    header = "uuid,event,properties,timestamp,distinct_id,elements_chain,person_id,team_id,$session_id\n"
    properties = '"{""$browser"": ""Chrome"", ""n"": 1, ""token"": ""phc_old""}"'
    text = (header + f"{SOURCE_UUID},$pageview,{properties},2024-04-03 12:00:00.123456+00:00,00123,"
            f"div:nth-child=\"1\",018f0000-0000-0000-0000-000000000000,2,s1\n")
    for name, data in (("export.csv", text.encode()), ("export.csv.gz", gzip.compress(text.encode()))):
        [event] = posthog_events(write(tmp_path / name, data))
        assert event.uuid == SOURCE_UUID
        assert event.distinct_id == "00123"
        assert event.timestamp_us == T
        assert event.properties == {"$browser": "Chrome", "n": 1, "$elements_chain": 'div:nth-child="1"'}
    assert PostHogAdapter(ColumnMapping()).columns(source(tmp_path / "export.csv"))[:3] == [
        "uuid", "event", "properties"]
    assert PostHogAdapter(ColumnMapping()).columns(source(write(tmp_path / "e.jsonl", jsonl(ROW_A)))) is None


def test_posthog_distinct_id_falls_back_to_properties(tmp_path):
    row = {"event": "e", "timestamp": TS, "properties": {"distinct_id": 42, "a": 1}}
    [event] = posthog_events(write(tmp_path / "e.jsonl", jsonl(row)))
    assert event.distinct_id == "42"
    assert event.properties == {"a": 1}


def test_posthog_properties_as_json_string_and_set_as_json_string(tmp_path):
    row = {"event": "e", "distinct_id": "u", "timestamp": TS, "properties": '{"a": 1}', "$set_once": '{"f": 2}'}
    [event] = posthog_events(write(tmp_path / "e.jsonl", jsonl(row)))
    assert event.properties == {"a": 1, "$set_once": {"f": 2}}


def test_posthog_row_without_uuid_gets_a_content_uuid_tagged_posthog(tmp_path):
    row = {"event": "e", "distinct_id": "u", "timestamp": TS, "properties": {"a": 1}}
    [event] = posthog_events(write(tmp_path / "e.jsonl", jsonl(row)))
    assert event.uuid == uuid_from_content("posthog", "u", T, "e", {"a": 1})


@pytest.mark.parametrize(("row", "reason"), [
    ({"distinct_id": "u", "timestamp": TS}, "missing_event_name"),
    ({"event": "", "distinct_id": "u", "timestamp": TS}, "missing_event_name"),
    ({"event": "e", "timestamp": TS}, "missing_distinct_id"),
    ({"event": "e", "distinct_id": {"a": 1}, "timestamp": TS}, "missing_distinct_id"),
    ({"event": "e", "distinct_id": True, "timestamp": TS}, "missing_distinct_id"),
    ({"event": "e", "distinct_id": "u"}, "bad_timestamp"),
    ({"event": "e", "distinct_id": "u", "timestamp": "later"}, "bad_timestamp"),
    ({"event": "e", "distinct_id": "u", "timestamp": TS, "uuid": "nope"}, "bad_uuid"),
    ({"event": "e", "distinct_id": "u", "timestamp": TS, "properties": "[1]"}, "properties_not_object"),
    ({"event": "e", "distinct_id": "u", "timestamp": TS, "properties": "{bad"}, "properties_not_object"),
])
def test_posthog_unusable_rows_are_rejected(tmp_path, row, reason):
    [outcome] = posthog_events(write(tmp_path / "e.jsonl", jsonl(row)))
    assert isinstance(outcome, Rejection)
    assert outcome.reason == reason


def test_posthog_filters_from_the_mapping_apply(tmp_path):
    rows = [{"event": "drop me", "distinct_id": "u", "timestamp": TS},
            {"event": "old", "distinct_id": "u", "timestamp": "2020-01-01T00:00:00Z"},
            {"event": "kept", "distinct_id": "u", "timestamp": TS}]
    outcomes = posthog_events(write(tmp_path / "e.jsonl", jsonl(*rows)),
                              ColumnMapping(drop_events=("drop me",), since="2023-01-01"))
    assert [type(o) for o in outcomes] == [Filtered, Filtered, Event]


def test_posthog_timestamp_as_epoch_number_is_accepted(tmp_path):
    row = {"event": "e", "distinct_id": "u", "timestamp": 1712145600123}
    [event] = posthog_events(write(tmp_path / "e.jsonl", jsonl(row)))
    assert event.timestamp_us == 1712145600123000


def test_adapter_to_events_returns_one_event_per_row():
    [event] = JsonLinesAdapter(ColumnMapping()).to_events(dict(ROW_A))
    assert isinstance(event, Event) and not event.added
    assert event.timestamp_us == T
    assert type(event.timestamp_us) is int


def test_a_quote_that_never_closes_costs_one_row_not_the_rest_of_the_file(tmp_path):
    lines = ["event,distinct_id,note"] + [f"e,u{n},fine" for n in range(1, 11)] + ['e,u11,"oops']
    lines += [f"e,u{n},fine" for n in range(12, 1001)]
    (tmp_path / "broken.csv").write_text("\n".join(lines) + "\n")
    rows = [row for chunk in read_csv(SourceFile(str(tmp_path / "broken.csv"), 0, 0, 0)) for row in chunk]
    assert len(rows) == 1_000
    bad = [(number, row) for number, row in rows if isinstance(row, BadRow)]
    assert [(number, row.reason) for number, row in bad] == [(11, "malformed_csv")]
    assert bad[0][1].raw.startswith('e,u11,"oops')
    assert [row["distinct_id"] for _, row in rows if isinstance(row, dict)][-1] == "u1000"


def test_a_stray_quote_closed_rows_later_rejects_only_its_own_line(tmp_path):
    lines = ["event,distinct_id,note", 'e,u1,"starts here', "e,u2,fine", 'e,u3,"quoted, fine"', "e,u4,fine"]
    (tmp_path / "stray.csv").write_text("\n".join(lines) + "\n")
    rows = [row for chunk in read_csv(SourceFile(str(tmp_path / "stray.csv"), 0, 0, 0)) for row in chunk]
    good = [row["distinct_id"] for _, row in rows if isinstance(row, dict)]
    assert good == ["u2", "u3", "u4"] and isinstance(rows[0][1], BadRow)


def test_a_quoted_field_over_several_lines_is_still_one_row(tmp_path):
    (tmp_path / "multi.csv").write_text('event,distinct_id,note\ne,u1,"line one\nline two"\ne,u2,x\n')
    rows = [row for chunk in read_csv(SourceFile(str(tmp_path / "multi.csv"), 0, 0, 0)) for row in chunk]
    assert [row["note"] for _, row in rows] == ["line one\nline two", "x"]
