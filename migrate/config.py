"""The job's settings: defaults < the mapping file's ``[run]`` table < environment < command line.

Only the API key's *source* is ever recorded; the key itself stays in memory (never in the work
directory, logs, summaries or dry-run output).
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from migrate.batches import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_EVENTS, MAX_BATCH_BYTES
from migrate.errors import ConfigError
from migrate.event import MAX_EVENT_BYTES
from migrate.sender import DEFAULT_MAX_RETRIES, DEFAULT_READ_TIMEOUT_SECONDS, DEFAULT_RETRY_BASE_SECONDS

# A batch must hold the largest event we accept, plus the envelope.
MIN_BATCH_BYTES = MAX_EVENT_BYTES + 64 * 1024
# PostHog's migration guide asks for "a few thousand events per second" in total.
DEFAULT_RATE = 3_000.0
DEFAULT_CONCURRENCY = 4
DEFAULT_MEMORY_BYTES = 1 << 30
MIN_MEMORY_BYTES = 1 << 20
WORKDIR_ROOT = ".posthog-migrate"
LOCAL_HOST = "local"
# Used for the local capture server when no key is given: the local server checks only its shape.
LOCAL_API_KEY = "phc_local_migration_test"
API_KEY_VARIABLE = "POSTHOG_API_KEY"
HOST_VARIABLE = "POSTHOG_HOST"

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "mi": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
               "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4}


def parse_size(text: str | int, what: str) -> int:
    """``"512MiB"``, ``"5MB"``, ``"1g"`` or a plain number of bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(str(text))
    unit = (match.group(2) or "").lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(f"{what}: {text!r} is not a size (examples: 5MiB, 512MB, 1GiB, 1048576)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


@dataclass
class Settings:
    sources: tuple[str, ...] = ()
    format: str = "auto"
    mapping_path: str | None = None
    host: str | None = None
    api_key: str | None = field(default=None, repr=False)
    job: str | None = None
    workdir: Path | None = None
    restart: bool = False
    dry_run: bool = False
    out: Path | None = None
    batch_bytes: int = DEFAULT_BATCH_BYTES
    batch_size: int = DEFAULT_BATCH_EVENTS
    concurrency: int = DEFAULT_CONCURRENCY
    rate: float = DEFAULT_RATE
    memory: int = DEFAULT_MEMORY_BYTES
    workers: int = 0                        # processes reading input files; 0 = one per core
    shard: str | None = None                # "K/N": this process migrates the K-th of N shards of people
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_delay: float = DEFAULT_RETRY_BASE_SECONDS
    timeout: float = DEFAULT_READ_TIMEOUT_SECONDS
    quiet: bool = False

    @property
    def is_local(self) -> bool:
        return self.host == LOCAL_HOST

    def job_directory(self) -> Path:
        """``--workdir``, else ``.posthog-migrate/<job>`` (with ``-shard-K-of-N`` for a sharded run, so the
        shards of one migration can share a machine)."""
        if self.workdir is not None:
            return Path(self.workdir)
        shard = self.shard_pair()
        suffix = f"-shard-{shard[0] + 1}-of-{shard[1]}" if shard else ""
        return Path(WORKDIR_ROOT) / ((self.job or default_job_name(self.sources)) + suffix)

    def job_id(self) -> str:
        """The name events are tagged with ($import_job_id): the job's name, or its folder's."""
        if self.job:
            return self.job
        if self.workdir is not None:
            return Path(self.workdir).resolve().name
        return default_job_name(self.sources)

    def shard_pair(self) -> tuple[int, int] | None:
        """--shard K/N as (K-1, N): 0-based, or None when the job is not sharded."""
        if not self.shard:
            return None
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(self.shard))
        if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
            raise ConfigError(f"--shard {self.shard!r}: write K/N with 1 <= K <= N, e.g. --shard 2/8")
        return int(match.group(1)) - 1, int(match.group(2))

    def check(self) -> Settings:
        if not 1 <= self.batch_size <= 1_000_000:
            raise ConfigError(f"--batch-size {self.batch_size}: choose between 1 and 1,000,000 events")
        if not MIN_BATCH_BYTES <= self.batch_bytes <= MAX_BATCH_BYTES:
            raise ConfigError(
                f"--batch-bytes {self.batch_bytes:,}: choose between {MIN_BATCH_BYTES:,} (the largest event "
                f"plus room) and {MAX_BATCH_BYTES:,} (PostHog's 20 MiB request limit)"
            )
        if not 1 <= self.concurrency <= 64:
            raise ConfigError(f"--concurrency {self.concurrency}: choose between 1 and 64")
        if self.rate < 0:
            raise ConfigError("--rate must be 0 (unlimited) or a positive number of events per second")
        self.shard_pair()
        if not 0 <= self.workers <= 64:
            raise ConfigError(f"--workers {self.workers}: choose between 1 and 64 (0 = one per core)")
        if self.memory < MIN_MEMORY_BYTES:
            raise ConfigError(f"--memory {self.memory:,}: at least {MIN_MEMORY_BYTES:,} bytes")
        if self.host and self.host != LOCAL_HOST and not re.match(r"https?://", self.host):
            raise ConfigError(
                f"--host {self.host!r} must start with http:// or https:// (e.g. https://us.i.posthog.com), "
                "or be 'local' for the built-in capture server"
            )
        return self


def default_job_name(sources: tuple[str, ...]) -> str:
    """A readable, stable name: the first source's name plus a hash of all of them."""
    resolved = sorted(s if "://" in s else os.path.abspath(s) for s in sources)
    first = Path(sources[0].rstrip("/")).name if sources else "job"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", first).strip("-")[:40] or "job"
    digest = hashlib.sha256("\n".join(resolved).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def run_table(mapping_path: str | None) -> dict[str, Any]:
    """The ``[run]`` table of the mapping file: settings that travel with the mapping."""
    if not mapping_path:
        return {}
    try:
        document = tomllib.loads(Path(mapping_path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}  # the mapping loader reports these with the file's name
    table = document.get("run", {})
    allowed = {f.name for f in fields(Settings)} - {"sources", "api_key", "mapping_path", "restart"}
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{mapping_path}: unknown key(s) in [run]: {sorted(unknown)}; allowed: {sorted(allowed)}")
    if "api_key" in document.get("run", {}):
        raise ConfigError(f"{mapping_path}: don't put the API key in a file; use POSTHOG_API_KEY")
    return table


def resolve_settings(cli: dict[str, Any]) -> Settings:
    """Merge the layers. ``cli`` holds only what was given on the command line (None = not given)."""
    values: dict[str, Any] = {}
    values.update(run_table(cli.get("mapping_path")))
    environment = {"api_key": os.environ.get(API_KEY_VARIABLE), "host": os.environ.get(HOST_VARIABLE)}
    values.update({k: v for k, v in environment.items() if v})
    values.update({k: v for k, v in cli.items() if v is not None})
    for key in ("batch_bytes", "memory"):
        if key in values:
            values[key] = parse_size(values[key], f"--{key.replace('_', '-')}")
    if values.get("host"):
        values["host"] = str(values["host"]).strip().rstrip("/")  # one spelling, so resumes recognise it
    for key in ("workdir", "out"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return Settings(**values).check()
