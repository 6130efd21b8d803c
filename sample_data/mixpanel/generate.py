#!/usr/bin/env python3
"""Regenerate the Mixpanel sample exports of "Acme Notes" (see ../README.md for the fictional company).

    python sample_data/mixpanel/generate.py [--out DIR]

Writes two raw-export files, a profiles file and ``README.md`` (counts, how to run, the deliberately bad rows):

- ``export-2024-03.jsonl.gz``: a project on Simplified ID Merge, ``time`` in epoch milliseconds (UTC),
  canonical ``distinct_id`` (``$distinct_id_before_identity`` on events merged after the fact).
- ``legacy-2022-11.jsonl``: a project created in 2021 on Original ID Merge, so ``time`` is the
  America/Los_Angeles wall clock written as epoch seconds; spans the end of DST (2022-11-06). It has
  ``$identify``, ``$create_alias`` and ``$merge`` events.
- ``people-2024-03.json``: the 2024 project's user profiles, as one page of the Engage API answers it
  (``{"page", "session_id", "results": [...]}``, pretty-printed).

Byte-identical on every run: one fixed seed, fixed dates, gzip mtime 0. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

SEED = 20240308
HERE = Path(__file__).resolve().parent
MODERN_START = datetime(2024, 3, 1, tzinfo=UTC)
MODERN_DAYS = 4
LEGACY_ZONE = ZoneInfo("America/Los_Angeles")
LEGACY_START = datetime(2022, 11, 4)  # local wall clock
LEGACY_DAYS = 4
MARKETING = "https://acmenotes.com"
APP = "https://app.acmenotes.com"
BROWSERS = [("Chrome", 122, "Mac OS X"), ("Chrome", 121, "Windows"), ("Safari", 17.3, "Mac OS X"),
            ("Firefox", 123, "Linux")]
PLACES = [("San Francisco", "California", "US"), ("Brooklyn", "New York", "US"), ("Berlin", "Berlin", "DE"),
          ("Lyon", "Auvergne-Rhone-Alpes", "FR"), ("Toronto", "Ontario", "CA")]
PAGES = [("/", "Acme Notes - notes that think with you"), ("/pricing", "Pricing - Acme Notes"),
         ("/features", "Features - Acme Notes")]
APP_PAGES = [("/notes", "All notes"), ("/notes/new", "New note"), ("/search", "Search")]


@dataclass
class Output:
    lines: list[bytes] = field(default_factory=list)
    good: int = 0
    filtered: int = 0
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (record, reason, why)
    names: Counter = field(default_factory=Counter)
    # ($user_id, $device_id) pairs of the good rows: the pipeline adds one $identify for each.
    linked_pairs: set[tuple[str, str]] = field(default_factory=set)

    def add(self, row: dict | bytes, kind: str = "good", reason: str = "", why: str = "") -> None:
        self.lines.append(row if isinstance(row, bytes) else json.dumps(row, separators=(",", ":")).encode())
        if kind == "good":
            self.good += 1
            self.names[row["event"]] += 1
            user, device = row["properties"].get("$user_id"), row["properties"].get("$device_id")
            if user and device and user != device:
                self.linked_pairs.add((user, device))
        elif kind == "filtered":
            self.filtered += 1
        else:
            self.bad.append((len(self.lines), reason, why))


def insert_id(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(16))


def web_properties(rng: random.Random, person: dict, moment_ms: int, url: str, title: str) -> dict:
    browser, version, os_name = person["browser"]
    city, region, country = person["place"]
    path = url.split(".com", 1)[1] or "/"
    properties = {
        "time": moment_ms,
        "distinct_id": person["distinct_id"],
        "$browser": browser, "$browser_version": version, "$os": os_name,
        "$current_url": url, "current_domain": url.split("/")[2], "current_url_path": path.split("?")[0],
        "current_page_title": title, "current_url_protocol": "https:",
        "$device_id": person["device"],
        "$initial_referrer": person["referrer"], "$initial_referring_domain": person["referrer"].split("/")[2]
        if person["referrer"].startswith("http") else "$direct",
        "$insert_id": insert_id(rng),
        "$lib_version": "2.49.0", "mp_lib": "web",
        "$screen_height": 1117, "$screen_width": 1728,
        "$city": city, "$region": region, "mp_country_code": country,
        "$mp_api_endpoint": "api-js.mixpanel.com", "$mp_api_timestamp_ms": moment_ms + rng.randrange(200, 4000),
        "mp_processing_time_ms": moment_ms + rng.randrange(4000, 9000), "$geo_source": "reverse_geocoding",
    }
    if person.get("user"):
        properties["$user_id"] = person["user"]
    return properties


def modern(rng: random.Random) -> Output:
    """Simplified ID Merge, resolved export: one distinct_id per person, ms times, UTC."""
    out = Output()
    events: list[tuple[int, dict]] = []
    for number in range(30):
        device = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        user = f"usr_{rng.getrandbits(32):08x}" if number >= 10 else None
        person = {"device": device, "user": None, "distinct_id": user or f"$device:{device}",
                  "browser": rng.choice(BROWSERS), "place": rng.choice(PLACES),
                  "referrer": rng.choice(["https://www.google.com/", "https://news.ycombinator.com/", "$direct"])}
        signup_day = rng.randrange(MODERN_DAYS) if number < 20 else -1  # 10..19 sign up here; 20.. are customers
        signed_up = False
        for day in range(MODERN_DAYS):
            for _ in range(rng.randrange(1, 3)):
                moment = MODERN_START + timedelta(days=day, seconds=rng.randrange(7 * 3600, 22 * 3600))
                identified = user is not None and (number >= 20 or day > signup_day)
                person["user"] = user if identified else None
                for _ in range(rng.randrange(2, 6)):
                    moment += timedelta(seconds=rng.randrange(4, 300), milliseconds=rng.randrange(1000))
                    ms = int(moment.timestamp() * 1000)
                    base, pages = (APP, APP_PAGES) if identified else (MARKETING, PAGES)
                    path, title = rng.choice(pages)
                    props = web_properties(rng, person, ms, base + path, title)
                    if user and not identified:  # merged later: Mixpanel rewrote distinct_id, kept the original
                        props["$distinct_id_before_identity"] = f"$device:{device}"
                    events.append((ms, {"event": "$mp_web_page_view", "properties": props}))
                    if identified and path == "/notes/new":
                        props = dict(web_properties(rng, person, ms + 45_000, APP + path, title),
                                     note_length=rng.randrange(20, 4000))
                        events.append((ms + 45_000, {"event": "Note Created", "properties": props}))
                if user and day == signup_day and not signed_up:
                    signed_up = True
                    ms = int((moment + timedelta(seconds=30)).timestamp() * 1000)
                    person["user"] = user
                    props = dict(web_properties(rng, person, ms, APP + "/welcome", "Welcome"),
                                 signup_method=rng.choice(["email", "google"]))
                    events.append((ms, {"event": "Sign Up", "properties": props}))
        if number >= 20 and rng.random() < 0.6:  # a server-side import: no $insert_id, seconds with a fraction
            ms = int((MODERN_START + timedelta(days=rng.randrange(MODERN_DAYS), hours=3)).timestamp() * 1000)
            events.append((ms, {"event": "Plan Upgraded", "properties": {
                "time": ms / 1000 + 0.25, "distinct_id": user, "plan": "pro", "from_plan": "free",
                "amount": 96.0, "mp_lib": "python", "$lib_version": "4.10.0"}}))
    rng.shuffle(events)  # raw exports are not in time order
    for _, row in events:
        out.add(row)
    template = events[7][1]
    out.lines.insert(40, json.dumps(template, separators=(",", ":")).encode()[:150])
    out.bad.append((41, "invalid_json", "truncated JSON (the line stops mid-object)"))
    out.add({"event": "Note Shared", "properties": ["time", 1709300000000, "distinct_id", "usr_x"]},
            "bad", "properties_not_object", "`properties` is a JSON array")
    out.add({"event": "Note Shared", "properties": dict(template["properties"], time=None,
                                                        **{"$insert_id": insert_id(rng)})},
            "bad", "bad_timestamp", "`properties.time` is null")
    out.add({"event": "Note Shared", "properties": {"time": 1709400000000, "share_method": "link",
                                                    "$insert_id": insert_id(rng)}},
            "bad", "missing_distinct_id", "no `distinct_id`, `$user_id` or `$device_id`")
    return out


def legacy_seconds(local: datetime) -> int:
    """Pre-2023 projects: the project's local wall clock, written as if it were UTC."""
    return int(local.replace(tzinfo=UTC).timestamp())


