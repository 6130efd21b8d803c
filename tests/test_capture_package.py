"""The capture server is a package of its own: it needs nothing of the pipeline, and other projects' tests can use
its fixtures with ``pytest_plugins`` alone."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from .conftest import PROJECT_ROOT, cli_environment

CAPTURE_FOLDER = PROJECT_ROOT / "migrate" / "capture"


def test_the_capture_server_runs_without_loading_the_pipeline(tmp_path):
    code = """
import json, sys, urllib.request
import posthog_migrate.capture as capture
import posthog_migrate.capture.testing
with capture.CaptureServer() as server:
    body = json.dumps({"api_key": "phc_test", "batch": [{"event": "e", "distinct_id": "d"}]}).encode()
    with urllib.request.urlopen(server.url + "/batch/", data=body, timeout=10) as answer:
        status = answer.status
print(json.dumps({"status": status, "events": len(server.events), "modules": sorted(sys.modules)}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert (outcome["status"], outcome["events"]) == (200, 1)
    ours = {name for name in outcome["modules"] if name.startswith("posthog_migrate.")}
    assert {"posthog_migrate.pipeline", "posthog_migrate.sender", "posthog_migrate.cli"}.isdisjoint(ours)
    assert {name for name in ours if not name.startswith("posthog_migrate.capture")} == {"posthog_migrate.errors"}
    assert {"pyarrow", "numpy", "requests"}.isdisjoint(outcome["modules"])  # nor the pipeline's heavy libraries


def test_the_capture_modules_import_nothing_of_the_pipeline_even_inside_functions():
    """sys.modules shows what one use loaded; this reads every import statement, the lazy ones included."""
    modules = sorted(CAPTURE_FOLDER.glob("*.py"))
    assert {"server.py", "workers.py", "testing.py"} <= {module.name for module in modules}
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{module.name}: a relative import (the project imports absolutely)"
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "posthog_migrate":
                    assert name == "posthog_migrate.errors" or name.startswith("posthog_migrate.capture"), (
                        f"{module.name} imports {name}: the capture server must not depend on the pipeline")


OUTSIDE_TEST = '''
import json
import urllib.error
import urllib.request

import pytest

pytest_plugins = ["posthog_migrate.capture.testing"]

BATCH = json.dumps({"api_key": "phc_theirs", "historical_migration": True,
                    "batch": [{"event": "signed_up", "distinct_id": "user-1", "properties": {"plan": "pro"}}]}).encode()
STARTED = []


def post(url):
    return urllib.request.urlopen(url + "/batch/", data=BATCH, timeout=10)


def test_capture_server_takes_a_batch(capture_server):
    with post(capture_server.url) as answer:
        assert answer.status == 200
    assert capture_server.events == [{"event": "signed_up", "distinct_id": "user-1", "properties": {"plan": "pro"}}]
    assert capture_server.requests[0].historical_migration is True


def test_make_server_with_a_scripted_fault(make_server, tmp_path):
    server = make_server(["503"], out_path=tmp_path / "received.jsonl")
    STARTED.append(server.url)
    with pytest.raises(urllib.error.HTTPError) as refused:
        post(server.url)
    assert refused.value.code == 503
    with post(server.url) as answer:
        assert answer.status == 200
    assert [record.fault for record in server.requests] == ["503", None]
    assert len((tmp_path / "received.jsonl").read_bytes().splitlines()) == 1


def test_servers_are_stopped_after_their_test():
    with pytest.raises(urllib.error.URLError):
        post(STARTED[0])
'''


def test_an_outside_projects_tests_use_the_fixtures_through_pytest_plugins(tmp_path: Path):
    (tmp_path / "test_their_exporter.py").write_text(OUTSIDE_TEST)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_their_exporter.py"],
                            cwd=tmp_path, env=cli_environment(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
