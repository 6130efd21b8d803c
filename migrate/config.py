"""The job's settings: defaults < the mapping file's ``[run]`` table < environment < command line.

Only the API key's *source* is ever recorded; the key itself stays in memory (never in the work
directory, logs, summaries or dry-run output).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import tomllib
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit, urlunsplit

from posthog_migrate.batches import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_EVENTS, MAX_BATCH_BYTES
from posthog_migrate.errors import ConfigError, describe_unknown_keys
from posthog_migrate.event import MAX_EVENT_BYTES, Rejection, parse_timestamp
from posthog_migrate.mapping import MAPPING_ARGUMENT
from posthog_migrate.pull.sources import is_api_uri, source_key
from posthog_migrate.sender import DEFAULT_MAX_RETRIES, DEFAULT_READ_TIMEOUT_SECONDS, DEFAULT_RETRY_BASE_SECONDS

# A batch must hold the largest event we accept, plus the envelope.
MIN_BATCH_BYTES = MAX_EVENT_BYTES + 64 * 1024
# PostHog's migration guide asks for "a few thousand events per second" in total.
DEFAULT_RATE = 3_000.0
# Events before this are counted as suspicious (inspect and the summary warn): analytics exports hardly go
# back so far, while an epoch of 0, 1 or a negative number, or a wrong timestamp unit, lands there.
DEFAULT_SUSPICIOUS_BEFORE = "2000-01-01"
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


@dataclass(frozen=True)
class Spelling:
    """How messages name a setting the caller gave: the command line's option (``--batch-size 0``), or the
    Python API's keyword argument (``batch_size=0``)."""

    keywords: bool = False

    def name(self, setting: str) -> str:
        return f"{setting}=" if self.keywords else "--" + setting.replace("_", "-")

    def given(self, setting: str, shown: Any) -> str:
        """The setting with a value as the caller writes it: ``--batch-size 0`` or ``batch_size=0``."""
        return f"{setting}={shown}" if self.keywords else f"{self.name(setting)} {shown}"


COMMAND_LINE = Spelling()
KEYWORDS = Spelling(keywords=True)


@dataclass
class Settings:
    sources: tuple[str, ...] = ()
    format: str = "auto"
    mapping_path: str | None = None
    # The Python API's mapping= given as a dict: the mapping file's tables (its [run] table included).
    mapping_tables: dict | None = None
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
    suspicious_before: str = DEFAULT_SUSPICIOUS_BEFORE  # a date or time: earlier events are flagged (not dropped)
    source_credentials: str | None = None   # a file of AMPLITUDE_*/MIXPANEL_* credentials for API sources
    redownload: bool = False                # with --restart: download the API sources again

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

    def suspicious_before_us(self, spelling: Spelling = COMMAND_LINE) -> int:
        """``suspicious_before`` in microseconds since the epoch (UTC when it names no offset)."""
        try:
            return parse_timestamp(self.suspicious_before, "iso")
        except Rejection:
            if spelling.keywords:
                raise ConfigError(f"suspicious_before={self.suspicious_before!r} is not a date or an ISO time; "
                                  f'give e.g. suspicious_before="{DEFAULT_SUSPICIOUS_BEFORE}"') from None
            raise ConfigError(
                f"[run] suspicious_before = {self.suspicious_before!r} is not a date or an ISO time; write e.g. "
                f'suspicious_before = "{DEFAULT_SUSPICIOUS_BEFORE}"'
            ) from None

    def shard_pair(self, spelling: Spelling = COMMAND_LINE) -> tuple[int, int] | None:
        """--shard K/N as (K-1, N): 0-based, or None when the job is not sharded."""
        if not self.shard:
            return None
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(self.shard))
        if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
            raise ConfigError(f"{spelling.given('shard', repr(self.shard))}: write K/N with 1 <= K <= N, e.g. "
                              f"{spelling.given('shard', repr('2/8') if spelling.keywords else '2/8')}")
        return int(match.group(1)) - 1, int(match.group(2))

    def check(self, spelling: Spelling = COMMAND_LINE) -> Settings:
        """Refuse values out of range, naming each as the caller gave it (``spelling``)."""
        given = spelling.given
        if not 1 <= self.batch_size <= 1_000_000:
            raise ConfigError(f"{given('batch_size', self.batch_size)}: choose between 1 and 1,000,000 events")
        if not MIN_BATCH_BYTES <= self.batch_bytes <= MAX_BATCH_BYTES:
            raise ConfigError(
                f"{given('batch_bytes', f'{self.batch_bytes:,}')}: choose between {MIN_BATCH_BYTES:,} (the largest "
                f"event plus room) and {MAX_BATCH_BYTES:,} (PostHog's 20 MiB request limit)"
            )
        if not 1 <= self.concurrency <= 64:
            raise ConfigError(f"{given('concurrency', self.concurrency)}: choose between 1 and 64")
        if self.rate < 0:
            raise ConfigError(f"{spelling.name('rate')} must be 0 (unlimited) or a positive number of events per "
                              "second")
        if not self.timeout > 0:
            raise ConfigError(f"{given('timeout', self.timeout)}: give a positive number of seconds, e.g. "
                              f"{given('timeout', 60)}")
        if self.max_retries < 0:
            raise ConfigError(f"{given('max_retries', self.max_retries)}: give 0 (never retry) or a positive number")
        if self.retry_delay < 0:
            raise ConfigError(f"{given('retry_delay', self.retry_delay)}: give 0 or a positive number of seconds")
        self.shard_pair(spelling)
        self.suspicious_before_us(spelling)
        if not 0 <= self.workers <= 64:
            raise ConfigError(f"{given('workers', self.workers)}: choose between 1 and 64 (0 = one per core)")
        if self.memory < MIN_MEMORY_BYTES:
            raise ConfigError(f"{given('memory', f'{self.memory:,}')}: at least {MIN_MEMORY_BYTES:,} bytes")
        if self.host and self.host != LOCAL_HOST:
            check_host(self.host, spelling)
        if self.redownload and not self.restart:
            raise ConfigError(f"{spelling.name('redownload')} starts the job over from new downloads: add "
                              f"{spelling.name('restart')} too")
        return self