def legacy(rng: random.Random) -> Output:
    """Original ID Merge, America/Los_Angeles local-time seconds; anonymous ids are raw uuids (old SDKs)."""
    out = Output()
    rows: list[tuple[int, dict]] = []
    for number in range(12):
        anon = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        user = f"{['ana', 'ben', 'chloe', 'dev', 'eli', 'fay', 'gus', 'hana', 'ivo', 'jun', 'kai', 'lea'][number]}"
        user += "@example.com"
        person = {"device": anon, "user": None, "distinct_id": anon, "browser": rng.choice(BROWSERS),
                  "place": rng.choice(PLACES[:2]), "referrer": "$direct"}
        for day in range(LEGACY_DAYS):
            # Around 01:00-02:00 on 2022-11-06 the wall clock runs twice: some events fall in that hour.
            hour = rng.choice([1, 9, 13, 18]) if day == 2 else rng.randrange(8, 21)
            local = LEGACY_START + timedelta(days=day, hours=hour, minutes=rng.randrange(60), seconds=rng.randrange(60))
            for step in range(rng.randrange(2, 5)):
                local += timedelta(seconds=rng.randrange(5, 200))
                utc_ms = int(local.replace(tzinfo=LEGACY_ZONE).timestamp() * 1000)
                props = web_properties(rng, person, utc_ms, MARKETING + PAGES[step % 3][0], PAGES[step % 3][1])
                props.pop("$device_id")  # older SDKs did not send it
                props["time"] = legacy_seconds(local)
                props["$lib_version"] = "2.39.0"
                rows.append((props["time"], {"event": "Page View", "properties": props}))
            if day == 1 and number < 8:  # identify: the anonymous id joins the user
                local += timedelta(seconds=20)
                rows.append((legacy_seconds(local), {"event": "$identify", "properties": {
                    "time": legacy_seconds(local), "distinct_id": user, "$identified_id": user, "$anon_id": anon,
                    "$insert_id": insert_id(rng), "mp_lib": "web", "$city": person["place"][0],
                    "$region": person["place"][1], "mp_country_code": person["place"][2]}}))
                person["distinct_id"] = user
    # One user also gets an alias (a second email), another a $merge of two ids, one a useless $merge.
    moment = legacy_seconds(LEGACY_START + timedelta(days=3, hours=11))
    rows.append((moment, {"event": "$create_alias", "properties": {
        "time": moment, "distinct_id": "ana@example.com", "alias": "ana.work@example.com",
        "$insert_id": insert_id(rng), "mp_lib": "web"}}))
    rows.append((moment + 60, {"event": "$merge", "properties": {
        "time": moment + 60, "distinct_id": "ben@example.com",
        "$distinct_ids": ["ben@example.com", "benjamin@example.com"], "$insert_id": insert_id(rng)}}))
    for _, row in sorted(rows, key=lambda item: item[0]):
        out.add(row)
    out.add({"event": "$merge", "properties": {"time": moment + 120, "distinct_id": "chloe@example.com",
                                               "$distinct_ids": ["chloe@example.com"], "$insert_id": insert_id(rng)}},
            "filtered")
    return out


