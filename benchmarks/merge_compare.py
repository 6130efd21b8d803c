"""Send's merge and batch cutting, per event, over the runs of several prepared jobs, alternated in one process.

    python benchmarks/scale.py benchmarks/out/amplitude-1000000-42 --workdir /tmp/sc-1m --repeat 1
    python benchmarks/scale.py benchmarks/out/amplitude-4000000-42 --workdir /tmp/sc-4m --repeat 1
    python benchmarks/merge_compare.py /tmp/sc-1m /tmp/sc-4m

Each WORKDIR is one kept by scale.py (its runs/ folder). The rounds alternate between them, so a machine whose
speed drifts (this one's moves by a third between runs) slows each alike: the way to see whether send's cost per
event changes with the size of the job. Prints CPU µs per event of `merge_slices` alone and of the merge with
send's batch cutter (merge_fan_in.merge_and_batches_seconds), one figure per round.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from merge_fan_in import merge_and_batches_seconds  # noqa: E402
from posthog_migrate.spool import merge_slices  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    runs = {workdir: sorted((workdir / "runs").glob("*.arrow")) for workdir in args.workdirs}
    for workdir, paths in runs.items():
        if not paths:
            raise SystemExit(f"{workdir}: no runs in {workdir / 'runs'} (keep them with scale.py --workdir)")
    merge_only: dict[Path, list[float]] = {workdir: [] for workdir in runs}
    with_batches: dict[Path, list[float]] = {workdir: [] for workdir in runs}
    for _ in range(args.rounds):
        for workdir, paths in runs.items():
            started = time.process_time()
            events = sum(merged.num_rows for merged in merge_slices(paths))
            merge_only[workdir].append((time.process_time() - started) / events * 1e6)
            with_batches[workdir].append(merge_and_batches_seconds(paths) / events * 1e6)
    for workdir, paths in runs.items():
        print(f"{workdir} ({len(paths)} runs), CPU µs/event: merge "
              + " ".join(f"{value:.2f}" for value in merge_only[workdir]) + " | merge + batches "
              + " ".join(f"{value:.2f}" for value in with_batches[workdir]), flush=True)


if __name__ == "__main__":
    main()
