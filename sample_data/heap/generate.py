#!/usr/bin/env python3
"""Regenerate the Heap Connect sample export of "Acme Notes" (see ../README.md for the fictional company).

    python sample_data/heap/generate.py [--out DIR]

Writes Heap Connect tables as a warehouse dump would hold them, the lookups the adapter reads through
``mapping.toml``, and ``README.md`` (the counts and the deliberately bad rows):

- ``tables/pageviews/part-00000.csv`` (2024-03-01 .. 03-02, times with a `` UTC`` suffix) and
  ``tables/pageviews/part-00001.parquet`` (03-03 .. 03-04, Parquet timestamps): one table in two pieces.
- ``tables/note_created.csv`` and ``tables/signup_completed/part-00000.parquet``: per-event tables with their
  custom properties as columns.
- ``tables/users.csv``: the users table (identity, email, plan, joindate, last_modified).
- ``lookups/user_migrations.csv`` (``from_user_id`` → ``to_user_id``) and ``lookups/sessions.csv``: read through
  ``mapping.toml``'s ``[source]`` table, not migrated as rows.

Heap user ids are int64: in the CSVs they are long digit strings, in Parquet int64. Byte-identical on every
run: one fixed seed, fixed dates, Parquet without wall-clock metadata. Only the standard library, pyarrow and
orjson are used.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20240301
HERE = Path(__file__).resolve().parent
START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 4
PAGES = [("acmenotes.com", "/", "Acme Notes - notes that think with you"),
         ("acmenotes.com", "/pricing", "Pricing - Acme Notes"),
         ("acmenotes.com", "/features", "Features - Acme Notes"),
         ("app.acmenotes.com", "/notes", "All notes"), ("app.acmenotes.com", "/notes/new", "New note")]
ENVIRONMENTS = [("Mac OS X 10.15.7", "Desktop", "Chrome"), ("Windows 10", "Desktop", "Firefox"),
                ("iOS 17.3.1", "Mobile", "Safari"), ("Android 14", "Mobile", "Chrome")]
PLACES = [("United States", "California", "San Francisco", "198.51.100."),
          ("Germany", "Berlin", "Berlin", "203.0.113."), ("Canada", "Ontario", "Toronto", "192.0.2.")]
REFERRERS = ["direct", "direct", "https://www.google.com/", "https://news.ycombinator.com/item?id=39500000"]
CAMPAIGNS = [(None, None, None), ("newsletter", "email", "march_launch"), ("google", "cpc", "brand")]
MAPPING_TOML = """# Read the Heap sample with:
#   posthog-migrate run sample_data/heap/tables --format heap --mapping sample_data/heap/mapping.toml --host local
# (relative paths are read from this file's folder)
[source]
user_migrations = "lookups/user_migrations.csv"
users = "tables/users.csv"
sessions = "lookups/sessions.csv"
"""


def heap_time(moment: datetime, suffix: bool) -> str:
    text = moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return text + " UTC" if suffix else text


def heap_id(rng: random.Random) -> int:
    return rng.randrange(10**15, 2**62)  # Heap's ids are large int64s: a float would round them


def csv_bytes(rows: list[dict]) -> bytes:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return buffer.getvalue().encode()


def parquet_bytes(rows: list[dict]) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buffer, compression="zstd")
    return buffer.getvalue().to_pybytes()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def generate(rng: random.Random) -> dict[str, list[dict]]:
    tables: dict[str, list[dict]] = {"pageviews": [], "note_created": [], "signup_completed": [], "users": [],
                                     "sessions": [], "user_migrations": []}
    for number in range(26):
        anonymous = heap_id(rng)
        signs_up = number % 2 == 0
        known = heap_id(rng) if signs_up else None  # the identified user's id (from an earlier device)
        email = f"person{number:02d}@example.com"
        environment = rng.choice(ENVIRONMENTS)
        place = rng.choice(PLACES)
        ip = place[3] + str(rng.randrange(2, 250))
        moment = START + timedelta(seconds=rng.randrange(DAYS * 86_400 - 10_800))
        user = anonymous
        for session_number in range(rng.randrange(1, 3)):
            session = heap_id(rng)
            referrer = rng.choice(REFERRERS)
            campaign = rng.choice(CAMPAIGNS)
            landing = PAGES[0] if user == anonymous else PAGES[3]
            tables["sessions"].append({"session_id": session, "user_id": user,
                                       "time": heap_time(moment, True), "referrer": referrer})
            base = {"session_id": session, "library": "web", "platform": environment[0],
                    "device_type": environment[1], "browser": environment[2], "country": place[0],
                    "region": place[1], "city": place[2], "ip": ip, "referrer": referrer,
                    "landing_page": landing[0] + landing[1], "utm_source": campaign[0], "utm_medium": campaign[1],
                    "utm_campaign": campaign[2]}
            for step in range(rng.randrange(2, 7)):
                domain, path, title = PAGES[step % 3] if user == anonymous else PAGES[3 + step % 2]
                query = f"?utm_source={campaign[0]}" if campaign[0] and step == 0 else None
                tables["pageviews"].append({"event_id": heap_id(rng), "user_id": user, **base,
                                            "time": moment, "domain": domain, "path": path, "query": query,
                                            "hash": "#plans" if path == "/pricing" else None, "title": title})
                moment += timedelta(seconds=rng.randrange(4, 240), milliseconds=rng.randrange(1000))
                if user != anonymous:
                    tables["note_created"].append({"event_id": heap_id(rng), "user_id": user, **base,
                                                   "time": moment, "domain": domain, "path": "/notes/new",
                                                   "title": "New note", "note_length": rng.randrange(5, 4000),
                                                   "folder": rng.choice(["Inbox", "Work", "Personal"])})
                    moment += timedelta(seconds=rng.randrange(10, 600))
                elif signs_up and step >= 1:
                    tables["signup_completed"].append({"event_id": heap_id(rng), "user_id": anonymous, **base,
                                                       "time": moment, "domain": "acmenotes.com",
                                                       "path": "/signup", "title": "Sign up - Acme Notes",
                                                       "plan": rng.choice(["free", "pro"]),
                                                       "method": rng.choice(["google", "email"])})
                    # Heap identifies the user: this anonymous user merges into the known one
                    tables["user_migrations"].append({"from_user_id": anonymous, "to_user_id": known})
                    user = known
                    moment += timedelta(seconds=rng.randrange(5, 60))
            moment += timedelta(hours=rng.randrange(3, 20))
            if session_number == 0 and moment >= START + timedelta(days=DAYS):
                break
        if signs_up:
            tables["users"].append({"user_id": known, "identity": email, "email": email,
                                    "plan": rng.choice(["free", "pro"]), "handle": None,
                                    "joindate": heap_time(START - timedelta(days=rng.randrange(1, 300)), False),
                                    "last_modified": heap_time(moment, False)})
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: beside this script)")
    out = parser.parse_args().out
    tables = generate(random.Random(SEED))
    pageviews = sorted(tables["pageviews"], key=lambda r: (r["time"], r["event_id"]))
    split = START + timedelta(days=2)
    first = [{**r, "time": heap_time(r["time"], True)} for r in pageviews if r["time"] < split]
    second = [{**r, "time": r["time"].replace(tzinfo=None)} for r in pageviews if r["time"] >= split]
    notes = [{**r, "time": heap_time(r["time"], False)} for r in tables["note_created"]]
    signups = [{**r, "time": r["time"].replace(tzinfo=None)} for r in tables["signup_completed"]]
    bad = []
    # Bad rows on purpose.
    first[20]["user_id"] = None
    bad.append(("tables/pageviews/part-00000.csv", 21, "missing_distinct_id", "user_id is empty"))
    first[45]["time"] = "yesterday"
    bad.append(("tables/pageviews/part-00000.csv", 46, "bad_timestamp", "time is `yesterday`"))
    note_lines = csv_bytes(notes).split(b"\n")
    note_lines[12] = note_lines[12] + b",Archive"  # record 12: a stray field
    bad.append(("tables/note_created.csv", 12, "wrong_field_count", "a stray trailing field: one more than the header"))
    files = {
        "tables/pageviews/part-00000.csv": (csv_bytes(first), len(first)),
        "tables/pageviews/part-00001.parquet": (parquet_bytes(second), len(second)),
        "tables/note_created.csv": (b"\n".join(note_lines), len(notes)),
        "tables/signup_completed/part-00000.parquet": (parquet_bytes(signups), len(signups)),
        "tables/users.csv": (csv_bytes(tables["users"]), len(tables["users"])),
        "lookups/user_migrations.csv": (csv_bytes(tables["user_migrations"]), len(tables["user_migrations"])),
        "lookups/sessions.csv": (csv_bytes(tables["sessions"]), len(tables["sessions"])),
    }
    for path, (data, _) in files.items():
        write(out / path, data)
    write(out / "mapping.toml", MAPPING_TOML.encode())
    records = sum(n for path, (_, n) in files.items() if path.startswith("tables/"))
    people = len({r["user_id"] for r in tables["users"]})
    write(out / "README.md", readme(files, records, bad, people, len(tables["user_migrations"])).encode())


def readme(files: dict, records: int, bad: list, identified: int, migrations: int) -> str:
    lines = [
        "# Heap sample export: Acme Notes",
        "",
        "Written by `generate.py` (byte-identical on every run); do not edit by hand. Regenerate with",
        "`python sample_data/heap/generate.py`.",
        "",
        "Heap Connect tables of the fictional *Acme Notes* (see `../README.md`), 2024-03-01 .. 03-04, as a",
        "warehouse dump holds them: one table per event type (a folder of pieces, or one file), the users table,",
        "and two lookups. Run it from the repository's root (the mapping's paths are relative to it):",
        "",
        "```sh",
        "posthog-migrate run sample_data/heap/tables --format heap --mapping sample_data/heap/mapping.toml \\",
        "    --host local",
        "```",
        "",
        "`mapping.toml` names the lookups: `user_migrations` (anonymous Heap users merged into identified ones",
        f"when they signed up: {migrations} rows), `users` (the identity of each identified user: "
        f"{identified} people) and",
        "`sessions` (each session's start, the time bits of its `$session_id`). So every event of a person who",
        "signed up, before and after, is sent under their identity (their email). Without the mapping the rows",
        "are sent under Heap's user ids, and the `users` rows link those to the identities.",
        "",
        "| file | records |",
        "|---|---:|",
        *[f"| `{path}` | {n} |" for path, (_, n) in files.items()],
        "",
        f"The tables hold {records} records: {records - len(bad)} good (each becomes one event; the `users` rows",
        f"become `$set` events) and {len(bad)} bad. The pipeline adds one `$identify` per (identity, Heap user id)",
        # Each identified person is one pair: the users row's (identity, user_id), which the lookups give the
        # events of the person's migrated user ids too.
        f"pair it sees: {identified}. In all, {records - len(bad) + identified:,} events to send (what `inspect` "
        "counts and `run` sends),",
        "with the mapping or without it. The lookups are not inputs.",
        "",
        "## Deliberately bad rows",
        "",
        "| file | record | expected reject reason | why |",
        "|---|---:|---|---|",
        *[f"| `{path}` | {row} | `{reason}` | {why} |" for path, row, reason, why in bad],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
