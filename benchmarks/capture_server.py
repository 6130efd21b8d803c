"""CPU per event of the local capture server's judgement of a /batch/ body: what `serve` spends per event sent.

    python benchmarks/capture_server.py benchmarks/out/received-n-realistic.jsonl

FILE is JSON lines of events as the server keeps them (bench.py's received-*.jsonl). One body is built from
--events of them (a batch of the tool's size: ~1,530 realistic events fill its 2.7 MB), gzip'd at level 1 as
the tool sends it; then judge() (gunzip, parse, check, one line per accepted event) and its parts alone are
timed, best of five rounds. In bench.py the server shares the machine with the tool it measures; a real
PostHog does this work on its own machines.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
from posthog_migrate.capture.rules import judge  # noqa: E402
from posthog_migrate.sender import compress  # noqa: E402

ROUNDS = 5


def best_per_event(work, events: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(repeat):
            work()
        best = min(best, (time.process_time() - started) / repeat / events * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--events", type=int, default=1530)
    parser.add_argument("--skip", type=int, default=200_000, help="lines skipped first (past the file's start)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with open(args.file, "rb") as handle:
        lines = [line.rstrip(b"\n") for line in itertools.islice(handle, args.skip, args.skip + args.events)]
    if not lines:
        raise SystemExit(f"{args.file}: no events after line {args.skip:,} (try --skip 0)")
    events = [orjson.loads(line) for line in lines]
    body = b'{"api_key":"phc_benchmark","historical_migration":true,"batch":[' + b",".join(lines) + b"]}"
    gzipped = compress(body)
    count = len(events)
    verdict = judge(gzipped, True, False)
    if verdict.status != 200 or len(verdict.events) != count:
        raise SystemExit(f"the server would not accept this body: {verdict.status} {verdict.message}")
    print(f"{count:,} events of {len(body) // count:,} bytes ({len(gzipped) // count} gzip'd), CPU µs per event:")
    print(f"  judge (all of it)   {best_per_event(lambda: judge(gzipped, True, False), count, args.repeat):6.2f}")
    print(f"  orjson.loads alone  {best_per_event(lambda: orjson.loads(body), count, args.repeat):6.2f}")
    print(f"  orjson.dumps alone  {best_per_event(lambda: list(map(orjson.dumps, events)), count, args.repeat):6.2f}")


if __name__ == "__main__":
    main()
