"""The adapter registry: format name → adapter class.

Ours are listed in ``BUILTIN_ADAPTERS``; third parties add theirs through the
``posthog_migrate.adapters`` entry point group without editing this package (see the README).
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points

from adapters.base import Adapter, BadRow, SourceFile, file_name, without_compression
from adapters.csv import CsvAdapter
from adapters.jsonl import JsonLinesAdapter
from adapters.parquet import ParquetAdapter
from adapters.posthog import PostHogAdapter
from migrate.errors import ConfigError

ENTRY_POINT_GROUP = "posthog_migrate.adapters"
BUILTIN_ADAPTERS: dict[str, type[Adapter]] = {
    adapter.name: adapter for adapter in (CsvAdapter, JsonLinesAdapter, ParquetAdapter, PostHogAdapter)
}
# Platform adapters, imported only when asked for: each reads one analytics platform's export.
PLATFORM_ADAPTERS = {
    "amplitude": "adapters.amplitude:AmplitudeAdapter",
    "mixpanel": "adapters.mixpanel:MixpanelAdapter",
    "segment": "adapters.segment:SegmentAdapter",
    "ga4": "adapters.ga4:Ga4Adapter",
    "heap": "adapters.heap:HeapAdapter",
}

__all__ = ["Adapter", "BadRow", "SourceFile", "available_adapters", "adapter_class", "detect_format"]


def _load(target: str) -> type[Adapter]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def available_adapters() -> dict[str, type[Adapter]]:
    adapters = dict(BUILTIN_ADAPTERS)
    for name, target in PLATFORM_ADAPTERS.items():
        adapters[name] = _load(target)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
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
    name = without_compression(file_name(uri))
    return next((format_name for ending, format_name in _formats_by_ending() if name.endswith(ending)), None)


@functools.cache
def _formats_by_ending() -> tuple[tuple[str, str], ...]:
    """(ending, format) of every registered adapter, in registry order. Built once per process: building it
    imports the platform adapters and scans the entry points (milliseconds), and listing a folder asks for
    every file."""
    return tuple((ending, adapter.name) for adapter in available_adapters().values() for ending in adapter.extensions)
