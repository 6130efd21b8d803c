"""CPU per event of send's merge by number of runs, on synthetic runs (the same events split into more runs).

    python benchmarks/merge_fan_in.py              # 1M events of ~300 bytes, in 11, 41 and 64 runs
    python benchmarks/merge_fan_in.py --runs 11 41 --events 4000000

Each run holds events of random times (as each input file's run spans the whole export); the merge is timed
three times (CPU time), the first pass included: `send` merges once. Then the merge with send's batch cutter
(`cut_windows`, send's default layout), also three times: in interleaved runs every merge step takes rows from
every run, and is longer than a window of batches.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from posthog_migrate.batches import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_EVENTS, BatchLayout, cut_windows  # noqa: E402
from posthog_migrate.config import DEFAULT_CONCURRENCY  # noqa: E402
from posthog_migrate.spool import MergeCursor, RunWriter, merge_slices  # noqa: E402


def merge_and_batches_seconds(paths: list[Path]) -> float:
    """CPU seconds of send's merge of ``paths`` with its batch cutter (send's default layout), gzip and HTTP aside."""
    layout = BatchLayout(DEFAULT_CONCURRENCY, DEFAULT_BATCH_EVENTS, DEFAULT_BATCH_BYTES)
    start = MergeCursor.start(len(paths))
    started = time.process_time()
    for _ in cut_windows(merge_slices(paths, start), start, 0, layout):
        pass
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, nargs="+", default=[11, 41, 64])
    args = parser.parse_args()
    rng = random.Random(1)
    padding = b"x" * 284
    for runs in args.runs:
        with tempfile.TemporaryDirectory() as folder:
            paths = []
            for run in range(runs):
                writer = RunWriter(Path(folder), 1 << 30, prefix=f"run-{run:03d}-")
                for row in range(args.events // runs):
                    payload = padding + os.urandom(8).hex().encode()
                    writer.add(rng.randrange(1 << 45), (run << 40) | row, row, 0, payload)
                paths += writer.close()
            seconds = []
            for _ in range(3):
                started = time.process_time()
                events = sum(merged.num_rows for merged in merge_slices(paths))
                seconds.append(time.process_time() - started)
            with_batches = [merge_and_batches_seconds(paths) for _ in range(3)]
        print(f"{runs} runs: merge " + " / ".join(f"{s / events * 1e6:.2f}" for s in seconds) + ", merge + batches "
              + " / ".join(f"{s / events * 1e6:.2f}" for s in with_batches) + " µs/event (CPU)", flush=True)


if __name__ == "__main__":
    main()
