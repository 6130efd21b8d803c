"""CPU per event of the two whole-job steps that see every event at once: the identity pass and send's merge.

    python benchmarks/scale.py benchmarks/out/amplitude-realistic-1000000-42
    python benchmarks/scale.py benchmarks/out/amplitude-realistic-4000000-42

FOLDER is one of bench.py's generated exports. The input files are prepared as `run` prepares them (one
worker process per core: runs and identity pairs per file); then, in this process, with CPU time:

- the identity pass (merge the files' pairs, decide the merges, write the $identify events' run), repeated;
- the compaction of the runs, as prepare ends, once;
- send's merge of the runs: `merge_slices` alone, then with the batch cutter (what `send` does before gzip and
  HTTP), repeated.

Both should cost the same per event at 1M and 4M events: that is what scaling like the rest means.
`--workdir DIR` keeps the prepared files there, and a later run with the same DIR measures them again without
preparing (e.g. from another checkout of the code, to compare two versions on the same runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from posthog_migrate.accounting import PrepareStats  # noqa: E402
from posthog_migrate.batches import BatchLayout, cut_windows  # noqa: E402
from posthog_migrate.config import resolve_settings  # noqa: E402
from posthog_migrate.identity import IdentityCollector  # noqa: E402
from posthog_migrate.job import open_job  # noqa: E402
from posthog_migrate.prepare import identity_pass, prepare_file  # noqa: E402
from posthog_migrate.spool import MergeCursor, RunFile, RunWriter, compact_runs, merge_slices  # noqa: E402

# What `run` gives each of 2 workers with the default --memory (1 GiB): a quarter, split between them.
RUN_BYTES = (1 << 30) // 4 // 2


def _settings(folder: Path, workdir: Path):
    return resolve_settings({"sources": (str(folder),), "format": "amplitude", "workdir": str(workdir),
                             "dry_run": True, "quiet": True})


def _prepare_one(folder: Path, workdir: Path, index: int) -> dict:
    job = open_job(_settings(folder, workdir), {})
    return prepare_file(job, job.sources[index], RUN_BYTES)


def _cpu(work) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep the prepared files here (reused if already there)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(
            dir=Path(__file__).resolve().parent / "out")))
        job = open_job(_settings(args.folder, workdir), {})
        for folder in (job.runs_dir, job.identity_dir, job.parts_dir):
            folder.mkdir(parents=True, exist_ok=True)
        started, started_at = time.monotonic(), time.time()
        saved = workdir / "scale-results.json"
        if saved.exists():
            results = json.loads(saved.read_text())
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(os.cpu_count(), mp_context=context) as pool:
                results = list(pool.map(_prepare_one, *zip(*((args.folder, workdir, source.index)
                                                             for source in job.sources), strict=True)))
            saved.write_text(json.dumps(results))
        stats = PrepareStats()
        for result in results:
            stats.merge(PrepareStats.from_dict(result["stats"]))
        events = stats.to_dict()["events"]
        pair_runs = [name for result in results for name in result["identity_runs"]]
        prepared = "prepared before" if saved.stat().st_mtime < started_at else \
            f"prepared in {time.monotonic() - started:.0f} s"
        print(f"{events:,} events in {len(job.sources)} files, {prepared}; {len(pair_runs)} identity runs", flush=True)

        def run_identity_pass() -> None:
            for stale in job.runs_dir.glob("run-identify-*"):
                stale.unlink()
            writer = RunWriter(job.runs_dir, RUN_BYTES, prefix="run-identify-")
            identities = IdentityCollector(job.identity_dir, RUN_BYTES // 2, list(pair_runs))
            for row in identity_pass(job, identities, PrepareStats.from_dict(stats.to_dict())):
                writer.add(*row)
                if writer.full:
                    writer.spill()
            writer.spill()
            run_identity_pass.runs = writer.runs

        seconds = [_cpu(run_identity_pass) for _ in range(args.repeat)]
        print(f"identity pass: {_spread(seconds)} s CPU ({_spread([s / events * 1e6 for s in seconds], 3)} "
              f"µs/event)", flush=True)
        runs = [RunFile.from_dict(run) for result in results for run in result["runs"]] + run_identity_pass.runs
        for stale in job.runs_dir.glob("merged-*"):
            stale.unlink()
        compacted = []
        seconds = _cpu(lambda: compacted.extend(compact_runs(job.runs_dir, runs)))
        print(f"compaction of {len(runs)} runs: {seconds:.1f} s CPU → {len(compacted)} runs", flush=True)
        paths = [job.runs_dir / run.file for run in compacted]
        merge = [_cpu(lambda: sum(part.num_rows for part in merge_slices(paths))) for _ in range(args.repeat)]
        print(f"merge_slices over {len(paths)} runs: {_spread([s / events * 1e6 for s in merge], 3)} µs/event CPU",
              flush=True)
        settings = job.settings
        layout = BatchLayout(settings.concurrency, settings.batch_size, settings.batch_bytes)  # send's defaults
        start = MergeCursor.start(len(paths))
        cut = [_cpu(lambda: sum(1 for _ in cut_windows(merge_slices(paths, start), start, 0, layout)))
               for _ in range(args.repeat)]
        print(f"merge + batches: {_spread([s / events * 1e6 for s in cut], 3)} µs/event CPU")


def _spread(values: list[float], digits: int = 1) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if f"{low:.{digits}f}" == f"{high:.{digits}f}" else f"{low:.{digits}f}–{high:.{digits}f}"


if __name__ == "__main__":
    main()
