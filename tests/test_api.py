"""The Python API (``import posthog_migrate as pm``): the command line's settings and guarantees, in-memory inputs,
results and errors instead of output and exit codes, and nothing a library must not do (exit, take signals)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import posthog_migrate as pm
import pyarrow as pa
import pytest
from posthog_migrate import api, cli
from posthog_migrate.capture import CaptureServer
from posthog_migrate.in_memory import spool
from posthog_migrate.job import load_mapping
from posthog_migrate.render import NullBar, Progress

from .conftest import TEST_API_KEY, make_rows, read_received, write_csv

FAST = {"rate": 0, "retry_delay": 0.01}


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Jobs land in .posthog-migrate/ of the current folder, as with the command line; no key from outside."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POSTHOG_API_KEY", raising=False)
    monkeypatch.delenv("POSTHOG_HOST", raising=False)


# --- the package --------------------------------------------------------------------------------------

def test_import_posthog_migrate_stays_light_and_the_api_needs_no_pandas(tmp_path):
    code = "import sys, posthog_migrate; print(sorted(set(sys.modules) & {'pandas', 'numpy', 'pyarrow', 'requests'}))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"  # the API and the pipeline are imported on first use
    write_csv(tmp_path / "events.csv", make_rows(10))
    without_pandas = (  # import pandas fails, as where it is not installed
        "import sys\n"
        "class NoPandas:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'pandas': raise ImportError('no pandas here')\n"
        "sys.meta_path.insert(0, NoPandas())\n"
        "import posthog_migrate as pm\n"
        "print(pm.inspect('events.csv').read, pm.inspect([{'event': 'e', 'distinct_id': 'd', "
        "'timestamp': '2024-03-01T00:00:00Z'}]).read)")
    used = subprocess.run([sys.executable, "-c", without_pandas], capture_output=True, text=True, cwd=tmp_path)
    assert used.stdout.split() == ["10", "1"], used.stderr


# --- the command line's settings ----------------------------------------------------------------------

# Each option of `run`: its command-line arguments, and the keyword arguments of pm.run that mean the same.
MAPPING_TOML = '[columns]\nevent = "action"\n[run]\nbatch_size = 700\n'
RUN_OPTIONS = {
    "sources": ([], {}),  # events.csv, given to both
    "format_": (["--format", "jsonl"], {"format": "jsonl"}),
    "mapping_path": (["--mapping", "mapping.toml"], {"mapping": "mapping.toml"}),
    "event_column": (["--event-column", "action"], {"mapping": {"columns": {"event": "action"}}}),
    "event_name": (["--event-name", "Signed Up"], {"mapping": {"columns": {"event_name": "Signed Up"}}}),
    "distinct_id_column": (["--distinct-id-column", "user", "--distinct-id-column", "device"],
                           {"mapping": {"columns": {"distinct_id": ["user", "device"]}}}),
    "timestamp_column": (["--timestamp-column", "ts"], {"mapping": {"columns": {"timestamp": "ts"}}}),
    "timestamp_unit": (["--timestamp-unit", "ms"], {"mapping": {"columns": {"timestamp_unit": "ms"}}}),
    "source_timezone": (["--source-timezone", "Europe/Berlin"],
                        {"mapping": {"columns": {"timezone": "Europe/Berlin"}}}),
    "uuid_column": (["--uuid-column", "id"], {"mapping": {"columns": {"uuid": "id"}}}),
    "insert_id_column": (["--insert-id-column", "ins"], {"mapping": {"columns": {"insert_id": "ins"}}}),
    "properties_column": (["--properties-column", "props"], {"mapping": {"properties": {"json_column": "props"}}}),
    "rename_event": (["--rename-event", "a=b"], {"mapping": {"transform": {"rename_events": {"a": "b"}}}}),
    "drop_event": (["--drop-event", "x"], {"mapping": {"filter": {"drop_events": ["x"]}}}),
    "rename_property": (["--rename-property", "a=b"], {"mapping": {"transform": {"rename_properties": {"a": "b"}}}}),
    "drop_property": (["--drop-property", "x"], {"mapping": {"transform": {"drop_properties": ["x"]}}}),
    "person_properties": (["--person-properties", "set_once"], {"mapping": {"person": {"mode": "set_once"}}}),
    "quiet": (["-q"], {"quiet": True}),
    "job": (["--job", "backfill"], {"job": "backfill"}),
    "workdir": (["--workdir", "work"], {"workdir": "work"}),
    "restart": (["--restart"], {"restart": True}),
    "host": (["--host", "https://eu.i.posthog.com"], {"host": "https://eu.i.posthog.com"}),
    "api_key": (["--api-key", TEST_API_KEY], {"api_key": TEST_API_KEY}),
    "dry_run": (["--dry-run"], {"dry_run": True}),
    "out": (["--out", "bodies"], {"out": "bodies"}),
    "batch_bytes": (["--batch-bytes", "2MiB"], {"batch_bytes": "2MiB"}),
    "batch_size": (["--batch-size", "500"], {"batch_size": 500}),
    "concurrency": (["--concurrency", "2"], {"concurrency": 2}),
    "rate": (["--rate", "0"], {"rate": 0}),
    "shard": (["--shard", "2/4"], {"shard": "2/4"}),
    "workers": (["--workers", "2"], {"workers": 2}),
    "memory": (["--memory", "64MiB"], {"memory": "64MiB"}),
    "max_retries": (["--max-retries", "3"], {"max_retries": 3}),
    "retry_delay": (["--retry-delay", "0.5"], {"retry_delay": 0.5}),
    "timeout": (["--timeout", "30"], {"timeout": 30}),
    "source_credentials": (["--source-credentials", "amplitude.env"], {"source_credentials": "amplitude.env"}),
    "redownload": (["--restart", "--redownload"], {"restart": True, "redownload": True}),
    "json_output": (["--json"], None),  # the API returns the result: RunResult.asdict() is that document
}


def _comparable(mapping) -> dict:
    """A mapping's content (which fields were explicit, and the file's folder, depend on how it was given)."""
    return {key: value for key, value in mapping.to_dict().items() if key not in ("explicit", "base_dir")}


@pytest.mark.parametrize("option", [param.name for param in cli.run.params])
def test_the_api_takes_every_option_of_run_and_means_the_same(tmp_path, option):
    assert option in RUN_OPTIONS, f"run's option {option} has no Python API equivalent in this test (or the API)"
    arguments, keywords = RUN_OPTIONS[option]
    if keywords is None:
        assert callable(pm.RunResult.asdict)
        return
    write_csv(tmp_path / "events.csv", make_rows(3))
    (tmp_path / "mapping.toml").write_text(MAPPING_TOML)
    params = dict(cli.run.make_context("run", ["events.csv", *arguments]).params)
    params.pop("json_output")
    overrides = cli.mapping_overrides(params)
    from_cli = cli.settings_from(params)
    keywords = {"host": None, **keywords}
    from_api = api._settings("run", ["events.csv"], {k: v for k, v in keywords.items() if k not in (
        "host", "api_key", "job", "format", "mapping")}, mapping=keywords.get("mapping"),
        **{k: keywords.get(k) for k in ("host", "api_key", "job")}, format=keywords.get("format", "auto"))
    given_as_mapping = ("mapping_path", "mapping_tables")
    assert {k: v for k, v in vars(from_api).items() if k not in given_as_mapping} == \
           {k: v for k, v in vars(from_cli).items() if k not in given_as_mapping}
    assert _comparable(load_mapping(from_api, {})) == _comparable(load_mapping(from_cli, overrides))


def test_unknown_keywords_are_named_with_the_known_ones():
    with pytest.raises(pm.ConfigError) as refused:
        pm.run("events.csv", host="local", batchsize=500)
    message = str(refused.value)
    assert "'batchsize' (did you mean 'batch_size'?)" in message and "rate" in message and "mapping" in message


@pytest.mark.parametrize(("keywords", "named"), [
    ({"batch_size": 0}, "batch_size=0: choose between 1 and 1,000,000"),
    ({"batch_size": "1000"}, "batch_size='1000' must be a whole number, e.g. batch_size=2000"),
    ({"timeout": -1}, "timeout=-1.0: give a positive number of seconds, e.g. timeout=60"),
    ({"memory": "lots"}, "memory=: 'lots' is not a size"),
    ({"shard": "5/4"}, "shard='5/4': write K/N"),
    ({"host": "us.i.posthog.com"}, "host='us.i.posthog.com' must start with http://"),
])
def test_a_wrong_value_names_the_argument_not_an_option(tmp_path, keywords, named):
    write_csv(tmp_path / "events.csv", make_rows(3))
    with pytest.raises(pm.ConfigError) as refused:
        pm.run("events.csv", **{"host": "local", **keywords})
    assert named in str(refused.value) and "--" not in str(refused.value)


def test_a_mapping_dict_is_checked_like_the_file_and_its_run_table_is_read(tmp_path):
    write_csv(tmp_path / "events.csv", [{**row, "action": row["event"]} for row in make_rows(30)])
    with pytest.raises(pm.ConfigError, match=r"mapping= argument: unknown section\(s\) 'colums' \(did you mean "
                                             r"'columns'\?\)"):
        pm.inspect("events.csv", mapping={"colums": {"event": "action"}})
    with pytest.raises(pm.ConfigError, match=r"mapping= argument: \[filter\]: unknown key\(s\) 'untill'"):
        pm.inspect("events.csv", mapping={"filter": {"untill": "2024-01-01"}})
    result = pm.run("events.csv", host="local", job="dict", rate=0,
                    mapping={"columns": {"event": "action"}, "run": {"batch_size": 7}})
    assert result.sent == 30 and result.send.batches_sent >= 5  # batches of at most 7 events (else one batch)


# --- in-memory inputs ---------------------------------------------------------------------------------

def _frame() -> pd.DataFrame:
    """A DataFrame as notebooks hold them: a categorical, a tz-aware time, NaN in a number and in an id."""
    return pd.DataFrame({
        "event": pd.Categorical(["signed_up", "$pageview", "$pageview", "signed_up", "$pageview"]),
        "distinct_id": ["u1", "u2", np.nan, "u4", "u1"],
        "timestamp": pd.to_datetime(["2024-03-01 10:00:00", "2024-03-01 11:00:00", "2024-03-02 10:00:00",
                                     "2024-07-03 10:00:00", "2024-07-03 10:30:00"]).tz_localize("Europe/Berlin"),
        "amount": [1.5, np.nan, 3.0, np.nan, 2.25],
        "plan": pd.Categorical(["free", None, "pro", "free", "pro"]),
    })


def test_a_dataframe_with_nan_categorical_and_tz_aware_columns_migrates_into_the_local_server():
    result = pm.run(_frame(), host="local", job="frame", **FAST)
    assert (result.exit_status, result.read, result.sent, result.rejected, result.filtered) == (3, 5, 4, 1, 0)
    assert result.has_rejects
    received = {event["distinct_id"] + event["timestamp"]: event for event in read_received(result.received_path)}
    # Berlin is UTC+1 in March and UTC+2 in July: each time keeps its own offset.
    assert sorted(received) == ["u12024-03-01T09:00:00.000000Z", "u12024-07-03T08:30:00.000000Z",
                                "u22024-03-01T10:00:00.000000Z", "u42024-07-03T08:00:00.000000Z"]
    first = received["u12024-03-01T09:00:00.000000Z"]
    assert first["event"] == "signed_up" and first["properties"]["plan"] == "free"  # categories as their values
    assert first["properties"]["amount"] == 1.5
    assert "amount" not in received["u22024-03-01T10:00:00.000000Z"]["properties"]  # NaN: no value, not "nan"
    rejected = [orjson.loads(line) for line in result.rejects_path.read_bytes().splitlines()]
    assert [(r["reason"], r["row"]) for r in rejected] == [("missing_distinct_id", 3)]  # the frame's 3rd row
    copies = list((result.job_root / "inputs").iterdir())
    assert [copy.suffix for copy in copies] == [".parquet"] and rejected[0]["file"] == str(copies[0].resolve())


class _StopAfterFirstBatch(Progress):
    """Sets ``stop`` once the sending bar moves: a run stopped by its caller in the middle of sending."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def bar(self, total, unit, description, **_):
        stop = self.stop

        class Stopping(NullBar):
            def update(self, n: int = 1) -> None:
                if n and description == "sending":
                    stop.set()

        return Stopping()


