"""Amplitude export rows shaped like a real product's, for bench.py's realistic profile.

bench.py's first profile is small and uniform (3 event properties, the same 2 user properties on every row, all
web, every row with a uuid and an IP, a new session per event): that flatters some caches and defeats others.
These rows are what a year of a real web + mobile product exports:

- devices use the product in sessions of 5–50 events (one session id, seconds to minutes apart);
- a user has up to 4 devices (web and mobile); 30% of the devices never log in; 10% of the sessions log in
  part-way (their first events carry the device alone); 1% of the devices are shared by two users: many links
  of devices to users for the identity pass;
- each event type has its own 10–40 event properties of mixed types (text, integers, floats, booleans, nulls,
  lists, objects);
- user properties change over time (a user's plan, version, counts are those of the month);
- 40% of the devices are mobile (iOS, Android: model, carrier, app version; half without an IP);
- 5% of the rows have no uuid; the users of 30% of the companies-to-be send a `company` group.

Each file is generated on its own (seeded by its index), so the files of a large export are written in
parallel, and a file's rows are the same whichever process writes it.
"""

from __future__ import annotations

import gzip
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

EVENT_TYPES = ["[Amplitude] Page Viewed", "[Amplitude] Start Session", "[Amplitude] End Session",
               "[Amplitude] Element Clicked", "note_created", "note_edited", "note_shared", "search_performed",
               "comment_added", "file_uploaded", "signed_up", "plan_upgraded", "invite_sent", "export_started"]
# How often each event type occurs (page views and clicks dominate, as they do in real exports).
EVENT_WEIGHTS = [30, 4, 4, 20, 8, 10, 3, 8, 5, 3, 0.3, 0.2, 1, 1]
DEVICES_PER_USER = 4
EVENTS_PER_DEVICE = 100
YEAR_SECONDS = 365 * 86_400
PLANS = ["free", "starter", "pro", "enterprise"]
MOBILE_MODELS = [("iOS", "ios", "Apple", "iPhone14,2", "AT&T"), ("iOS", "ios", "Apple", "iPad13,1", "Verizon"),
                 ("Android", "android", "Samsung", "SM-S911B", "T-Mobile"), ("Android", "android", "Google",
                                                                             "Pixel 7", "Vodafone")]
WEB_BROWSERS = [("Chrome", "120", "Mac OS X"), ("Safari", "17.1", "Mac OS X"), ("Chrome", "119", "Windows"),
                ("Firefox", "121", "Linux"), ("Edge", "120", "Windows")]
PLACES = [("Canada", "Toronto", "Ontario"), ("United States", "Austin", "Texas"), ("Germany", "Berlin", "Berlin"),
          ("Brazil", "São Paulo", "São Paulo"), ("Japan", "Tokyo", "Tokyo"), ("India", "Bengaluru", "Karnataka")]


def _property_names(event_type: str, index: int) -> list[str]:
    """The 10–40 property names of an event type (fixed per type, as a product's tracking plan has them)."""
    count = 10 + (index * 7) % 31
    stem = event_type.removeprefix("[Amplitude] ").lower().replace(" ", "_")
    return [f"{stem}_{kind}_{number}" for number, kind in
            zip(range(count), ["text", "count", "ratio", "flag", "missing", "tags", "detail"] * 6, strict=False)]


PROPERTY_NAMES = {event_type: _property_names(event_type, index) for index, event_type in enumerate(EVENT_TYPES)}


def _value(rng: random.Random, name: str, n: int):
    kind = name.rsplit("_", 2)[-2]
    if kind == "text":
        return f"{name[:6]}-{rng.randrange(200)}"
    if kind == "count":
        return rng.randrange(10_000)
    if kind == "ratio":
        return round(rng.random() * 100, 3)
    if kind == "flag":
        return rng.random() < 0.5
    if kind == "missing":
        return None
    if kind == "tags":
        return [f"tag-{rng.randrange(30)}" for _ in range(rng.randrange(4))]
    return {"id": n, "source": rng.choice(["web", "api", "import"]), "size": rng.randrange(1 << 20)}


