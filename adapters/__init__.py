"""The adapter registry: format name → adapter class.

Ours are listed in ``BUILTIN_ADAPTERS`` and ``PLATFORM_ADAPTERS``; third parties add theirs through the
``posthog_migrate.adapters`` entry point group without editing this package (see the README). Classes are
imported on first use, so that listing the formats (``run --help``) imports neither pyarrow nor a plugin.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any

from posthog_migrate.errors import ConfigError

if TYPE_CHECKING:
    from posthog_migrate.adapters.base import Adapter, SourceFile

ENTRY_POINT_GROUP = "posthog_migrate.adapters"
# The generic formats: name → "module:class".
BUILTIN_ADAPTERS = {
    "csv": "posthog_migrate.adapters.csv:CsvAdapter",
    "jsonl": "posthog_migrate.adapters.jsonl:JsonLinesAdapter",
    "parquet": "posthog_migrate.adapters.parquet:ParquetAdapter",
    "posthog": "posthog_migrate.adapters.posthog:PostHogAdapter",
}
# Platform adapters: each reads one analytics platform's export.
PLATFORM_ADAPTERS = {
    "amplitude": "posthog_migrate.adapters.amplitude:AmplitudeAdapter",
    "mixpanel": "posthog_migrate.adapters.mixpanel:MixpanelAdapter",
    "segment": "posthog_migrate.adapters.segment:SegmentAdapter",
    "ga4": "posthog_migrate.adapters.ga4:Ga4Adapter",
    "heap": "posthog_migrate.adapters.heap:HeapAdapter",
}
# Records of a file that --format auto shows the adapters to recognise its format.
SAMPLE_RECORDS = 20
# What ``from posthog_migrate.adapters import Adapter`` (and the like) finds in posthog_migrate.adapters.base,
# imported when first asked for.
_BASE_NAMES = ("Adapter", "BadRow", "SourceFile")

__all__ = ["Adapter", "BadRow", "SourceFile", "available_adapters", "adapter_class", "detect_format",
           "format_names", "recognise_format"]


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        return getattr(importlib.import_module("posthog_migrate.adapters.base"), name)
    raise AttributeError(f"module 'adapters' has no attribute {name!r}")


def _load(target: str) -> type[Adapter]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@functools.cache  # the installed packages do not change while a command runs; every input file asks
def _plugin_entry_points() -> tuple:
    from importlib.metadata import entry_points  # ~40 ms: only when plugins are looked for

    return tuple(entry_points(group=ENTRY_POINT_GROUP))


def format_names() -> list[str]:
    """Every registered format's name, ours and the plugins', sorted; nothing is imported or loaded."""
    names = {*BUILTIN_ADAPTERS, *PLATFORM_ADAPTERS, *(entry.name for entry in _plugin_entry_points())}
    return sorted(names)


def available_adapters() -> dict[str, type[Adapter]]:
    adapters = {name: _load(target) for name, target in {**BUILTIN_ADAPTERS, **PLATFORM_ADAPTERS}.items()}
    for entry in _plugin_entry_points():
        if entry.name not in adapters:  # ours win: a plugin cannot silently replace a built-in format
            adapters[entry.name] = entry.load()
    return adapters


def adapter_class(name: str) -> type[Adapter]:
    adapters = available_adapters()
    if name not in adapters:
        raise ConfigError(f"unknown format {name!r}; choose one of: auto, {', '.join(sorted(adapters))}")
    return adapters[name]


def detect_format(uri: str) -> str | None:
    """The format a file's ending names (``events.csv.gz`` → csv), or None.

    A URI's ``?query`` (``s3://b/x.jsonl?endpoint_override=host:9000``) is not part of the name; a local path
    is taken whole (``?`` is a legal character in a file name).
    """
    from posthog_migrate.adapters.base import file_name, without_compression

    name = without_compression(file_name(uri))
    return next((format_name for ending, format_name in _formats_by_ending() if name.endswith(ending)), None)


@functools.cache
def _formats_by_ending() -> tuple[tuple[str, str], ...]:
    """(ending, format) of every registered adapter, in registry order. Built once per process: building it
    imports the platform adapters and scans the entry points (milliseconds), and listing a folder asks for
    every file."""
    return tuple((ending, adapter.name) for adapter in available_adapters().values() for ending in adapter.extensions)


def first_records(source: SourceFile, limit: int = SAMPLE_RECORDS) -> list[dict]:
    """Up to ``limit`` records from the start of a file, read by its ending (CSV, Parquet, else JSON lines);
    fewer, or none, when the file holds fewer or cannot be read that way."""
    from posthog_migrate.adapters.common import read_table_rows

    records: list[dict] = []
    chunks = read_table_rows(source)
    try:
        for chunk in chunks:
            records += [record for _, record in chunk if isinstance(record, dict)][:limit - len(records)]
            if len(records) >= limit:
                break
    except Exception:  # whatever stops this reader, the rows say nothing here; the file's own reader reports it
        pass
    finally:
        chunks.close()
    return records


def _recognises(adapter: type[Adapter], record: dict) -> bool:
    try:
        return bool(adapter.recognises(record))
    except Exception:  # a plugin's bug must not stop the choice: its adapter just does not claim the row
        return False


def recognise_format(records: list[dict]) -> str | None:
    """The registered format that recognises more than half of ``records`` (the most of them, ours first on
    a tie), or None: the rows say nothing beyond their file's ending."""
    best, best_count = None, 0
    for name, adapter in available_adapters().items():
        count = sum(_recognises(adapter, record) for record in records)
        if count > best_count:
            best, best_count = name, count
    return best if best_count * 2 > len(records) else None