def test_a_stopped_dataframe_job_resumes_without_the_dataframe():
    rows = make_rows(1_000, seed=5)
    frame = pd.DataFrame(rows)
    stop = threading.Event()
    settings = {"host": "local", "job": "resumable", "batch_size": 50, "concurrency": 1, **FAST}
    with pytest.raises(pm.Interrupted) as stopped:
        pm.run(frame, stop=stop, progress=_StopAfterFirstBatch(stop), **settings)
    partial = stopped.value.result
    assert partial.exit_status == 130 and partial.read == 1_000 and 50 <= partial.sent < 1_000
    assert partial.asdict()["phases"]["send"]["state"] == "interrupted"
    copy, = (partial.job_root / "inputs").iterdir()
    written = copy.stat().st_mtime_ns
    del frame

    resumed = pm.run(None, **settings)
    assert resumed.exit_status == 0 and resumed.sent == 1_000 and resumed.resumed_from == partial.events_sent
    received = read_received(resumed.received_path)  # both runs' local servers appended here
    assert len({event["uuid"] for event in received}) == 1_000
    assert len(received) - 1_000 <= 50  # at most the batch in flight was sent twice
    assert copy.stat().st_mtime_ns == written and list(copy.parent.iterdir()) == [copy]


def test_a_kernel_interrupt_ends_the_run_as_interrupted_and_the_same_call_resumes():
    class InterruptedWhileSending(Progress):  # Jupyter's "interrupt the kernel" raises in the main thread
        def bar(self, total, unit, description, **_):
            class Interrupting(NullBar):
                def update(self, n: int = 1) -> None:
                    if n and description == "sending":
                        raise KeyboardInterrupt

            return Interrupting()

    records = make_rows(500, seed=8)
    settings = {"host": "local", "job": "kernel", "batch_size": 100, "concurrency": 1, **FAST}
    with pytest.raises(pm.Interrupted, match="checkpointed") as stopped:
        pm.run(records, progress=InterruptedWhileSending(), **settings)
    assert 0 < stopped.value.result.sent < 500
    assert pm.run(records, **settings).sent == 500


