"""End-to-end throughput and peak memory: posthog-migrate against the posthog-python baseline.

One run on one machine:
  1. generates N Amplitude-shaped events (seeded; gzip'd JSON lines, as Amplitude exports them),
  2. starts the local capture server (`posthog-migrate serve`) in its own process,
  3. runs `posthog-migrate run` against it with no rate limit,
  4. runs the baseline a user would otherwise write: posthog-python's `capture()` in a loop over the
     events sorted in memory, gzip on, `historical_migration=True`, a queue big enough to drop nothing,
  5. prints events/second for both, their ratio, each one's peak memory (its processes together), the tool's
     peak temporary disk (its work directory), the CPU each used and the server's CPU while it received from
     each (a real PostHog does that work on its own machines), and checks that the server received every event
     from each.

Two profiles of rows: `simple` (small uniform rows: 3 event properties, the same 2 user properties, all web, a
new session per event; kept for comparison with earlier figures) and `realistic` (benchmarks/realistic_export.py:
sessions, 10–40 mixed properties, user properties that change, web and mobile, rows without uuid, groups).

    python benchmarks/bench.py                 # N = 1,000,000, both profiles
    python benchmarks/bench.py -n 200000       # quicker
    python benchmarks/bench.py --profile realistic
    python benchmarks/bench.py --scaling       # the tool alone at N and 4N: peak-memory ratio
    python benchmarks/bench.py --skip-baseline # the tool alone
    python benchmarks/bench.py --shards 4      # --shard 1/4 .. 4/4 one after another, as 4 machines would
    python benchmarks/bench.py --large         # the tool alone, 20M realistic events: time, peak memory and disk

The baseline needs `pip install posthog`. Generated data and outputs go to benchmarks/out/ (git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import multiprocessing
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from realistic_export import write_file

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
EVENT_TYPES = ["[Amplitude] Page Viewed", "note_created", "note_shared", "search_performed", "signed_up",
               "plan_upgraded", "[Amplitude] Element Clicked"]


# Amplitude exports one gzip'd file per hour of upload time; ours hold this many events each.
EVENTS_PER_FILE = 100_000
# --large: an export of this many events, end to end.
LARGE_EVENTS = 20_000_000


def generate(folder: Path, count: int, seed: int) -> None:
    """Amplitude export rows (the fields of source-formats.md), in server-upload rather than time order,
    as gzip'd JSON lines files of EVENTS_PER_FILE events."""
    rng = random.Random(seed)
    start = datetime(2023, 1, 1, tzinfo=UTC)
    people = max(100, count // 50)
    folder.mkdir(parents=True)
    for first in range(0, count, EVENTS_PER_FILE):
        name = f"{seed}_2023-01-01_{first // EVENTS_PER_FILE}#0.json.gz"
        with gzip.open(folder / name, "wb", compresslevel=1) as out:
            for n in range(first, min(count, first + EVENTS_PER_FILE)):
                out.write(orjson.dumps(amplitude_row(rng, n, seed, start, people)) + b"\n")


def amplitude_row(rng: random.Random, n: int, seed: int, start: datetime, people: int) -> dict:
    person = rng.randrange(people)
    moment = start + timedelta(seconds=rng.randrange(365 * 86_400), microseconds=rng.randrange(1_000_000))
    return {
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "$insert_id": f"ins-{seed}-{n}",
        "event_id": n, "event_type": rng.choice(EVENT_TYPES),
        "event_time": moment.strftime("%Y-%m-%d %H:%M:%S.%f"),
        "user_id": f"user-{person}" if person % 3 else None, "device_id": f"device-{person}",
        "session_id": int(moment.timestamp() * 1000), "platform": "Web", "os_name": "Chrome",
        "os_version": "120", "country": "Canada", "city": "Toronto", "ip_address": "203.0.113.7",
        "event_properties": {"[Amplitude] Page URL": f"https://ex.com/p/{n % 500}", "plan": "pro",
                             "note_length": rng.randrange(5000)},
        "user_properties": {"plan": "pro", "initial_utm_source": "news"},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_measured(command: list[str], cwd: Path, env: dict | None = None,
                 workdir: Path | None = None) -> tuple[float, int, int, str, dict]:
    """Run a process; return (seconds, peak memory in MiB of it and its worker processes together, peak size
    in MiB of ``workdir``, stdout, CPU seconds: ``all`` of it and its workers, ``own`` of its first process)."""
    started = time.monotonic()
    children_before = _children_cpu_seconds()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = MemorySampler(process.pid, workdir)
    sampler.start()
    stdout, stderr = (stream.decode() for stream in process.communicate())  # the pipes must not fill up
    elapsed = time.monotonic() - started
    sampler.stop()
    if process.returncode not in (0, 3):
        raise SystemExit(f"{command[:4]} failed:\n{stdout}\n{stderr}")
    # Its workers' CPU reaches ours when it reaps them and we reap it; the server is reaped only after this.
    cpu = {"all": _children_cpu_seconds() - children_before, "own": sampler.own_cpu}
    return elapsed, sampler.peak_kib // 1024, sampler.peak_disk // (1 << 20), stdout, cpu


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_seconds(pid: int) -> float:
    """User and system CPU of one process so far, itself only (not its reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # it has just ended
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MemorySampler(threading.Thread):
    """The peak memory of a process tree taken together, and the peak disk use of a folder, sampled every 250 ms
    (reading smaps costs CPU).

    posthog-migrate runs worker processes, so one process's peak RSS (what wait4 reports: the largest
    single process) would understate it. Each sample adds up every process of the tree; PSS counts
    shared pages once (RSS where /proc has no smaps_rollup). Disk is the blocks allocated to the folder's files.
    ``own_cpu`` is the first process's own CPU at the last sample (within 250 ms of its end): in posthog-migrate,
    the coordinator, the identity pass and the whole send; its workers do the rest of prepare.
    """

    def __init__(self, pid: int, folder: Path | None = None):
        super().__init__(daemon=True)
        self.pid = pid
        self.folder = folder
        self.peak_kib = 0
        self.peak_disk = 0
        self.own_cpu = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.25):
            self.peak_kib = max(self.peak_kib, sum(map(_memory_kib, _process_tree(self.pid))))
            self.own_cpu = max(self.own_cpu, _cpu_seconds(self.pid))
            if self.folder is not None:
                self.peak_disk = max(self.peak_disk, _disk_bytes(self.folder))

    def stop(self) -> None:
        self._done.set()
        self.join()


def _process_tree(pid: int) -> list[int]:
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        with contextlib.suppress(OSError):  # it may just have ended
            pending += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
    return tree


def _disk_bytes(folder: Path) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # renamed or deleted meanwhile
                total += os.stat(os.path.join(parent, name)).st_blocks * 512
    return total


def _memory_kib(pid: int) -> int:
    for path, field in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(field):
                    return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return 0


# The capture server stands in for PostHog, which is not on the measured machine. In one process it
# would hold back a sender that is faster than one server core (both tools are measured against it).
SERVER_PROCESSES = 2


class Server:
    """`posthog-migrate serve` in its own processes, so it does not share a core's GIL with the client."""

    def __init__(self, out_file: Path):
        self.port = free_port()
        self.out_file = out_file
        self.summary = ""
        self.cpu_seconds = 0.0
        if out_file != Path(os.devnull):
            out_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "posthog_migrate", "serve", "--port", str(self.port), "--out", str(out_file),
             "--processes", str(SERVER_PROCESSES)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        banner = self.process.stdout.readline()  # printed once every server process is ready
        if not banner.startswith("Capture endpoint at"):
            raise SystemExit(f"the capture server did not start: {banner!r}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        """Stop the server; return how many events it accepted (its summary says, "Stopped: N requests, M events
        accepted, ...": the out file may be /dev/null). Its processes' CPU so far is kept in ``cpu_seconds``: it
        works only while a tool sends."""
        self.cpu_seconds = sum(map(_cpu_seconds, _process_tree(self.process.pid)))
        self.process.terminate()  # SIGTERM: the server stops its worker processes and says what it took
        try:
            summary, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()  # its workers stop when their channels close
            summary, _ = self.process.communicate()
        accepted = re.search(r"([\d,]+) events accepted", summary)
        return int(accepted.group(1).replace(",", "")) if accepted else -1


def run_tool(data: Path, count: int, label: str, extra: tuple[str, ...] = (), keep_received: bool = True) -> dict:
    """posthog-migrate's whole job; ``keep_received=False`` has the server keep no copy of the events (a 20M
    events' copy would take tens of GB)."""
    work = OUT / f"job-{label}"
    shutil.rmtree(work, ignore_errors=True)  # the disk measured is this run's
    server = Server(OUT / f"received-{label}.jsonl" if keep_received else Path(os.devnull))
    try:
        env = {**os.environ, "POSTHOG_API_KEY": "phc_benchmark"}
        seconds, rss, disk, summary, cpu = run_measured(
            [sys.executable, "-m", "posthog_migrate", "run", str(data), "--format", "amplitude",
             "--host", server.url, "--rate", "0", "--workdir", str(work), "--restart", "-q", *extra], OUT, env,
            workdir=work)
    finally:
        received = server.stop()
    return {"name": "posthog-migrate", "seconds": seconds, "rss": rss, "disk": disk, "received": received,
            "count": count, "summary": summary, "cpu": cpu, "server_cpu": server.cpu_seconds}


def run_baseline(data: Path, count: int) -> dict:
    server = Server(OUT / "received-baseline.jsonl")
    try:
        seconds, rss, _, _, cpu = run_measured(
            [sys.executable, str(HERE / "baseline_posthog_python.py"), str(data), server.url, str(count)], OUT)
    finally:
        received = server.stop()
    return {"name": "posthog-python", "seconds": seconds, "rss": rss, "received": received, "count": count,
            "cpu": {"all": cpu["all"]}, "server_cpu": server.cpu_seconds}


def run_shards(data: Path, count: int, shards: int) -> None:
    """Each shard as its own machine would run it (one after another here, so each has both cores), then
    the wall time N machines would take: the slowest shard. Every event must arrive exactly once."""
    whole = run_tool(data, count, "n")
    print(report(whole), flush=True)
    results = []
    for k in range(1, shards + 1):
        result = run_tool(data, count, f"shard-{k}-of-{shards}", ("--shard", f"{k}/{shards}"))
        result["name"] = f"shard {k}/{shards}"
        results.append(result)
        print(report(result, rate=False), flush=True)
    received = sum(result["received"] for result in results)
    slowest = max(result["seconds"] for result in results)
    print(f"{shards} machines: {slowest:.1f} s (the slowest shard) vs {whole['seconds']:.1f} s on one: "
          f"{whole['seconds'] / slowest:.1f}x; received {received:,} events in all "
          f"({'the same as one machine' if received == whole['received'] else 'NOT the same as one machine'})")


def report(result: dict, rate: bool = True) -> str:
    summary = result.get("summary", "").splitlines()
    phases = [line.strip() for line in summary if line.startswith(("Prepared:", "Sent:"))]
    lost = result["count"] - result["received"] if rate else 0  # a shard receives only its share
    speed = f"{result['count'] / result['seconds']:>10,.0f} ev/s" if rate else " " * 15
    return (f"{result['name']:<16} {result['count']:>11,} events  {result['seconds']:>8.1f} s  {speed}"
            f"  peak memory {result['rss']:>6,} MiB"
            + (f"  peak disk {result['disk']:>6,} MiB" if "disk" in result else "")
            + f"  received {result['received']:,}"
            + (f"  ({lost:,} LOST)" if lost > 0 else "") + "".join(f"\n    {phase}" for phase in phases)
            + (f"\n    {cpu_line(result)}" if "cpu" in result else ""))


def cpu_line(result: dict) -> str:
    """Where the CPU went: the tool's processes, and the capture server's (which a real PostHog runs elsewhere)."""
    cpu = result["cpu"]
    own = (f" (its first process {cpu['own']:.1f} s: coordinator, identity pass and send; its workers "
           f"{cpu['all'] - cpu['own']:.1f} s)") if "own" in cpu else ""
    return f"CPU:               {cpu['all']:.1f} s{own}; the capture server {result['server_cpu']:.1f} s"


def generate_realistic(folder: Path, count: int, seed: int) -> None:
    """benchmarks/realistic_export.py's rows, as gzip'd files of EVENTS_PER_FILE events, one process per core."""
    folder.mkdir(parents=True)
    files = (count + EVENTS_PER_FILE - 1) // EVENTS_PER_FILE
    jobs = [(folder / f"{seed}_2023_{index:05d}#0.json.gz", seed, index, files,
             min(EVENTS_PER_FILE, count - index * EVENTS_PER_FILE), count) for index in range(files)]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.starmap(write_file, jobs)


def dataset(count: int, seed: int, profile: str = "simple") -> Path:
    path = OUT / (f"amplitude-{count}-{seed}" if profile == "simple" else f"amplitude-{profile}-{count}-{seed}")
    if not path.exists():
        print(f"generating {count:,} {profile} events → {path}/", flush=True)
        temporary = path.with_name(path.name + ".tmp")
        if temporary.exists():
            shutil.rmtree(temporary)
        (generate if profile == "simple" else generate_realistic)(temporary, count, seed)
        temporary.rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scaling", action="store_true", help="run the tool at N and 4N; print the memory ratio")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--shards", type=int, metavar="N", help="run --shard 1/N .. N/N as N machines would")
    parser.add_argument("--profile", choices=["simple", "realistic", "both"], default="both",
                        help="which rows (see above); --scaling, --shards and --large take one (default: simple, "
                        "realistic for --large)")
    parser.add_argument("--large", action="store_true",
                        help=f"the tool alone at {LARGE_EVENTS:,} events (or -n), realistic rows unless --profile "
                        "simple; the server keeps no copy of the events")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}", flush=True)
    if args.large:
        count = args.events if "-n" in sys.argv or "--events" in sys.argv else LARGE_EVENTS
        profile = "simple" if args.profile == "simple" else "realistic"
        result = run_tool(dataset(count, args.seed, profile), count, f"large-{profile}", keep_received=False)
        result["name"] = f"{profile} rows"
        print(report(result))
        return
    profiles = ["simple", "realistic"] if args.profile == "both" else [args.profile]
    if args.scaling or args.shards:
        profiles = profiles[:1]
    for profile in profiles:
        print(f"--- {profile} rows", flush=True)
        benchmark(args, profile)


def benchmark(args: argparse.Namespace, profile: str) -> None:
    if args.scaling:
        small = run_tool(dataset(args.events, args.seed, profile), args.events, "n")
        print(report(small), flush=True)
        large = run_tool(dataset(4 * args.events, args.seed, profile), 4 * args.events, "4n")
        print(report(large))
        print(f"peak memory ratio 4N/N: {large['rss'] / small['rss']:.2f}")
        return
    data = dataset(args.events, args.seed, profile)
    if args.shards:
        run_shards(data, args.events, args.shards)
        return
    tool = run_tool(data, args.events, f"n-{profile}")
    print(report(tool), flush=True)
    if args.skip_baseline:
        return
    baseline = run_baseline(data, args.events)
    print(report(baseline))
    print(f"speed-up: {baseline['seconds'] / tool['seconds']:.1f}x", flush=True)


if __name__ == "__main__":
    main()