def check_host(host: str, spelling: Spelling = COMMAND_LINE) -> None:
    """Refuse a --host that is not a plain http(s) base URL, before anything is sent.

    A user name or password in it (``https://user:pass@host``) would be printed in the summary and
    ``status`` and stored in state.json, and PostHog never needs them: the project API key authenticates.
    """
    example = "e.g. https://us.i.posthog.com, or 'local' for the built-in capture server"
    if not re.match(r"https?://", host):
        raise ConfigError(f"{spelling.given('host', repr(host))} must start with http:// or https:// ({example})")
    try:
        parts = urlsplit(host)
        parts.port  # noqa: B018 - parsing the port is what raises for "host:abc"
    except ValueError as error:
        raise ConfigError(f"{spelling.given('host', repr(host))} is not a valid URL ({error}); write it like "
                          "https://us.i.posthog.com or http://[::1]:8010") from None
    if parts.username is not None or parts.password is not None:
        address = parts.netloc.rpartition("@")[2]  # the credentials themselves are never repeated
        raise ConfigError(
            f"{spelling.given('host', urlunsplit(parts._replace(netloc='…@' + address)))}: remove the user name and "
            f"password from the URL ({spelling.given('host', urlunsplit(parts._replace(netloc=address)))}). PostHog "
            "never needs them (the "
            "project API key is what authenticates), and in the URL they would be shown and stored with the job."
        )
    if not parts.hostname:
        raise ConfigError(f"{spelling.given('host', repr(host))} names no host ({example})")
    if parts.query or parts.fragment:
        raise ConfigError(f"{spelling.given('host', repr(host))}: give the base URL, without ?query or #fragment "
                          f"({example})")


