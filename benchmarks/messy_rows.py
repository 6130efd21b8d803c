"""Deliberately messy Amplitude and Mixpanel exports: every unusual shape the mappers have a rule for, mixed.

    python benchmarks/messy_rows.py amplitude OUT.jsonl [-n 20000] [--seed 7]
    python benchmarks/messy_rows.py mixpanel OUT.jsonl
    python benchmarks/messy_rows.py mixpanel-plain OUT.jsonl -n 100000   # tidy rows, for per_row.py

The rows of bench.py are uniform; these are not: mobile and web rows, rows without an IP, with geo, groups and
group properties, uuids in odd spellings or missing or junk, timestamps in other forms or missing, numeric and
blank ids, ids PostHog refuses, floats of 1e16 and more, control characters, reserved property names of the
wrong shape (Amplitude); ``$device:`` ids, ``$distinct_id_before_identity``, identity events, Engage profiles,
numeric insert ids, country codes (Mixpanel). Used by payload_digest.py's proof that a faster mapping sends the
same bytes, and by the tests.
"""

from __future__ import annotations

import argparse
import random
import uuid
from pathlib import Path
from typing import Any

import orjson

ODD_TEXTS = ["", " ", "null", "None", "(not set)", "EMPTY", "undefined", "0", "  padded  ", "tab\there",
             "ctl\x01\x1f\x7f", "émoji 🎉", "quote\"back\\slash", "line\nbreak", "\u2028sep"]
ODD_NUMBERS = [0, -1, 1.5, 1e16, 1.2345678901234567e17, 12.0, 2**53 + 1, -0.0, 1e300, 3]
ODD_VALUES = [*ODD_TEXTS, *ODD_NUMBERS, None, True, False, [], {}, [1, "a"], {"nested": {"deep": [None]}}]


def _pick(rng: random.Random, common: Any, *odd: Any, odds: float = 0.3) -> Any:
    """``common`` most of the time, else one of ``odd``."""
    return rng.choice(odd) if odd and rng.random() < odds else common


def _odd_uuid(rng: random.Random) -> Any:
    value = uuid.UUID(int=rng.getrandbits(128), version=4)
    return rng.choice([str(value), str(value).upper(), value.hex, f"{{{value}}}", f" {value} ", "not-a-uuid", None,
                       "", 12345, str(value)])


def _amplitude_time(rng: random.Random, moment_s: float) -> Any:
    whole, micros = int(moment_s), rng.randrange(1_000_000)
    text = f"{_date(whole)} {_clock(whole)}.{micros:06d}"
    return _pick(rng, text, text[:19], text[:23], text.replace(" ", "T"), text + "Z", text + "+02:00",
                 whole, whole * 1000, str(whole * 1000), f"{text[:19]} UTC", "", None, "yesterday",
                 "0999-01-01 00:00:00.000000", "2023-13-01 00:00:00.000000", 1e20, odds=0.25)


def _date(seconds: int) -> str:
    import time
    t = time.gmtime(seconds)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"