@dataclass
class Profiles:
    page: dict
    good: int = 0
    untimed: int = 0  # profiles without $last_seen: placed after the job's last event
    bad: list[tuple[int, str, str]] = field(default_factory=list)


def profiles(rng: random.Random, modern_out: Output) -> Profiles:
    """The Engage profiles of the 2024 export's users: one per user, with the place and time of their last event
    (``$last_seen``, as Mixpanel keeps it), two without ``$last_seen``, and one under an id PostHog will not merge."""
    last: dict[str, dict] = {}
    for line in modern_out.lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        props = row.get("properties")
        known = isinstance(props, dict) and str(props.get("distinct_id", "")).startswith("usr_") and props.get("time")
        if known and props["time"] >= last.get(props["distinct_id"], {}).get("time", 0):
            last[props["distinct_id"]] = props
    results = []
    for number, (user, props) in enumerate(sorted(last.items())):
        seen = datetime.fromtimestamp(props["time"] / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        first = rng.choice(["Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Gus", "Hana"])
        last_name = rng.choice(["Lima", "Okafor", "Schmidt", "Tanaka", "Moreau", "Novak"])
        properties = {"$created": (MODERN_START - timedelta(days=rng.randrange(30, 400))).strftime("%Y-%m-%dT%H:%M:%S"),
                      "$email": f"{first.lower()}.{user[4:]}@example.com", "$first_name": first,
                      "$last_name": last_name, "$city": props.get("$city"), "$region": props.get("$region"),
                      "$country_code": props.get("mp_country_code"), "plan": rng.choice(["free", "pro", "team"])}
        if number % 9 != 4:
            properties["$last_seen"] = seen
        results.append({"$distinct_id": user, "$properties": properties})
    out = Profiles({"page": 0, "page_size": 1000, "session_id": "1709510400-ACMENO", "status": "ok",
                    "total": len(results) + 1, "results": results})
    out.good = len(results)
    out.untimed = sum("$last_seen" not in r["$properties"] for r in results)
    results.insert(7, {"$distinct_id": "undefined", "$properties": {"$email": "someone@example.com",
                                                                   "$last_seen": "2024-03-02T10:00:00"}})
    out.bad.append((8, "illegal_distinct_id", "`$distinct_id` is `undefined`, an id PostHog will not merge through"))
    return out


def readme(modern_out: Output, legacy_out: Output, people: Profiles) -> str:
    def table_of(bad: list[tuple[int, str, str]], name: str) -> str:
        return "\n".join(f"| `{name}` | {record} | `{reason}` | {why} |" for record, reason, why in bad)

    def table(out: Output, name: str) -> str:
        return table_of(out.bad, name)

    def names(out: Output) -> str:
        return ", ".join(f"`{name}` {count}" for name, count in sorted(out.names.items()))

    def counts(out: Output) -> str:
        return f"{len(out.lines)} | {out.good} | {out.filtered} | {len(out.bad)} | {names(out)}"

    def pairs(out: Output) -> str:
        return str(len(out.linked_pairs) or "none")

    def to_send(out: Output) -> str:
        return f"{out.good + len(out.linked_pairs):,}"

    people_counts = f"{len(people.page['results'])} | {people.good} | 0 | {len(people.bad)} | `$set` {people.good}"

    return f"""# Mixpanel sample exports: Acme Notes

Raw Export API files (JSON lines of `{{"event", "properties"}}`), written by `generate.py`; do not
edit them by hand (`python generate.py` rewrites them byte for byte).

| File | Project | Records | Good | Filtered | Bad | Events in the good rows |
|---|---|---:|---:|---:|---:|---|
| `export-2024-03.jsonl.gz` | Simplified ID Merge, 2024-03-01 – 03-04 UTC, `time` in ms | {counts(modern_out)} |
| `legacy-2022-11.jsonl` | from 2021, Original ID Merge, `time` in America/Los_Angeles seconds | {counts(legacy_out)} |
| `people-2024-03.json` | the 2024 project's Engage profiles: one API page | {people_counts} |

Each good row is one event: `$mp_web_page_view` → `$pageview`, `$identify` → PostHog `$identify`,
`$create_alias` and `$merge` → `$create_alias`. The filtered row is a `$merge` of a single id. Besides, the
pipeline adds one `$identify` per (`$user_id`, `$device_id`) pair it sees: {pairs(modern_out)} in the 2024 export
({to_send(modern_out)} events to send in all), {pairs(legacy_out)} in the legacy one
({to_send(legacy_out)} events to send). `inspect` counts them as `run` sends them.

The legacy project predates 2023, so Mixpanel stored its times in the project's timezone: run it as its
own job with that zone. Its events span the end of DST (2022-11-06 01:00–02:00 happens twice; such
times are read as the first, daylight-saving one):

```sh
posthog-migrate run sample_data/mixpanel/export-2024-03.jsonl.gz --format mixpanel --host local
posthog-migrate run sample_data/mixpanel/legacy-2022-11.jsonl --format mixpanel \\
    --source-timezone America/Los_Angeles --host local --job mixpanel-legacy
```

The profiles go with the 2024 export, in the same job: each profile is one `$set` event for its user at its
`$last_seen` ({people.untimed} have none: they go just after the job's last event), with `$email` → `email`,
`$first_name` + `$last_name` → `name`, `$created` set once as `$initial_created_at` (see the README's People
section): {modern_out.good + len(modern_out.linked_pairs) + people.good:,} events to send for the two files.

```sh
posthog-migrate run sample_data/mixpanel/export-2024-03.jsonl.gz sample_data/mixpanel/people-2024-03.json \\
    --format mixpanel --host local --job mixpanel-with-people
```

In the 2024 export, 10 people stay anonymous (`distinct_id` `$device:<id>`), 10 sign up (their earlier
events already carry their user id, with `$distinct_id_before_identity`; from the signup on they carry
`$user_id` and `$device_id`, which links the two ids) and 10 are customers. Some customers have a
server-side `Plan Upgraded` without `$insert_id` (content-derived uuid) and with a fractional `time`.

## Deliberately bad rows

| File | Record | Expected reject reason | Why |
|---|---:|---|---|
{table(modern_out, "export-2024-03.jsonl.gz")}
{table_of(people.bad, "people-2024-03.json")}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: beside this script)")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    modern_out = modern(rng)
    legacy_out = legacy(rng)
    people = profiles(rng, modern_out)
    data = b"".join(line + b"\n" for line in modern_out.lines)
    (out / "export-2024-03.jsonl.gz").write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    (out / "legacy-2022-11.jsonl").write_bytes(b"".join(line + b"\n" for line in legacy_out.lines))
    (out / "people-2024-03.json").write_text(json.dumps(people.page, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(readme(modern_out, legacy_out, people), encoding="utf-8")


if __name__ == "__main__":
    main()
