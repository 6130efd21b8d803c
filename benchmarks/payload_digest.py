"""Fingerprints of everything prepare makes of one input file: proof that a change to the mapping sends the same bytes.

    python benchmarks/payload_digest.py FILE --format amplitude > after.txt
    (the same from a checkout of the commit before the change) > before.txt
    diff before.txt after.txt && echo identical

Runs the whole prepare phase (mapping, validation, the identity pass, the sort) in a temporary work directory
and prints, in the order the events would be sent, one line per event: its sort key (timestamp, tie-breaker),
person hash, kind and the sha256 of its payload; then the sha256 of every line of the rejects file (reason,
detail, row), then the prepare's counts (rows kept, filtered by rule, rejected by reason, warnings...); last, one
sha256 over all of it. Nothing is sent. Uses only functions that have existed since the first release of the
work directory's layout, so the same script runs against an older checkout (put its tree first on PYTHONPATH or
run it from that checkout's venv).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import orjson
from posthog_migrate.config import resolve_settings
from posthog_migrate.job import open_job
from posthog_migrate.prepare import prepare
from posthog_migrate.spool import merge_runs


def digest_lines(path: str, format_name: str, mapping: str | None) -> list[str]:
    """The fingerprint lines of preparing ``path`` (see the module's docstring)."""
    lines = []
    with tempfile.TemporaryDirectory(prefix="payload-digest-") as workdir:
        settings = resolve_settings({"sources": (path,), "format": format_name, "mapping_path": mapping,
                                     "workdir": workdir, "job": "payload-digest", "dry_run": True, "quiet": True})
        job = open_job(settings, {})  # named: every payload carries the job's name, not the temporary folder's
        manifest = prepare(job)
        run_paths = [job.runs_dir / run["file"] for run in manifest["runs"]]
        for table in merge_runs(run_paths):
            columns = [table.column(name).to_pylist() for name in ("ts", "tiebreak", "person", "kind", "payload")]
            for ts, tiebreak, person, kind, payload in zip(*columns, strict=True):
                lines.append(f"event {ts} {tiebreak} {person} {kind} {hashlib.sha256(payload).hexdigest()}")
        with open(job.rejects_path, "rb") as rejects:
            for line in rejects:
                entry = orjson.loads(line)
                key = orjson.dumps([entry.get("reason"), entry.get("detail"), entry.get("row"), entry.get("original")],
                                   option=orjson.OPT_SORT_KEYS)
                lines.append(f"reject {entry.get('row')} {entry.get('reason')} {hashlib.sha256(key).hexdigest()}")
        stats = manifest["stats"]
        lines.append("stats " + orjson.dumps(stats, option=orjson.OPT_SORT_KEYS).decode())
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--mapping")
    args = parser.parse_args()
    lines = digest_lines(str(Path(args.file).resolve()), args.format, args.mapping)
    total = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    sys.stdout.write("\n".join(lines) + f"\nall {total}\n")


if __name__ == "__main__":
    main()
