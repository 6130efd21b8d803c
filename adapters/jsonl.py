"""JSON lines (one JSON object per line; ``.gz`` too), and single JSON arrays of objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import orjson

from adapters.base import (
    MAX_RAW_CHARS_IN_REJECT,
    ROWS_PER_CHUNK,
    Adapter,
    BadRow,
    RowChunk,
    SourceFile,
    open_binary,
)
from migrate.errors import ConfigError

# If this many leading rows are all unreadable, the file is not JSON lines: say so once, not per row.
FORMAT_PROBE_ROWS = 20
# A file that is one JSON array is read whole; beyond this size it must be converted to JSON lines.
MAX_JSON_ARRAY_BYTES = 512 * 1024 * 1024
UTF8_BOM = b"\xef\xbb\xbf"


def _raw_text(line: bytes) -> str:
    return line[:MAX_RAW_CHARS_IN_REJECT].decode("utf-8", errors="replace")


def _parse_line(line: bytes) -> dict | BadRow:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        return BadRow("invalid_json", f"not valid JSON: {error}", _raw_text(line))
    if not isinstance(value, dict):
        return BadRow("not_an_object", f"a JSON {type(value).__name__}, expected an object", value)
    return value


def read_json_lines(source: SourceFile) -> Iterator[RowChunk]:
    """Yield the rows of a JSON lines file; blank lines are skipped and are not rows."""
    with open_binary(source.uri) as stream:
        if stream.peek(3)[:3] == UTF8_BOM:  # Windows tools write one; it would make row 1 invalid JSON
            stream.read(3)
        head = stream.peek(64)[:64].lstrip() if hasattr(stream, "peek") else b""
        if head.startswith(b"["):
            yield from _read_json_array(source, stream)
            return
        chunk: RowChunk = []
        row_number = 0
        probing = True
        loads = orjson.loads
        for line in stream:
            if line.isspace():  # (not strip(): that copies every line)
                continue
            row_number += 1
            try:  # the usual row, parsed here; _parse_line says what is wrong with the others
                record = loads(line)
            except orjson.JSONDecodeError:
                record = None
            chunk.append((row_number, record if type(record) is dict else _parse_line(line)))
            if probing and row_number >= FORMAT_PROBE_ROWS:
                _refuse_if_all_bad(source, chunk)
                probing = False
            if len(chunk) >= ROWS_PER_CHUNK:
                yield chunk
                chunk = []
        if probing and row_number >= 3:
            _refuse_if_all_bad(source, chunk)
        if chunk:
            yield chunk


def _refuse_if_all_bad(source: SourceFile, chunk: RowChunk) -> None:
    if chunk and all(isinstance(row, BadRow) for _, row in chunk):
        first = chunk[0][1]
        raise ConfigError(
            f"{source.uri}: the first {len(chunk)} rows are not JSON objects ({first.detail}). "
            "Is this file JSON lines? Check --format, or the file's compression."
        )


def _read_json_array(source: SourceFile, stream) -> Iterator[RowChunk]:
    data = stream.read(MAX_JSON_ARRAY_BYTES + 1)
    if len(data) > MAX_JSON_ARRAY_BYTES:
        raise ConfigError(
            f"{source.uri}: a single JSON array larger than {MAX_JSON_ARRAY_BYTES >> 20} MiB; "
            "convert it to JSON lines (e.g. `jq -c '.[]' file.json > file.jsonl`)"
        )
    try:
        values = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"{source.uri}: not valid JSON ({error}); JSON lines must have one object per line") from None
    rows: RowChunk = []
    for number, value in enumerate(values, start=1):
        rows.append((number, value if isinstance(value, dict) else BadRow(
            "not_an_object", f"a JSON {type(value).__name__}, expected an object", value)))
    for start in range(0, len(rows), ROWS_PER_CHUNK):
        yield rows[start:start + ROWS_PER_CHUNK]


class JsonLinesAdapter(Adapter):
    """Generic JSON lines: each object's keys are the columns of the mapping."""

    name: ClassVar[str] = "jsonl"
    extensions: ClassVar[tuple[str, ...]] = (".jsonl", ".ndjson", ".json")

    def read(self, source: SourceFile) -> Iterator[RowChunk]:
        return read_json_lines(source)

    def columns(self, source: SourceFile) -> list[str] | None:
        """The keys of the first rows: enough to catch a mapping that names a column no row has."""
        keys: set[str] = set()
        for chunk in read_json_lines(source):
            for _, row in chunk[:FORMAT_PROBE_ROWS * 5]:
                if isinstance(row, dict):
                    keys.update(row)
            return sorted(keys)
        return None
