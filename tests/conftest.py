"""Shared test helpers: real files in every format, the real capture server on 127.0.0.1, real processes."""

from __future__ import annotations

import gzip
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# The capture server's fixtures (capture_server, make_server), as adapter authors get them.
pytest_plugins = ["posthog_migrate.capture.testing"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEST_API_KEY = "phc_test_key_never_written_anywhere"
BASE_TIME = datetime(2024, 3, 1, tzinfo=UTC)


def make_rows(count: int, people: int = 40, seed: int = 7, days: int = 10) -> list[dict]:
    """Generic export rows in the default column names, in random (not time) order."""
    rng = random.Random(seed)
    rows = []
    for number in range(count):
        moment = BASE_TIME + timedelta(seconds=rng.randrange(days * 86_400), microseconds=rng.randrange(1_000_000))
        rows.append({
            "event": rng.choice(["$pageview", "signed_up", "note_created", "plan_upgraded"]),
            "distinct_id": f"user-{rng.randrange(people)}",
            "timestamp": moment.isoformat().replace("+00:00", "Z"),
            "insert_id": f"row-{seed}-{number}",
            "plan": rng.choice(["free", "pro", "team"]),
            "note_length": rng.randrange(1, 5000),
        })
    return rows


def write_csv(path: Path, rows: list[dict], gz: bool = False) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(_csv_cell(row.get(c)) for c in columns))
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    data = b"".join(orjson.dumps(row) + b"\n" for row in rows)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 1000) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def read_received(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto) on 127.0.0.1 for the module's tests: its http:// URL."""
    pytest.importorskip("moto")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def install_plugin(folder: Path, module: str, code: str, adapters: dict[str, str]) -> None:
    """Install a plugin package into ``folder`` (a process with it on PYTHONPATH sees it): ``module``.py holding
    ``code``, with ``posthog_migrate.adapters`` entry points format name → "module:Class"."""
    (folder / f"{module}.py").write_text(code)
    info = folder / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    entry_points = "".join(f"{name} = {target}\n" for name, target in adapters.items())
    (info / "entry_points.txt").write_text(f"[posthog_migrate.adapters]\n{entry_points}")


def cli_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTHOG_")}
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120,
            ) -> subprocess.CompletedProcess:
    """Run posthog-migrate as a real process (the way users do), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "posthog_migrate", *args], cwd=cwd, env=env or cli_environment(),
        capture_output=True, text=True, timeout=timeout,
    )