def test_the_same_data_is_copied_once_and_other_data_is_a_new_input(tmp_path):
    folder = tmp_path / "inputs"
    table = pa.Table.from_pylist(make_rows(20))
    first = spool(table, folder, "auto", Progress())
    written = first.stat().st_mtime_ns
    assert spool(pa.Table.from_pylist(make_rows(20)), folder, "auto", Progress()) == first
    assert first.stat().st_mtime_ns == written  # never rewritten: its fingerprint holds
    assert spool(pa.Table.from_pylist(make_rows(21)), folder, "auto", Progress()) != first
    assert sorted(path.name for path in folder.iterdir() if path.name.startswith(".")) == []  # no temporary left


def _amplitude_rows(count: int) -> list[dict]:
    return [{"event_type": "note_created", "event_time": f"2024-03-01 10:00:{n % 60:02d}.000000",
             "user_id": f"user-{n % 3}", "device_id": f"device-{n % 4}", "amplitude_id": n, "$insert_id": f"i{n}",
             "event_properties": {"n": n}} for n in range(count)]


@pytest.mark.parametrize("shape", ["records", "arrow table"])
def test_platform_rows_in_memory_are_recognised_and_kept_as_json_lines(shape):
    rows = _amplitude_rows(40)
    data = rows if shape == "records" else pa.Table.from_pylist(rows)
    report = pm.inspect(data)
    assert report.format_name == "amplitude" and report.read == 40 and report.rejected == 0
    result = pm.run(iter(rows) if shape == "records" else data, host="local", job=shape.replace(" ", "-"), **FAST)
    assert result.format_name == "amplitude" and result.sent == 40
    assert [copy.suffix for copy in (result.job_root / "inputs").iterdir()] == [".jsonl"]