def _clock(seconds: int) -> str:
    import time
    t = time.gmtime(seconds)
    return f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def amplitude_row(rng: random.Random, n: int) -> dict:
    person = rng.randrange(300)
    moment = 1_672_531_200 + rng.randrange(365 * 86_400)
    web = rng.random() < 0.6
    row: dict[str, Any] = {
        "uuid": _pick(rng, str(uuid.UUID(int=rng.getrandbits(128), version=4)), *[_odd_uuid(rng) for _ in range(3)]),
        "$insert_id": _pick(rng, f"ins-{n}", None, "", n, 12.0, " padded "),
        "event_id": _pick(rng, n, None, "7", 1.5),
        "event_type": _pick(rng, rng.choice(["[Amplitude] Page Viewed", "note_created", "[Amplitude] Screen Viewed",
                                             "[Amplitude] Element Clicked", "[Amplitude] Element Changed",
                                             "$identify", "$groupidentify", "plan upgraded"]),
                            "session_start", "session_end", "", None, 42, " ", odds=0.05),
        "event_time": _amplitude_time(rng, moment),
        "client_event_time": _pick(rng, None, _amplitude_time(rng, moment), odds=0.5),
        "server_upload_time": _pick(rng, None, _amplitude_time(rng, moment), odds=0.5),
        "user_id": _pick(rng, f"user-{person}" if person % 3 else None, *ODD_TEXTS, person, float(person), "x" * 250,
                         "anonymous", "guest", float("nan") if False else 1e16, odds=0.2),
        "device_id": _pick(rng, f"device-{person}", None, "", "null", "00000000-0000-0000-0000-000000000000",
                           person, " dev ", odds=0.15),
        "session_id": _pick(rng, moment * 1000, -1, None, str(moment * 1000), "abc", 1.5e12, True, odds=0.2),
        "platform": "Web" if web else rng.choice(["iOS", "Android", " web ", None]),
        "os_name": _pick(rng, "Chrome" if web else "ios", *ODD_VALUES[:6], 12),
        "os_version": _pick(rng, "120" if web else "17.4", "17.4", "beta", 120, "1234567890"),
        "device_type": _pick(rng, "Mac OS X" if web else "iPhone", "Windows", "iPad", "Android", "", None),
        "device_family": _pick(rng, "Mac", "Tablet", "iPhone", None, 3),
        "device_model": _pick(rng, None, "iPhone15,2", ""),
        "device_manufacturer": _pick(rng, None, "Apple", " "),
        "version_name": _pick(rng, None, "2.3.1", 2),
        "carrier": _pick(rng, None, "Verizon", "(not set)"),
        "library": _pick(rng, "amplitude-ts/2.1.0", "amplitude-ios", "/", "x/", None, 5.0, ""),
        "ip_address": _pick(rng, "203.0.113.7", None, "", "null", " 198.51.100.1 ", odds=0.4),
        "city": _pick(rng, "Toronto", None, "", "(not set)", 12, " Paris "),
        "region": _pick(rng, "Ontario", None, "EMPTY"),
        "country": _pick(rng, "Canada", None, "United States", True),
        "location_lat": _pick(rng, None, 43.7, "43.7", float("inf") if False else 1e16, True, odds=0.4),
        "location_lng": _pick(rng, None, -79.4, None),
        "event_properties": _pick(rng, _amplitude_event_properties(rng, n), None, "", "{\"a\": 1}", "[1]", "junk",
                                  [], 7, odds=0.1),
        "user_properties": _pick(rng, _user_properties(rng, person), None, "{\"plan\": \"x\"}", {}, odds=0.2),
    }
    if rng.random() < 0.2:
        row["groups"] = _pick(rng, {"company": f"co-{person % 7}"}, {"company": [f"co-{person % 7}", 3, "", None]},
                              {"": "x", "team": 4.0}, "{\"company\": \"json\"}", [1], None, {"a": {"b": 1}}, odds=0.5)
        row["group_properties"] = _pick(rng, {"company": {f"co-{person % 7}": {"size": 10, "blank": ""}}},
                                        {"company": "flat"}, None, "{}", {"company": {"co-1": {"plan": None}}})
    for _ in range(rng.randrange(3)):
        row[rng.choice(["amplitude_id", "language", "adid", "idfa", "paying", "data"])] = rng.choice(ODD_VALUES)
    rng_keys = list(row)
    if rng.random() < 0.1:
        del row[rng.choice(rng_keys)]
    return row


def _amplitude_event_properties(rng: random.Random, n: int) -> dict:
    properties: dict[str, Any] = {"plan": "pro", "note_length": rng.randrange(5000)}
    for key in rng.sample(["[Amplitude] Page URL", "[Amplitude] Page Location", "[Amplitude] Page Domain",
                           "[Amplitude] Page Path", "[Amplitude] Page Title", "[Amplitude] Screen Name",
                           "[Amplitude] Page Referrer", "referrer", "[Amplitude] Referring Domain",
                           "referring_domain", "[Amplitude] Viewport Height", "[Amplitude] Viewport Width"],
                          rng.randrange(5)):
        properties[key] = _pick(rng, f"https://ex.com/p/{n % 50}?q=1", *ODD_VALUES, "not a url", "http://[::1",
                                odds=0.3)
    for _ in range(rng.randrange(4)):
        properties[rng.choice(["$set", "$set_once", "$group_set", "$groups", "big", "ctl", "nested", "empty"])] = (
            rng.choice([*ODD_VALUES, {"company": "c"}, {"company": 1}, {"a": "b"}]))
    return properties


def _user_properties(rng: random.Random, person: int) -> dict:
    properties: dict[str, Any] = {"plan": rng.choice(["pro", "free"]), "initial_utm_source": "news"}
    for _ in range(rng.randrange(3)):
        properties[rng.choice(["initial_referrer", "age", "blank", "ctl", "big", "initial_"])] = rng.choice(ODD_VALUES)
    return properties


