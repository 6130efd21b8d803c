"""A third party adds a format through the posthog_migrate.adapters entry point, without editing ours."""

from __future__ import annotations

from .conftest import TEST_API_KEY, cli_environment, install_plugin, run_cli, write_jsonl

PLUGIN = '''
from posthog_migrate.adapters.base import Adapter
from posthog_migrate.adapters.jsonl import read_json_lines
from posthog_migrate.event import Event, Rejection, parse_timestamp, uuid_from_id


class SnowplowAdapter(Adapter):
    name = "snowplow"

    def read(self, source):
        return read_json_lines(source)

    def to_events(self, record):
        if not record.get("domain_userid"):
            raise Rejection("missing_distinct_id", "no domain_userid")
        return [Event(event=record["event_name"], distinct_id=record["domain_userid"],
                      timestamp_us=parse_timestamp(record["derived_tstamp"]),
                      uuid=uuid_from_id(record["event_id"]), properties={"$current_url": record.get("page_url")})]


class Impostor(Adapter):
    name = "csv"
'''


def _install_plugin(folder):
    install_plugin(folder, "snowplow_plugin", PLUGIN,
                   {"snowplow": "snowplow_plugin:SnowplowAdapter", "csv": "snowplow_plugin:Impostor"})


def test_a_plugin_format_migrates_through_the_whole_pipeline(tmp_path, capture_server):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    _install_plugin(plugins)
    rows = [{"event_name": "page_view", "domain_userid": f"u{n % 3}", "event_id": f"e{n}",
             "derived_tstamp": f"2024-03-0{1 + n % 5}T10:00:00Z", "page_url": "https://x.test/"} for n in range(20)]
    rows.append({"event_name": "page_view", "derived_tstamp": "2024-03-01T00:00:00Z", "event_id": "e-anon"})
    write_jsonl(tmp_path / "snowplow.jsonl", rows)
    env = cli_environment(POSTHOG_API_KEY=TEST_API_KEY, PYTHONPATH=str(plugins))
    result = run_cli(["run", "snowplow.jsonl", "--format", "snowplow", "--host", capture_server.url, "--rate", "0",
                      "--concurrency", "1",
                      "-q"], tmp_path, env)
    assert result.returncode == 3, result.stderr  # 20 sent, the row without a user rejected
    assert "21 = 20 + 1 + 0  ✓ balanced" in result.stdout
    assert {e["properties"]["$import_source"] for e in capture_server.events} == {"snowplow"}
    stamps = [e["timestamp"] for e in capture_server.events]
    assert stamps == sorted(stamps)


def test_a_plugin_cannot_replace_a_builtin_format(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    _install_plugin(plugins)
    result = run_cli(["--help"], tmp_path, cli_environment(PYTHONPATH=str(plugins)))
    assert result.returncode == 0
    (tmp_path / "events.csv").write_text("event,distinct_id,timestamp\nx,u,2024-01-01T00:00:00Z\n")
    inspected = run_cli(["inspect", "events.csv", "--format", "csv", "-q"], tmp_path,
                        cli_environment(PYTHONPATH=str(plugins)))
    assert inspected.returncode == 0 and "Events to send:    1" in inspected.stdout