def test_in_memory_inputs_are_refused_clearly_where_they_cannot_go():
    frame = _frame()
    with pytest.raises(pm.ConfigError, match="a pandas DataFrame needs job=NAME"):
        pm.run(frame, host="local")
    with pytest.raises(pm.ConfigError, match="format='csv' reads CSV files only"):
        pm.run(frame, host="local", job="csv", format="csv")
    with pytest.raises(pm.ConfigError, match=r"row 2 of the data is a str, not a dict"):
        pm.run(iter([{"event": "a"}, "b"]), host="local", job="mixed")
    with pytest.raises(pm.ConfigError, match="a builtins.int is not an input"):
        pm.run(5, host="local", job="number")
    with pytest.raises(pm.ConfigError, match="resumes a job from its work directory: name it with job="):
        pm.run(None, host="local")
    with pytest.raises(pm.ConfigError, match="has recorded no inputs"):
        pm.run(None, host="local", job="never-run")


def test_inspect_reports_a_frame_and_names_it_in_the_first_rejects():
    report = pm.inspect(_frame(), mapping={"filter": {"drop_events": ["$pageview"]}})
    assert (report.read, report.kept, report.rejected, report.filtered, report.events) == (5, 2, 0, 3, 2)
    report = pm.inspect(_frame())
    assert report.examples[0]["file"] == "(in-memory input 1: a pandas DataFrame)"
    assert report.examples[0]["row"] == 3
    assert report.asdict()["rows"] == {"read": 5, "kept": 4, "rejected": 1, "filtered": 0}
    assert not Path(".posthog-migrate").exists()  # inspect leaves nothing behind


