"""Inputs from s3://, against a local S3-compatible server (moto) that the tests start on 127.0.0.1."""

from __future__ import annotations

import gzip

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from .conftest import TEST_API_KEY, cli_environment, make_rows, run_cli

pytest.importorskip("moto")


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    """A bucket holding an export: two JSON lines parts (one gzip'd), a Parquet file, and a _SUCCESS marker."""
    s3 = pafs.S3FileSystem(endpoint_override=s3_endpoint.removeprefix("http://"), scheme="http",
                           access_key="test", secret_key="test", region="us-east-1", allow_bucket_creation=True)
    s3.create_dir("exports")
    rows = make_rows(900, seed=17)
    with s3.open_output_stream("exports/events/part-0.jsonl") as out:
        out.write(b"".join(orjson.dumps(r) + b"\n" for r in rows[:400]))
    with s3.open_output_stream("exports/events/part-1.jsonl.gz", compression=None) as out:  # gzip'd below
        out.write(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in rows[400:]), mtime=0))
    with s3.open_output_stream("exports/events/_SUCCESS") as out:
        out.write(b"")
    with s3.open_output_stream("exports/table/events.parquet") as out:
        pq.write_table(pa.Table.from_pylist(rows[:300]), out)
    return rows


def _env(endpoint: str) -> dict:
    return cli_environment(POSTHOG_API_KEY=TEST_API_KEY, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test",
                           AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1")


def test_an_s3_folder_migrates_like_a_local_one(tmp_path, s3_endpoint, bucket, capture_server):
    result = run_cli(["run", "s3://exports/events/", "--host", capture_server.url, "--rate", "0", "-q",
                      "--workdir", "job"], tmp_path, _env(s3_endpoint))
    assert result.returncode == 0, result.stderr
    assert "900 = 900 + 0 + 0  ✓ balanced" in result.stdout
    assert {e["properties"]["note_length"] for e in capture_server.events} == {r["note_length"] for r in bucket}
    manifest = orjson.loads((tmp_path / "job" / "manifest.json").read_bytes())
    assert manifest["sources"] == ["s3://exports/events/part-0.jsonl", "s3://exports/events/part-1.jsonl.gz"]
    assert all(len(f["sample_sha256"]) == 64 for f in manifest["fingerprint"]["inputs"])


def test_s3_globs_and_parquet(tmp_path, s3_endpoint, bucket, capture_server):
    result = run_cli(["run", "s3://exports/*/*.parquet", "--host", capture_server.url, "--rate", "0", "-q"],
                     tmp_path, _env(s3_endpoint))
    assert result.returncode == 0, result.stderr
    assert len(capture_server.events) == 300


def test_a_missing_s3_object_is_a_clear_error(tmp_path, s3_endpoint, bucket):
    result = run_cli(["inspect", "s3://exports/nope.jsonl", "-q"], tmp_path, _env(s3_endpoint))
    assert result.returncode == 2
    assert "s3://exports/nope.jsonl" in result.stderr and "Traceback" not in result.stderr
