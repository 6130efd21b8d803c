"""Wrong settings end in one sentence naming the setting and the fix, with exit code 2: never a traceback.

Covers the mapping file's [run] table and its other sections, command-line values, an empty first input
file, s3:// URIs with a ?query, and resuming a prepared job under another job name.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest
from posthog_migrate.adapters import detect_format
from posthog_migrate.config import resolve_settings
from posthog_migrate.errors import ConfigError
from posthog_migrate.sources import expand_sources

from .conftest import TEST_API_KEY, cli_environment, make_rows, run_cli, write_csv, write_jsonl


@pytest.fixture
def events_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "events.csv", make_rows(20))


def _dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(["run", "events.csv", "--dry-run", "-q", "--workdir", "work", *args], tmp_path)


def _with_mapping(tmp_path: Path, toml: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "mapping.toml").write_text(toml, encoding="utf-8")
    return _dry_run(tmp_path, "--mapping", "mapping.toml", *args)


def _assert_config_error(result: subprocess.CompletedProcess, *names: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for name in names:
        assert name in result.stderr, result.stderr


# --- 1. [run] values of the wrong type, and out-of-range values --------------------------------------

@pytest.mark.parametrize(("line", "named"), [
    ('batch_size = "1000"', "[run] batch_size"),
    ("batch_size = true", "[run] batch_size"),
    ("concurrency = 2.5", "[run] concurrency"),
    ("workers = [2]", "[run] workers"),
    ("workdir = 5", "[run] workdir"),
    ('rate = "fast"', "[run] rate"),
    ("timeout = false", "[run] timeout"),
    ("memory = 1.5", "[run] memory"),
    ("batch_bytes = [5]", "[run] batch_bytes"),
    ("host = 5", "[run] host"),
    ("shard = 2", "[run] shard"),
    ('quiet = "yes"', "[run] quiet"),
    ("format = { name = 'csv' }", "[run] format"),
])
def test_a_run_table_value_of_the_wrong_type_is_named_with_exit_2(tmp_path, events_csv, line, named):
    result = _with_mapping(tmp_path, f"[run]\n{line}\n")
    _assert_config_error(result, named, "mapping.toml")
    assert "must be" in result.stderr


def test_run_table_ints_are_accepted_for_float_settings_and_size_texts_for_sizes(tmp_path, events_csv):
    result = _with_mapping(tmp_path, '[run]\nrate = 0\ntimeout = 30\nretry_delay = 0\nmemory = "64MiB"\n'
                                     "batch_bytes = 5242880\nbatch_size = 500\n")
    assert result.returncode == 0, result.stderr


def test_api_key_in_the_run_table_asks_for_the_environment_variable(tmp_path, events_csv):
    result = _with_mapping(tmp_path, '[run]\napi_key = "phc_secret_in_a_file"\n')
    _assert_config_error(result, "api_key", "POSTHOG_API_KEY")
    assert "unknown key" not in result.stderr
    assert "phc_secret_in_a_file" not in result.stderr


def test_run_that_is_not_a_table_is_a_config_error(tmp_path, events_csv):
    _assert_config_error(_with_mapping(tmp_path, "run = 5\n"), "run = 5", "[run]")


@pytest.mark.parametrize(("args", "named"), [
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "-1"], "--timeout"),
    (["--max-retries", "-1"], "--max-retries"),
    (["--retry-delay", "-0.5"], "--retry-delay"),
    (["--batch-bytes", "lots"], "--batch-bytes"),
])
def test_out_of_range_command_line_values_are_named_with_exit_2(tmp_path, events_csv, args, named):
    _assert_config_error(_dry_run(tmp_path, *args), named)


@pytest.mark.parametrize(("line", "named"), [
    ("timeout = 0", "--timeout"),
    ("max_retries = -1", "--max-retries"),
    ("retry_delay = -1", "--retry-delay"),
])
def test_out_of_range_run_table_values_are_named_with_exit_2(tmp_path, events_csv, line, named):
    _assert_config_error(_with_mapping(tmp_path, f"[run]\n{line}\n"), named)


def test_a_bad_size_in_the_run_table_names_the_run_key(tmp_path, events_csv):
    _assert_config_error(_with_mapping(tmp_path, '[run]\nmemory = "lots"\n'), "[run] memory", "not a size")


@pytest.mark.parametrize(("key", "value"), [
    ("batch_size", "1000"), ("batch_size", True), ("concurrency", 2.5), ("rate", "fast"), ("workdir", 5),
    ("timeout", float("nan")), ("dry_run", "yes"), ("sources", "events.csv"), ("sources", (5,)),
])
def test_resolve_settings_rejects_command_line_values_of_the_wrong_type(key, value):
    cli = {"sources": ("events.csv",), "dry_run": True, key: value}
    with pytest.raises(ConfigError, match="--" + key.replace("_", "-")):
        resolve_settings(cli)


# --- 2. the other mapping sections ------------------------------------------------------------------

@pytest.mark.parametrize(("toml", "named"), [
    ("[columns]\nevent = 5\n", "[columns] event"),
    ("[columns]\ndistinct_id = [1, 2]\n", "[columns] distinct_id"),
    ('[columns]\ntimestamp = { a = "b" }\n', "[columns] timestamp"),
    ("[columns]\nevent_name = 5\n", "[columns] event_name"),
    ("columns = 5\n", "columns = 5"),
    ('filter = ["x"]\n', "[filter]"),
    ("[groups]\ncompany = 5\n", "[groups] company"),
    ("[filter]\ndrop_events = 5\n", "[filter] drop_events"),
    ("[filter]\nsince = true\n", "[filter] since"),
    ("[properties]\ninclude = [\"plan\", 3]\n", "[properties] include"),
    ("[person]\nset = 1\n", "[person] set"),
    ('[transform]\nrename_events = ["a"]\n', "[transform] rename_events"),
    ("[transform]\nrename_events = 5\n", "[transform] rename_events"),
    ("[transform]\nrename_properties = { plan = 5 }\n", "[transform] rename_properties"),
    ("[transform]\ndrop_properties = [true]\n", "[transform] drop_properties"),
])
def test_a_mapping_value_of_the_wrong_type_is_named_with_exit_2(tmp_path, events_csv, toml, named):
    _assert_config_error(_with_mapping(tmp_path, toml), named, "mapping.toml")


def test_a_single_drop_event_name_is_one_name(tmp_path, events_csv):
    result = _with_mapping(tmp_path, '[filter]\ndrop_events = "signed_up"\n'
                                     '[transform]\nrename_events = ["plan_upgraded=upgraded"]\n')
    assert result.returncode == 0, result.stderr
    bodies = [orjson.loads(path.read_bytes()) for path in sorted((tmp_path / "work" / "dry-run").glob("*.json"))]
    names = {event["event"] for body in bodies for event in body["batch"]}
    assert names and "signed_up" not in names and "plan_upgraded" not in names and "upgraded" in names


def test_a_bad_command_line_rename_names_the_option(tmp_path, events_csv):
    _assert_config_error(_dry_run(tmp_path, "--rename-event", "no-equals-sign"), "--rename-event", "OLD=NEW")


# --- 3. an empty first input file -------------------------------------------------------------------

def test_an_empty_first_csv_does_not_block_the_job(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "a.csv").write_bytes(b"")
    write_csv(folder / "b.csv", make_rows(30))
    result = run_cli(["run", "export", "--dry-run", "-q", "--workdir", "work"], tmp_path)
    assert result.returncode == 0, result.stderr
    bodies = [orjson.loads(path.read_bytes()) for path in (tmp_path / "work" / "dry-run").glob("*.json")]
    assert sum(len(body["batch"]) for body in bodies) == 30


def test_the_mapping_is_still_checked_against_the_first_file_with_columns(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "a.csv").write_bytes(b"")
    write_csv(folder / "b.csv", make_rows(5))
    result = run_cli(["run", "export", "--dry-run", "-q", "--workdir", "work", "--event-column", "action"], tmp_path)
    _assert_config_error(result, "b.csv", "action")


# --- 4. s3:// URIs with a ?query --------------------------------------------------------------------

def test_detect_format_ignores_a_uri_query():
    assert detect_format("s3://b/x.jsonl?endpoint_override=h:1&scheme=http") == "jsonl"
    assert detect_format("s3://b/x.csv.gz?scheme=http") == "csv"
    assert detect_format("s3://b/x?format=.csv") is None


def test_expand_sources_takes_a_local_path_without_glob_characters_as_is(tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", make_rows(3))
    [source] = expand_sources([str(path)], explicit_format=False)
    assert source.uri == str(path) and source.size == path.stat().st_size


def test_expand_sources_still_globs_local_paths(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        write_jsonl(tmp_path / name, make_rows(2))
    assert [Path(s.uri).name for s in expand_sources([str(tmp_path / "?.jsonl")], explicit_format=False)] == [
        "a.jsonl", "b.jsonl"]


def test_an_s3_uri_with_a_query_is_one_file_not_a_pattern(tmp_path, s3_endpoint):
    from pyarrow import fs as pafs

    host = s3_endpoint.removeprefix("http://")
    s3 = pafs.S3FileSystem(endpoint_override=host, scheme="http", access_key="test",
                           secret_key="test", region="us-east-1", allow_bucket_creation=True)
    s3.create_dir("exports")
    with s3.open_output_stream("exports/x.jsonl") as out:
        out.write(b"".join(orjson.dumps(row) + b"\n" for row in make_rows(25)))
    uri = f"s3://exports/x.jsonl?endpoint_override={host}&scheme=http"
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                          AWS_REGION="us-east-1")
    result = run_cli(["run", uri, "--dry-run", "-q", "--workdir", "work"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    manifest = orjson.loads((tmp_path / "work" / "manifest.json").read_bytes())
    assert manifest["sources"] == [uri]


# --- 5. the job's name is part of what a prepared job depends on ------------------------------------

def test_resuming_a_prepared_job_under_another_job_name_refuses(tmp_path, events_csv):
    assert _dry_run(tmp_path, "--job", "a").returncode == 0
    result = _dry_run(tmp_path, "--job", "b")
    _assert_config_error(result, "job name: a → b")
    assert _dry_run(tmp_path, "--job", "a").returncode == 0  # the same name still resumes