# --- results, errors, and what a library never does ----------------------------------------------------

def test_status_tells_the_same_counts_as_the_run():
    result = pm.run(_frame(), host="local", job="told", **FAST)
    told = pm.status("told")
    assert told.phase == "done" and told.books == result.books
    assert told.asdict()["rows"] == {**{k: result.asdict()["rows"][k] for k in ("read", "sent", "rejected",
                                                                              "filtered")}, "balanced": True}
    assert "exit status 3" in told.asstr()
    assert pm.status(result.job_root).phase == "done"
    with pytest.raises(pm.ConfigError, match="no job at"):
        pm.status("nothing-here")


def test_the_api_never_exits_nor_installs_a_signal_handler(tmp_path, make_server):
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    seen: list = []

    class Watching(Progress):
        def bar(self, total, unit, description, **_):
            seen.append({number: signal.getsignal(number) for number in handlers})
            return NullBar()

    write_csv(tmp_path / "events.csv", make_rows(200))
    assert pm.run("events.csv", host="local", job="quiet", progress=Watching(), **FAST).exit_status == 0
    with pytest.raises(pm.ConfigError, match='host="local"'):  # an error, never SystemExit
        pm.run("events.csv", host=None, job="nowhere")
    refusing = make_server(faults=["401"])
    with pytest.raises(pm.SendFailed) as failed:
        pm.run("events.csv", host=refusing.url, api_key=TEST_API_KEY, job="refused", **FAST)
    assert failed.value.result.exit_status == 1 and failed.value.result.read == 200
    assert failed.value.result.asdict()["error"]["type"] == "SendFailed"
    assert seen and all(during == handlers for during in seen)  # while it worked
    assert {number: signal.getsignal(number) for number in handlers} == handlers  # and after


def test_progress_can_be_log_lines_for_orchestrators(tmp_path, caplog):
    write_csv(tmp_path / "events.csv", make_rows(100))
    with caplog.at_level("INFO", logger="posthog_migrate"):
        pm.run("events.csv", host="local", job="logged", progress="log", **FAST)
    assert any(message.startswith("sending: 100 events of 100 events (100%)") for message in caplog.messages)
    with pytest.raises(pm.ConfigError, match="progress='bars'"):
        pm.run("events.csv", host="local", job="logged", progress="bars")


def test_a_run_sends_to_a_real_host_with_the_key_from_the_environment(tmp_path, monkeypatch):
    write_csv(tmp_path / "events.csv", make_rows(50))
    monkeypatch.setenv("POSTHOG_API_KEY", TEST_API_KEY)
    with CaptureServer() as server:
        result = pm.run("events.csv", host=server.url, **FAST)
        assert result.sent == 50 and {request.status for request in server.requests} == {200}
    assert result.books.balanced and result.asdict()["target"] == server.url
    monkeypatch.delenv("POSTHOG_API_KEY")
    with pytest.raises(pm.ConfigError, match=r"set POSTHOG_API_KEY \(or api_key=\)"):
        pm.run("events.csv", host=server.url)
