#!/usr/bin/env python3
"""Regenerate the Amplitude sample export of "Acme Notes" (see ../README.md for the fictional company).

    python sample_data/amplitude/generate.py [--out DIR]

Writes ``export.zip`` (shaped like Amplitude's Export API answer: ``{project}/{project}_{date}_{H}#{n}.json.gz``
members, each gzip'd JSON lines, grouped by *server upload* hour so event times spill across members) and
``README.md``, which lists the counts and the deliberately bad rows. Byte-identical on every run: one
fixed seed, fixed dates, gzip mtime 0, fixed zip entry dates, members stored (they are already gzip'd).
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import uuid
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

SEED = 20240301
PROJECT = 187520
HERE = Path(__file__).resolve().parent
START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 3
ZIP_DATE = (2024, 3, 4, 0, 0, 0)
ROWS_PER_MEMBER = 60  # Amplitude splits an hour into #0, #1, ... parts; small here so the sample shows it
MARKETING = "https://acmenotes.com"
APP = "https://app.acmenotes.com"

WEB_PLATFORMS = [  # (browser, version, device_type, device_family)
    ("Chrome", "122", "Mac", "Mac"), ("Chrome", "122", "Windows", "Windows"),
    ("Safari", "17.3", "Mac", "Mac"), ("Firefox", "123", "Linux", "Linux"), ("Edge", "122", "Windows", "Windows"),
]
IOS_DEVICES = [("iPhone15,2", "Apple iPhone 14 Pro"), ("iPhone14,5", "Apple iPhone 13"), ("iPad13,1", "Apple iPad Air")]
PLACES = [  # (country, region, city, lat, lng, ip prefix)
    ("United States", "California", "San Francisco", 37.77, -122.42, "198.51.100."),
    ("United States", "New York", "New York", 40.71, -74.01, "198.51.100."),
    ("Germany", "Berlin", "Berlin", 52.52, 13.40, "203.0.113."),
    ("France", "Ile-de-France", "Paris", 48.86, 2.35, "203.0.113."),
    ("Canada", "Ontario", "Toronto", 43.65, -79.38, "192.0.2."),
]
MARKETING_PAGES = [("/", "Acme Notes - notes that think with you"), ("/pricing", "Pricing - Acme Notes"),
                   ("/features", "Features - Acme Notes"), ("/blog/markdown-tips", "10 Markdown tips - Acme Notes")]
APP_PAGES = [("/notes", "All notes"), ("/notes/new", "New note"), ("/search", "Search"), ("/settings", "Settings")]
SCREENS = ["NotesList", "NoteEditor", "Search", "Settings"]
CAMPAIGNS = [("newsletter", "email", "march_launch"), ("google", "cpc", "brand"), ("twitter", "social", "launch")]


@dataclass
class Person:
    number: int
    kind: str  # visitor | signup | customer | ios
    device_id: str
    user_id: str | None
    amplitude_id: int
    place: tuple
    ip: str | None
    platform: tuple
    workspace: str | None = None
    campaign: tuple | None = None
    event_counter: int = 0
    signed_up: bool = False


@dataclass
class Sample:
    members: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    rows: int = 0
    filtered: int = 0
    group_rows: int = 0
    bad: list[tuple[str, bytes, str, str]] = field(default_factory=list)  # (member, line, reason, why)
    people: set[str] = field(default_factory=set)
    # (user_id, device_id) pairs of the good rows: the pipeline adds one $identify for each.
    linked_pairs: set[tuple[str, str]] = field(default_factory=set)
    event_types: Counter = field(default_factory=Counter)
    fallback_time_rows: int = 0  # good rows without an event_time: their client_event_time is used


def amplitude_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def make_people(rng: random.Random) -> list[Person]:
    people = []
    kinds = ["visitor"] * 12 + ["signup"] * 10 + ["customer"] * 8 + ["ios"] * 6
    workspaces = [f"ws_{name}" for name in ("orbit", "lumen", "fjord", "cobalt", "maple", "tundra")]
    for number, kind in enumerate(kinds):
        place = rng.choice(PLACES)
        ip = None if rng.random() < 0.25 else place[5] + str(rng.randrange(2, 250))  # some projects drop IPs
        person = Person(
            number=number, kind=kind, device_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            user_id=f"usr_{rng.getrandbits(32):08x}" if kind != "visitor" else None,
            amplitude_id=100_000_000 + rng.randrange(10**8), place=place, ip=ip,
            platform=rng.choice(IOS_DEVICES) if kind == "ios" else rng.choice(WEB_PLATFORMS),
            workspace=rng.choice(workspaces) if kind != "visitor" else None,
            campaign=rng.choice(CAMPAIGNS) if rng.random() < 0.5 else None,
        )
        people.append(person)
    return people


def base_row(rng: random.Random, person: Person, event_type: str, moment: datetime, session_ms: int,
             upload_delay: timedelta, identified: bool = True) -> dict:
    person.event_counter += 1
    country, region, city, lat, lng, _ = person.place
    user_id = person.user_id if identified else None
    user_properties: dict = {}
    if person.campaign:
        user_properties.update({"utm_source": person.campaign[0], "utm_medium": person.campaign[1],
                                "initial_utm_source": person.campaign[0], "initial_utm_campaign": person.campaign[2]})
    user_properties["initial_referrer"] = "EMPTY" if not person.campaign else "https://www.google.com/"
    if user_id:
        user_properties["plan"] = "pro" if person.number % 3 == 0 else "free"
    upload = moment + upload_delay
    row = {
        "$insert_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "amplitude_id": person.amplitude_id,
        "app": PROJECT,
        "city": city, "country": country, "region": region,
        "client_event_time": amplitude_time(moment),
        "client_upload_time": amplitude_time(upload),
        "data": {"group_first_event": {}},
        "device_id": person.device_id,
        "event_id": person.event_counter,
        "event_properties": {},
        "event_time": amplitude_time(moment),
        "event_type": event_type,
        "groups": {},
        "group_properties": {},
        "ip_address": person.ip,
        "language": "English",
        "location_lat": lat, "location_lng": lng,
        "server_received_time": amplitude_time(upload),
        "server_upload_time": amplitude_time(upload + timedelta(milliseconds=rng.randrange(50, 900))),
        "session_id": session_ms,
        "user_id": user_id,
        "user_properties": user_properties,
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=1)),
    }
    if person.kind == "ios":
        model, name = person.platform
        row.update({"platform": "iOS", "os_name": "ios", "os_version": "17.3.1", "device_type": name,
                    "device_family": "Apple iPhone" if "iPhone" in model else "Apple iPad",
                    "device_brand": "Apple", "device_manufacturer": "Apple", "device_model": model,
                    "carrier": "Verizon" if person.number % 2 else "T-Mobile",
                    "library": "amplitude-swift/1.4.1", "version_name": "3.4.1"})
    else:
        browser, version, device_type, family = person.platform
        row.update({"platform": "Web", "os_name": browser, "os_version": version, "device_type": device_type,
                    "device_family": family, "device_brand": None, "device_manufacturer": None,
                    "device_model": device_type, "carrier": None, "library": "amplitude-ts/2.5.2",
                    "version_name": None})
    if user_id and person.workspace:
        row["groups"] = {"workspace": [person.workspace]}
        row["group_properties"] = {"workspace": {person.workspace: {
            "name": person.workspace[3:].title(), "plan": "team" if person.number % 4 == 0 else "pro",
            "seats": 3 + person.number % 9}}}
    return row


def page_properties(base: str, path: str, title: str, person: Person) -> dict:
    query = ""
    if person.campaign and base == MARKETING:
        query = f"?utm_source={person.campaign[0]}&utm_medium={person.campaign[1]}&utm_campaign={person.campaign[2]}"
    return {"[Amplitude] Page Counter": 1, "[Amplitude] Page Domain": base.split("//")[1],
            "[Amplitude] Page Location": base + path + query, "[Amplitude] Page Path": path,
            "[Amplitude] Page Title": title, "[Amplitude] Page URL": base + path}


def session_events(rng: random.Random, person: Person, start: datetime) -> list[tuple[str, dict, datetime, bool]]:
    """(event_type, event_properties, time, identified) of one session, session_start and session_end included."""
    events: list[tuple[str, dict, datetime, bool]] = []

    def add(event_type: str, properties: dict, moment: datetime) -> None:
        events.append((event_type, properties, moment, person.kind != "signup" or person.signed_up))

    add("session_start", {}, start)
    moment = start
    steps = rng.randrange(2, 7)
    for _ in range(steps):
        moment += timedelta(seconds=rng.randrange(5, 240), microseconds=rng.randrange(1_000_000))
        if person.kind == "ios":
            screen = rng.choice(SCREENS)
            add("[Amplitude] Screen Viewed", {"[Amplitude] Screen Name": screen}, moment)
            if screen == "NoteEditor":
                moment += timedelta(seconds=rng.randrange(20, 300))
                add("note_created", {"note_length": rng.randrange(20, 4000), "source": "ios"}, moment)
            continue
        logged_in = person.kind == "customer" or person.signed_up
        base, pages = (APP, APP_PAGES) if logged_in else (MARKETING, MARKETING_PAGES)
        path, title = rng.choice(pages)
        add("[Amplitude] Page Viewed", page_properties(base, path, title, person), moment)
        if rng.random() < 0.35:
            moment += timedelta(seconds=rng.randrange(2, 30))
            clicked = page_properties(base, path, title, person)
            clicked.update({"[Amplitude] Element Tag": "button", "[Amplitude] Element Text": "Create note"
                            if logged_in else "Start free", "[Amplitude] Element Selector": "#primary-cta"})
            add("[Amplitude] Element Clicked", clicked, moment)
        if logged_in and path == "/notes/new":
            moment += timedelta(seconds=rng.randrange(30, 600))
            add("note_created", {"note_length": rng.randrange(20, 4000), "source": "web"}, moment)
        elif logged_in and path == "/search":
            add("search_performed", {"query": rng.choice(["q1 plan", "meeting notes", "recipes"]),
                                     "results_count": rng.randrange(0, 40)}, moment)
        elif person.kind == "signup" and not person.signed_up and path == "/pricing" and rng.random() < 0.7:
            moment += timedelta(seconds=rng.randrange(20, 120))
            person.signed_up = True
            add("signed_up", {"method": rng.choice(["email", "google"])}, moment)
    add("session_end", {}, moment + timedelta(seconds=rng.randrange(1, 30)))
    return events


def build(rng: random.Random) -> Sample:
    sample = Sample()
    rows: list[tuple[datetime, dict]] = []
    for person in make_people(rng):
        for day in range(DAYS):
            for _ in range(rng.randrange(1, 3)):
                start = START + timedelta(days=day, seconds=rng.randrange(6 * 3600, 23 * 3600),
                                          microseconds=rng.randrange(1_000_000))
                session_ms = int(start.timestamp() * 1000)
                # Mobile events are uploaded in batches, sometimes hours later: they land in later members.
                late = person.kind == "ios" and rng.random() < 0.3
                delay = timedelta(hours=rng.randrange(2, 9)) if late else timedelta(seconds=rng.randrange(1, 20))
                for event_type, properties, moment, identified in session_events(rng, person, start):
                    row = base_row(rng, person, event_type, moment, session_ms, delay, identified)
                    row["event_properties"] = properties
                    rows.append((moment + delay, row))
        # a billing webhook sent from the server: no device, no session
        if person.kind in ("customer", "ios") and rng.random() < 0.5:
            moment = START + timedelta(days=rng.randrange(DAYS), seconds=rng.randrange(86_400))
            row = base_row(rng, person, "invoice_paid", moment, -1, timedelta(seconds=1))
            row.update({"device_id": None, "platform": None, "os_name": None, "os_version": None,
                        "device_type": None, "device_family": None, "device_model": None, "library": "http/2.0",
                        "ip_address": None, "city": None, "region": None, "country": None,
                        "location_lat": None, "location_lng": None, "$insert_id": f"inv_{rng.getrandbits(40):010x}",
                        "event_properties": {"amount": rng.choice([8, 15, 96]), "currency": "USD"}})
            row.pop("uuid")  # server-side rows of this sample have no uuid: it comes from $insert_id
            rows.append((moment + timedelta(seconds=1), row))
    rows.sort(key=lambda item: (item[0], item[1]["event_time"]))
    for upload, row in rows:
        hour_key = f"{PROJECT}/{PROJECT}_{upload:%Y-%m-%d}_{upload.hour}"
        sample.members[hour_key].append(json.dumps(row, separators=(",", ":")).encode())
        sample.rows += 1
        if row["event_type"] in ("session_start", "session_end"):
            sample.filtered += 1
        else:
            sample.event_types[row["event_type"]] += 1
            sample.people.add(row["user_id"] or row["device_id"])
            if row["user_id"] and row["device_id"] and row["user_id"] != row["device_id"]:
                sample.linked_pairs.add((row["user_id"], row["device_id"]))
            if row["group_properties"]:
                sample.group_rows += 1
    return sample


def add_bad_rows(rng: random.Random, sample: Sample) -> None:
    """Four broken rows, each added in the middle of a member."""
    keys = sorted(sample.members)
    template = json.loads(sample.members[keys[5]][0])
    template.update(event_type="note_shared", event_properties={"share_method": "link"},
                    uuid=str(uuid.UUID(int=rng.getrandbits(128), version=1)))

    def variant(**changes) -> bytes:
        row = dict(template, **changes)
        return json.dumps(row, separators=(",", ":")).encode()

    truncated = variant()[:180]
    bad = [
        (keys[5], truncated, "invalid_json", "truncated JSON (the line stops mid-object)"),
        (keys[12], variant(user_id=None, device_id=None, uuid=str(uuid.UUID(int=rng.getrandbits(128), version=1))),
         "missing_distinct_id", "user_id and device_id are both null"),
        (keys[20], variant(event_time="2024-03-02 25:61:00.000000", client_event_time=None,
                           server_upload_time="2024-03-02 11:6",
                           uuid=str(uuid.UUID(int=rng.getrandbits(128), version=1))),
         "bad_timestamp", "event_time is `2024-03-02 25:61:00.000000`, client_event_time is null, "
                          "server_upload_time is `2024-03-02 11:6`"),
        (keys[-3], variant(uuid="d0b5b3a6-not-a-uuid"), "bad_uuid", "uuid is `d0b5b3a6-not-a-uuid`"),
    ]
    for member, line, reason, why in bad:
        lines = sample.members[member]
        lines.insert(len(lines) // 2, line)
        sample.bad.append((member, line, reason, why))
        sample.rows += 1
    # A row without event_time is kept: its client_event_time is its time (PostHog's importer would use "now").
    kept = variant(event_time=None, uuid=str(uuid.UUID(int=rng.getrandbits(128), version=1)))
    sample.members[keys[30]].insert(len(sample.members[keys[30]]) // 2, kept)
    sample.rows += 1
    sample.fallback_time_rows += 1
    sample.event_types[template["event_type"]] += 1
    sample.group_rows += bool(template["group_properties"])


def member_files(sample: Sample) -> dict[str, list[bytes]]:
    """Split each upload hour into ``#0``, ``#1``... parts of at most ROWS_PER_MEMBER rows."""
    files: dict[str, list[bytes]] = {}
    for hour_key, lines in sample.members.items():
        for part, begin in enumerate(range(0, len(lines), ROWS_PER_MEMBER)):
            files[f"{hour_key}#{part}.json.gz"] = lines[begin:begin + ROWS_PER_MEMBER]
    return files


