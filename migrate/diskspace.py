"""Temporary disk: how much a job needs in its work directory, and what to say when the disk is full.

The sorted runs are most of it. What they take per byte of input was measured with ``prepare`` on
generated files and the sample exports (runs are LZ4 Arrow IPC: ~25 bytes of sort keys per event plus its
JSON payload compressed to about a third):

==================================  ============  ===============  ===========================
input                               bytes/event   runs / payload   runs / input file
==================================  ============  ===============  ===========================
small flat rows, JSON lines         94            39%              62%
the same rows as CSV                94            39%              131%
the same rows as Parquet            94            39%              340%
Amplitude, bench.py simple, 1M      158           30%              31% of the JSON (198% of .gz)
Amplitude, bench.py realistic, 1M   378           21%              26% of the JSON (144% of .gz)
==================================  ============  ===============  ===========================

A platform's export (Amplitude, Mixpanel, Segment...) has rich rows, whose JSON is mostly what the runs
compress well: its estimate takes the larger of the Amplitude figures. Other JSON takes the small rows'.
Each estimate is the larger figure: a warning that comes early costs nothing, a disk that fills up costs
a resume.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from posthog_migrate.adapters import PLATFORM_ADAPTERS
from posthog_migrate.adapters.base import SourceFile, file_name
from posthog_migrate.spool import MAX_MERGE_FAN_IN

RUN_BYTES_PER_INPUT_BYTE = {".csv": 1.31, ".tsv": 1.31, ".parquet": 3.4}
RUN_BYTES_PER_JSON_BYTE = 0.62  # JSON lines, and CSV, Parquet and JSON of unknown shape
RUN_BYTES_PER_PLATFORM_JSON_BYTE = 0.31  # the platforms' exports (see the table above)
# A gzip'd export is this many times smaller than its JSON (measured 6.2x on Amplitude-shaped rows, 7.7x on
# small flat ones). Zip members are listed with their uncompressed size already.
GZIP_EXPANSION = 7.7
# The events' JSON, as the built-in server (--host local) keeps what it receives and --dry-run its request
# bodies in the work directory: 2.6x (small rows) to 3.4x (simple Amplitude rows), 4.7x (realistic ones) the
# runs' size.
PAYLOAD_BYTES_PER_RUN_BYTE = 4.7
# Sending writes checkpoints (a few KiB) and rejects: a full disk asks for at least this much, whatever the
# estimate says is left to write.
MIN_FREE_BYTES = 1 << 20
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def estimate_work_bytes(sources: Iterable[SourceFile], events_as_json: bool = False, format_name: str = "auto") -> int:
    """The temporary disk a job of these inputs needs at its peak, from their sizes and kinds.

    ``events_as_json``: the work directory also gets every event's JSON (``--host local``, ``--dry-run``).
    ``format_name``: a platform's export (one of PLATFORM_ADAPTERS) takes the rich rows' ratio.
    """
    sources = list(sources)
    json_ratio = RUN_BYTES_PER_PLATFORM_JSON_BYTE if format_name in PLATFORM_ADAPTERS else RUN_BYTES_PER_JSON_BYTE
    runs = sum(source.size * _run_bytes_per_input_byte(source.uri, json_ratio) for source in sources)
    if len(sources) > MAX_MERGE_FAN_IN:
        runs *= 2  # at least one run per file: compaction writes the merged runs before deleting the others
    payloads = runs * PAYLOAD_BYTES_PER_RUN_BYTE if events_as_json else 0
    return int(runs + payloads)


def _run_bytes_per_input_byte(uri: str, json_ratio: float) -> float:
    name = file_name(uri).lower()
    expansion = GZIP_EXPANSION if name.endswith(".gz") else 1.0
    name = name.removesuffix(".gz")
    ratio = next((ratio for ending, ratio in RUN_BYTES_PER_INPUT_BYTE.items() if name.endswith(ending)),
                 json_ratio)
    return ratio * expansion


def still_needed(root: Path, estimate: int) -> int:
    """What the job may still write: the estimate less what its work directory already holds."""
    return max(0, estimate - _bytes_under(root))


def disk_space_warning(root: Path, estimate: int) -> str | None:
    """A warning when the filesystem of the work directory (or of the folder that will hold it) has less free
    space than the job may still need; None when it has enough."""
    free = shutil.disk_usage(_existing_ancestor(root)).free
    needed = still_needed(root, estimate)
    if free >= needed:
        return None
    return (f"the job needs about {human_bytes(estimate)} of temporary disk in {root}, and its filesystem has "
            f"{human_bytes(free)} free: free {human_bytes(needed - free)} there, or use --workdir elsewhere")


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def disk_full_message(root: Path, estimate: int) -> str:
    """What to say when a write failed for want of space: everything before it is checkpointed."""
    needed = max(MIN_FREE_BYTES, still_needed(root, estimate))
    return (f"no space left in {root}; free {human_bytes(needed)} or use --workdir elsewhere; "
            "run again to resume")


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1024
    return f"{count:,.1f} TiB"


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _bytes_under(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a temporary file renamed meanwhile
                total += os.stat(os.path.join(folder, name)).st_size
    return total
