"""Is a downloaded body whole? Checked before it gets its final name, so that a file there is complete.

A body cut short by a dropped connection, a proxy or a crash must never pass for a chunk: the job would
migrate part of a day and call it done. So every body is read through once before it is kept:

* Amplitude's zip: every member decompressed (zipfile checks each CRC-32) and, for the ``.json.gz`` ones,
  every gzip stream to its end (gzip checks its trailer: CRC-32 and length);
* Mixpanel's JSON lines (gzip'd or not, whatever the name says): to the end of the gzip stream, and the
  last line whole (a body cut at a line boundary passes the other checks);
* an Engage page: one JSON object with a ``results`` list.

Each line is not parsed: a line that is not JSON is the export's own (the adapter rejects that row, with
its number), not a transport fault that asking again would fix.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path
from typing import IO

import orjson
from posthog_migrate.adapters.base import GZIP_MAGIC, gzip_reader

READ_BYTES = 1 << 20
DATA_MEMBER_ENDINGS = (".json.gz", ".json")


class Incomplete(Exception):
    """The body is not whole: ask for it again."""


def amplitude_zip(path: Path) -> bool:
    """Check every member of an Amplitude export zip; whether it holds any data file."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            for info in members:
                with archive.open(info) as member:
                    if info.filename.endswith(".gz"):
                        _check_lines(gzip_reader(member), info.filename)
                    else:
                        while member.read(READ_BYTES):
                            pass
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, gzip.BadGzipFile) as error:
        raise Incomplete(f"the zip is damaged or cut short ({error})") from None
    return any(info.filename.endswith(DATA_MEMBER_ENDINGS) for info in members)


def json_lines(path: Path) -> bool:
    """Check a Mixpanel export body (gzip'd when it starts with gzip's magic); whether it holds any line."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        try:
            return _check_lines(gzip_reader(raw) if gzipped else raw, path.name)
        except (zlib.error, EOFError, OSError, gzip.BadGzipFile) as error:
            raise Incomplete(f"the gzip'd body is damaged or cut short ({error})") from None


def engage_page(body: bytes) -> dict:
    """An Engage answer: the page object, with its ``results`` list."""
    try:
        page = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise Incomplete(f"the page is not whole JSON ({error})") from None
    if not isinstance(page, dict) or not isinstance(page.get("results"), list):
        raise Incomplete("the page has no results list")
    return page


def _check_lines(stream: IO[bytes], name: str) -> bool:
    """Read ``stream`` to its end; its last line must be whole JSON. Whether it held anything."""
    tail = b""
    seen = False
    while block := stream.read(READ_BYTES):
        seen = seen or bool(block.strip())
        cut = block.rfind(b"\n")
        tail = block[cut + 1:] if cut >= 0 else tail + block
    if tail.strip():
        try:
            orjson.loads(tail)
        except orjson.JSONDecodeError:
            raise Incomplete(f"{name} ends in the middle of a line") from None
    return seen
