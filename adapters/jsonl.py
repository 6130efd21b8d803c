"""JSON lines (one JSON object per line; ``.gz`` too), and single JSON arrays of objects."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, ClassVar

import orjson
from posthog_migrate.adapters.base import (
    MAX_CHUNK_BYTES,
    MAX_RAW_CHARS_IN_REJECT,
    MAX_ROW_BYTES,
    ROWS_PER_CHUNK,
    Adapter,
    BadRow,
    RowChunk,
    SourceFile,
    bounded_lines,
    in_chunks,
    open_binary,
    too_large_row,
)
from posthog_migrate.errors import ConfigError

# If this many leading rows are all unreadable, the file is not JSON lines: say so once, not per row.
FORMAT_PROBE_ROWS = 20
UTF8_BOM = b"\xef\xbb\xbf"
# A JSON array file is read this much at a time, one element after another, never whole.
ARRAY_READ_BYTES = 1 << 20
# Outside strings, the bytes that open, close or separate an array's elements; inside one, its end.
_STRUCTURE = re.compile(rb'["\[\]{},]')
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_WHITESPACE = b" \t\r\n"


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
            yield from _probed(source, _json_array_rows(source, stream))
            return
        yield from _probed(source, _json_lines_rows(stream))


def _json_lines_rows(stream: IO[bytes]) -> Iterator[RowChunk]:
    chunk: RowChunk = []
    chunk_bytes = 0
    row_number = 0
    loads = orjson.loads
    for line in bounded_lines(stream):
        if type(line) is BadRow:  # a line over MAX_ROW_BYTES
            row_number += 1
            chunk.append((row_number, line))
            continue
        if line.isspace():  # (not strip(): that copies every line)
            continue
        row_number += 1
        try:  # the usual row, parsed here; _parse_line says what is wrong with the others
            record = loads(line)
        except orjson.JSONDecodeError:
            record = None
        chunk.append((row_number, record if type(record) is dict else _parse_line(line)))
        chunk_bytes += len(line)
        if len(chunk) >= ROWS_PER_CHUNK or chunk_bytes >= MAX_CHUNK_BYTES:
            yield chunk
            chunk, chunk_bytes = [], 0
    if chunk:
        yield chunk


def _probed(source: SourceFile, chunks: Iterator[RowChunk]) -> Iterator[RowChunk]:
    """The chunks, but the file refused (a ConfigError) when its first rows are all unreadable: then it is
    not JSON at all, and one message says so instead of a reject per row."""
    for chunk in chunks:  # the first chunk holds the first FORMAT_PROBE_ROWS rows, or all there are
        if len(chunk) >= 3:
            _refuse_if_all_bad(source, chunk[:FORMAT_PROBE_ROWS])
        yield chunk
        yield from chunks
        return


def _refuse_if_all_bad(source: SourceFile, chunk: RowChunk) -> None:
    if chunk and all(isinstance(row, BadRow) for _, row in chunk):
        first = chunk[0][1]
        raise ConfigError(
            f"{source.uri}: the first {len(chunk)} rows are not JSON objects ({first.detail}). "
            "Is this file JSON lines? Check --format, or the file's compression."
        )


def _json_array_rows(source: SourceFile, stream: IO[bytes]) -> Iterator[RowChunk]:
    def numbered() -> Iterator[tuple[int, dict | BadRow, int]]:
        for number, element in enumerate(_json_array_elements(source, stream), start=1):
            yield (number, element, 0) if type(element) is BadRow else (number, _parse_line(element), len(element))

    return in_chunks(numbered())


def _json_array_elements(source: SourceFile, stream: IO[bytes]) -> Iterator[bytes | BadRow]:
    """The elements of a file that is one JSON array, as the bytes of each, read a megabyte at a time.

    Only the array's structure is followed here (strings, brackets, commas); orjson parses each element,
    as it parses a JSON line. An element over MAX_ROW_BYTES comes as a ``row_too_large`` BadRow and is
    passed over without being held. (Our own splitter rather than ijson: it bounds an element's size, adds
    no dependency, and leaves values to orjson, so an array and JSON lines give identical rows.)
    """
    buffer = _Buffer(source, stream)
    buffer.data = stream.read(ARRAY_READ_BYTES)
    buffer.position = buffer.data.index(b"[") + 1  # read_json_lines saw the "[" (after whitespace)
    while True:
        if not buffer.skip_separators():
            raise ConfigError(f"{source.uri}: not valid JSON: the array never closes (a truncated file?)")
        if buffer.data[buffer.position] == ord("]"):
            buffer.position += 1
            buffer.expect_only_whitespace()
            return
        yield buffer.element()


class _Buffer:
    """A JSON array file being split into elements: the bytes read and not yet consumed, and the position in
    them. Keeps at most one read plus the element being read (itself at most MAX_ROW_BYTES)."""

    def __init__(self, source: SourceFile, stream: IO[bytes]):
        self.uri = source.uri
        self.stream = stream
        self.data = b""
        self.position = 0

    def _read_more(self, keep_from: int) -> bool:
        """Drop ``data`` before ``keep_from``, add the next read; False at the end of the file."""
        more = self.stream.read(ARRAY_READ_BYTES)
        self.data, self.position = self.data[keep_from:] + more, self.position - keep_from
        return bool(more)

    def skip_separators(self) -> bool:
        """Pass whitespace and commas; False when the file ends first."""
        while True:
            data, position = self.data, self.position
            while position < len(data) and data[position] in b" \t\r\n,":
                position += 1
            self.position = position
            if position < len(data):
                return True
            if not self._read_more(position):
                return False

    def expect_only_whitespace(self) -> None:
        while True:
            if self.data[self.position:].strip(_WHITESPACE):
                raise ConfigError(f"{self.uri}: not valid JSON: there is more after the array's closing ]")
            self.position = len(self.data)
            if not self._read_more(self.position):
                return

    def element(self) -> bytes | BadRow:
        """The element starting at ``position``; ``position`` moves past it.

        Its bytes from earlier reads are in ``kept``; once it passes MAX_ROW_BYTES, only its first bytes stay
        (for the rejects file) and the rest is counted and dropped.
        """
        kept: list[bytes] = []
        size = 0
        depth = 0
        in_string = False
        start = self.position
        while True:
            end = self._find_end(depth, in_string)
            if isinstance(end, int):
                piece = self.data[start:end]
                self.position = end
            else:  # not in this read: keep what was scanned, read on
                depth, in_string = end
                piece = self.data[start:self.position]
            size += len(piece)
            if size <= MAX_ROW_BYTES:
                kept.append(piece)
            elif len(kept) != 1 or len(kept[0]) > MAX_RAW_CHARS_IN_REJECT:
                kept = [b"".join(kept)[:MAX_RAW_CHARS_IN_REJECT]]  # too large: keep only an excerpt
            if isinstance(end, int):
                return too_large_row(kept[0], size) if size > MAX_ROW_BYTES else b"".join(kept).rstrip(_WHITESPACE)
            if not self._read_more(self.position):
                raise ConfigError(f"{self.uri}: not valid JSON: the file ends inside an element of the array "
                                  "(a truncated file?)")
            start = 0

    def _find_end(self, depth: int, in_string: bool) -> int | tuple[int, bool]:
        """Scan from ``position``: where the element ends, or (depth, in_string) at the end of the read, with
        ``position`` at the first byte not yet scanned."""
        data, position = self.data, self.position
        while True:
            if in_string:
                match = _STRING_REST.match(data, position)
                if match is None:  # the string goes on in the next read
                    self.position = _string_resume_point(data, position)
                    return depth, True
                position, in_string = match.end(), False
                continue
            match = _STRUCTURE.search(data, position)
            if match is None:
                self.position = len(data)
                return depth, False
            byte, position = data[match.start()], match.end()
            if byte == ord('"'):
                in_string = True
            elif byte in b"[{":
                depth += 1
            elif byte in b"]}":
                if depth > 0:
                    depth -= 1
                    if depth == 0:  # the element's own closing bracket
                        return position
                elif byte == ord("]"):  # the array's end, after a scalar element
                    return match.start()
                else:  # a stray "}": part of this (invalid) element, so that reading moves on
                    return position
            elif depth == 0:  # the "," after a scalar element
                return match.start()


def _string_resume_point(data: bytes, position: int) -> int:
    """Where to go on scanning a string that runs past the end of ``data``: the end, unless ``data`` ends in
    an escaping backslash, whose escaped byte comes in the next read (then that backslash is read again)."""
    backslashes = len(data) - len(data.rstrip(b"\\"))
    backslashes = min(backslashes, len(data) - position)
    return len(data) - (backslashes % 2)


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
