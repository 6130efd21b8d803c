#!/usr/bin/env python3
"""Regenerate the Segment sample exports of "Acme Notes" (see ../README.md for the fictional company).

    python sample_data/segment/generate.py [--out DIR]

Writes two exports of two Segment sources, and ``README.md`` (the counts and the deliberately bad rows):

- ``archive/segment-logs/acme-web/<received day, epoch ms>/<epoch ms>.<hash>.gz``: the S3 archive of the web
  source (analytics.js, 2024-03-01 .. 03-04): gzip'd JSON lines of full messages, one file per receipt day,
  every call type (page, track, identify, group, alias).
- ``warehouse/``: warehouse tables of the iOS source (analytics-ios, 2024-03-05 .. 03-07) with flattened
  ``context_*`` columns: ``screens.csv``, ``identifies.csv``, the per-event tables ``note_created/part-00000.parquet``
  and ``signed_up.csv``, and the derived ``users.csv`` (filtered on purpose).

Byte-identical on every run: one fixed seed, fixed dates, gzip mtime 0, Parquet without wall-clock metadata.
Only the standard library, pyarrow and orjson are used.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20240305
HERE = Path(__file__).resolve().parent
WEB_START = datetime(2024, 3, 1, tzinfo=UTC)
IOS_START = datetime(2024, 3, 5, tzinfo=UTC)
DAYS = 3 + 1  # web: 4 days; iOS: 3 days
SITE = "https://acmenotes.com"
APP = "https://app.acmenotes.com"
PAGES = [("/", "Acme Notes - notes that think with you"), ("/pricing", "Pricing - Acme Notes"),
         ("/features", "Features - Acme Notes"), ("/blog/markdown-tips", "10 Markdown tips - Acme Notes")]
APP_PAGES = [("/notes", "All notes"), ("/notes/new", "New note"), ("/search", "Search")]
SCREENS = ["NotesList", "NoteEditor", "Search", "Settings"]
AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:123.0) Gecko/20100101 Firefox/123.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 "
    "Safari/605.1.15",
]
PLACES = [("198.51.100.", "en-US", "America/Los_Angeles"), ("203.0.113.", "de-DE", "Europe/Berlin"),
          ("192.0.2.", "en-CA", "America/Toronto")]
REFERRERS = ["", "https://www.google.com/", "https://news.ycombinator.com/", "https://twitter.com/"]
CAMPAIGNS = [None, None, {"source": "newsletter", "medium": "email", "name": "march_launch"},
             {"source": "google", "medium": "cpc", "name": "brand", "term": "note app"}]


@dataclass
class Person:
    anonymous_id: str
    user_id: str | None
    org: str | None
    ip: str
    agent: str
    locale: str
    timezone: str


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def warehouse_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}+00"


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Web:
    """The web source's messages, in the shape of Segment's S3 archive."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.messages: list[tuple[datetime, dict]] = []  # (receivedAt, message)
        self.people = []
        for number in range(24):
            place = rng.choice(PLACES)
            signs_up = number % 3 != 0
            self.people.append(Person(
                anonymous_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                user_id=f"usr_{rng.getrandbits(40):010x}" if signs_up else None,
                org=f"org_{number % 4}" if signs_up and number % 2 else None,
                ip=place[0] + str(rng.randrange(2, 250)), agent=rng.choice(AGENTS), locale=place[1],
                timezone=place[2],
            ))

    def base(self, person: Person, kind: str, moment: datetime, identified: bool) -> dict:
        skew = timedelta(seconds=self.rng.choice([0, 0, 0, 2, -37, 3600]))  # device clocks are wrong
        sent = moment + skew + timedelta(milliseconds=self.rng.randrange(20, 900))
        received = moment + timedelta(milliseconds=self.rng.randrange(900, 1800))
        message = {
            "type": kind, "messageId": f"ajs-next-{self.rng.getrandbits(128):032x}",
            "anonymousId": person.anonymous_id, "userId": person.user_id if identified else None,
            "channel": "client", "timestamp": iso(moment), "originalTimestamp": iso(moment + skew),
            "sentAt": iso(sent), "receivedAt": iso(received), "integrations": {},
            "context": {"ip": person.ip, "userAgent": person.agent, "locale": person.locale,
                        "timezone": person.timezone, "library": {"name": "analytics.js", "version": "npm:next-1.64.0"}},
            "writeKey": "wk_acme_web", "version": 2,
        }
        return message

    def page_context(self, message: dict, host: str, path: str, title: str, referrer: str) -> None:
        message["context"]["page"] = {"url": host + path, "path": path, "title": title, "referrer": referrer,
                                      "search": ""}

    def add(self, message: dict) -> None:
        received = datetime.fromisoformat(message["receivedAt"].replace("Z", "+00:00"))
        self.messages.append((received, message))

    def generate(self) -> None:
        rng = self.rng
        for person in self.people:
            moment = WEB_START + timedelta(seconds=rng.randrange(DAYS * 86_400 - 7_200))
            identified = False
            campaign = rng.choice(CAMPAIGNS)
            referrer = rng.choice(REFERRERS)
            for step in range(rng.randrange(3, 9)):
                path, title = PAGES[step % len(PAGES)] if not identified else rng.choice(APP_PAGES)
                host = APP if identified else SITE
                page = self.base(person, "page", moment, identified)
                self.page_context(page, host, path, title, referrer if step == 0 else SITE + "/")
                if campaign and step == 0:
                    page["context"]["campaign"] = dict(campaign)
                page["name"] = title.split(" - ")[0]
                page["properties"] = {"url": host + path, "path": path, "title": title, "referrer": referrer,
                                      "search": ""}
                self.add(page)
                moment += timedelta(seconds=rng.randrange(8, 240), milliseconds=rng.randrange(1000))
                if person.user_id and not identified and step >= 1:
                    identified = True
                    signed = self.base(person, "track", moment, True)
                    self.page_context(signed, SITE, "/signup", "Sign up - Acme Notes", SITE + "/pricing")
                    signed.update(event="Signed Up", properties={"plan": rng.choice(["free", "pro"]),
                                                                  "method": rng.choice(["google", "email"])})
                    self.add(signed)
                    identify = self.base(person, "identify", moment + timedelta(milliseconds=5), True)
                    identify["traits"] = {"email": f"{person.user_id}@example.com",
                                          "plan": signed["properties"]["plan"], "createdAt": iso(moment)}
                    self.add(identify)
                    if person.org:
                        group = self.base(person, "group", moment + timedelta(milliseconds=9), True)
                        group.update(groupId=person.org, traits={"name": f"Team {person.org[-1]}", "plan": "team",
                                                                 "employees": rng.randrange(3, 80)})
                        self.add(group)
                elif identified:
                    event = rng.choice(["Note Created", "Note Created", "Note Shared", "Search Performed"])
                    track = self.base(person, "track", moment, True)
                    self.page_context(track, APP, path, title, SITE + "/")
                    if person.org:
                        track["context"]["groupId"] = person.org
                    track["event"] = event
                    track["properties"] = ({"note_length": rng.randrange(20, 4000)} if event == "Note Created"
                                           else {"share_method": rng.choice(["link", "email"])}
                                           if event == "Note Shared"
                                           else {"query": rng.choice(["todo", "meeting", "ideas"]),
                                                 "results_count": rng.randrange(0, 30)})
                    self.add(track)
                moment += timedelta(seconds=rng.randrange(5, 300))
        # Two users who had an older id in a previous tool: alias calls.
        for person in [p for p in self.people if p.user_id][:2]:
            moment = WEB_START + timedelta(days=DAYS - 1, hours=rng.randrange(20))
            alias = self.base(person, "alias", moment, True)
            alias["previousId"] = f"legacy-{person.user_id[-6:]}"
            self.add(alias)

    def break_some(self) -> list[tuple[int, str, str]]:
        """Spoil five messages on purpose; return (position in the receipt order, reason, why)."""
        self.messages.sort(key=lambda item: (item[0], item[1]["messageId"]))
        spoiled = []
        positions = [17, 60, 95, 130, 170]
        for position, kind in zip(positions, ("truncated", "no_ids", "no_event", "self_alias", "bad_type"),
                                  strict=True):
            message = self.messages[position][1]
            if kind == "no_ids":
                message["userId"] = None
                message["anonymousId"] = None
                spoiled.append((position, "missing_distinct_id", "no userId and no anonymousId"))
            elif kind == "no_event":
                message["type"] = "track"
                message["event"] = ""
                spoiled.append((position, "missing_event_name", "a track call whose `event` is empty"))
            elif kind == "self_alias":
                message.update(type="alias", userId=message["userId"] or "usr_self", previousId=None)
                message["previousId"] = message["userId"]
                spoiled.append((position, "invalid_special_event", "an alias whose previousId is its own userId"))
            elif kind == "bad_type":
                message["type"] = "batch"
                spoiled.append((position, "unknown_message_type", 'type `"batch"`, not a call type'))
            else:
                spoiled.append((position, "invalid_json", "the line stops mid-object (a truncated upload)"))
        return spoiled

    def write(self, out: Path, truncated_position: int) -> tuple[list[dict], dict[int, tuple[str, int]]]:
        """One gzip'd JSON lines file per receipt day; return the files and where each message landed."""
        by_day: dict[int, list[bytes]] = {}
        placed: dict[int, tuple[str, int]] = {}
        names: dict[int, str] = {}
        for position, (received, message) in enumerate(self.messages):
            day = ms(received.replace(hour=0, minute=0, second=0, microsecond=0))
            line = orjson.dumps(message)
            if position == truncated_position:
                line = line[: len(line) // 2]
            lines = by_day.setdefault(day, [])
            lines.append(line)
            last = ms(received)
            names[day] = f"{last}.{self.rng.getrandbits(32):08x}"
            placed[position] = (str(day), len(lines))
        files = []
        for day, lines in sorted(by_day.items()):
            relative = f"archive/segment-logs/acme-web/{day}/{names[day]}.gz"
            write(out / relative, gzip.compress(b"\n".join(lines) + b"\n", compresslevel=9, mtime=0))
            files.append({"path": relative, "records": len(lines)})
            for position, (folder, row) in placed.items():
                if folder == str(day):
                    placed[position] = (relative, row)
        return files, placed


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buffer.getvalue().encode()


def warehouse_row(rng: random.Random, moment: datetime, ids: tuple[str, str | None], context: dict,
                  **fields) -> dict:
    received = moment + timedelta(milliseconds=rng.randrange(500, 4000))
    return {"id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "anonymous_id": ids[0], "user_id": ids[1],
            "timestamp": warehouse_time(moment), "original_timestamp": warehouse_time(moment),
            "received_at": warehouse_time(received), "sent_at": warehouse_time(received),
            "loaded_at": "2024-03-08 02:00:00.000+00", "uuid_ts": "2024-03-08 02:00:01.000+00", **context, **fields}


def ios_tables(rng: random.Random) -> dict[str, list[dict]]:
    """The iOS source's warehouse rows (flattened context columns), per table."""
    tables: dict[str, list[dict]] = {"screens": [], "identifies": [], "signed_up": [], "note_created": [],
                                     "users": []}
    for _ in range(14):
        anonymous_id = str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper()  # iOS: IDFV-style
        user_id = f"usr_{rng.getrandbits(40):010x}"
        device = rng.choice([("iPhone15,2", "17.3.1"), ("iPhone14,5", "17.2"), ("iPad13,1", "16.7.5")])
        context = {
            "context_ip": f"203.0.113.{rng.randrange(2, 250)}", "context_locale": "en-US",
            "context_timezone": "America/New_York", "context_library_name": "analytics-ios",
            "context_library_version": "4.1.8", "context_app_name": "Acme Notes", "context_app_version": "3.4.0",
            "context_app_build": "3400", "context_app_namespace": "com.acmenotes.ios",
            "context_device_manufacturer": "Apple", "context_device_model": device[0], "context_device_type": "ios",
            "context_device_id": anonymous_id, "context_os_name": "iOS", "context_os_version": device[1],
            "context_screen_width": 390, "context_screen_height": 844, "context_network_carrier": "T-Mobile",
        }
        moment = IOS_START + timedelta(seconds=rng.randrange(3 * 86_400 - 3_600))
        logged_in = False
        for step in range(rng.randrange(3, 10)):
            ids = (anonymous_id, user_id if logged_in else None)
            tables["screens"].append(warehouse_row(rng, moment, ids, context, name=rng.choice(SCREENS)))
            moment += timedelta(seconds=rng.randrange(5, 200), milliseconds=rng.randrange(1000))
            if not logged_in and step >= 1:
                logged_in = True
                ids = (anonymous_id, user_id)
                tables["signed_up"].append(warehouse_row(rng, moment, ids, context, event="signed_up",
                                                         event_text="Signed Up", plan=rng.choice(["free", "pro"]),
                                                         method="apple"))
                tables["identifies"].append(warehouse_row(rng, moment + timedelta(milliseconds=4), ids, context,
                                                          email=f"{user_id}@example.com", plan="free"))
            elif logged_in:
                tables["note_created"].append(warehouse_row(
                    rng, moment, ids, context, event="note_created", event_text="Note Created",
                    note_length=rng.randrange(10, 3000), has_images=rng.random() < .3))
        tables["users"].append({"id": user_id, "email": f"{user_id}@example.com", "plan": "free",
                                "received_at": warehouse_time(moment), "uuid_ts": "2024-03-08 02:00:01.000+00"})
    return tables


def write_warehouse(out: Path, tables: dict[str, list[dict]]) -> tuple[list[dict], list[tuple[str, int, str, str]]]:
    files = []
    spoiled = []
    # Bad rows on purpose: an unquoted comma in screens.csv, an unparseable time in identifies.csv,
    # a note_created row that lost both its ids.
    tables["identifies"][3]["timestamp"] = "not-a-time"
    spoiled.append(("warehouse/identifies.csv", 4, "bad_timestamp", "timestamp is `not-a-time`"))
    tables["note_created"][7]["user_id"] = None
    tables["note_created"][7]["anonymous_id"] = None
    spoiled.append(("warehouse/note_created/part-00000.parquet", 8, "missing_distinct_id",
                    "user_id and anonymous_id are both null"))
    for name in ("screens", "identifies", "signed_up", "users"):
        rows = tables[name]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        data = csv_bytes(rows, columns)
        if name == "screens":
            lines = data.split(b"\n")
            lines[10] += b",stray"  # record 10: one field more than the header
            data = b"\n".join(lines)
            spoiled.append(("warehouse/screens.csv", 10, "wrong_field_count",
                            "a stray trailing field: one more field than the header"))
        write(out / "warehouse" / f"{name}.csv", data)
        files.append({"path": f"warehouse/{name}.csv", "records": len(rows)})
    rows = tables["note_created"]
    for row in rows:
        for key in ("timestamp", "original_timestamp", "received_at", "sent_at", "loaded_at", "uuid_ts"):
            row[key] = datetime.fromisoformat(row[key].replace("+00", "+00:00"))
    table = pa.Table.from_pylist(rows)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd", use_dictionary=True)
    write(out / "warehouse" / "note_created" / "part-00000.parquet", buffer.getvalue().to_pybytes())
    files.append({"path": "warehouse/note_created/part-00000.parquet", "records": len(rows)})
    return files, spoiled


def readme(archive_files: list[dict], warehouse_files: list[dict], bad: list[tuple[str, int, str, str]],
           counts: Counter) -> str:
    lines = [
        "# Segment sample exports: Acme Notes",
        "",
        "Written by `generate.py` (byte-identical on every run); do not edit by hand. Regenerate with",
        "`python sample_data/segment/generate.py`.",
        "",
        "Two Segment sources of the fictional *Acme Notes* (see `../README.md`):",
        "",
        "- `archive/`: the S3 archive of the web source (analytics.js), 2024-03-01 .. 03-04: "
        "`segment-logs/acme-web/<receipt day, epoch ms>/<epoch ms>.<hash>.gz`, gzip'd JSON lines of full",
        "  messages (page, track, identify, group, alias). Device clocks are sometimes off (an hour, a few",
        "  seconds): `timestamp` is Segment's corrected time and is the one used.",
        "- `warehouse/`: warehouse tables of the iOS source (analytics-ios), 2024-03-05 .. 03-07, with",
        "  flattened `context_*` columns: `screens.csv`, `identifies.csv`, the per-event tables `signed_up.csv`",
        "  and `note_created/part-00000.parquet` (timestamps as Parquet timestamps), and the derived `users.csv`,",
        "  whose rows are filtered (they repeat the identifies).",
        "",
        "Try them:",
        "",
        "```sh",
        "posthog-migrate run sample_data/segment/archive --format segment --host local",
        "posthog-migrate run sample_data/segment/warehouse --format segment --host local",
        "```",
        "",
        "| folder | files | records | good (become events) | filtered | bad |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `archive/` | {len(archive_files)} | {counts['archive_records']} | {counts['archive_good']} | 0 | "
        f"{counts['archive_bad']} |",
        f"| `warehouse/` | {len(warehouse_files)} | {counts['warehouse_records']} | {counts['warehouse_good']} | "
        f"{counts['warehouse_filtered']} | {counts['warehouse_bad']} |",
        "",
        "Records count data rows from 1 in each file (a CSV header is not one). Besides its own events, the",
        "pipeline adds one `$identify` per (userId, anonymousId) pair it sees: "
        f"{counts['archive_pairs']} in the archive, {counts['warehouse_pairs']} in the warehouse.",
        f"In all, {counts['archive_good'] + counts['archive_pairs']:,} events to send from the archive and "
        f"{counts['warehouse_good'] + counts['warehouse_pairs']:,} events to send from the warehouse",
        "(what `inspect` counts and `run` sends).",
        "",
        "## Files",
        "",
        "| file | records |",
        "|---|---:|",
        *[f"| `{f['path']}` | {f['records']} |" for f in [*archive_files, *warehouse_files]],
        "",
        "## Deliberately bad rows",
        "",
        "| file | record | expected reject reason | why |",
        "|---|---:|---|---|",
        *[f"| `{path}` | {row} | `{reason}` | {why} |" for path, row, reason, why in bad],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: beside this script)")
    out = parser.parse_args().out
    rng = random.Random(SEED)
    web = Web(rng)
    web.generate()
    broken = web.break_some()
    truncated = next(position for position, reason, _ in broken if reason == "invalid_json")
    archive_files, placed = web.write(out, truncated)
    bad = [(*placed[position], reason, why) for position, reason, why in broken]
    bad.sort(key=lambda item: (item[0], item[1]))
    messages = [m for _, m in web.messages]
    good = [m for position, m in enumerate(messages) if position not in {p for p, _, _ in broken}]
    counts: Counter = Counter()
    counts["archive_records"] = len(messages)
    counts["archive_bad"] = len(broken)
    counts["archive_good"] = len(good)
    counts["archive_pairs"] = len({(m["userId"], m["anonymousId"]) for m in good
                                   if m.get("userId") and m.get("anonymousId")})
    tables = ios_tables(rng)
    warehouse_files, warehouse_bad = write_warehouse(out, tables)
    bad.extend(warehouse_bad)
    records = sum(len(rows) for rows in tables.values())
    counts["warehouse_records"] = records
    counts["warehouse_bad"] = len(warehouse_bad)
    counts["warehouse_filtered"] = len(tables["users"])
    counts["warehouse_good"] = records - len(warehouse_bad) - len(tables["users"])
    rows = [r for name, rows in tables.items() if name != "users" for r in rows]
    broken_rows = {id(tables["identifies"][3]), id(tables["note_created"][7]), id(tables["screens"][9])}
    counts["warehouse_pairs"] = len({(r["user_id"], r["anonymous_id"]) for r in rows
                                     if r.get("user_id") and r.get("anonymous_id") and id(r) not in broken_rows})
    write(out / "README.md", readme(archive_files, warehouse_files, bad, counts).encode())


if __name__ == "__main__":
    main()
