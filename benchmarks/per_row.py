"""CPU per row of the prepare phase on one input file, in this process: where a format's time goes.

    python benchmarks/per_row.py FILE --format amplitude
    python benchmarks/per_row.py FILE --format jsonl --mapping benchmarks/amplitude-as-jsonl.toml

FILE is any input, e.g. one of bench.py's generated files (benchmarks/out/amplitude-1000000-42/*.json.gz).

Prints microseconds of CPU per row for reading alone (decompress, parse), for reading and mapping (the
adapter, validation, serialisation, stats), for the whole of a file's prepare (plus the sort buffers,
the identity pairs and the spill to a sorted run), and for the adapter's ``to_events`` alone over rows
already read. CPU time, not wall time, so a busy machine changes
the numbers less. Nothing is sent; the work directory is a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from posthog_migrate.accounting import PrepareStats  # noqa: E402
from posthog_migrate.config import resolve_settings  # noqa: E402
from posthog_migrate.identity import IdentityCollector  # noqa: E402
from posthog_migrate.job import open_job  # noqa: E402
from posthog_migrate.prepare import map_rows, prepare_file  # noqa: E402

# The run buffer of a single prepare_file: large enough that the file is spilled once, at its end.
RUN_BYTES = 256 << 20


def cpu_per_row(work, rows: int, repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        work()
    return (time.process_time() - started) / (rows * repeat) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--mapping")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        settings = resolve_settings({"sources": (args.file,), "format": args.format, "mapping_path": args.mapping,
                                     "workdir": workdir, "dry_run": True, "quiet": True})
        job = open_job(settings, {})
        for folder in (job.runs_dir, job.identity_dir, job.parts_dir):
            folder.mkdir(parents=True, exist_ok=True)
        source = job.sources[0]
        rows = sum(len(chunk) for chunk in job.adapter.read(source))
        read = cpu_per_row(lambda: sum(len(chunk) for chunk in job.adapter.read(source)), rows, args.repeat)
        mapped = cpu_per_row(lambda: map_rows(job, source, None, lambda *_: None, PrepareStats(),
                                                  IdentityCollector(job.identity_dir, RUN_BYTES)),
                             rows, args.repeat)
        whole = cpu_per_row(lambda: prepare_file(job, source, RUN_BYTES), rows, args.repeat)
        records = [record for chunk in job.adapter.read(source) for _, record in chunk]
        mapping = cpu_per_row(lambda: map_only(job.adapter.to_events, records), rows, args.repeat)
    print(f"{rows:,} rows ({job.format_name}): read {read:.1f} µs/row, read + map {mapped:.1f} µs/row, "
          f"whole prepare of the file {whole:.1f} µs/row; the adapter's to_events alone, over rows already "
          f"read, {mapping:.1f} µs/row (CPU)")


def map_only(to_events, records: list) -> None:
    """The adapter's mapping of every row, and nothing around it (a row it rejects or filters costs its raise)."""
    for record in records:
        try:  # noqa: SIM105 - contextlib.suppress would add its own cost to every row timed
            to_events(record)
        except Exception:  # Rejection, Filtered, a BadRow: only the time is wanted here
            pass


if __name__ == "__main__":
    main()
