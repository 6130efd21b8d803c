#!/usr/bin/env python3
"""Regenerate the GA4 sample export of "Acme Notes" (see ../README.md for the fictional company).

    python sample_data/ga4/generate.py [--out DIR]

Writes two days of a GA4 property's BigQuery export (``events_YYYYMMDD``), the two ways people extract it,
and ``README.md`` (the counts and the deliberately bad rows):

- ``events_20240308.jsonl.gz``: a JSON extract (NEWLINE_DELIMITED_JSON, gzip'd), where every INT64 is a string.
- ``events_20240309.parquet``: a Parquet extract, INT64 as numbers.

A web stream (acmenotes.com and the web app) and an iOS app stream; sessions with ``session_start``,
``first_visit`` (filtered by the adapter), ``page_view`` / ``screen_view``, ``user_engagement``, ``scroll``,
``sign_up``, ``purchase`` with items. Byte-identical on every run: one fixed seed, fixed dates, gzip mtime 0.
Only the standard library, pyarrow and orjson are used.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20240308
HERE = Path(__file__).resolve().parent
DAYS = (datetime(2024, 3, 8, tzinfo=UTC), datetime(2024, 3, 9, tzinfo=UTC))
SITE = "https://acmenotes.com"
APP = "https://app.acmenotes.com"
PAGES = [("/", "Acme Notes - notes that think with you"), ("/pricing", "Pricing - Acme Notes"),
         ("/features", "Features - Acme Notes"), ("/blog/markdown-tips", "10 Markdown tips - Acme Notes")]
APP_PAGES = [("/notes", "All notes - Acme Notes"), ("/notes/new", "New note - Acme Notes")]
SCREENS = ["NotesList", "NoteEditor", "Search"]
GEOS = [{"city": "Munich", "country": "Germany", "continent": "Europe", "region": "Bavaria",
         "sub_continent": "Western Europe", "metro": "(not set)"},
        {"city": "Austin", "country": "United States", "continent": "Americas", "region": "Texas",
         "sub_continent": "Northern America", "metro": "Austin TX"},
        {"city": "", "country": "France", "continent": "Europe", "region": "(not set)",
         "sub_continent": "Western Europe", "metro": "(not set)"}]
DESKTOPS = [("desktop", "Windows", "Windows 11", "Chrome", "122.0.6261.112", "Google", "Chrome"),
            ("desktop", "Macintosh", "Macintosh Intel 10.15", "Safari", "17.3", "Apple", "Safari"),
            ("mobile", "Android", "Android 14", "Chrome", "122.0.6261.105", "Google", "Pixel 8")]
SOURCES = [("google", "organic", "(organic)"), ("(direct)", "(none)", "(direct)"),
           ("newsletter", "email", "march_launch")]
INT64 = {"event_timestamp", "event_bundle_sequence_id", "user_first_touch_timestamp", "int_value",
         "batch_event_index", "batch_ordering_id", "batch_page_id", "total_item_quantity", "unique_items",
         "event_server_timestamp_offset"}


def us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def param(key: str, value) -> dict:
    slot = ("string_value" if isinstance(value, str) else "int_value" if isinstance(value, int)
            else "double_value")
    out = {"key": key, "value": {"string_value": None, "int_value": None, "float_value": None, "double_value": None}}
    out["value"][slot] = value
    return out


class Stream:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.rows: list[dict] = []

    def person(self, number: int, day: datetime, app: bool) -> None:
        rng = self.rng
        first_touch = day + timedelta(seconds=rng.randrange(80_000))
        pseudo = (f"{rng.getrandbits(40):X}" if app
                  else f"{rng.randrange(10**8, 10**9)}.{int(first_touch.timestamp())}")
        device = rng.choice(DESKTOPS)
        geo = rng.choice(GEOS)
        source = rng.choice(SOURCES)
        user_id = f"usr_{number:04d}" if number % 3 == 0 else None
        moment = first_touch
        for session_number in (1, 2) if number % 4 == 0 else (1,):
            session_id = int(moment.timestamp())
            bundle = rng.randrange(-2**31, 2**31)
            common = {
                "user_pseudo_id": pseudo, "user_first_touch_timestamp": us(first_touch),
                "device": self.device(device, app), "geo": geo,
                "app_info": {"id": "com.acmenotes.ios", "version": "3.4.0", "install_store": None,
                             "firebase_app_id": "1:1234:ios:abcd", "install_source": "com.apple.testflight"}
                if app else None,
                "traffic_source": {"name": source[2], "medium": source[1], "source": source[0]},
                "stream_id": "4211190001" if app else "4211180001", "platform": "IOS" if app else "WEB",
                "collected_traffic_source": None if app or source[0] == "(direct)" else {
                    "manual_campaign_id": None, "manual_campaign_name": source[2], "manual_source": source[0],
                    "manual_medium": source[1], "manual_term": "(not provided)" if source[1] == "organic" else None,
                    "manual_content": None, "gclid": None, "dclid": None, "srsltid": None},
            }
            names = (["first_visit"] if session_number == 1 else []) + ["session_start"]
            steps = rng.randrange(2, 6)
            logged_in = False
            for step in range(steps):
                if app:
                    names.append("screen_view")
                else:
                    names.append("page_view")
                    if rng.random() < 0.4:
                        names.append("scroll")
                    if user_id and not logged_in and step == 1 and session_number == 1:
                        names.append("sign_up")
                        logged_in = True
                    if user_id and step == steps - 1 and number % 6 == 0:
                        names.append("purchase")
                names.append("user_engagement")
            previous_page = rng.choice(["https://www.google.com/", "", "https://news.ycombinator.com/"])
            page_index = 0
            for batch, name in enumerate(names):
                moment += timedelta(milliseconds=rng.randrange(50, 90_000) if name == "page_view" else
                                    rng.randrange(5, 3_000))
                if name in ("page_view", "screen_view"):
                    page_index += 1
                host, (path, title) = (APP, APP_PAGES[page_index % 2]) if logged_in else (
                    SITE, PAGES[page_index % len(PAGES)])
                params = [param("ga_session_id", session_id), param("ga_session_number", session_number),
                          param("engaged_session_event", 1), param("session_engaged", "1")]
                if app:
                    params.append(param("firebase_screen", SCREENS[page_index % len(SCREENS)]))
                    params.append(param("firebase_screen_class", "UIHostingController"))
                else:
                    params += [param("page_location", f"{host}{path}"), param("page_title", title)]
                    if previous_page:
                        params.append(param("page_referrer", previous_page))
                if name == "page_view" and page_index == 1 and not app:
                    params += [param("source", source[0]), param("medium", source[1]),
                               param("campaign", source[2]), param("entrances", 1)]
                if name == "user_engagement":
                    params.append(param("engagement_time_msec", rng.randrange(300, 60_000)))
                if name == "scroll":
                    params.append(param("percent_scrolled", 90))
                if name == "sign_up":
                    params.append(param("method", rng.choice(["Google", "email"])))
                row = {"event_date": moment.strftime("%Y%m%d"), "event_timestamp": us(moment), "event_name": name,
                       "event_params": params, "event_previous_timestamp": None, "event_value_in_usd": None,
                       "event_bundle_sequence_id": bundle, "event_server_timestamp_offset": rng.randrange(100, 900),
                       "user_id": user_id if logged_in else None,
                       "privacy_info": {"analytics_storage": "Yes", "ads_storage": "No", "uses_transient_token": "No"},
                       "user_properties": [{"key": "plan", "value": {
                           "string_value": "pro", "int_value": None, "float_value": None, "double_value": None,
                           "set_timestamp_micros": us(moment)}}] if logged_in else [],
                       "user_ltv": {"revenue": 12.0 if logged_in else 0.0, "currency": "EUR"},
                       **common, "event_dimensions": None, "ecommerce": None, "items": [],
                       "is_active_user": True, "batch_event_index": batch, "batch_page_id": page_index,
                       "batch_ordering_id": page_index}
                if name == "purchase":
                    row["event_params"] += [param("currency", "EUR"), param("value", 96.0),
                                            param("transaction_id", f"T-{number:05d}")]
                    row["ecommerce"] = {"total_item_quantity": 1, "purchase_revenue_in_usd": 104.3,
                                        "purchase_revenue": 96.0, "refund_value_in_usd": None, "refund_value": None,
                                        "shipping_value_in_usd": None, "shipping_value": None, "tax_value_in_usd": 16.7,
                                        "tax_value": 15.33, "unique_items": 1, "transaction_id": f"T-{number:05d}"}
                    row["items"] = [{"item_id": "pro_yearly", "item_name": "Acme Notes Pro (yearly)",
                                     "item_brand": "(not set)", "item_variant": "", "item_category": "subscription",
                                     "price_in_usd": 104.3, "price": 96.0, "quantity": 1, "item_revenue": 96.0,
                                     "coupon": "(not set)",
                                     "item_params": [param("billing", "yearly")]}]
                self.rows.append(row)
                if name == "page_view":
                    previous_page = f"{host}{path}"
            moment += timedelta(hours=rng.randrange(2, 10))

    def device(self, device: tuple, app: bool) -> dict:
        if app:
            return {"category": "mobile", "mobile_brand_name": "Apple", "mobile_model_name": "iPhone",
                    "mobile_marketing_name": "iPhone 15", "mobile_os_hardware_model": "iPhone15,4",
                    "operating_system": "iOS", "operating_system_version": "iOS 17.3.1", "vendor_id": None,
                    "advertising_id": None, "language": "en-us", "is_limited_ad_tracking": "Yes",
                    "time_zone_offset_seconds": 3600, "browser": None, "browser_version": None, "web_info": None}
        category, os_name, os_version, browser, browser_version, brand, model = device
        return {"category": category, "mobile_brand_name": brand, "mobile_model_name": model,
                "mobile_marketing_name": None, "mobile_os_hardware_model": None, "operating_system": os_name,
                "operating_system_version": os_version, "vendor_id": None, "advertising_id": None,
                "language": self.rng.choice(["en-us", "de-de", "fr-fr"]), "is_limited_ad_tracking": "No",
                "time_zone_offset_seconds": None, "browser": None, "browser_version": None,
                "web_info": {"browser": browser, "browser_version": browser_version, "hostname": "acmenotes.com"}}


def as_json_extract(value, key=None):
    """BigQuery's JSON extract: every INT64 as a string."""
    if isinstance(value, dict):
        return {k: as_json_extract(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json_extract(v) for v in value]
    if key in INT64 and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (default: beside this script)")
    out = parser.parse_args().out
    rng = random.Random(SEED)
    files = []
    bad: list[tuple[str, int, str, str]] = []
    counts: Counter = Counter()
    for index, day in enumerate(DAYS):
        stream = Stream(rng)
        for number in range(14):
            stream.person(number + 100 * index, day, app=number >= 11)
        rows = sorted(stream.rows, key=lambda r: (r["event_timestamp"], r["user_pseudo_id"], r["batch_event_index"]))
        name = f"events_{day:%Y%m%d}"
        if index == 0:
            # a consent-mode "cookieless ping" (no user_pseudo_id, no user_id), after a page_view it copies
            ping_at = next(i for i in range(40, len(rows)) if rows[i]["event_name"] == "page_view") + 1
            ping = copy.deepcopy(rows[ping_at - 1])
            ping.update(user_pseudo_id=None, user_id=None)
            rows.insert(ping_at, ping)
            # GA4 exports do repeat rows: an exact copy gets the same uuid (PostHog keeps one)
            copy_at = next(i for i in range(60, len(rows)) if rows[i]["event_name"] == "page_view") + 1
            rows.insert(copy_at, copy.deepcopy(rows[copy_at - 1]))
            truncated_at = 89
            lines = [orjson.dumps(as_json_extract(row)) for row in rows]
            lines[truncated_at] = lines[truncated_at][: len(lines[truncated_at]) // 3]
            path = f"{name}.jsonl.gz"
            write(out / path, gzip.compress(b"\n".join(lines) + b"\n", compresslevel=9, mtime=0))
            bad += [(path, ping_at + 1, "missing_distinct_id",
                     "a consent-mode ping: user_pseudo_id and user_id are null"),
                    (path, truncated_at + 1, "invalid_json", "the line stops mid-object (a truncated extract)")]
            counts["duplicate_record"] = copy_at  # records copy_at and copy_at + 1
            broken = {ping_at, truncated_at}
        else:
            rows[25]["event_timestamp"] = None
            buffer = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pylist(rows), buffer, compression="zstd", row_group_size=100)
            path = f"{name}.parquet"
            write(out / path, buffer.getvalue().to_pybytes())
            bad.append((path, 26, "bad_timestamp", "event_timestamp is null"))
            broken = {25}
        filtered = Counter(r["event_name"] for i, r in enumerate(rows)
                           if i not in broken and r["event_name"] in ("session_start", "first_visit"))
        good = len(rows) - len(broken) - sum(filtered.values())
        counts["pairs"] += len({(r["user_id"], r["user_pseudo_id"]) for i, r in enumerate(rows)
                                if i not in broken and r["user_id"] and r["user_pseudo_id"]
                                and r["event_name"] not in ("session_start", "first_visit")})
        files.append((path, len(rows), good, filtered, len(broken)))
    write(out / "README.md", readme(files, bad, counts).encode())


def readme(files, bad, counts) -> str:
    total = [sum(f[i] for f in files) for i in (1, 2, 4)]
    filtered = sum((f[3] for f in files), Counter())
    lines = [
        "# GA4 sample export: Acme Notes",
        "",
        "Written by `generate.py` (byte-identical on every run); do not edit by hand. Regenerate with",
        "`python sample_data/ga4/generate.py`.",
        "",
        "Two days of the BigQuery export (`events_YYYYMMDD`) of the fictional *Acme Notes* GA4 property (see",
        "`../README.md`): a web stream (acmenotes.com, app.acmenotes.com) and an iOS app stream. Day one is a",
        "gzip'd JSON extract (every INT64 a string), day two a Parquet extract (INT64 as numbers).",
        "",
        "```sh",
        "posthog-migrate run sample_data/ga4/events_20240308.jsonl.gz sample_data/ga4/events_20240309.parquet \\",
        "    --format ga4 --host local",
        "```",
        "",
        "| file | records | good (become events) | filtered | bad |",
        "|---|---:|---:|---:|---:|",
        *[f"| `{path}` | {records} | {good} | {sum(f.values())} | {nbad} |"
          for path, records, good, f, nbad in files],
        f"| **total** | **{total[0]}** | **{total[1]}** | **{sum(filtered.values())}** | **{total[2]}** |",
        "",
        f"Filtered by the adapter (PostHog derives them itself): {filtered['session_start']} `session_start`, "
        f"{filtered['first_visit']} `first_visit`.",
        f"`{files[0][0]}` holds an exact duplicate row (records {counts['duplicate_record']} and "
        f"{counts['duplicate_record'] + 1}), as GA4 exports",
        "sometimes do: both become the same event with the same uuid, which PostHog keeps once.",
        "Signed-in rows carry `user_id` beside `user_pseudo_id`, so the pipeline adds one `$identify` per pair:",
        f"{counts['pairs']} in all. That makes {total[1] + counts['pairs']:,} events to send (what `inspect` counts "
        "and `run` sends).",
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
