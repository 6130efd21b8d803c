#!/usr/bin/env python3
"""Regenerate the sample exports of "Acme Notes", a fictional note-taking SaaS (web app + marketing site).

    python sample_data/generate.py

Every file under sample_data/ (except this script) is written by this script and nothing else. The
output is byte-identical from run to run: one fixed seed, fixed dates (2024-03-01 .. 2024-03-14 UTC, no
"now"), gzip written with mtime=0, Parquet written by pyarrow (zstd) with no wall-clock metadata.
Only the standard library, pyarrow and orjson are used.

The same 60 people appear in every file (18 anonymous-only visitors of the marketing site, 28 who sign up
during the fortnight: an anonymous device id first, their user id from the signup on, and 14 customers
who signed up before March). Each file is an independent sample of their activity; a handful of rows
are broken on purpose (see README.md, which this script also writes).
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote_plus

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20240301
HERE = Path(__file__).resolve().parent

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
START = datetime(2024, 3, 1, tzinfo=UTC)
END = datetime(2024, 3, 15, tzinfo=UTC)  # exclusive: the last day is 2024-03-14
START_MS = int((START - EPOCH).total_seconds() * 1000)
END_MS = int((END - EPOCH).total_seconds() * 1000)
DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# Split of the JSON lines export: the first file runs to the end of March 8, the second starts on March 8.
JSONL_SPLIT_FROM_MS = START_MS + 7 * DAY_MS  # 2024-03-08T00:00Z
JSONL_SPLIT_TO_MS = START_MS + 8 * DAY_MS  # 2024-03-09T00:00Z

MARKETING = "https://acmenotes.com"
APP = "https://app.acmenotes.com"

# Relative activity by UTC hour: European mornings to American evenings, quiet at night.
HOUR_WEIGHTS = [2, 1, 1, 1, 1, 2, 4, 7, 10, 12, 13, 13, 12, 12, 13, 14, 14, 13, 11, 9, 7, 5, 4, 3]
MAX_HOUR_WEIGHT = max(HOUR_WEIGHTS)

# (browser, version, os, device type, weight)
PLATFORMS = [
    ("Chrome", "122.0.6261.94", "Mac OS X", "Desktop", 26),
    ("Chrome", "122.0.6261.69", "Windows", "Desktop", 22),
    ("Safari", "17.3.1", "Mac OS X", "Desktop", 14),
    ("Firefox", "123.0", "Linux", "Desktop", 7),
    ("Firefox", "123.0", "Windows", "Desktop", 5),
    ("Microsoft Edge", "122.0.2365.66", "Windows", "Desktop", 8),
    ("Mobile Safari", "17.3", "iOS", "Mobile", 11),
    ("Chrome", "122.0.6261.90", "Android", "Mobile", 7),
]

UTM_SOURCES = [None, None, None, None, "google", "google", "twitter", "newsletter", "producthunt", "linkedin", "reddit"]
UTM_MEDIUM = {"google": "cpc", "newsletter": "email"}
REFERRERS = {
    "google": "https://www.google.com/",
    "twitter": "https://t.co/",
    "producthunt": "https://www.producthunt.com/",
    "linkedin": "https://www.linkedin.com/",
    "reddit": "https://www.reddit.com/",
}
MARKETING_PAGES = [
    "/",
    "/",
    "/",
    "/pricing",
    "/pricing",
    "/features",
    "/templates",
    "/blog/zettelkasten-for-teams",
    "/blog/markdown-shortcuts",
    "/blog/café-meeting-notes",
    "/changelog",
    "/about",
]
SEARCH_QUERIES = [
    "meeting notes",
    "q2 roadmap",
    "recipes",
    "onboarding",
    "standup",
    "invoice",
    "todo",
    "design review",
    "résumé",
    "1:1 agenda",
    "okrs",
    "reading list",
]
PRICES = {"pro": 8.0, "team": 12.0}  # per seat and month
FIRST_NAMES = [
    "ana",
    "ben",
    "chloe",
    "dmitri",
    "elena",
    "farid",
    "grace",
    "hiro",
    "ines",
    "jonas",
    "kemi",
    "liam",
    "maya",
    "noor",
    "oscar",
    "priya",
    "quinn",
    "rosa",
    "sven",
    "tara",
    "uma",
    "victor",
    "wen",
    "xavier",
    "yara",
    "zoe",
]
LAST_NAMES = [
    "alvarez",
    "becker",
    "chen",
    "dubois",
    "eriksen",
    "fischer",
    "garcia",
    "haddad",
    "ito",
    "jensen",
    "kowalski",
    "lopez",
    "moreau",
    "nakamura",
    "okafor",
    "patel",
    "rossi",
    "schmidt",
    "tanaka",
    "van-dijk",
    "weber",
    "young",
]
EMAIL_DOMAINS = ["gmail.com", "outlook.com", "fastmail.com", "example-agency.io", "northwind.dev", "contoso.org"]
AUTOCAPTURE_CHAINS = [
    (
        'button.btn.btn-primary:attr__class="btn btn-primary"nth-child="2"nth-of-type="1"text="Share";'
        'div.note-toolbar:attr__class="note-toolbar"nth-child="1"nth-of-type="1"'
    ),
    (
        'a.sidebar-link:attr__class="sidebar-link"attr__href="/notes"href="/notes"nth-child="1"'
        'nth-of-type="1"text="All notes"'
    ),
    'button.new-note:attr__class="new-note"nth-child="1"nth-of-type="1"text="New note"',
    'input.search-box:attr__class="search-box"attr__type="search"nth-child="1"nth-of-type="1"',
]


# --- people ------------------------------------------------------------------------------------------


@dataclass
class Person:
    index: int
    kind: str  # "visitor" (anonymous only) | "new" (signs up in the window) | "existing"
    device_id: str
    user_id: str | None
    email: str | None
    person_id: str
    platform: tuple
    utm_source: str | None
    activity: float
    signup_ms: int | None = None  # only for "new"
    base_plan: str | None = None  # plan at START (existing) or at signup (new)
    upgrade_ms: int | None = None
    upgrade_plan: str | None = None
    seats: int = 1
    notes: list[str] = field(default_factory=list)

    def distinct_id_at(self, ms: int) -> str:
        if self.user_id is None or (self.signup_ms is not None and ms < self.signup_ms):
            return self.device_id
        return self.user_id

    def plan_at(self, ms: int) -> str | None:
        if self.user_id is None or (self.signup_ms is not None and ms < self.signup_ms):
            return None
        if self.upgrade_ms is not None and ms >= self.upgrade_ms:
            return self.upgrade_plan
        return self.base_plan


def uuid4_from(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def uuid7_from(ms: int, rng: random.Random) -> str:
    """A UUIDv7 (what posthog-js uses for device, session and event ids) for a moment, seeded."""
    value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    return str(uuid.UUID(int=value))


def make_people(rng: random.Random) -> list[Person]:
    kinds = ["visitor"] * 18 + ["new"] * 28 + ["existing"] * 14
    rng.shuffle(kinds)
    people: list[Person] = []
    used_ids: set[str] = set()
    used_emails: set[str] = set()
    for index, kind in enumerate(kinds):
        # The device id is a UUIDv7 of the device's first visit: always before its events here.
        first_seen = START_MS - rng.randrange(HOUR_MS, (120 if kind == "existing" else 30) * DAY_MS)
        device_id = uuid7_from(first_seen, rng)
        user_id = email = None
        if kind != "visitor":
            while True:
                user_id = "usr_" + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(10))
                if user_id not in used_ids:
                    used_ids.add(user_id)
                    break
            while True:
                email = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}@{rng.choice(EMAIL_DOMAINS)}"
                if email not in used_emails:
                    used_emails.add(email)
                    break
        platform = rng.choices(PLATFORMS, weights=[p[4] for p in PLATFORMS])[0]
        person = Person(
            index=index,
            kind=kind,
            device_id=device_id,
            user_id=user_id,
            email=email,
            person_id=uuid4_from(rng),
            platform=platform,
            utm_source=rng.choice(UTM_SOURCES) if kind != "existing" else None,
            activity=rng.choice([0.3, 0.5, 0.8, 1.0, 1.0, 1.4, 2.0, 3.0]),
        )
        if kind == "new":
            person.signup_ms = START_MS + rng.randrange(2 * HOUR_MS, 13 * DAY_MS)
            person.base_plan = "free"
            if rng.random() < 0.3 and END_MS - person.signup_ms > 2 * DAY_MS:
                person.upgrade_ms = rng.randrange(person.signup_ms + DAY_MS, END_MS - 2 * HOUR_MS)
                person.upgrade_plan = rng.choice(["pro", "pro", "team"])
        elif kind == "existing":
            person.base_plan = rng.choice(["free", "free", "pro", "pro", "team"])
            if person.base_plan != "team" and rng.random() < 0.35:
                person.upgrade_ms = rng.randrange(START_MS + 6 * HOUR_MS, END_MS - 2 * HOUR_MS)
                person.upgrade_plan = "pro" if person.base_plan == "free" else "team"
        if person.upgrade_plan == "team" or person.base_plan == "team":
            person.seats = rng.randint(3, 12)
        person.notes = [
            "".join(rng.choice("abcdefghijkmnopqrstuvwxyz0123456789") for _ in range(8))
            for _ in range(rng.randint(3, 12))
        ]
        people.append(person)
    return people


# --- activity ----------------------------------------------------------------------------------------


def session_start(rng: random.Random, lo: int, hi: int) -> int:
    """A moment in [lo, hi), more likely in busy hours."""
    while True:
        ms = rng.randrange(lo, hi)
        hour = (ms // HOUR_MS) % 24
        if rng.random() * MAX_HOUR_WEIGHT < HOUR_WEIGHTS[hour]:
            return ms


def landing_url(path: str, utm: str | None) -> str:
    url = MARKETING + path
    if utm:
        url += f"?utm_source={utm}&utm_medium={UTM_MEDIUM.get(utm, 'social')}"
    return url


class Simulator:
    """Makes one file's worth of events. Each event is a dict of canonical fields, formatted per file."""

    def __init__(self, rng: random.Random, people: list[Person], posthog_only_events: bool):
        self.rng = rng
        self.people = people
        self.posthog_only_events = posthog_only_events  # $identify and $autocapture
        self.events: list[dict] = []

    def add(self, person: Person, ms: int, name: str, url: str, session_id: str, **extra) -> None:
        if not START_MS <= ms < END_MS:
            return
        self.events.append(
            {
                "ms": ms,
                "event": name,
                "person": person,
                "distinct_id": person.distinct_id_at(ms),
                "url": url,
                "plan": person.plan_at(ms),
                "session_id": session_id,
                **extra,
            }
        )

    def marketing_session(self, person: Person, lo: int, hi: int, first_touch: bool) -> None:
        rng = self.rng
        if hi - lo < HOUR_MS:
            return
        ms = session_start(rng, lo, hi)
        session_id = uuid7_from(ms, rng)
        for n in range(rng.randint(1, 5)):
            utm = person.utm_source if first_touch and n == 0 else None
            self.add(
                person,
                ms,
                "$pageview",
                landing_url(rng.choice(MARKETING_PAGES), utm),
                session_id,
                utm_source=utm,
                referrer=REFERRERS.get(utm or "", "$direct") if n == 0 else MARKETING,
            )
            ms += rng.randint(5_000, 150_000)

    def signup_session(self, person: Person) -> None:
        rng = self.rng
        signup = person.signup_ms
        ms = signup - rng.randint(60_000, 600_000)
        session_id = uuid7_from(ms, rng)
        utm = person.utm_source
        self.add(
            person,
            ms,
            "$pageview",
            landing_url(rng.choice(["/", "/pricing"]), utm),
            session_id,
            utm_source=utm,
            referrer=REFERRERS.get(utm or "", "$direct"),
            protected=True,
        )
        ms += rng.randint(20_000, (signup - ms) // 2)
        self.add(person, ms, "$pageview", MARKETING + "/signup", session_id, referrer=MARKETING)
        self.add(
            person,
            signup,
            "signed_up",
            APP + "/signup",
            session_id,
            utm_source=utm,
            protected=True,
            set={"email": person.email, "plan": "free"},
            set_once={"initial_utm_source": utm},
        )
        ms = signup + rng.randint(200, 900)
        if self.posthog_only_events:
            self.add(
                person,
                ms,
                "$identify",
                APP + "/signup",
                session_id,
                anon_distinct_id=person.device_id,
                protected=True,
                set={"email": person.email},
            )
        ms += rng.randint(1_000, 4_000)
        self.add(person, ms, "$pageview", APP + "/notes", session_id, referrer=MARKETING)
        ms += rng.randint(20_000, 300_000)
        self.add(
            person,
            ms,
            "note_created",
            APP + "/notes/new",
            session_id,
            note_length=rng.randint(40, 400),
            template="welcome",
        )

    def upgrade(self, person: Person) -> None:
        rng = self.rng
        ms = person.upgrade_ms
        session_id = uuid7_from(ms - 60_000, rng)
        self.add(person, ms - rng.randint(30_000, 240_000), "$pageview", APP + "/settings/billing", session_id)
        plan = person.upgrade_plan
        self.add(
            person,
            ms,
            "plan_upgraded",
            APP + "/settings/billing",
            session_id,
            protected=True,
            from_plan=person.base_plan,
            amount=PRICES[plan] * person.seats,
            seats=person.seats,
        )

    def app_session(self, person: Person, lo: int, hi: int) -> None:
        rng = self.rng
        if hi - lo < HOUR_MS:
            return
        ms = session_start(rng, lo, hi)
        session_id = uuid7_from(ms, rng)
        self.add(person, ms, "$pageview", APP + "/notes", session_id, referrer="$direct")
        choices = ["view", "create", "search", "share", "settings", "click"]
        weights = [30, 20, 12, 6, 3, 10 if self.posthog_only_events else 0]
        for _ in range(rng.randint(1, 8)):
            ms += rng.randint(4_000, 240_000)
            action = rng.choices(choices, weights=weights)[0]
            note = rng.choice(person.notes)
            if action == "view":
                self.add(person, ms, "$pageview", f"{APP}/notes/{note}", session_id, referrer=APP + "/notes")
            elif action == "create":
                length = max(1, min(20_000, int(rng.lognormvariate(6.0, 1.1))))
                self.add(
                    person,
                    ms,
                    "note_created",
                    APP + "/notes/new",
                    session_id,
                    note_length=length,
                    template=rng.choice([None, None, None, "meeting", "todo", "journal"]),
                )
            elif action == "search":
                query = rng.choice(SEARCH_QUERIES)
                self.add(
                    person,
                    ms,
                    "search_performed",
                    f"{APP}/search?q={quote_plus(query)}",
                    session_id,
                    query=query,
                    results_count=rng.choice([0, 1, 2, 3, 5, 8, 13, 21]),
                )
            elif action == "share":
                self.add(
                    person,
                    ms,
                    "note_shared",
                    f"{APP}/notes/{note}",
                    session_id,
                    share_method=rng.choice(["link", "link", "email", "workspace"]),
                )
            elif action == "settings":
                self.add(person, ms, "$pageview", APP + "/settings", session_id, referrer=APP + "/notes")
            else:
                self.add(
                    person,
                    ms,
                    "$autocapture",
                    f"{APP}/notes/{note}",
                    session_id,
                    elements_chain=rng.choice(AUTOCAPTURE_CHAINS),
                    event_type="click",
                )

    def run(self, scale: float) -> None:
        rng = self.rng
        for person in self.people:
            if person.kind == "visitor":
                for n in range(rng.randint(1, 3)):
                    self.marketing_session(person, START_MS, END_MS, first_touch=n == 0)
                continue
            if person.kind == "new":
                before = person.signup_ms - HOUR_MS
                for n in range(rng.choice([0, 0, 1, 1, 2])):
                    self.marketing_session(person, START_MS, before, first_touch=n == 0)
                self.signup_session(person)
                lo = person.signup_ms + HOUR_MS
            else:
                lo = START_MS
            days = (END_MS - lo) / DAY_MS
            expected = 0.55 * person.activity * scale * max(days, 0)
            sessions = int(expected) + (rng.random() < expected - int(expected))
            for _ in range(sessions):
                self.app_session(person, lo, END_MS)
            if person.upgrade_ms is not None:
                self.upgrade(person)


def simulate(rng: random.Random, people: list[Person], target: int, posthog_only_events: bool = False) -> list[dict]:
    """Exactly ``target`` events in time order: simulate generously, then thin out ordinary events."""
    scale = target / 1400
    while True:
        sim = Simulator(rng, people, posthog_only_events)
        sim.run(scale)
        events = sim.events
        if len(events) >= target * 1.1:
            break
        scale *= 1.3
    events.sort(key=lambda e: (e["ms"], e["person"].index, e["event"]))
    first_of_person: set[int] = set()
    keep_always = []
    for position, e in enumerate(events):
        if e.get("protected") or e["person"].index not in first_of_person:
            keep_always.append(position)
            first_of_person.add(e["person"].index)
    keep = set(keep_always)
    optional = [p for p in range(len(events)) if p not in keep]
    keep.update(rng.sample(optional, target - len(keep)))
    return [events[p] for p in sorted(keep)]


def roughly_ordered(rng: random.Random, events: list[dict], late_fraction: float = 0.015) -> list[dict]:
    """Exports are never sorted: jitter each event by up to ±15 minutes, and let a few arrive hours late."""

    def key(e: dict) -> float:
        jitter = rng.uniform(-15, 15) * 60_000
        if rng.random() < late_fraction:
            jitter += rng.uniform(2, 30) * HOUR_MS
        return e["ms"] + jitter

    keyed = [(key(e), n, e) for n, e in enumerate(events)]
    keyed.sort(key=lambda item: (item[0], item[1]))
    result = [e for _, _, e in keyed]
    assert any(a["ms"] > b["ms"] for a, b in zip(result, result[1:], strict=False)), "must not be strictly sorted"
    return result


# --- formatting helpers --------------------------------------------------------------------------------


def iso_ms(ms: int, offset_minutes: int = 0) -> str:
    """ISO 8601 with milliseconds: ``...Z`` in UTC, else the same instant in a local offset."""
    local = EPOCH + timedelta(milliseconds=ms + offset_minutes * 60_000)
    text = local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}"
    if offset_minutes == 0:
        return text + "Z"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def iso_us(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def web_properties(e: dict) -> dict:
    """The browser properties posthog-js and most SDKs attach to every event."""
    browser, version, os_name, device_type, _ = e["person"].platform
    url = e["url"]
    host, _, path = url.removeprefix("https://").partition("/")
    return {
        "$current_url": url,
        "$host": host,
        "$pathname": "/" + path.split("?")[0],
        "$browser": browser,
        "$browser_version": version,
        "$os": os_name,
        "$device_type": device_type,
    }


def business_properties(e: dict) -> dict:
    props: dict = {}
    for key in (
        "plan",
        "utm_source",
        "note_length",
        "template",
        "query",
        "results_count",
        "share_method",
        "from_plan",
        "amount",
        "seats",
    ):
        value = e.get(key)
        if value is not None:
            props[key] = value
    if e["event"] == "plan_upgraded":
        props["plan"] = e["person"].upgrade_plan
        props["currency"] = "USD"
    if e.get("set"):
        props["$set"] = {k: v for k, v in e["set"].items() if v is not None}
    if e.get("set_once") and any(v is not None for v in e["set_once"].values()):
        props["$set_once"] = {k: v for k, v in e["set_once"].items() if v is not None}
    return props


def check_good(event: object, distinct_id: object, timestamp: object, event_uuid: object, properties: object) -> None:
    """The rules every good row must meet; the generator refuses to write a file that breaks them."""
    assert isinstance(event, str) and event.strip(), event
    assert isinstance(distinct_id, str) and distinct_id.strip() and len(distinct_id) <= 200, distinct_id
    if isinstance(timestamp, str):
        moment = datetime.fromisoformat(timestamp)
        assert moment.tzinfo is not None and START <= moment < END, timestamp
    elif isinstance(timestamp, datetime):
        assert START <= timestamp < END, timestamp
    else:
        assert isinstance(timestamp, int) and START_MS <= timestamp < END_MS, timestamp
    if event_uuid is not None:
        uuid.UUID(str(event_uuid))
    assert isinstance(properties, dict), properties


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@dataclass
class FileReport:
    path: str
    fmt: str
    records: int
    bad: list[tuple[int, str, str]]  # (1-based record number, expected reason code, why)
    events: list[dict]  # the good rows' events
    note: str = ""

    @property
    def good(self) -> int:
        return self.records - len(self.bad)


# --- 1. CSV --------------------------------------------------------------------------------------------

CSV_HEADER = [
    "event",
    "distinct_id",
    "timestamp",
    "uuid",
    "plan",
    "$current_url",
    "$browser",
    "$os",
    "note_length",
    "utm_source",
]


def make_csv(people: list[Person]) -> FileReport:
    rng = random.Random(SEED + 1)
    events = roughly_ordered(rng, simulate(rng, people, 1500))
    rows: list[list[str]] = []
    for e in events:
        browser, _, os_name, _, _ = e["person"].platform
        roll = rng.random()
        offset = 120 if roll < 0.08 else -300 if roll < 0.11 else 0  # a few rows in CEST/EST offsets
        plan = e["person"].upgrade_plan if e["event"] == "plan_upgraded" else e["plan"]
        rows.append(
            [
                e["event"],
                e["distinct_id"],
                iso_ms(e["ms"], offset),
                uuid4_from(rng),
                plan or "",
                e["url"],
                browser,
                os_name,
                str(e.get("note_length") or ""),
                e.get("utm_source") or "",
            ]
        )

    # The deliberately bad rows: one defect each, at fixed places, replacing an ordinary row.
    bad: list[tuple[int, str, str]] = []
    corrupt = {
        137: ("missing_event_name", "empty event name", lambda r: r.__setitem__(0, "")),
        412: ("missing_distinct_id", "empty distinct_id", lambda r: r.__setitem__(1, "")),
        768: ("bad_timestamp", "timestamp is `not-a-date`", lambda r: r.__setitem__(2, "not-a-date")),
        1181: ("bad_uuid", "uuid is `not-a-uuid`", lambda r: r.__setitem__(3, "not-a-uuid")),
    }
    for number, (reason, why, change) in corrupt.items():
        change(rows[number - 1])
        bad.append((number, reason, why))
    # Wrong field count: the first search row from record 1023 on, its URL with an unquoted comma.
    wide = next(n for n in range(1022, len(rows)) if rows[n][0] == "search_performed" and n + 1 not in corrupt)
    rows[wide][5] = rows[wide][5].split("?")[0] + "?q=meeting,notes"
    bad.append(
        (
            wide + 1,
            "wrong_field_count",
            "11 fields instead of 10: an unquoted comma inside `$current_url` (`?q=meeting,notes`)",
        )
    )
    bad.sort()

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for number, row in enumerate(rows, start=1):
        if number == wide + 1:
            buffer.write(",".join(row) + "\n")  # written by hand: exactly the defect
        else:
            writer.writerow(row)
    write(HERE / "csv" / "events.csv", buffer.getvalue().encode("utf-8"))

    bad_numbers = {n for n, _, _ in bad}
    good_events = []
    for number, (row, e) in enumerate(zip(rows, events, strict=True), start=1):
        if number in bad_numbers:
            continue
        props = {k: v for k, v in zip(CSV_HEADER[4:], row[4:], strict=True) if v != ""}
        check_good(row[0], row[1], row[2], row[3], props)
        good_events.append(e)
    return FileReport(
        "csv/events.csv",
        "CSV with a header row",
        len(rows),
        bad,
        good_events,
        "default column names; ~11% of timestamps carry a +02:00 or -05:00 offset",
    )


# --- 2. JSON lines -----------------------------------------------------------------------------------------


def jsonl_record(e: dict, insert_id: str) -> dict:
    props = web_properties(e)
    if e.get("referrer"):
        props["$referrer"] = e["referrer"]
    props["$lib"] = "web"
    props.update(business_properties(e))
    return {
        "event": e["event"],
        "distinct_id": e["distinct_id"],
        "timestamp": e["ms"],
        "insert_id": insert_id,
        "properties": props,
    }


def make_jsonl(people: list[Person]) -> list[FileReport]:
    rng = random.Random(SEED + 2)
    events = simulate(rng, people, 1000)
    first: list[dict] = []
    second: list[dict] = []
    for e in events:
        if e["ms"] < JSONL_SPLIT_FROM_MS:
            first.append(e)
        elif e["ms"] >= JSONL_SPLIT_TO_MS:
            second.append(e)
        else:  # March 8: in either file
            (first if rng.random() < 0.5 else second).append(e)
    first = roughly_ordered(rng, first)
    second = roughly_ordered(rng, second)
    insert_ids: set[str] = set()

    def new_insert_id() -> str:
        while True:
            value = f"ins_{rng.getrandbits(80):020x}"
            if value not in insert_ids:
                insert_ids.add(value)
                return value

    reports = []
    for name, part in (("jsonl/events-2024-03-01.jsonl", first), ("jsonl/events-2024-03-08.jsonl.gz", second)):
        lines = []
        records = []
        for e in part:
            record = jsonl_record(e, new_insert_id())
            records.append(record)
            lines.append(orjson.dumps(record))
        bad: list[tuple[int, str, str]] = []
        if name.endswith(".jsonl"):
            n = 88
            lines[n - 1] = lines[n - 1][: len(lines[n - 1]) * 2 // 3]
            bad.append((n, "invalid_json", "truncated JSON (the line stops mid-object)"))
            n = 301
            r = records[n - 1]
            lines[n - 1] = orjson.dumps([r["event"], r["distinct_id"], r["timestamp"], r["properties"]])
            bad.append(
                (n, "not_an_object", "a JSON array `[event, distinct_id, timestamp, properties]`, not an object")
            )
        bad_numbers = {n for n, _, _ in bad}
        for number, record in enumerate(records, start=1):
            if number not in bad_numbers:
                check_good(record["event"], record["distinct_id"], record["timestamp"], None, record["properties"])
        data = b"\n".join(lines) + b"\n"
        if name.endswith(".gz"):
            data = gzip.compress(data, compresslevel=9, mtime=0)
        write(HERE / name, data)
        good_events = [e for number, e in enumerate(part, start=1) if number not in bad_numbers]
        fmt = "JSON lines" + (", gzip" if name.endswith(".gz") else "")
        reports.append(
            FileReport(
                name,
                fmt,
                len(lines),
                bad,
                good_events,
                "timestamp in epoch ms; insert_id; overlaps the other file on 2024-03-08",
            )
        )
    return reports


# --- 3. Parquet --------------------------------------------------------------------------------------------

PARQUET_SCHEMA = pa.schema(
    [
        ("event_name", pa.string()),
        ("user_id", pa.string()),
        ("device_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("plan", pa.string()),
        ("amount", pa.float64()),
        ("page", pa.string()),
    ]
)

MAPPING_TOML = """\
[columns]
event = "event_name"
distinct_id = ["user_id", "device_id"]   # first non-empty wins
timestamp = "ts"

[person]
set = ["plan"]          # becomes properties.$set
"""


def make_parquet(people: list[Person]) -> FileReport:
    rng = random.Random(SEED + 3)
    events = roughly_ordered(rng, simulate(rng, people, 1000))
    columns: dict[str, list] = {name: [] for name in PARQUET_SCHEMA.names}
    for e in events:
        person = e["person"]
        identified = e["distinct_id"] == person.user_id
        ts_us = e["ms"] * 1000 + rng.randrange(1000)
        columns["event_name"].append(e["event"])
        columns["user_id"].append(person.user_id if identified else None)
        columns["device_id"].append(person.device_id)
        columns["ts"].append(ts_us)
        columns["plan"].append(person.upgrade_plan if e["event"] == "plan_upgraded" else e["plan"])
        columns["amount"].append(e.get("amount"))
        columns["page"].append("/" + e["url"].removeprefix("https://").partition("/")[2])
        distinct_id = columns["user_id"][-1] or columns["device_id"][-1]
        check_good(e["event"], distinct_id, e["ms"], None, {})
    table = pa.table(
        {name: pa.array(values, type=PARQUET_SCHEMA.field(name).type) for name, values in columns.items()},
        schema=PARQUET_SCHEMA,
    )
    path = HERE / "parquet" / "events.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=400, use_dictionary=True, write_statistics=True)
    write(HERE / "parquet" / "mapping.toml", MAPPING_TOML.encode())
    return FileReport(
        "parquet/events.parquet",
        "Parquet (zstd, 3 row groups)",
        len(events),
        [],
        events,
        "non-default column names: read it with parquet/mapping.toml",
    )


# --- 5. PostHog export ----------------------------------------------------------------------------------------


def make_posthog(people: list[Person]) -> FileReport:
    rng = random.Random(SEED + 4)
    events = roughly_ordered(rng, simulate(rng, people, 300, posthog_only_events=True))
    lines = []
    for e in events:
        person = e["person"]
        ts_us = e["ms"] * 1000 + rng.randrange(1000)
        props = web_properties(e)
        props.update(
            {
                "$lib": "web",
                "$lib_version": "1.116.2",
                "$session_id": e["session_id"],
                "$device_id": person.device_id,
                "$referrer": e.get("referrer") or "$direct",
                "$referring_domain": (e.get("referrer") or "$direct").removeprefix("https://").split("/")[0],
            }
        )
        props.update(business_properties(e))
        if e["event"] == "$identify":
            props["$anon_distinct_id"] = e["anon_distinct_id"]
        if e["event"] == "$autocapture":
            props["$event_type"] = e["event_type"]
        record = {
            "uuid": uuid7_from(e["ms"], rng),
            "event": e["event"],
            "distinct_id": e["distinct_id"],
            "timestamp": iso_us(ts_us),
            "properties": props,
            "elements_chain": e.get("elements_chain", ""),
            "person_id": person.person_id,
            "team_id": 2,
            "created_at": iso_us(ts_us + rng.randint(80_000, 4_000_000)),
        }
        check_good(record["event"], record["distinct_id"], record["timestamp"], record["uuid"], props)
        lines.append(orjson.dumps(record))
    write(HERE / "posthog" / "export.jsonl", b"\n".join(lines) + b"\n")
    return FileReport(
        "posthog/export.jsonl",
        "PostHog event export (JSON lines)",
        len(lines),
        [],
        events,
        "own uuid (UUIDv7), person_id, team_id 2; includes $identify and $autocapture",
    )


# --- 6. README ------------------------------------------------------------------------------------------------


def readme(reports: list[FileReport], people: list[Person]) -> str:
    def span(events: list[dict]) -> str:
        lo = min(e["ms"] for e in events)
        hi = max(e["ms"] for e in events)
        return f"{iso_ms(lo)[:16]} – {iso_ms(hi)[:16]}"

    lines = [
        "# Sample exports: Acme Notes",
        "",
        "One small, realistic export per format, each written by a seeded `generate.py` (byte-identical every time)",
        "and each with deliberately bad rows, listed in its README, so every run shows the rejects file at work.",
        "",
        "| folder | format | try it |",
        "|---|---|---|",
        "| `csv/` | generic CSV | `posthog-migrate run sample_data/csv/events.csv --host local` |",
        "| `jsonl/` | generic JSON lines (one file gzip'd) | `posthog-migrate run sample_data/jsonl --host local` |",
        "| `parquet/` | generic Parquet + a mapping | `posthog-migrate run sample_data/parquet/events.parquet "
        "--mapping sample_data/parquet/mapping.toml --host local` |",
        "| `posthog/` | another PostHog project's export | `posthog-migrate run sample_data/posthog/export.jsonl "
        "--format posthog --host local` |",
        "| `amplitude/` | Amplitude export zip | see `amplitude/README.md` |",
        "| `mixpanel/` | Mixpanel raw export | see `mixpanel/README.md` |",
        "| `segment/` | Segment S3 archive and warehouse tables | see `segment/README.md` |",
        "| `ga4/` | GA4 BigQuery extract (JSON lines and Parquet) | see `ga4/README.md` |",
        "| `heap/` | Heap Connect tables + lookups | see `heap/README.md` |",
        "",
        "The rest of this page describes the four generic samples (`generate.py` at this level writes them).",
        "",
        "Fictional analytics exports of *Acme Notes*, a note-taking SaaS (marketing site `acmenotes.com`,",
        "web app `app.acmenotes.com`), for trying `posthog-migrate` end to end. All events fall between",
        "2024-03-01 and 2024-03-14 UTC. Every file here is written by `generate.py`; do not edit them by hand.",
        "",
        "Regenerate (byte-identical every time: fixed seed, fixed dates, gzip mtime 0):",
        "",
        "```sh",
        "python sample_data/generate.py",
        "```",
        "",
        "## Files",
        "",
        "Record numbers count data records only, from 1: a CSV header is not a record; in JSON lines",
        'every non-blank line is one. "Good" rows meet every rule: non-empty event, non-empty',
        "distinct_id of at most 200 characters, a parseable timestamp, a valid uuid where there is one,",
        "properties that are a JSON object.",
        "",
        "| File | Format | Records | Good | Bad | Distinct ids | People | Time span (UTC, good rows) | Notes |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    total_records = total_good = total_bad = 0
    for r in reports:
        distinct_ids = len({e["distinct_id"] for e in r.events})
        persons = len({e["person"].index for e in r.events})
        lines.append(
            f"| `{r.path}` | {r.fmt} | {r.records:,} | {r.good:,} | {len(r.bad)} | {distinct_ids} | "
            f"{persons} | {span(r.events)} | {r.note} |"
        )
        total_records += r.records
        total_good += r.good
        total_bad += len(r.bad)
    lines.append(f"| **total** | | **{total_records:,}** | **{total_good:,}** | **{total_bad}** | | | | |")
    jsonl = [r for r in reports if r.path.startswith("jsonl/")]
    jsonl_events = [e for r in jsonl for e in r.events]
    kinds = {k: sum(p.kind == k for p in people) for k in ("visitor", "new", "existing")}
    upgrades = sum(p.upgrade_ms is not None for p in people)
    lines += [
        "",
        "`parquet/mapping.toml` is the column mapping for `parquet/events.parquet` (its columns are",
        "`event_name`, `user_id` (null on anonymous rows), `device_id`, `ts` (timestamp[us, UTC]), `plan`,",
        "`amount` (float64, set only on `plan_upgraded`), `page`).",
        "",
        f"The two JSON lines files together hold {len(jsonl_events):,} good events "
        f"({len({e['distinct_id'] for e in jsonl_events})} distinct ids).",
        "Both contain events of 2024-03-08, so only a sort across the files puts them in time order.",
        "`posthog/export.jsonl` is read with `--format posthog`.",
        "",
        "No file is sorted by time: rows are jittered by up to ±15 minutes and about 1.5% arrive hours late,",
        "as in real exports. In the CSV, a timestamp with an offset (`+02:00`, `-05:00`) is the same",
        "instant written in local time.",
        "",
        "## Deliberately bad rows",
        "",
        "| File | Record | Line | Expected reject reason | Why it is bad |",
        "|---|---:|---:|---|---|",
    ]
    for r in reports:
        header_lines = 1 if r.path.endswith(".csv") else 0
        for number, reason, why in r.bad:
            lines.append(f"| `{r.path}` | {number} | {number + header_lines} | `{reason}` | {why} |")
    lines += [
        "",
        "`parquet/events.parquet` and `posthog/export.jsonl` have no bad rows.",
        "",
        "## The people",
        "",
        f"{len(people)} people appear across the files (not every file has every one):",
        "",
        f"- {kinds['visitor']} anonymous-only visitors of the marketing site: one device id (a UUIDv7), "
        "`$pageview` only.",
        f"- {kinds['new']} who sign up during the fortnight: `$pageview`s under their device id, then "
        "`signed_up` and everything after under their user id (`usr_…`); `signed_up` carries `$set` "
        "(email, plan) — in the PostHog export an `$identify` with `$anon_distinct_id` follows it.",
        f"- {kinds['existing']} customers who signed up before March: user id only.",
        f"- {upgrades} of the signed-up people upgrade (`plan_upgraded`, free → pro, or → team with seats).",
        "",
        "Events: `$pageview`, `signed_up`, `note_created` (`note_length`), `note_shared` (`share_method`),",
        "`search_performed` (`query`, `results_count`), `plan_upgraded` (`plan`, `from_plan`, `amount`), and in",
        "the PostHog export also `$identify` and `$autocapture` (with `elements_chain`).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    people = make_people(random.Random(SEED))
    reports = [make_csv(people), *make_jsonl(people), make_parquet(people), make_posthog(people)]
    write(HERE / "README.md", readme(reports, people).encode("utf-8"))
    for r in reports:
        print(f"{r.path:38} {r.records:5} records  {r.good:5} good  {len(r.bad)} bad")


if __name__ == "__main__":
    main()