def write_zip(path: Path, files: dict[str, list[bytes]]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(files):
            data = gzip.compress(b"".join(line + b"\n" for line in files[name]), compresslevel=9, mtime=0)
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)


def bad_row_table(sample: Sample, files: dict[str, list[bytes]]) -> list[str]:
    """Record numbers as the adapter counts them: members in sorted name order, from 1."""
    numbers: dict[bytes, tuple[int, str, int]] = {}
    record = 0
    for name in sorted(files):
        for line_number, line in enumerate(files[name], start=1):
            record += 1
            numbers[line] = (record, name, line_number)
    lines = []
    for _, raw, reason, why in sample.bad:
        record, name, line_number = numbers[raw]
        lines.append(f"| {record} | `{name}` | {line_number} | `{reason}` | {why} |")
    return sorted(lines, key=lambda line: int(line.split("|")[1]))


def readme(sample: Sample, files: dict[str, list[bytes]], size: int) -> str:
    bad = len(sample.bad)
    good = sample.rows - bad - sample.filtered
    names = "\n".join(f"| `{name}` | {count} |" for name, count in sorted(sample.event_types.items()))
    pairs = len(sample.linked_pairs)
    total = good + sample.group_rows + pairs
    return f"""# Amplitude sample export: Acme Notes

`export.zip` ({size:,} bytes) is shaped like an answer of Amplitude's Export API for project {PROJECT},
2024-03-01 to 2024-03-03 (UTC): {len(files)} members `{PROJECT}/{PROJECT}_YYYY-MM-DD_H#n.json.gz`, each gzip'd
JSON lines. Members are cut by *server upload* hour, so event times spill across them (iOS events are
sometimes uploaded hours late). Written by `generate.py`; do not edit by hand (`python generate.py`
rewrites it byte for byte).

```sh
posthog-migrate run sample_data/amplitude/export.zip --format amplitude --host local
```

| | rows |
|---|---:|
| records | {sample.rows} |
| good (become events; {sample.fallback_time_rows} without `event_time`, timed by its `client_event_time`) | {good} |
| filtered (`session_start` / `session_end`) | {sample.filtered} |
| bad (rejected) | {bad} |

The good rows make {good} events plus {sample.group_rows} `$groupidentify` events (one per row that
carries a workspace's group properties), for {len(sample.people)} distinct ids, and the pipeline adds one
`$identify` per (user_id, device_id) pair it sees: {pairs}. In all, {total:,} events to send (what `inspect`
counts and `run` sends). 36 people: 12 anonymous web
visitors (device id only), 10 who sign up on the web (device id first, then `user_id` from `signed_up` on:
the pipeline links the two), 8 web customers and 6 iOS app users (user id and device id), and a server-side
`invoice_paid` for some customers (no device, `session_id` -1, no `uuid`: its uuid comes from `$insert_id`).
Every row carries Amplitude's geo, sent as `$geoip_*` with `$geoip_disable` (and set on the person); about a
quarter of the people have no `ip_address`.

| event_type | rows |
|---|---:|
{names}

## Deliberately bad rows

posthog-migrate reads each member as a source of its own: its rejects file names a row as
`export.zip!/<member>` with its Line. Record counts rows across the members in sorted name order, from 1
(as `AmplitudeAdapter.read` does when given the whole zip).

| Record | Member | Line | Expected reject reason | Why |
|---:|---|---:|---|---|
{chr(10).join(bad_row_table(sample, files))}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: beside this script)")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    sample = build(rng)
    add_bad_rows(rng, sample)
    files = member_files(sample)
    write_zip(out / "export.zip", files)
    (out / "README.md").write_text(readme(sample, files, (out / "export.zip").stat().st_size), encoding="utf-8")


if __name__ == "__main__":
    main()