def mixpanel_row(rng: random.Random, n: int) -> dict:
    person = rng.randrange(300)
    moment = 1_672_531_200 + rng.randrange(365 * 86_400)
    kind = rng.random()
    if kind < 0.05:  # an Engage profile
        return {"$distinct_id": _pick(rng, f"user-{person}", "", None, person, "null"),
                "$properties": _pick(rng, {"$email": f"u{person}@ex.com", "$name": "X", "plan": "pro",
                                           "$last_seen": _pick(rng, "2023-03-01T10:00:00", None, "junk", moment),
                                           "$country_code": "CA", "blank": "", "$city": "Toronto"},
                                     "{\"a\": 1}", None, 5, odds=0.2)}
    device = _pick(rng, f"$device:dev-{person}", f"dev-{person}", odds=0.5)
    user = f"user-{person}" if person % 3 else None
    identified = rng.random() < 0.5
    props: dict[str, Any] = {
        "time": _pick(rng, moment, moment * 1000, moment + 0.123456, str(moment), None, "", -5, 1e20, "junk",
                      odds=0.15),
        "distinct_id": _pick(rng, user or device, device, "", None, person, "undefined", "0", " padded ",
                             odds=0.15),
        "$device_id": _pick(rng, device.removeprefix("$device:"), None, ""),
        "$insert_id": _pick(rng, f"ins{n:08x}", n, None, "", 12.0, " x ", odds=0.2),
        "mp_country_code": _pick(rng, "CA", "US", "GB", None, "", "ZZ", 7),
        "$city": _pick(rng, "Toronto", None, ""),
        "$region": _pick(rng, "Ontario", None),
        "$os": _pick(rng, "Mac OS X", "iOS", "Android", None),
        "$browser": _pick(rng, "Chrome", None),
        "$current_url": _pick(rng, f"https://ex.com/p/{n % 50}", None, "", "http://[::1"),
        "mp_lib": _pick(rng, "web", "android", None),
        "ip": _pick(rng, "203.0.113.7", None, "", odds=0.4),
        "plan": rng.choice(ODD_VALUES),
    }
    if identified and user:
        props["$user_id"] = _pick(rng, user, "", None, person)
        props["$distinct_id_before_identity"] = _pick(rng, device, f"user-{person}", None, 5)
    for _ in range(rng.randrange(3)):
        props[rng.choice(["$set", "$groups", "company", "ctl", "big", "mp_processing_time_ms", "$screen_height"])] = (
            rng.choice(ODD_VALUES))
    name = _pick(rng, rng.choice(["Page View", "Sign Up", "$mp_web_page_view", "note created", "$session_start"]),
                 "$identify", "$create_alias", "$merge", "", None, 12, odds=0.08)
    if name == "$identify":
        props["$identified_id"] = _pick(rng, f"user-{person}", None, "null")
        props["$anon_id"] = _pick(rng, device, None, f"user-{person}")
    elif name == "$create_alias":
        props["alias"] = _pick(rng, device, None, "")
    elif name == "$merge":
        props["$distinct_ids"] = _pick(rng, [f"user-{person}", device], [device], "x", [None, 3])
    row: dict[str, Any] = {"event": name, "properties": _pick(rng, props, None, "{}", [1], odds=0.03)}
    return row


def plain_mixpanel_row(rng: random.Random, n: int) -> dict:
    """A Mixpanel row as tidy as bench.py's Amplitude rows (for per_row.py's figures, not for the proof's mess)."""
    person = rng.randrange(2_000)
    device = f"$device:dev-{person}"
    user = f"user-{person}" if person % 3 else None
    return {"event": rng.choice(["$mp_web_page_view", "note_created", "note_shared", "search_performed"]),
            "properties": {
                "time": 1_672_531_200 + rng.randrange(365 * 86_400), "distinct_id": user or device,
                "$device_id": device.removeprefix("$device:"), **({"$user_id": user} if user else {}),
                "$insert_id": f"{rng.getrandbits(64):016x}", "mp_country_code": "CA", "$city": "Toronto",
                "$region": "Ontario", "$os": "Mac OS X", "$browser": "Chrome", "$browser_version": 120,
                "$current_url": f"https://ex.com/p/{n % 500}", "mp_lib": "web", "plan": "pro",
                "note_length": rng.randrange(5000)}}


ROW_MAKERS = {"amplitude": amplitude_row, "mixpanel": mixpanel_row, "mixpanel-plain": plain_mixpanel_row}


def write_rows(fmt: str, path: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    make = ROW_MAKERS[fmt]
    with open(path, "wb") as out:
        for n in range(count):
            out.write(orjson.dumps(make(rng, n)) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=tuple(ROW_MAKERS))
    parser.add_argument("out")
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    write_rows(args.format, Path(args.out), args.n, args.seed)


if __name__ == "__main__":
    main()
