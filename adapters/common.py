"""Helpers shared by the platform adapters: URLs, sessions, geo, empty values.

Kept here so every adapter applies PostHog's conventions the same way (../shared/reference/
source-formats.md, "Common rules for every source").
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any
from urllib.parse import urlsplit

# Values platforms use for "nothing here"; they must not become properties or person properties.
EMPTY_MARKERS = frozenset({"", "EMPTY", "(not set)", "(not provided)", "null", "None"})
URL_CACHE_SIZE = 16_384


def is_empty(value: Any) -> bool:
    """None, a platform's "nothing here" marker (surrounding spaces allowed), or an empty object/list.

    Called for nearly every value of every row: the common cases return before any allocation.
    """
    kind = type(value)
    if kind is str:
        if value in EMPTY_MARKERS:
            return True
        if value[0].isspace() or value[-1].isspace():
            return value.strip() in EMPTY_MARKERS
        return False
    if kind is int or kind is float or kind is bool:
        return False
    return value is None or value == {} or value == []


def without_empty(values: dict | None) -> dict:
    """A copy of ``values`` without keys whose value is empty or a platform's empty marker."""
    return {k: v for k, v in (values or {}).items() if not is_empty(v)}


def url_properties(url: str | None) -> dict[str, str]:
    """``$current_url`` plus the ``$host`` and ``$pathname`` PostHog derives from it in the browser SDK."""
    if is_empty(url):
        return {}
    properties = {"$current_url": url}
    host, path = _host_and_path(url) if isinstance(url, str) else ("", "")
    if host:
        properties["$host"] = host
    if path:
        properties["$pathname"] = path
    return properties


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def _host_and_path(url: str) -> tuple[str, str]:
    """urlsplit is slow and exports repeat the same pages endlessly: remember recent answers."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "", ""
    return parts.netloc, parts.path


@functools.lru_cache(maxsize=URL_CACHE_SIZE)  # a session's events come close together: most calls repeat
def session_uuid7(start_ms: int, session_key: str) -> str:
    """A deterministic UUIDv7 for a source session: its time bits are the session start.

    PostHog only counts sessions whose ``$session_id`` is a UUIDv7. The 74 "random" bits are a hash of
    ``session_key`` (e.g. the source, the device and the source's session id), so every event of one
    session gets the same id, on every run.
    """
    start_ms = max(0, min(int(start_ms), (1 << 48) - 1))
    digest = hashlib.sha256(session_key.encode("utf-8", "surrogatepass")).digest()
    rand_a = int.from_bytes(digest[:2], "big") & 0x0FFF
    rand_b = int.from_bytes(digest[2:10], "big") & ((1 << 62) - 1)
    value = (start_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def geo_properties(ip: str | None, city: str | None = None, region: str | None = None,
                   country_name: str | None = None, country_code: str | None = None,
                   latitude: float | None = None, longitude: float | None = None) -> dict[str, Any]:
    """Geo as PostHog should see it.

    With the source's real ``ip``, send ``$ip`` and let PostHog's GeoIP fill in the rest. Without one,
    PostHog would geolocate the *migration machine's* address: send ``$geoip_disable: true`` and the
    source's own geo fields instead.
    """
    if not is_empty(ip):
        return {"$ip": ip}
    geo: dict[str, Any] = {"$geoip_disable": True}
    for key, value in (("$geoip_city_name", city), ("$geoip_subdivision_1_name", region),
                       ("$geoip_country_name", country_name), ("$geoip_country_code", country_code),
                       ("$geoip_latitude", latitude), ("$geoip_longitude", longitude)):
        if not is_empty(value):
            geo[key] = value
    return geo