def _user_properties(user: str | None, device: int, month: int) -> dict:
    """A person's properties in a month: the same all month, some of them different the next."""
    rng = random.Random(f"{user or device}:{month}")
    properties = {"plan": PLANS[min(3, (month + device) // 4 % 4)], "notes_created": month * 7 + rng.randrange(7),
                  "beta_features": rng.random() < 0.2, "initial_utm_source": ["news", "ads", "search"][device % 3],
                  "locale": ["en-US", "de-DE", "pt-BR", "ja-JP"][device % 4]}
    if user is not None:
        properties["email"] = f"{user}@example.com"
        properties["team_size"] = 1 + (device * 13 + month) % 40
    return properties


def write_file(path: Path, seed: int, file_index: int, files: int, count: int, total: int) -> None:
    """One gzip'd file of ``count`` realistic rows: the sessions of the file's stretch of the year, in upload
    order (a device's session together; sessions in the order they started, give or take)."""
    rng = random.Random(seed * 1_000_003 + file_index)
    devices = max(40, total // EVENTS_PER_DEVICE)
    start = datetime(2023, 1, 1, tzinfo=UTC) + timedelta(seconds=YEAR_SECONDS * file_index // files)
    stretch = max(1, YEAR_SECONDS // files)
    profiles: dict[tuple, dict] = {}
    written = 0
    with gzip.open(path, "wb", compresslevel=1) as out:
        while written < count:
            device = int(devices * rng.random() ** 2)  # a few devices are heavy users, most are light
            user = f"user-{device // DEVICES_PER_USER}" if device % 10 >= 3 else None
            if device % 100 == 99:  # a shared device (a family tablet): two users log in on it, session by session
                user = f"user-{device // DEVICES_PER_USER + rng.randrange(2)}"
            length = min(rng.randint(5, 50), count - written)
            login_at = rng.randrange(length) if user is not None and rng.random() < 0.1 else 0
            moment = start + timedelta(seconds=rng.randrange(stretch), microseconds=rng.randrange(1_000_000))
            session = int(moment.timestamp() * 1000)
            mobile = device % 5 in (1, 2)
            for step in range(length):
                row_number = file_index * (total // files + 1) + written
                month = moment.month
                row_user = user if step >= login_at else None
                key = (row_user, device, month)
                if key not in profiles:
                    profiles[key] = _user_properties(row_user, device, month)
                out.write(orjson.dumps(_row(rng, row_number, seed, moment, device, row_user, session, mobile,
                                            profiles[key])) + b"\n")
                written += 1
                moment += timedelta(seconds=rng.randrange(1, 180), microseconds=rng.randrange(1_000_000))


def _row(rng: random.Random, n: int, seed: int, moment: datetime, device: int, user: str | None, session: int,
         mobile: bool, user_properties: dict) -> dict:
    event_type = rng.choices(EVENT_TYPES, EVENT_WEIGHTS)[0]
    country, city, region = PLACES[device % len(PLACES)]
    row = {"$insert_id": f"ins-{seed}-{n}", "event_id": n, "event_type": event_type,
           "event_time": moment.strftime("%Y-%m-%d %H:%M:%S.%f"), "user_id": user, "device_id": f"device-{device}",
           "session_id": session, "country": country, "city": city, "region": region,
           "event_properties": {name: _value(rng, name, n) for name in PROPERTY_NAMES[event_type]},
           "user_properties": user_properties, "language": user_properties["locale"]}
    if rng.random() >= 0.05:
        row["uuid"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if mobile:
        platform, os_name, manufacturer, model, carrier = MOBILE_MODELS[device % len(MOBILE_MODELS)]
        row.update(platform=platform, os_name=os_name, os_version=f"{16 + device % 2}.{device % 5}",
                   device_manufacturer=manufacturer, device_model=model, carrier=carrier,
                   version_name=f"3.{device % 7}.0")
        if device % 2:
            row["ip_address"] = f"198.51.100.{device % 250}"
    else:
        browser, version, system = WEB_BROWSERS[device % len(WEB_BROWSERS)]
        row.update(platform="Web", os_name=browser, os_version=version, device_type=system,
                   ip_address=f"203.0.113.{device % 250}")
        row["event_properties"]["[Amplitude] Page URL"] = f"https://ex.com/notes/{n % 997}"
    if user is not None and (device // DEVICES_PER_USER) % 10 < 3:
        row["groups"] = {"company": [f"company-{device // 40}"]}
        row["group_properties"] = {}
    return row