def default_job_name(sources: tuple[str, ...]) -> str:
    """A readable, stable name: the first source's name plus a hash of all of them. An API source counts
    without its endpoint= (``amplitude-export-…``), so that a job behind another proxy is the same job."""
    resolved = sorted(source_key(s) if is_api_uri(s) else s if "://" in s else os.path.abspath(s) for s in sources)
    first = sources[0].split("?", 1)[0] if sources and "://" in sources[0] else (sources[0] if sources else "job")
    first = first.replace("://", "-") if sources and is_api_uri(sources[0]) else Path(first.rstrip("/")).name
    slug = re.sub(r"[^A-Za-z0-9]+", "-", first).strip("-")[:40] or "job"
    digest = hashlib.sha256("\n".join(resolved).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


# Sizes are ints in Settings, but the file and the command line may also spell them as "512MiB".
_SIZE_SETTINGS = ("batch_bytes", "memory")
# A good value of each setting, for the messages (shown in quotes in TOML when the setting is a text).
_EXAMPLES = {"batch_size": "2000", "concurrency": "4", "workers": "0", "max_retries": "10", "rate": "3000",
             "retry_delay": "1", "timeout": "60", "batch_bytes": "5MiB", "memory": "1GiB", "format": "csv",
             "host": "https://us.i.posthog.com", "job": "backfill", "shard": "2/8", "workdir": "work/backfill",
             "out": "dry-run", "restart": "true", "dry_run": "true", "quiet": "true",
             "suspicious_before": DEFAULT_SUSPICIOUS_BEFORE, "source_credentials": "amplitude.env"}


@functools.cache
def _setting_kinds() -> dict[str, type]:
    """Each Settings field's type, with ``| None`` and type arguments dropped: int, float, str, Path, bool,
    tuple."""
    kinds = {}
    for name, hint in get_type_hints(Settings).items():
        if get_origin(hint) in (Union, types.UnionType):
            hint = next(arg for arg in get_args(hint) if arg is not type(None))
        kinds[name] = get_origin(hint) or hint
    return kinds


def _kind_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the setting ``name`` (None when it can)."""
    kind = _setting_kinds().get(name)
    if name in _SIZE_SETTINGS:
        if isinstance(value, bool) or not isinstance(value, int | str):
            return 'must be a size: a whole number of bytes or a text such as "512MiB"'
    elif kind is bool:
        if not isinstance(value, bool):
            return "must be true or false"
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be a whole number"
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if not math.isfinite(value):
            return "must be a finite number"
    elif kind is str:
        if not isinstance(value, str):
            return "must be a text (in quotes)"
    elif kind is Path:
        if not isinstance(value, str | os.PathLike):
            return "must be a folder path (in quotes)"
    elif kind is tuple and not (isinstance(value, tuple | list) and all(isinstance(item, str) for item in value)):
        return "must be a list of file names, folders, globs or URIs"
    elif kind is dict and not isinstance(value, dict):
        return "must be a dict of the mapping file's tables"
    return None


def _check_kind(name: str, value: Any, where: str | None, spelling: Spelling = COMMAND_LINE) -> None:
    """Raise ConfigError naming the setting (the ``[run]`` key of the mapping ``where``, or the option or
    keyword argument, as ``spelling`` writes it, when ``where`` is None) when ``value`` is of the wrong kind."""
    problem = _kind_problem(name, value)
    if problem is None:
        return
    example = _EXAMPLES.get(name)
    shown = "(hidden)" if name == "api_key" else repr(value)  # never print a key, even a malformed one
    if where is None:
        if spelling.keywords and example and (name in _SIZE_SETTINGS or _setting_kinds().get(name) in (str, Path)):
            example = repr(example)
        raise ConfigError(f"{spelling.given(name, shown)} {problem}"
                          + (f", e.g. {spelling.given(name, example)}" if example else ""))
    if example and (name in _SIZE_SETTINGS or _setting_kinds().get(name) in (str, Path)):
        example = f'"{example}"'
    fix = f"; write e.g. {name} = {example}" if example else ""
    raise ConfigError(f"{where}: [run] {name} = {shown} {problem}{fix}")


def run_table(mapping_path: str | None) -> dict[str, Any]:
    """The ``[run]`` table of the mapping file: settings that travel with the mapping."""
    if not mapping_path:
        return {}
    try:
        document = tomllib.loads(Path(mapping_path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}  # the mapping loader reports these with the file's name
    return checked_run_table(document, mapping_path)


def checked_run_table(document: dict, where: str) -> dict[str, Any]:
    """The ``[run]`` table of a mapping's tables (a file's, or the Python API's mapping dict), each key checked;
    ``where`` names the mapping in messages."""
    table = document.get("run", {}) if isinstance(document, dict) else {}
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: run = {table!r} must be a table: write the settings under a [run] line")
    if "api_key" in table:
        raise ConfigError(
            f"{where}: [run] api_key: don't put the API key in a file; use {API_KEY_VARIABLE} "
            "(or --api-key) instead"
        )
    allowed = {f.name for f in fields(Settings)} - {"sources", "api_key", "mapping_path", "mapping_tables", "restart",
                                                    "redownload"}
    unknown = [str(key) for key in table if key not in allowed]
    if unknown:
        known = sorted(allowed)
        raise ConfigError(f"{where}: unknown key(s) in [run]: {describe_unknown_keys(unknown, known)}; "
                          f"allowed: {', '.join(known)}")
    for name, value in table.items():
        _check_kind(name, value, where)
    return table


def resolve_settings(cli: dict[str, Any], spelling: Spelling = COMMAND_LINE) -> Settings:
    """Merge the layers. ``cli`` holds only what the caller gave (None = not given): the command line's options,
    or the Python API's keyword arguments (``spelling`` says which, for the messages).

    Every value is checked against its setting's kind (whole number, number, size, text, path, flag) where
    it comes from, so a wrong one names the ``[run]`` key, the option or the argument instead of failing later.
    """
    known = {f.name for f in fields(Settings)}
    unknown = sorted(k for k, v in cli.items() if v is not None and k not in known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
    for name, value in cli.items():
        if value is not None:
            _check_kind(name, value, None, spelling)
    values: dict[str, Any] = {}
    tables = cli.get("mapping_tables")
    where = MAPPING_ARGUMENT if tables is not None else cli.get("mapping_path")
    table = checked_run_table(tables, where) if tables is not None else run_table(cli.get("mapping_path"))
    values.update(table)
    environment = {"api_key": os.environ.get(API_KEY_VARIABLE), "host": os.environ.get(HOST_VARIABLE)}
    values.update({k: v for k, v in environment.items() if v})
    given = {k: v for k, v in cli.items() if v is not None}
    values.update(given)
    for key in _SIZE_SETTINGS:
        if key in values:
            what = spelling.name(key) if key in given else f"{where}: [run] {key}"
            values[key] = parse_size(values[key], what)
    if values.get("host"):
        values["host"] = str(values["host"]).strip().rstrip("/")  # one spelling, so resumes recognise it
    for key, kind in _setting_kinds().items():
        if kind is float and key in values:
            values[key] = float(values[key])  # an int is fine in the file: rate = 3000
    for key in ("workdir", "out"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return Settings(**values).check(spelling)
